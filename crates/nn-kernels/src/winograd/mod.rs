//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) and
//! F(4x4, 3x3).
//!
//! Each m x m block of outputs is computed from an (m + 2) x (m + 2) patch of input
//! (patches overlap by 2) with (m + 2)² multiplies per input channel instead of 9m²
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`
//!
//! with `g` a 3x3 filter and `d` a patch. For F(2x2, 3x3) ([`Tile::F2`]), from the
//! points 0, 1, -1:
//!
//! ```text
//! Bᵀ = [1  0 -1  0]    G = [1    0    0 ]    Aᵀ = [1  1  1  0]
//!      [0  1  1  0]        [1/2  1/2  1/2]         [0  1 -1 -1]
//!      [0 -1  1  0]        [1/2 -1/2  1/2]
//!      [0  1  0 -1]        [0    0    1 ]
//! ```
//!
//! and for F(4x4, 3x3) ([`Tile::F4`]), from the points 0, 1, -1, 2, -2:
//!
//! ```text
//! Bᵀ = [4  0 -5  0  1  0]   G = [ 1/4     0     0 ]   Aᵀ = [1  1  1  1  1  0]
//!      [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]        [0  1 -1  2 -2  0]
//!      [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6 ]        [0  1  1  4  4  0]
//!      [0 -2 -1  2  1  0]       [1/24  1/12   1/6 ]        [0  1 -1  8 -8  1]
//!      [0  2 -1 -2  1  0]       [1/24 -1/12   1/6 ]
//!      [0  4  0 -5  0  1]       [ 0      0     1  ]
//! ```
//!
//! Summed over the input channels, the element-wise product becomes (m + 2)²
//! independent GEMMs, `M[ξ] (C_out x T) = U[ξ] (C_out x C_in) · V[ξ] (C_in x T)` over
//! the T patches: 2.25x (F2) or 4x (F4) fewer multiply-adds than the direct
//! convolution. They run on the `gemm` crate's kernels, or where the CPU has AVX-512 on
//! `avx512::gemm_64`, which reads the transformed filters in place. F2's
//! transforms use only additions and halvings, so its results stay within float
//! rounding of the direct ones; F4's larger constants cost about a decimal digit
//! (relative error about 1e-6 per layer where F2's is 1e-7), still well inside the
//! parity tests' 1e-4 for whole models. [`Tile::for_image`] picks F4 where it saves
//! time: every map of YOLOv3 at 416.
//!
//! The input transform covers a band of patch rows at a time, across the images of the
//! batch, so that `V` stays a few MiB. The rest is split into tasks of [`CO_BLOCK`]
//! output channels by a group of patch rows. Each task transforms its block of filters
//! into a buffer of its thread (the filters are never kept transformed, which would
//! take 16/9 or 36/9 of their memory), then, a chunk of patches at a time, runs its
//! GEMMs into another and writes its outputs. Both buffers are column-major, the layout
//! in which the `gemm` crate's kernels run fastest on these small products, and the one
//! `avx512::gemm_64` reads U in. (How much each of these choices saved is in
//! `docs/performance.md`.)

// (Unsafe here: GEMMs through the `gemm` crate's raw-pointer entry point, and parallel
// tasks writing disjoint parts of shared buffers.)

use std::cell::RefCell;
use std::mem::MaybeUninit;

use multiversion::multiversion;

use crate::epilogue::Epilogue;
use crate::gemm::matmul_into;
use crate::pool::{parallel_for, SharedPtr};

mod tile;
pub(crate) use tile::Tile;
use tile::LANES;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Floats of `V` per band of patch rows (4 MiB).
const BAND_BUDGET: usize = 1024 * 1024;

/// Output channels per task: the row block of its GEMMs.
const CO_BLOCK: usize = 64;

// A whole block is one panel of `avx512::gemm_64`.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(CO_BLOCK == avx512::GEMM_ROWS);

/// Tasks per thread for each band, when there are enough patch rows to split.
const TASKS_PER_THREAD: usize = 4;

thread_local! {
    /// This thread's task buffers (transformed filters, GEMM results),
    /// reused from call to call.
    static TASK_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 3x3, stride-1, padding-1 convolution of `b` images (C_in, H, W) into
/// (C_out, H, W), Winograd-style.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv3x3 {
    pub(crate) b: usize,
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) tile: Tile,
    /// Whether `avx512::gemm_64` serves the GEMMs it can where the CPU has AVX-512
    /// (off: the `gemm` crate's kernels).
    pub(crate) gemm64: bool,
}

impl Conv3x3 {
    /// Patch rows and columns per image: `ceil(H / m)`, `ceil(W / m)`.
    fn tiles(&self) -> (usize, usize) {
        let m = self.tile.m();
        (self.h.div_ceil(m), self.w.div_ceil(m))
    }

