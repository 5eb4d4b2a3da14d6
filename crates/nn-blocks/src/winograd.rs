//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3).
//!
//! Each 2x2 block of outputs is computed from a 4x4 patch of input with 16 multiplies
//! per input channel instead of 36 (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016):
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`
//!
//! with `g` a 3x3 filter, `d` a 4x4 input patch (patches overlap by 2) and
//!
//! ```text
//! Bᵀ = [1  0 -1  0]    G = [1    0    0 ]    Aᵀ = [1  1  1  0]
//!      [0  1  1  0]        [1/2  1/2  1/2]         [0  1 -1 -1]
//!      [0 -1  1  0]        [1/2 -1/2  1/2]
//!      [0  1  0 -1]        [0    0    1 ]
//! ```
//!
//! Summed over the input channels, the element-wise product becomes 16 independent
//! GEMMs, `M[ξ] (C_out x T) = U[ξ] (C_out x C_in) · V[ξ] (C_in x T)` over the T patches,
//! which run on the same `gemm` crate kernels as [`crate::conv_fast`]: 2.25x fewer
//! multiply-adds than the direct convolution. The transforms use only additions and
//! halvings, so the results stay within float rounding of the direct ones (the parity
//! tests hold them to the same tolerance).
//!
//! The input transform covers a band of patch rows at a time, across the images of the
//! batch, so that `V` stays a few MiB. The rest is split into tasks of [`CO_BLOCK`]
//! output channels by a group of patch rows. Each task transforms its block of filters
//! into a buffer of its thread (the filters are never kept transformed, which would
//! take 16/9 of their memory), then, [`TILE_CHUNK`] patches at a time, runs its 16
//! GEMMs into another and writes its outputs. Both buffers are column-major, the layout
//! in which the `gemm` crate's kernels run fastest on these small products (about
//! 105 GFLOP/s per core for 64 x 49 x 512 where a row-major result reaches 80; the
//! `gemm` crate turns a row-major result into a transposed product). Against one
//! transform of all filters and GEMMs over all output channels, this took the 3x3
//! layers of Darknet53 at 208, 104 and 52 pixels from 18, 11 and 9 ms to 10, 6 and 5 ms
//! (2 threads).

// GEMMs through the `gemm` crate's raw-pointer entry point, and parallel tasks writing
// disjoint parts of shared buffers.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::mem::MaybeUninit;

use crate::conv_fast::{matmul_into, parallel_for, Epilogue, SharedPtr};

/// Floats of `V` per band of patch rows (8 MiB).
const BAND_BUDGET: usize = 2 * 1024 * 1024;

/// Output channels per task: the row block of its GEMMs.
const CO_BLOCK: usize = 64;

/// Patches per chunk of a task, rounded to whole patch rows (at least one): the column
/// block of its GEMMs.
const TILE_CHUNK: usize = 192;

/// Input channels per step of a task's GEMMs: its transformed filters, (16, K_CHUNK,
/// CO_BLOCK) floats (512 KiB), stay in the core's L2 cache between their transform and
/// their GEMMs.
const K_CHUNK: usize = 128;

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
}

