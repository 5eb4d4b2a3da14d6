//! The two Winograd tiles and their blocking parameters.

use crate::policy::Winograd;

/// Output channels transformed together by the filter transform, one per SIMD lane.
pub(crate) const LANES: usize = 16;

/// Which Winograd algorithm: F(m x m, 3x3), m outputs a side per patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2x2, 3x3): 4x4 patches, 16 GEMMs.
    F2,
    /// F(4x4, 3x3): 6x6 patches, 36 GEMMs.
    F4,
}

impl Tile {
    /// The tile for an (H, W) image under `choice`: with [`Winograd::F4`], F4 when both
    /// sides are at least 13, where its 36 GEMMs over a quarter as many patches take
    /// less time than F2's 16 (even at 13x13, where four 4x4 blocks a side overhang to
    /// 16x16), and F2 on thinner maps, where F4's blocks would overhang more; F2
    /// everywhere otherwise.
    pub(crate) fn for_image(h: usize, w: usize, choice: Winograd) -> Tile {
        if h.min(w) >= 13 && choice == Winograd::F4 {
            Tile::F4
        } else {
            Tile::F2
        }
    }

    /// Outputs per patch side.
    pub(crate) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Patch side: m + 2.
    pub(crate) fn side(self) -> usize {
        self.m() + 2
    }

    /// GEMMs (and planes of U, V and M): the patch's elements.
    pub(crate) fn planes(self) -> usize {
        self.side() * self.side()
    }

    /// Patches per chunk of a task, rounded to whole patch rows (at least one): the
    /// column block of its GEMMs. The chunk's GEMM results, (planes, chunk, CO_BLOCK)
    /// floats (768 and 864 KiB), stay in the core's L2 cache.
    pub(crate) fn tile_chunk(self) -> usize {
        match self {
            Tile::F2 => 192,
            Tile::F4 => 96,
        }
    }

    /// Input channels per step of a task's GEMMs: its transformed filters,
    /// (planes, k_chunk, CO_BLOCK) floats (512 and 576 KiB), stay in L2 between their
    /// transform and their GEMMs.
    pub(crate) fn k_chunk(self) -> usize {
        match self {
            Tile::F2 => 128,
            Tile::F4 => 64,
        }
    }
}