    /// `out = act(conv3x3(x, w) + bias)`: `x` (B, C_in, H, W), `w` (C_out, C_in, 3, 3),
    /// `out` (B, C_out, H, W), every element written.
    pub(crate) fn run(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        act: Epilogue,
        out: &mut [MaybeUninit<f32>],
        threads: usize,
    ) {
        let (cin, cout, h, wd) = (self.cin, self.cout, self.h, self.w);
        assert_eq!(x.len(), self.b * cin * h * wd);
        assert_eq!(w.len(), cout * cin * 9);
        assert_eq!(bias.len(), cout);
        assert_eq!(out.len(), self.b * cout * h * wd);
        let np = self.tile.planes();
        let k_chunk = self.tile.k_chunk();
        let (th, tw) = self.tiles();
        // Patch rows are numbered across the batch: row r is row r % th of image r / th.
        let all_rows = self.b * th;
        let rows_per_band = (BAND_BUDGET / (np * cin * tw).max(1)).clamp(1, all_rows);
        let rows_per_chunk = (self.tile.tile_chunk() / tw).clamp(1, rows_per_band);
        // Left uninitialised: each band writes all of V before the GEMMs read it.
        let mut v = uninit(np * cin * rows_per_band * tw);
        let vp = SharedPtr(v.as_mut_ptr().cast::<f32>());
        let out = SharedPtr(out.as_mut_ptr().cast::<f32>());
        let blocks = cout.div_ceil(CO_BLOCK);
        // Whole blocks of CO_BLOCK output channels take `avx512::gemm_64` where
        // the CPU has AVX-512, the others the `gemm` crate.
        #[cfg(target_arch = "x86_64")]
        let gemm_simd = avx512::available() && self.gemm64;
        let mut r0 = 0;
        while r0 < all_rows {
            let rows = rows_per_band.min(all_rows - r0);
            // V: (planes, C_in, t), row-major.
            let t = rows * tw;
            parallel_for(threads, cin, |ci| match self.tile {
                Tile::F2 => self.transform_input_f2(x, ci, r0, rows, vp),
                Tile::F4 => self.transform_input_f4(x, ci, r0, rows, vp),
            });
            // Tasks: a block of output channels by a group of patch rows, at least
            // TASKS_PER_THREAD per thread; each task transforms its filters once and
            // runs them over its group a chunk of rows at a time.
            let groups = (TASKS_PER_THREAD * threads).div_ceil(blocks).clamp(1, rows);
            let rows_per_group = rows.div_ceil(groups);
            let groups = rows.div_ceil(rows_per_group);
            parallel_for(threads, blocks * groups, |task| {
                let (co0, group) = ((task / groups) * CO_BLOCK, task % groups);
                let nc = CO_BLOCK.min(cout - co0);
                let group_rows = (group * rows_per_group)..((group + 1) * rows_per_group).min(rows);
                TASK_BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    // Room for the largest chunk of input channels.
                    let ulen = np * plane_len(k_chunk.min(cin), nc);
                    let mlen = np * rows_per_chunk * tw * nc;
                    let len = ulen + mlen;
                    if buf.len() < len {
                        buf.resize(len, 0.0);
                    }
                    let (u, rest) = buf.split_at_mut(ulen);
                    let m = &mut rest[..mlen];
                    // The input channels whose filters are in u: with a single chunk
                    // of them, transformed once for all the task's patches.
                    let mut in_u = None;
                    for rr0 in group_rows.clone().step_by(rows_per_chunk) {
                        let nr = rows_per_chunk.min(group_rows.end - rr0);
                        let (j0, nt) = (rr0 * tw, nr * tw);
                        for ci0 in (0..cin).step_by(k_chunk) {
                            let kc = k_chunk.min(cin - ci0);
                            // U: (planes, kc, nc), column-major blocks U[ξ] (nc x kc).
                            let pl = plane_len(kc, nc);
                            let u = &mut u[..np * pl];
                            if in_u != Some(ci0) {
                                transform_filters(self.tile, w, cin, (co0, nc), (ci0, kc), u);
                                in_u = Some(ci0);
                            }
                            // M[ξ] (nc x nt) (+)= U[ξ] (nc x kc) · V[ξ][ci0.., j0..]
                            // (kc x nt), M column-major: (planes, nt, nc).
                            for xi in 0..np {
                                let (mx, ux, vx) = (
                                    m[xi * nt * nc..].as_mut_ptr(),
                                    u[xi * pl..].as_ptr(),
                                    vp.get().wrapping_add((xi * cin + ci0) * t + j0),
                                );
                                // SAFETY: m and u are this thread's (their products lie in
                                // them: nt * nc and kc * nc floats); V is only read, and
                                // its columns j0..j0 + nt of rows ξ * C_in + ci0.. lie in
                                // the band. gemm_64 with AVX-512 (checked).
                                unsafe {
                                    #[cfg(target_arch = "x86_64")]
                                    if nc == CO_BLOCK && gemm_simd {
                                        avx512::gemm_64((nt, kc), mx, ux, (vx, t), ci0 > 0);
                                        continue;
                                    }
                                    matmul_into(
                                        (nc, nt, kc),
                                        (mx, 1, nc),
                                        (ux, 1, nc),
                                        (vx, t, 1),
                                        ci0 > 0,
                                    )
                                }
                            }
                        }
                        let m = &m[..np * nt * nc];
                        self.transform_output(m, co0, nc, r0 + rr0, nr, bias, act, out);
                    }
                });
            });
            r0 += rows;
        }
    }

    /// Input rows `m * ty - 1 + k`, k in 0..side, of channel `ci` of the image of patch
    /// row `row` (across the batch), one after the other in `buf` with `padded_len`
    /// floats each: a zero column on the left (padding, `padded[c] = input[c - 1]`)
    /// and zeros past W and outside the image.
    fn patch_rows(&self, x: &[f32], ci: usize, row: usize, buf: &mut [f32], padded_len: usize) {
        let (h, w, cin) = (self.h, self.w, self.cin);
        let (th, _) = self.tiles();
        let (img, ty) = (row / th, row % th);
        let plane = &x[(img * cin + ci) * h * w..][..h * w];
        for (k, padded) in buf.chunks_exact_mut(padded_len).enumerate() {
            padded.fill(0.0);
            if let Some(iy) = (self.tile.m() * ty + k).checked_sub(1).filter(|&iy| iy < h) {
                padded[1..1 + w].copy_from_slice(&plane[iy * w..(iy + 1) * w]);
            }
        }
    }

    /// The row of `tw` floats of V for plane `xi`, channel `ci`, patch row `r` of the
    /// band (`rows` of them from `r0`): `V[ξ][ci][r * tw..]`.
    ///
    /// # Safety
    /// Only the task of channel `ci` may write it, while no one reads V.
    #[allow(clippy::mut_from_ref)]
    unsafe fn v_row(
        &self,
        vp: SharedPtr<f32>,
        rows: usize,
        xi: usize,
        ci: usize,
        r: usize,
    ) -> &mut [f32] {
        let tw = self.tiles().1;
        // SAFETY: inside V, (planes, C_in, rows * tw); exclusive by the caller's word.
        unsafe {
            std::slice::from_raw_parts_mut(
                vp.get().add((xi * self.cin + ci) * rows * tw + r * tw),
                tw,
            )
        }
    }

    /// F2's `V[ξ][ci][t] = (Bᵀ d B)[ξ]` for channel `ci` and the patches of patch rows
    /// `r0..r0 + rows` (across the batch) of `x` (B, C_in, H, W); `vp` points to V,
    /// (16, C_in, rows * tw), of which this writes channel `ci`.
    fn transform_input_f2(&self, x: &[f32], ci: usize, r0: usize, rows: usize, vp: SharedPtr<f32>) {
        let tw = self.tiles().1;
        let padded_len = 2 * tw + 2;
        let mut buf = vec![0f32; 4 * padded_len + 8 * (tw + 1)];
        let (rows_buf, eo) = buf.split_at_mut(4 * padded_len);
        for r in 0..rows {
            self.patch_rows(x, ci, r0 + r, rows_buf, padded_len);
            let mut p: [&mut [f32]; 4] = {
                let mut it = rows_buf.chunks_exact_mut(padded_len);
                std::array::from_fn(|_| it.next().expect("4 rows"))
            };
            // Bᵀ d over the rows: e0 = d0 - d2, e1 = d1 + d2, e2 = d2 - d1, e3 = d1 - d3.
            let [d0, d1, d2, d3] = &mut p;
            for c in 0..padded_len {
                let (a0, a1, a2, a3) = (d0[c], d1[c], d2[c], d3[c]);
                d0[c] = a0 - a2;
                d3[c] = a1 - a3;
                d2[c] = a2 - a1;
                d1[c] = a1 + a2;
            }
            // Then B over the columns of each patch: with pe/po the even and odd
            // columns of a row, patch tx has columns pe[tx], po[tx], pe[tx+1], po[tx+1].
            let (pe, po) = eo.split_at_mut(4 * (tw + 1));
            for (i, e) in p.iter().enumerate() {
                let pe = &mut pe[i * (tw + 1)..(i + 1) * (tw + 1)];
                let po = &mut po[i * (tw + 1)..(i + 1) * (tw + 1)];
                for (k, pair) in e.chunks_exact(2).enumerate() {
                    pe[k] = pair[0];
                    po[k] = pair[1];
                }
                // SAFETY: this task (channel ci) alone writes V[*][ci].
                let [v0, v1, v2, v3] =
                    std::array::from_fn(|j| unsafe { self.v_row(vp, rows, 4 * i + j, ci, r) });
                for k in 0..tw {
                    let (c0, c1, c2, c3) = (pe[k], po[k], pe[k + 1], po[k + 1]);
                    v0[k] = c0 - c2;
                    v1[k] = c1 + c2;
                    v2[k] = c2 - c1;
                    v3[k] = c1 - c3;
                }
            }
        }
    }

    /// F4's `V[ξ][ci][t] = (Bᵀ d B)[ξ]`, as [`Self::transform_input_f2`] with
    /// (36, C_in, rows * tw) V.
    fn transform_input_f4(&self, x: &[f32], ci: usize, r0: usize, rows: usize, vp: SharedPtr<f32>) {
        let tw = self.tiles().1;
        // Patch tx covers padded columns 4tx..4tx + 6: 4tw + 2 of them in all.
        let padded_len = 4 * (tw + 1);
        let mut buf = vec![0f32; 13 * padded_len];
        let (d, rest) = buf.split_at_mut(6 * padded_len);
        let (e, q) = rest.split_at_mut(6 * padded_len);
        for r in 0..rows {
            self.patch_rows(x, ci, r0 + r, d, padded_len);
            // Bᵀ d over the rows, then B over the columns of each patch.
            input_rows_f4(d, e, padded_len);
            for (i, row) in e.chunks_exact(padded_len).enumerate() {
                // SAFETY: this task (channel ci) alone writes V[*][ci].
                let v = std::array::from_fn(|j| unsafe { self.v_row(vp, rows, 6 * i + j, ci, r) });
                #[cfg(target_arch = "x86_64")]
                if avx512::available() {
                    // SAFETY: AVX-512 (checked); rows of tw floats of this task alone.
                    unsafe { avx512::input_cols_f4(row, v.map(|v| v.as_mut_ptr()), tw) };
                    continue;
                }
                input_cols_f4(row, q, v);
            }
        }
    }

    /// `out = act(Aᵀ M A + bias)` for output channels `co0..co0 + nc` of patch rows
    /// `r0..r0 + nr` (across the batch): `m` is (planes, nr * tw, nc), `out` the whole
    /// (B, C_out, H, W) output.
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        m: &[f32],
        co0: usize,
        nc: usize,
        r0: usize,
        nr: usize,
        bias: &[f32],
        act: Epilogue,
        out: SharedPtr<f32>,
    ) {
        let (h, w, cout) = (self.h, self.w, self.cout);
        let (th, tw) = self.tiles();
        let mo = self.tile.m();
        let nt = nr * tw;
        // Channels from 0 up to here go through `avx512` in blocks of LANES,
        // which applies the bias and activation itself.
        let simd_channels = match self.tile {
            Tile::F4 if output_simd() => nc - nc % LANES,
            _ => 0,
        };
        for r in 0..nr {
            let (img, ty) = ((r0 + r) / th, (r0 + r) % th);
            let oy = mo * ty;
            // Output rows of the patch row inside the image, and columns of its last
            // patch (fewer than m with H or W not a multiple of m).
            let (out_rows, last_cols) = (mo.min(h - oy), w - mo * (tw - 1));
            // Output row oy of channel co0 + c starts at row(c).
            let row = |c: usize| {
                out.get()
                    .wrapping_add(((img * cout + co0 + c) * h + oy) * w)
            };
            // Across the channels (contiguous in M), patch by patch.
            for tx in 0..tw {
                let j = r * tw + tx;
                let cols = if tx + 1 < tw { mo } else { last_cols };
                // Element ξ of the patch for channel c: m[at(ξ) + c].
                let at = |xi: usize| (xi * nt + j) * nc;
                #[cfg(target_arch = "x86_64")]
                for c0 in (0..simd_channels).step_by(LANES) {
                    // Element ξ of channel c0 + l at m[at(ξ) + c0 + l]: planes nt * nc
                    // apart from m[at(0) + c0].
                    assert!(at(35) + c0 + LANES <= m.len());
                    let bias: &[f32; LANES] =
                        bias[co0 + c0..][..LANES].try_into().expect("LANES biases");
                    // SAFETY: the CPU has AVX-512F and VL (output_simd); the 36 runs of
                    // LANES floats lie in m (asserted); the outputs are those of the
                    // patch inside the image, in channels co0 + c0.. of this task alone.
                    unsafe {
                        avx512::output_block_f4(
                            (m.as_ptr().add(at(0) + c0), nt * nc),
                            bias,
                            act,
                            row(c0).wrapping_add(mo * tx),
                            (h * w, w),
                            (out_rows, cols),
                        )
                    };
                }
                match self.tile {
                    Tile::F2 => {
                        let ms: [&[f32]; 16] = std::array::from_fn(|xi| &m[at(xi)..][..nc]);
                        // The patch's second row and column inside the image.
                        let (row1, col1) = (out_rows == 2, cols == 2);
                        // Channel c of all 16 rows at once: an index reads clearest.
                        #[allow(clippy::needless_range_loop)]
                        for c in 0..nc {
                            let y = output_tile_f2(|xi| ms[xi][c]);
                            let p = row(c).wrapping_add(2 * tx);
                            // SAFETY: outputs (oy, 2tx) to (oy + 1, 2tx + 1) of channel
                            // co0 + c where inside the image; this task alone writes them.
                            unsafe {
                                *p = y[0];
                                if col1 {
                                    *p.add(1) = y[1];
                                }
                                if row1 {
                                    *p.add(w) = y[2];
                                    if col1 {
                                        *p.add(w + 1) = y[3];
                                    }
                                }
                            }
                        }
                    }
                    Tile::F4 => {
                        for c in simd_channels..nc {
                            let y = output_tile_f4(|xi| m[at(xi) + c]);
                            let p = row(c).wrapping_add(4 * tx);
                            for (oy, yrow) in y.chunks_exact(4).take(out_rows).enumerate() {
                                for (ox, &v) in yrow.iter().take(cols).enumerate() {
                                    // SAFETY: output (oy, ox) of the patch, inside the
                                    // image, in channel co0 + c; this task's alone.
                                    unsafe { *p.add(oy * w + ox) = v };
                                }
                            }
                        }
                    }
                }
            }
            for c in simd_channels..nc {
                // SAFETY: the rows just written in full, this task's alone.
                let rows = unsafe { std::slice::from_raw_parts_mut(row(c), out_rows * w) };
                act.apply(rows, bias[co0 + c]);
            }
        }
    }
}