impl Conv3x3 {
    /// Patch rows and columns per image: `ceil(H / 2)`, `ceil(W / 2)`.
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
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
        let (th, tw) = self.tiles();
        // Patch rows are numbered across the batch: row r is row r % th of image r / th.
        let all_rows = self.b * th;
        let rows_per_band = (BAND_BUDGET / (16 * cin * tw).max(1)).clamp(1, all_rows);
        let rows_per_chunk = (TILE_CHUNK / tw).clamp(1, rows_per_band);
        // Left uninitialised: each band writes all of V before the GEMMs read it.
        let mut v = uninit(16 * cin * rows_per_band * tw);
        let vp = SharedPtr(v.as_mut_ptr().cast::<f32>());
        let out = SharedPtr(out.as_mut_ptr().cast::<f32>());
        let blocks = cout.div_ceil(CO_BLOCK);
        let mut r0 = 0;
        while r0 < all_rows {
            let rows = rows_per_band.min(all_rows - r0);
            // V: (16, C_in, t), row-major.
            let t = rows * tw;
            self.transform_input(x, r0, rows, vp, threads);
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
                    let ulen = 16 * plane_len(K_CHUNK.min(cin), nc);
                    let mlen = 16 * rows_per_chunk * tw * nc;
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
                        for ci0 in (0..cin).step_by(K_CHUNK) {
                            let kc = K_CHUNK.min(cin - ci0);
                            // U: (16, kc, nc), column-major blocks U[ξ] (nc x kc).
                            let u = &mut u[..16 * plane_len(kc, nc)];
                            if in_u != Some(ci0) {
                                transform_filters(w, cin, (co0, nc), (ci0, kc), u);
                                in_u = Some(ci0);
                            }
                            // M[ξ] (nc x nt) (+)= U[ξ] (nc x kc) · V[ξ][ci0.., j0..]
                            // (kc x nt), M column-major: (16, nt, nc).
                            for xi in 0..16 {
                                // SAFETY: m and u are this thread's; V is only read, and
                                // its columns j0..j0 + nt of rows ξ * C_in + ci0.. lie in
                                // the band.
                                unsafe {
                                    matmul_into(
                                        (nc, nt, kc),
                                        (m.as_mut_ptr().add(xi * nt * nc), 1, nc),
                                        (u.as_ptr().add(xi * plane_len(kc, nc)), 1, nc),
                                        (vp.get().add((xi * cin + ci0) * t + j0), t, 1),
                                        ci0 > 0,
                                    )
                                }
                            }
                        }
                        let m = &m[..16 * nt * nc];
                        self.transform_output(m, co0, nc, r0 + rr0, nr, bias, act, out);
                    }
                });
            });
            r0 += rows;
        }
    }

    /// `V[ξ][ci][t] = (Bᵀ d B)[ξ]` for the patches of patch rows `r0..r0 + rows` (across
    /// the batch) of `x` (B, C_in, H, W); `vp` points to V, (16, C_in, rows * tw), all of
    /// which is written.
    fn transform_input(
        &self,
        x: &[f32],
        r0: usize,
        rows: usize,
        vp: SharedPtr<f32>,
        threads: usize,
    ) {
        let (h, w, cin) = (self.h, self.w, self.cin);
        let (th, tw) = self.tiles();
        let t = rows * tw;
        parallel_for(threads, cin, |ci| {
            // Input row iy with a zero column on the left (padding) and zeros past W:
            // padded[c] = input[c - 1].
            let padded_len = 2 * tw + 2;
            let mut buf = vec![0f32; 4 * padded_len + 8 * (tw + 1)];
            let (rows_buf, eo) = buf.split_at_mut(4 * padded_len);
            for r in 0..rows {
                let (img, ty) = ((r0 + r) / th, (r0 + r) % th);
                let plane = &x[(img * cin + ci) * h * w..][..h * w];
                let mut p: [&mut [f32]; 4] = {
                    let mut it = rows_buf.chunks_exact_mut(padded_len);
                    std::array::from_fn(|_| it.next().expect("4 rows"))
                };
                for (k, row) in p.iter_mut().enumerate() {
                    // Patch row k is input row 2ty - 1 + k.
                    row.fill(0.0);
                    if let Some(iy) = (2 * ty + k).checked_sub(1).filter(|&iy| iy < h) {
                        row[1..1 + w].copy_from_slice(&plane[iy * w..(iy + 1) * w]);
                    }
                }
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
                // columns of a row, patch tx has columns pe[tx], po[tx], pe[tx+1],
                // po[tx+1].
                let (pe, po) = eo.split_at_mut(4 * (tw + 1));
                for (i, e) in p.iter().enumerate() {
                    let pe = &mut pe[i * (tw + 1)..(i + 1) * (tw + 1)];
                    let po = &mut po[i * (tw + 1)..(i + 1) * (tw + 1)];
                    for (k, pair) in e.chunks_exact(2).enumerate() {
                        pe[k] = pair[0];
                        po[k] = pair[1];
                    }
                    let base = r * tw;
                    // SAFETY: task ci alone writes V[*][ci]; row r's patches.
                    let row = |j: usize| unsafe {
                        std::slice::from_raw_parts_mut(
                            vp.get().add(((i * 4 + j) * cin + ci) * t + base),
                            tw,
                        )
                    };
                    let (v0, v1, v2, v3) = (row(0), row(1), row(2), row(3));
                    for k in 0..tw {
                        let (c0, c1, c2, c3) = (pe[k], po[k], pe[k + 1], po[k + 1]);
                        v0[k] = c0 - c2;
                        v1[k] = c1 + c2;
                        v2[k] = c2 - c1;
                        v3[k] = c1 - c3;
                    }
                }
            }
        });
    }

    /// `out = act(Aᵀ M A + bias)` for output channels `co0..co0 + nc` of patch rows
    /// `r0..r0 + nr` (across the batch): `m` is (16, nr * tw, nc), `out` the whole
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
        let nt = nr * tw;
        for r in 0..nr {
            let (img, ty) = ((r0 + r) / th, (r0 + r) % th);
            let oy = 2 * ty;
            // Whether the patch row's second output row, and the last patch's second
            // column, are inside the image (not with odd H or W).
            let (row1, col1) = (oy + 1 < h, 2 * tw <= w);
            // Output rows oy (and oy + 1) of channel co0 + c start at row(c) (+ w).
            let row = |c: usize| {
                out.get()
                    .wrapping_add(((img * cout + co0 + c) * h + oy) * w)
            };
            // Across the channels (contiguous in M), patch by patch.
            for tx in 0..tw {
                let j = r * tw + tx;
                let ms: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * nt + j) * nc..][..nc]);
                let col1 = col1 || tx + 1 < tw;
                // Channel c of all 16 rows at once: an index reads clearest here.
                #[allow(clippy::needless_range_loop)]
                for c in 0..nc {
                    // Aᵀ over the rows i of ξ = 4i + j: s0j = m0j + m1j + m2j,
                    // s1j = m1j - m2j - m3j; then A over the columns j.
                    let s0: [f32; 4] =
                        std::array::from_fn(|j| ms[j][c] + ms[4 + j][c] + ms[8 + j][c]);
                    let s1: [f32; 4] =
                        std::array::from_fn(|j| ms[4 + j][c] - ms[8 + j][c] - ms[12 + j][c]);
                    let p = row(c).wrapping_add(2 * tx);
                    // SAFETY: outputs (oy, 2tx) to (oy + 1, 2tx + 1) of channel co0 + c
                    // where inside the image; this task alone writes them.
                    unsafe {
                        *p = s0[0] + s0[1] + s0[2];
                        if col1 {
                            *p.add(1) = s0[1] - s0[2] - s0[3];
                        }
                        if row1 {
                            *p.add(w) = s1[0] + s1[1] + s1[2];
                            if col1 {
                                *p.add(w + 1) = s1[1] - s1[2] - s1[3];
                            }
                        }
                    }
                }
            }
            for c in 0..nc {
                // SAFETY: the rows just written in full, this task's alone.
                let rows =
                    unsafe { std::slice::from_raw_parts_mut(row(c), (1 + row1 as usize) * w) };
                act.apply(rows, bias[co0 + c]);
            }
        }
    }
}

