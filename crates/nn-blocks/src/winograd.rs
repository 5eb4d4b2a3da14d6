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
//! The filters are transformed at every call rather than kept transformed (which would
//! take 16/9 of their memory), and the patches are processed a band of rows at a time
//! so that `V` and `M` stay a few MiB.

// GEMMs through the `gemm` crate's raw-pointer entry point, and parallel tasks writing
// disjoint parts of shared buffers.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use crate::conv_fast::{matmul_into, parallel_for, Epilogue, SharedPtr};

/// Floats of `V` plus `M` per band of patch rows (8 MiB).
const BAND_BUDGET: usize = 2 * 1024 * 1024;

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
    /// Patch rows and columns: `ceil(H / 2)`, `ceil(W / 2)`.
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
        let u = transform_filters(w, cout, cin, threads);
        let (th, tw) = self.tiles();
        // Bands of whole patch rows, V (16, C_in, band) and M (16, C_out, band) within
        // the budget.
        let rows_per_band = (BAND_BUDGET / (16 * (cin + cout) * tw).max(1)).clamp(1, th);
        // Left uninitialised: each band writes all of V before the GEMMs read it, and
        // the GEMMs (beta = 0) all of M before the output transform reads it.
        let mut v = uninit(16 * cin * rows_per_band * tw);
        let mut m = uninit(16 * cout * rows_per_band * tw);
        let out = SharedPtr(out.as_mut_ptr().cast::<f32>());
        for img in 0..self.b {
            let x = &x[img * cin * h * wd..(img + 1) * cin * h * wd];
            let mut ty0 = 0;
            while ty0 < th {
                let rows = rows_per_band.min(th - ty0);
                let t = rows * tw;
                let (vp, mp) = (
                    SharedPtr(v.as_mut_ptr().cast::<f32>()),
                    SharedPtr(m.as_mut_ptr().cast::<f32>()),
                );
                self.transform_input(x, ty0, rows, vp, threads);
                // 16 GEMMs: M[ξ] (C_out x t) = U[ξ] (C_out x C_in) · V[ξ] (C_in x t).
                parallel_for(threads, 16, |xi| {
                    // SAFETY: task ξ alone writes M[ξ]; U and V are only read.
                    // U is (C_out, 16, C_in): U[ξ] has row stride 16 * C_in.
                    unsafe {
                        matmul_into(
                            (cout, t, cin),
                            (mp.get().add(xi * cout * t), t),
                            (u.as_ptr().add(xi * cin).cast::<f32>(), 16 * cin),
                            (vp.get().add(xi * cin * t), t),
                        )
                    }
                });
                // SAFETY: image img's output; the band's rows are written by
                // transform_output alone.
                let dst = unsafe { out.get().add(img * cout * h * wd) };
                // SAFETY: the GEMMs wrote all of M[..16 * C_out * t].
                let m = unsafe { std::slice::from_raw_parts(mp.get(), 16 * cout * t) };
                self.transform_output(m, ty0, rows, bias, act, dst, threads);
                ty0 += rows;
            }
        }
    }

    /// `V[ξ][ci][t] = (Bᵀ d B)[ξ]` for the patches of patch rows `ty0..ty0 + rows` of
    /// one image `x` (C_in, H, W); `vp` points to V, (16, C_in, rows * tw), all of which
    /// is written.
    fn transform_input(
        &self,
        x: &[f32],
        ty0: usize,
        rows: usize,
        vp: SharedPtr<f32>,
        threads: usize,
    ) {
        let (h, w, cin) = (self.h, self.w, self.cin);
        let (_, tw) = self.tiles();
        let t = rows * tw;
        parallel_for(threads, cin, |ci| {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            // Input row iy with a zero column on the left (padding) and zeros past W:
            // padded[c] = input[c - 1].
            let padded_len = 2 * tw + 2;
            let mut buf = vec![0f32; 4 * padded_len + 8 * (tw + 1)];
            let (rows_buf, eo) = buf.split_at_mut(4 * padded_len);
            for r in 0..rows {
                let ty = ty0 + r;
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

    /// `out = act(Aᵀ M A + bias)` for patch rows `ty0..ty0 + rows`: `m` is
    /// (16, C_out, rows * tw), `dst` one image's output (C_out, H, W).
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        m: &[f32],
        ty0: usize,
        rows: usize,
        bias: &[f32],
        act: Epilogue,
        dst: *mut f32,
        threads: usize,
    ) {
        let (h, w, cout) = (self.h, self.w, self.cout);
        let (_, tw) = self.tiles();
        let t = rows * tw;
        let dst = SharedPtr(dst);
        parallel_for(threads, cout, |co| {
            let mut s = vec![0f32; 8 * tw];
            for r in 0..rows {
                let ty = ty0 + r;
                let mrow = |xi: usize| &m[(xi * cout + co) * t + r * tw..][..tw];
                // Aᵀ over the rows i: s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j.
                let (s0, s1) = s.split_at_mut(4 * tw);
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
                    let (a, b) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                    for k in 0..tw {
                        a[k] = m0[k] + m1[k] + m2[k];
                        b[k] = m1[k] - m2[k] - m3[k];
                    }
                }
                // A over the columns j, into output rows 2ty and 2ty + 1.
                for (dy, sr) in [&*s0, &*s1].into_iter().enumerate() {
                    let oy = 2 * ty + dy;
                    if oy >= h {
                        continue;
                    }
                    // SAFETY: task co alone writes row oy of channel co.
                    let orow = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add((co * h + oy) * w), w)
                    };
                    let (c0, c1, c2, c3) = (
                        &sr[..tw],
                        &sr[tw..2 * tw],
                        &sr[2 * tw..3 * tw],
                        &sr[3 * tw..],
                    );
                    for (k, pair) in orow.chunks_mut(2).enumerate() {
                        pair[0] = c0[k] + c1[k] + c2[k];
                        if let Some(o) = pair.get_mut(1) {
                            *o = c1[k] - c2[k] - c3[k];
                        }
                    }
                    act.apply(orow, bias[co]);
                }
            }
        });
    }
}