/// F4's Bᵀ over the rows: `e` (6 rows of `len`) from the patch rows `d` (the same),
/// column by column.
#[multiversion(targets("x86_64+avx512f"))]
fn input_rows_f4(d: &[f32], e: &mut [f32], len: usize) {
    let [a0, a1, a2, a3, a4, a5]: [&[f32]; 6] = {
        let mut it = d.chunks_exact(len);
        std::array::from_fn(|_| it.next().expect("6 rows"))
    };
    let [e0, e1, e2, e3, e4, e5]: [&mut [f32]; 6] = {
        let mut it = e.chunks_exact_mut(len);
        std::array::from_fn(|_| it.next().expect("6 rows"))
    };
    for c in 0..len {
        [e0[c], e1[c], e2[c], e3[c], e4[c], e5[c]] =
            bt_f4([a0[c], a1[c], a2[c], a3[c], a4[c], a5[c]]);
    }
}

/// F4's Bᵀ applied to six values (a column or a row of a patch).
#[inline(always)]
fn bt_f4([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        (d3 + d4) - 4.0 * (d1 + d2),
        4.0 * (d1 - d2) + (d4 - d3),
        2.0 * (d3 - d1) + (d4 - d2),
        2.0 * (d1 - d3) + (d4 - d2),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// F4's B over the columns of each patch of one row of `Bᵀ d` (`row`, 4 (tw + 1)
/// floats), into the rows `v` (tw floats each) of its six planes; `q` is scratch of
/// the row's length. With q0..q3 the columns of the row by their index mod 4, patch
/// tx has columns q0[tx], q1[tx], q2[tx], q3[tx], q0[tx + 1], q1[tx + 1].
/// (`avx512` has the same on AVX-512.)
fn input_cols_f4(row: &[f32], q: &mut [f32], v: [&mut [f32]; 6]) {
    let tw = v[0].len();
    let [q0, q1, q2, q3]: [&mut [f32]; 4] = {
        let mut it = q.chunks_exact_mut(tw + 1);
        std::array::from_fn(|_| it.next().expect("4 phases"))
    };
    for ((((four, a), b), c), d) in row
        .chunks_exact(4)
        .zip(q0.iter_mut())
        .zip(q1.iter_mut())
        .zip(q2.iter_mut())
        .zip(q3.iter_mut())
    {
        (*a, *b, *c, *d) = (four[0], four[1], four[2], four[3]);
    }
    // All of length tw, so that the loop runs without bounds checks.
    let (q0, q0_next, q1, q1_next) = (&q0[..tw], &q0[1..=tw], &q1[..tw], &q1[1..=tw]);
    let (q2, q3) = (&q2[..tw], &q3[..tw]);
    let [v0, v1, v2, v3, v4, v5] = v.map(|v| &mut v[..tw]);
    for k in 0..tw {
        [v0[k], v1[k], v2[k], v3[k], v4[k], v5[k]] =
            bt_f4([q0[k], q1[k], q2[k], q3[k], q0_next[k], q1_next[k]]);
    }
}

/// Whether F4's output transform runs in `avx512` (x86-64 with AVX-512F and
/// VL).
fn output_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// F2's `Aᵀ M A` of one patch and channel, `m(ξ)` its element ξ (row-major 4x4): the
/// 2x2 outputs, row-major.
#[inline(always)]
fn output_tile_f2(m: impl Fn(usize) -> f32) -> [f32; 4] {
    // Aᵀ over the rows i of ξ = 4i + j: s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j;
    // then A over the columns j.
    let s0: [f32; 4] = std::array::from_fn(|j| m(j) + m(4 + j) + m(8 + j));
    let s1: [f32; 4] = std::array::from_fn(|j| m(4 + j) - m(8 + j) - m(12 + j));
    [
        s0[0] + s0[1] + s0[2],
        s0[1] - s0[2] - s0[3],
        s1[0] + s1[1] + s1[2],
        s1[1] - s1[2] - s1[3],
    ]
}

/// F4's `Aᵀ M A` over one dimension: the 4 outputs of 6 transformed values.
#[inline(always)]
fn output_1d_f4<T>(
    v: [T; 6],
    add: impl Fn(T, T) -> T,
    sub: impl Fn(T, T) -> T,
    mul_add: impl Fn(T, f32, T) -> T,
) -> [T; 4]
where
    T: Copy,
{
    let (p1, m1) = (add(v[1], v[2]), sub(v[1], v[2]));
    let (p2, m2) = (add(v[3], v[4]), sub(v[3], v[4]));
    [
        add(add(v[0], p1), p2),
        mul_add(m2, 2.0, m1),
        mul_add(p2, 4.0, p1),
        add(mul_add(m2, 8.0, m1), v[5]),
    ]
}

/// F4's `Aᵀ M A` of one patch and channel, `m(ξ)` its element ξ (row-major 6x6): the
/// 4x4 outputs, row-major.
#[inline(always)]
fn output_tile_f4(m: impl Fn(usize) -> f32) -> [f32; 16] {
    let at = |v: [f32; 6]| output_1d_f4(v, |a, b| a + b, |a, b| a - b, |a, k, b| a * k + b);
    // Aᵀ over the rows i of ξ = 6i + j, then the same over the columns j.
    let cols: [[f32; 4]; 6] = std::array::from_fn(|j| at(std::array::from_fn(|i| m(6 * i + j))));
    let mut y = [0f32; 16];
    for i in 0..4 {
        y[4 * i..4 * i + 4].copy_from_slice(&at(std::array::from_fn(|j| cols[j][i])));
    }
    y
}

/// Vec of `len` floats left uninitialised (every user writes them all before reading).
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// Floats from one plane U[ξ] of the transformed filters, (kc, nc), to the next: a
/// cache line more than the plane, so that the rows written together do not all fall
/// in one set of the L1 cache (planes a multiple of 4 KiB long would).
fn plane_len(kc: usize, nc: usize) -> usize {
    kc * nc + 16
}

/// `U[ξ][ci - ci_first][c] = (G g Gᵀ)[ξ]` for the filters g of output channels
/// `co0..co0 + nc` and input channels `ci_first..ci_first + kc` of `w`
/// (C_out, C_in, 3, 3): `u` holds the tile's planes (kc, nc), [`plane_len`] apart.
///
/// [`LANES`] output channels at a time, so that the arithmetic vectorises across them
/// and U is written in whole rows of `LANES` (a scatter of each filter's values into
/// the planes of U took longer than the GEMMs). On x86-64 CPUs with AVX-512, the taps
/// of whole 16 x 16 blocks are gathered by `avx512` instead.
fn transform_filters(
    tile: Tile,
    w: &[f32],
    cin: usize,
    (co0, nc): (usize, usize),
    (ci_first, kc): (usize, usize),
    u: &mut [f32],
) {
    // Input channels per staging block: taps of LANES x CI_BLOCK filters, 4.5 KiB.
    const CI_BLOCK: usize = 8;
    let pl = plane_len(kc, nc);
    assert!(u.len() >= tile.planes() * pl);
    let mut taps = [[[0f32; LANES]; 9]; CI_BLOCK];
    let mut t = [[0f32; LANES]; 36];
    for c0 in (0..nc).step_by(LANES) {
        let lanes = LANES.min(nc - c0);
        // Input channels from here on take the portable path.
        let portable_from = if lanes == LANES {
            simd_blocks(tile, w, cin, (co0 + c0, ci_first, kc), u, (pl, nc, c0))
        } else {
            0
        };
        for row0 in (portable_from..kc).step_by(CI_BLOCK) {
            let (ci0, nci) = (ci_first + row0, CI_BLOCK.min(kc - row0));
            // taps[ci - ci0][k][l]: tap k of filter (co0 + c0 + l, ci), filled a run of
            // one filter row at a time so that the weights are read in order.
            for l in 0..lanes {
                let run = &w[((co0 + c0 + l) * cin + ci0) * 9..][..nci * 9];
                for (t, f) in taps.iter_mut().zip(run.chunks_exact(9)) {
                    for k in 0..9 {
                        t[k][l] = f[k];
                    }
                }
            }
            for (i, g) in taps[..nci].iter().enumerate() {
                let at = (row0 + i) * nc + c0;
                filter_transform(tile, g, &mut t);
                for (xi, row) in t[..tile.planes()].iter().enumerate() {
                    let plane = &mut u[xi * pl..];
                    if lanes == LANES {
                        // A fixed-length copy, inlined (a memmove call costs more).
                        plane[at..at + LANES].copy_from_slice(row);
                    } else {
                        plane[at..at + lanes].copy_from_slice(&row[..lanes]);
                    }
                }
            }
        }
    }
}

/// The whole 16 x 16 blocks of [`transform_filters`] for the [`LANES`] output channels
/// from `c` (column `at` of the planes, `pl` apart in `u`) and input channels
/// `ci_first..ci_first + kc`, through `avx512` where the CPU has AVX-512: how
/// many of the input channels are done (0 elsewhere).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn simd_blocks(
    tile: Tile,
    w: &[f32],
    cin: usize,
    (c, ci_first, kc): (usize, usize, usize),
    u: &mut [f32],
    (pl, nc, at): (usize, usize, usize),
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let done = kc - kc % 16;
        for row0 in (0..done).step_by(16) {
            // SAFETY: the CPU has AVX-512F (checked); the block's bounds are asserted
            // inside.
            unsafe {
                avx512::transform_block(tile, w, cin, (c, ci_first + row0), u, (pl, row0, nc, at))
            };
        }
        return done;
    }
    0
}