/// Vec of `len` floats left uninitialised (every user writes them all before reading).
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// Floats from one plane U[ξ] of the transformed filters, (kc, nc), to the next: a
/// cache line more than the plane, so that the 16 rows written together do not all
/// fall in one set of the L1 cache (planes a multiple of 4 KiB long would).
fn plane_len(kc: usize, nc: usize) -> usize {
    kc * nc + 16
}

/// Output channels transformed together by [`transform_filters`], one per SIMD lane.
const LANES: usize = 16;

/// `U[ξ][ci - ci_first][c] = (G g Gᵀ)[ξ]` for the filters g of output channels
/// `co0..co0 + nc` and input channels `ci_first..ci_first + kc` of `w`
/// (C_out, C_in, 3, 3): `u` holds the 16 planes (kc, nc), [`plane_len`] apart.
///
/// [`LANES`] output channels at a time, so that the arithmetic vectorises across them
/// and U is written in whole rows of `LANES` (a scatter of each filter's 16 values into
/// the 16 planes of U took longer than the GEMMs). On x86-64 CPUs with AVX-512, whole
/// 16 x 16 blocks go to `winograd_avx512` instead.
fn transform_filters(
    w: &[f32],
    cin: usize,
    (co0, nc): (usize, usize),
    (ci_first, kc): (usize, usize),
    u: &mut [f32],
) {
    // Input channels per staging block: taps of LANES x CI_BLOCK filters, 4.5 KiB.
    const CI_BLOCK: usize = 8;
    let mut taps = [[[0f32; LANES]; 9]; CI_BLOCK];
    let mut t = [[0f32; LANES]; 16];
    // U[ξ]: (kc, nc) each.
    let mut planes: [&mut [f32]; 16] = {
        let mut it = u.chunks_exact_mut(plane_len(kc, nc));
        std::array::from_fn(|_| it.next().expect("16 planes"))
    };
    for c0 in (0..nc).step_by(LANES) {
        let lanes = LANES.min(nc - c0);
        // Input channels from here on take the portable path.
        let portable_from = if lanes == LANES {
            simd_blocks(w, cin, (co0 + c0, ci_first, kc), &mut planes, (nc, c0))
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
                filter_transform(g, &mut t);
                let at = (row0 + i) * nc + c0;
                for (plane, row) in planes.iter_mut().zip(&t) {
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
/// from `c` (column `at` of the planes) and input channels `ci_first..ci_first + kc`,
/// through `winograd_avx512` where the CPU has AVX-512: how many of the input channels
/// are done (0 elsewhere).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn simd_blocks(
    w: &[f32],
    cin: usize,
    (c, ci_first, kc): (usize, usize, usize),
    planes: &mut [&mut [f32]; 16],
    (nc, at): (usize, usize),
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::winograd_avx512::available() {
        let done = kc - kc % 16;
        for row0 in (0..done).step_by(16) {
            // SAFETY: the CPU has AVX-512F (checked); the block's bounds are asserted
            // inside.
            unsafe {
                crate::winograd_avx512::transform_block(
                    w,
                    cin,
                    (c, ci_first + row0),
                    planes,
                    (row0, nc, at),
                )
            };
        }
        return done;
    }
    0
}

/// `G g Gᵀ` of [`LANES`] 3x3 filters at once: `g[k][l]` is tap k (row-major) of filter
/// l, `u[ξ][l]` its transformed value ξ (row-major 4x4).
#[inline(always)]
fn filter_transform(g: &[[f32; LANES]; 9], u: &mut [[f32; LANES]; 16]) {
    // Each step is a loop over the lanes, which the compiler vectorises.
    #[inline(always)]
    fn lanes(f: impl Fn(usize) -> f32) -> [f32; LANES] {
        std::array::from_fn(f)
    }
    // G g (4x3): rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of the filter rows.
    let mut gg = [[[0f32; LANES]; 3]; 4];
    for k in 0..3 {
        let (g0, g1, g2) = (&g[k], &g[3 + k], &g[6 + k]);
        gg[0][k] = *g0;
        gg[1][k] = lanes(|l| 0.5 * (g0[l] + g1[l] + g2[l]));
        gg[2][k] = lanes(|l| 0.5 * (g0[l] - g1[l] + g2[l]));
        gg[3][k] = *g2;
    }
    // (G g) Gᵀ (4x4): the same combination of the columns of each row.
    for (i, [a, b, d]) in gg.iter().enumerate() {
        u[4 * i] = *a;
        u[4 * i + 1] = lanes(|l| 0.5 * (a[l] + b[l] + d[l]));
        u[4 * i + 2] = lanes(|l| 0.5 * (a[l] - b[l] + d[l]));
        u[4 * i + 3] = *d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use test_support::{max_abs, max_abs_diff};

    /// The filter transform against G g Gᵀ by plain matrix products, over a block
    /// of output channels with a short last group of lanes and a range of input
    /// channels that starts inside the filters and is not a multiple of 16 long (on
    /// AVX-512 CPUs: whole 16 x 16 blocks through `winograd_avx512`, the rest through
    /// the portable code).
    #[test]
    fn filter_transform_matches_matrix_products() {
        let (cout, cin, co0, nc, ci_first, kc) = (50, 37, 7, 40, 3, 33);
        let w: Vec<f32> = (0..cout * cin * 9)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let mut u = vec![f32::NAN; 16 * plane_len(kc, nc)];
        transform_filters(&w, cin, (co0, nc), (ci_first, kc), &mut u);
        let gm = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        for c in 0..nc {
            for ci in ci_first..ci_first + kc {
                let g = &w[((co0 + c) * cin + ci) * 9..][..9];
                for i in 0..4 {
                    for j in 0..4 {
                        // (G g Gᵀ)[i][j] = sum_ab G[i][a] g[a][b] G[j][b].
                        let mut want = 0f64;
                        for a in 0..3 {
                            for b in 0..3 {
                                want += gm[i][a] * g[3 * a + b] as f64 * gm[j][b];
                            }
                        }
                        let got = u[(4 * i + j) * plane_len(kc, nc) + (ci - ci_first) * nc + c];
                        assert!(
                            (got as f64 - want).abs() < 1e-5,
                            "c {c} ci {ci} ξ {}: {got} vs {want}",
                            4 * i + j
                        );
                    }
                }
            }
        }
    }

    /// Winograd against candle's direct convolution (plus bias and LeakyReLU), on odd
    /// and degenerate sides, batch 2, one and three threads, one band and several.
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
            // 16 * c_in * tw floats of V per patch row: 17 rows per band, 2 bands;
            // 19 output-channel blocks, the last one short.
            (1, 500, 40, 30, 600),
            // Bands that cross from one image to the next.
            (3, 500, 30, 29, 70),
        ];
        for (b, cin, h, w, cout) in cases {
            let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
            let y = x.conv2d(&wt, 1, 1, 1, 1).unwrap();
            let y = y
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            let scale = max_abs(&y);
            let want = y.maximum(&(&y * 0.1).unwrap()).unwrap();
            let (xv, wv, bv) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                bias.to_vec1::<f32>().unwrap(),
            );
            let conv = Conv3x3 { b, cin, cout, h, w };
            for threads in [1, 3] {
                // NaN first: an element left unwritten would show.
                let mut out = vec![MaybeUninit::new(f32::NAN); b * cout * h * w];
                conv.run(&xv, &wv, &bv, Epilogue::Leaky(0.1), &mut out, threads);
                let out: Vec<f32> = out
                    .into_iter()
                    .map(|v| unsafe { v.assume_init() })
                    .collect();
                let got = Tensor::from_vec(out, (b, cout, h, w), &dev).unwrap();
                let d = max_abs_diff(&got, &want) / scale;
                assert!(
                    d < 1e-5,
                    "{b}x{cin}x{h}x{w} -> {cout}, {threads} threads: {d}"
                );
            }
        }
    }
}