/// Vec of `len` floats left uninitialised (every user writes them all before reading).
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// `U[co][ξ][ci] = (G g Gᵀ)[ξ]` for the filters `w` (C_out, C_in, 3, 3): laid out
/// (C_out, 16, C_in) so that each output channel's 16 rows are written together
/// (U[ξ] is then a matrix of row stride 16 * C_in).
fn transform_filters(w: &[f32], cout: usize, cin: usize, threads: usize) -> Vec<MaybeUninit<f32>> {
    let mut u = uninit(16 * cout * cin);
    let up = SharedPtr(u.as_mut_ptr().cast::<f32>());
    parallel_for(threads, cout, |co| {
        // SAFETY: task co alone writes U[co], 16 * C_in floats, all of them.
        let uc = unsafe { std::slice::from_raw_parts_mut(up.get().add(co * 16 * cin), 16 * cin) };
        for ci in 0..cin {
            let g = &w[(co * cin + ci) * 9..][..9];
            // G g: 4x3.
            let mut gg = [[0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                gg[0][c] = g0;
                gg[1][c] = 0.5 * (g0 + g1 + g2);
                gg[2][c] = 0.5 * (g0 - g1 + g2);
                gg[3][c] = g2;
            }
            // (G g) Gᵀ: 4x4.
            for (i, row) in gg.iter().enumerate() {
                let (a, b, c) = (row[0], row[1], row[2]);
                let vals = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (j, v) in vals.into_iter().enumerate() {
                    uc[(i * 4 + j) * cin + ci] = v;
                }
            }
        }
    });
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use test_support::{max_abs, max_abs_diff};

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
            // 16 * (c_in + c_out) * tw floats per patch row: 7 rows per band, 3 bands.
            (1, 500, 40, 30, 600),
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