/// `G g Gᵀ` of [`LANES`] 3x3 filters at once: `g[k][l]` is tap k (row-major) of filter
/// l, `u[ξ][l]` its transformed value ξ (row-major over the patch; the first 16 for
/// F2). Vectorises across the lanes; `avx512` has the same arithmetic on
/// AVX-512 registers.
#[inline(always)]
// Row i of G g is element i of each of its columns: an index reads clearest.
#[allow(clippy::needless_range_loop)]
fn filter_transform(tile: Tile, g: &[[f32; LANES]; 9], u: &mut [[f32; LANES]; 36]) {
    type Row = [f32; LANES];
    // Each step is a loop over the lanes.
    let add = |a: Row, b: Row| -> Row { std::array::from_fn(|l| a[l] + b[l]) };
    let sub = |a: Row, b: Row| -> Row { std::array::from_fn(|l| a[l] - b[l]) };
    let scale = |k: f32, a: Row| -> Row { std::array::from_fn(|l| k * a[l]) };
    match tile {
        Tile::F2 => {
            // G applied to three taps (a column or a row of the filter).
            let gt = |a: Row, b: Row, d: Row| -> [Row; 4] {
                [
                    a,
                    scale(0.5, add(add(a, b), d)),
                    scale(0.5, add(sub(a, b), d)),
                    d,
                ]
            };
            // G g (4x3): G over each column k of the filter; then (G g) Gᵀ (4x4).
            let gg: [[Row; 4]; 3] = std::array::from_fn(|k| gt(g[k], g[3 + k], g[6 + k]));
            for i in 0..4 {
                let row = gt(gg[0][i], gg[1][i], gg[2][i]);
                u[4 * i..4 * i + 4].copy_from_slice(&row);
            }
        }
        Tile::F4 => {
            let (q, s, t) = (1.0 / 4.0, 1.0 / 6.0, 1.0 / 24.0);
            let gt = |a: Row, b: Row, d: Row| -> [Row; 6] {
                let (ta, tb, td) = (scale(t, a), scale(2.0 * t, b), scale(4.0 * t, d));
                [
                    scale(q, a),
                    scale(-s, add(add(a, b), d)),
                    scale(-s, add(sub(a, b), d)),
                    add(add(ta, tb), td),
                    add(sub(ta, tb), td),
                    d,
                ]
            };
            let gg: [[Row; 6]; 3] = std::array::from_fn(|k| gt(g[k], g[3 + k], g[6 + k]));
            for i in 0..6 {
                let row = gt(gg[0][i], gg[1][i], gg[2][i]);
                u[6 * i..6 * i + 6].copy_from_slice(&row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use test_support::{max_abs, max_abs_diff};

    /// G of each tile, (m + 2) x 3.
    fn g_matrix(tile: Tile) -> Vec<[f64; 3]> {
        match tile {
            Tile::F2 => vec![
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            Tile::F4 => vec![
                [0.25, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }

    /// The filter transform against G g Gᵀ by plain matrix products, for both tiles,
    /// over a block of output channels with a short last group of lanes and a range of
    /// input channels that starts inside the filters and is not a multiple of 16 long
    /// (on AVX-512 CPUs: whole 16 x 16 blocks through `avx512`, the rest
    /// through the portable code).
    #[test]
    fn filter_transform_matches_matrix_products() {
        let (cout, cin, co0, nc, ci_first, kc) = (50, 37, 7, 40, 3, 33);
        let w: Vec<f32> = (0..cout * cin * 9)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        for tile in [Tile::F2, Tile::F4] {
            let (side, pl) = (tile.side(), plane_len(kc, nc));
            let mut u = vec![f32::NAN; tile.planes() * pl];
            transform_filters(tile, &w, cin, (co0, nc), (ci_first, kc), &mut u);
            let gm = g_matrix(tile);
            for c in 0..nc {
                for ci in ci_first..ci_first + kc {
                    let g = &w[((co0 + c) * cin + ci) * 9..][..9];
                    for i in 0..side {
                        for j in 0..side {
                            // (G g Gᵀ)[i][j] = sum_ab G[i][a] g[a][b] G[j][b].
                            let mut want = 0f64;
                            for a in 0..3 {
                                for b in 0..3 {
                                    want += gm[i][a] * g[3 * a + b] as f64 * gm[j][b];
                                }
                            }
                            let xi = side * i + j;
                            let got = u[xi * pl + (ci - ci_first) * nc + c];
                            assert!(
                                (got as f64 - want).abs() < 1e-5,
                                "{tile:?} c {c} ci {ci} ξ {xi}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// F4's input transform over the columns of a row, portable and (where the CPU has
    /// it) AVX-512, against Bᵀ applied to each patch's six columns by a plain matrix
    /// product: rows of fewer than 16 patches, exactly 16, and more.
    #[test]
    fn input_columns_match_matrix_products() {
        let bt: [[f64; 6]; 6] = [
            [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ];
        for tw in [1, 5, 13, 16, 17, 40] {
            let row: Vec<f32> = (0..4 * (tw + 1))
                .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let mut want = vec![[0f64; 6]; tw];
            for (tx, w) in want.iter_mut().enumerate() {
                for (j, wj) in w.iter_mut().enumerate() {
                    *wj = (0..6).map(|k| bt[j][k] * row[4 * tx + k] as f64).sum();
                }
            }
            let check = |v: &[Vec<f32>], which: &str| {
                for (j, vj) in v.iter().enumerate() {
                    for (tx, &got) in vj.iter().enumerate() {
                        let w = want[tx][j];
                        assert!(
                            (got as f64 - w).abs() < 1e-5,
                            "{which} tw {tw} patch {tx} value {j}: {got} vs {w}"
                        );
                    }
                }
            };
            let mut v = vec![vec![f32::NAN; tw]; 6];
            let mut q = vec![0f32; 4 * (tw + 1)];
            {
                let mut it = v.iter_mut();
                let rows = std::array::from_fn(|_| it.next().expect("6 rows").as_mut_slice());
                input_cols_f4(&row, &mut q, rows);
            }
            check(&v, "portable");
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                // A float past each row: the masked stores must leave it alone.
                let mut v = vec![vec![f32::NAN; tw + 1]; 6];
                let ptrs = std::array::from_fn(|j| v[j].as_mut_ptr());
                // SAFETY: AVX-512 (checked); rows of tw (+ 1) floats.
                unsafe { avx512::input_cols_f4(&row, ptrs, tw) };
                assert!(
                    v.iter().all(|r| r[tw].is_nan()),
                    "tw {tw}: wrote past the row"
                );
                let v: Vec<Vec<f32>> = v.into_iter().map(|r| r[..tw].to_vec()).collect();
                check(&v, "AVX-512");
            }
        }
    }

    /// Winograd against candle's direct convolution (plus bias and activation), both
    /// tiles, on odd and degenerate sides, sides that are not a multiple of 4, batch 2,
    /// one and three threads, one band and several.
    #[test]
    fn matches_direct_convolution() {
        let dev = Device::Cpu;
        // (batch, c_in, h, w, c_out)
        let cases = [
            (1, 3, 1, 1, 2),
            (1, 2, 1, 7, 3),
            (2, 4, 5, 1, 3),
            (2, 6, 9, 11, 5),
            (1, 16, 33, 20, 9),
            (1, 8, 6, 7, 4),
            // Rows of more than 16 patches (F4's input transform takes 16 at a time).
            (1, 4, 9, 70, 20),
            // 16 (or 36) * c_in * tw floats of V per patch row: several bands;
            // 19 output-channel blocks, the last one short.
            (1, 500, 40, 30, 600),
            // Bands that cross from one image to the next; several chunks of input
            // channels for F4.
            (3, 500, 30, 29, 70),
        ];
        // Each activation, in turn (the AVX-512 output transform applies them itself).
        let acts = [Epilogue::Leaky(0.1), Epilogue::Relu6, Epilogue::Identity];
        for (i, (b, cin, h, w, cout)) in cases.into_iter().enumerate() {
            let act = acts[i % acts.len()];
            let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
            let y = x.conv2d(&wt, 1, 1, 1, 1).unwrap();
            let y = y
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            let scale = max_abs(&y);
            let want = match act {
                Epilogue::Leaky(s) => y.maximum(&(&y * s as f64).unwrap()).unwrap(),
                Epilogue::Relu6 => y.clamp(0f32, 6f32).unwrap(),
                Epilogue::Identity => y,
            };
            let (xv, wv, bv) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                bias.to_vec1::<f32>().unwrap(),
            );
            for tile in [Tile::F2, Tile::F4] {
                let conv = Conv3x3 {
                    b,
                    cin,
                    cout,
                    h,
                    w,
                    tile,
                    gemm64: true,
                };
                // F4's larger constants cost about a decimal digit.
                let tolerance = if tile == Tile::F2 { 1e-5 } else { 5e-5 };
                for threads in [1, 3] {
                    // NaN first: an element left unwritten would show.
                    let mut out = vec![MaybeUninit::new(f32::NAN); b * cout * h * w];
                    conv.run(&xv, &wv, &bv, act, &mut out, threads);
                    let out: Vec<f32> = out
                        .into_iter()
                        // SAFETY: NaN-initialised above (the test then checks none is left).
                        .map(|v| unsafe { v.assume_init() })
                        .collect();
                    let got = Tensor::from_vec(out, (b, cout, h, w), &dev).unwrap();
                    let d = max_abs_diff(&got, &want) / scale;
                    assert!(
                        d < tolerance,
                        "{tile:?} {b}x{cin}x{h}x{w} -> {cout}, {act:?}, {threads} threads: {d}"
                    );
                    if cin == 500 {
                        eprintln!("{tile:?} {b}x{cin}x{h}x{w} -> {cout}: rel err {d:.1e}");
                    }
                }
            }
        }
    }
}
