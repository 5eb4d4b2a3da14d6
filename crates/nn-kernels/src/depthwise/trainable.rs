//! Depthwise 2-D convolution (`groups == channels`, one `k x k` filter per channel).
//!
//! candle 0.11 runs a grouped convolution as one small convolution per group, which is
//! slow for MobileNetV2's depthwise layers. This op runs
//! them as a row-wise kernel on the CPU (vectorisable inner loop over output columns,
//! candle's worker pool over the `B x C` planes; rayon in the backward pass), with a
//! backward pass for training. Other devices and dtypes fall back to candle's grouped
//! convolution.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::pool::for_each_chunk_mut;
use crate::storage::contiguous_f32;

/// Geometry shared by the forward and backward kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn out_len(&self, n: usize, k: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(k) / self.stride + 1
    }

    /// The output columns `lo..hi` whose input column `ox * s + kx - p` lies in `0..w`.
    fn valid_cols(&self, kx: usize, w: usize, ow: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        let hi = if w + p > kx {
            ((w + p - kx - 1) / s + 1).min(ow)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize, h: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.padding)
            .filter(|&iy| iy < h)
    }
}

/// Forward: `(B, C, H, W) * (C, 1, K, K) -> (B, C, OH, OW)`.
struct Forward(Geometry);

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c, h, w) = l1.shape().dims4()?;
        let (_, _, k, _) = l2.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "input")?;
        let weight = contiguous_f32(s2, l2, "weight")?;
        let (oh, ow) = (g.out_len(h, k), g.out_len(w, k));
        let mut out = vec![0f32; b * c * oh * ow];
        // On candle's worker pool, like the other inference kernels (see conv_fast).
        for_each_chunk_mut(&mut out, oh * ow, |plane, out| {
            let ch = plane % c;
            let x = &x[plane * h * w..(plane + 1) * h * w];
            let wk = &weight[ch * k * k..(ch + 1) * k * k];
            for oy in 0..oh {
                let orow = &mut out[oy * ow..(oy + 1) * ow];
                for ky in 0..k {
                    let Some(iy) = g.input_row(oy, ky, h) else {
                        continue;
                    };
                    let irow = &x[iy * w..(iy + 1) * w];
                    for kx in 0..k {
                        let wv = wk[ky * k + kx];
                        let (lo, hi) = g.valid_cols(kx, w, ow);
                        if lo >= hi {
                            continue;
                        }
                        let start = lo * g.stride + kx - g.padding;
                        if g.stride == 1 {
                            let src = &irow[start..start + (hi - lo)];
                            for (o, i) in orow[lo..hi].iter_mut().zip(src) {
                                *o += wv * i;
                            }
                        } else {
                            for (j, o) in orow[lo..hi].iter_mut().enumerate() {
                                *o += wv * irow[start + j * g.stride];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, w) = x.dims4()?;
        let k = weight.dim(2)?;
        let grad = grad.contiguous()?;
        let grad_x =
            grad.apply_op2_no_bwd(&weight.contiguous()?, &GradInput { g: self.0, h, w })?;
        let grad_w = grad.apply_op2_no_bwd(&x.contiguous()?, &GradWeight { g: self.0, k })?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// Gradient w.r.t. the input: scatters `grad (B, C, OH, OW)` through the filters.
struct GradInput {
    g: Geometry,
    h: usize,
    w: usize,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, h, w) = (self.g, self.h, self.w);
        let (b, c, oh, ow) = l1.shape().dims4()?;
        let (_, _, k, _) = l2.shape().dims4()?;
        let gy = contiguous_f32(s1, l1, "gradient")?;
        let weight = contiguous_f32(s2, l2, "weight")?;
        let mut gx = vec![0f32; b * c * h * w];
        gx.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, gx)| {
                let ch = plane % c;
                let gy = &gy[plane * oh * ow..(plane + 1) * oh * ow];
                let wk = &weight[ch * k * k..(ch + 1) * k * k];
                for oy in 0..oh {
                    let grow = &gy[oy * ow..(oy + 1) * ow];
                    for ky in 0..k {
                        let Some(iy) = g.input_row(oy, ky, h) else {
                            continue;
                        };
                        let xrow = &mut gx[iy * w..(iy + 1) * w];
                        for kx in 0..k {
                            let wv = wk[ky * k + kx];
                            let (lo, hi) = g.valid_cols(kx, w, ow);
                            for ox in lo..hi {
                                xrow[ox * g.stride + kx - g.padding] += wv * grow[ox];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(gx), Shape::from((b, c, h, w))))
    }
}

/// Gradient w.r.t. the filters: correlates `grad (B, C, OH, OW)` with the input.
struct GradWeight {
    g: Geometry,
    k: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, k) = (self.g, self.k);
        let (b, c, oh, ow) = l1.shape().dims4()?;
        let (_, _, h, w) = l2.shape().dims4()?;
        let gy = contiguous_f32(s1, l1, "gradient")?;
        let x = contiguous_f32(s2, l2, "input")?;
        let mut gw = vec![0f32; c * k * k];
        gw.par_chunks_mut(k * k).enumerate().for_each(|(ch, gw)| {
            for bi in 0..b {
                let plane = bi * c + ch;
                let gy = &gy[plane * oh * ow..(plane + 1) * oh * ow];
                let x = &x[plane * h * w..(plane + 1) * h * w];
                for oy in 0..oh {
                    let grow = &gy[oy * ow..(oy + 1) * ow];
                    for ky in 0..k {
                        let Some(iy) = g.input_row(oy, ky, h) else {
                            continue;
                        };
                        let xrow = &x[iy * w..(iy + 1) * w];
                        for kx in 0..k {
                            let (lo, hi) = g.valid_cols(kx, w, ow);
                            let mut acc = 0f32;
                            for ox in lo..hi {
                                acc += grow[ox] * xrow[ox * g.stride + kx - g.padding];
                            }
                            gw[ky * k + kx] += acc;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gw), Shape::from((c, 1, k, k))))
    }
}

/// Depthwise convolution of `x (B, C, H, W)` with `weight (C, 1, K, K)`, no bias.
///
/// Uses the row-wise CPU kernel for f32 tensors on the CPU and candle's grouped
/// convolution elsewhere; both have a backward pass.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 || kh != kw {
        candle_core::bail!(
            "depthwise conv: weight {:?} does not fit an input with {c} channels (expected ({c}, 1, K, K))",
            weight.dims()
        );
    }
    if stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!(
            "depthwise conv: kernel {kh}x{kw} with padding {padding} does not fit {h}x{w}"
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, Forward(Geometry { stride, padding }))
    } else {
        x.conv2d(weight, padding, stride, 1, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use test_support::max_abs_diff;

    fn inputs(b: usize, c: usize, h: usize, w: usize, k: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (b, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1., (c, 1, k, k), &dev).unwrap();
        (x, wt)
    }

    #[test]
    fn matches_candle_grouped_conv() {
        for &(b, c, h, w, k, stride, padding) in &[
            (1, 1, 5, 5, 3, 1, 1),
            (2, 5, 7, 9, 3, 1, 1),
            (2, 5, 7, 9, 3, 2, 1),
            (1, 3, 8, 6, 3, 2, 1),
            (3, 4, 11, 10, 5, 1, 2),
            (1, 2, 9, 7, 5, 2, 2),
            (2, 3, 6, 6, 3, 1, 0),
            (1, 3, 7, 5, 3, 2, 0),
            (1, 2, 4, 4, 1, 1, 0),
        ] {
            let (x, wt) = inputs(b, c, h, w, k);
            let ours = depthwise_conv2d(&x, &wt, stride, padding).unwrap();
            let reference = x.conv2d(&wt, padding, stride, 1, c).unwrap();
            assert_eq!(
                ours.dims(),
                reference.dims(),
                "{b} {c} {h} {w} {k} s{stride} p{padding}"
            );
            let d = max_abs_diff(&ours, &reference);
            assert!(d < 1e-5, "{b} {c} {h} {w} {k} s{stride} p{padding}: {d}");
        }
    }

    #[test]
    fn accepts_non_contiguous_input() {
        let (x, wt) = inputs(2, 4, 6, 9, 3);
        // (B, C, W, H) transposed back to (B, C, H, W): a strided view.
        let xt = x
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(!xt.is_contiguous());
        let ours = depthwise_conv2d(&xt, &wt, 2, 1).unwrap();
        let reference = x.conv2d(&wt, 1, 2, 1, 4).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-5);
    }

    /// Gradients of `sum(conv(x, w) * upstream)` from our backward pass.
    fn our_grads(
        x: &Tensor,
        wt: &Tensor,
        up: &Tensor,
        stride: usize,
        padding: usize,
        ours: bool,
    ) -> (Tensor, Tensor) {
        let xv = Var::from_tensor(x).unwrap();
        let wv = Var::from_tensor(wt).unwrap();
        let c = x.dim(1).unwrap();
        let y = if ours {
            depthwise_conv2d(xv.as_tensor(), wv.as_tensor(), stride, padding).unwrap()
        } else {
            xv.as_tensor()
                .conv2d(wv.as_tensor(), padding, stride, 1, c)
                .unwrap()
        };
        let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
        (
            g.get(xv.as_tensor()).unwrap().clone(),
            g.get(wv.as_tensor()).unwrap().clone(),
        )
    }

    /// The same gradients by direct summation over every (output, tap) pair.
    fn naive_grads(
        x: &Tensor,
        wt: &Tensor,
        up: &Tensor,
        stride: usize,
        padding: usize,
    ) -> (Tensor, Tensor) {
        let (b, c, h, w) = x.dims4().unwrap();
        let (_, _, oh, ow) = up.dims4().unwrap();
        let k = wt.dim(2).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ws: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
        let us: Vec<f32> = up.flatten_all().unwrap().to_vec1().unwrap();
        let mut gx = vec![0f32; xs.len()];
        let mut gw = vec![0f32; ws.len()];
        for bi in 0..b {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let u = us[((bi * c + ch) * oh + oy) * ow + ox];
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((bi * c + ch) * h + iy as usize) * w + ix as usize;
                                let wi = (ch * k + ky) * k + kx;
                                gx[xi] += u * ws[wi];
                                gw[wi] += u * xs[xi];
                            }
                        }
                    }
                }
            }
        }
        let dev = &Device::Cpu;
        (
            Tensor::from_vec(gx, x.dims(), dev).unwrap(),
            Tensor::from_vec(gw, wt.dims(), dev).unwrap(),
        )
    }

    #[test]
    fn gradients_match_direct_summation() {
        for &(b, c, h, w, k, stride, padding) in &[
            (2, 3, 7, 8, 3, 1, 1),
            (2, 3, 7, 8, 3, 2, 1),
            (1, 2, 9, 7, 3, 2, 0),
            (2, 2, 9, 10, 5, 2, 2),
        ] {
            let (x, wt) = inputs(b, c, h, w, k);
            let out = depthwise_conv2d(&x, &wt, stride, padding).unwrap();
            let up = Tensor::randn(0f32, 1., out.dims(), &Device::Cpu).unwrap();
            let (gx, gw) = our_grads(&x, &wt, &up, stride, padding, true);
            let (rx, rw) = naive_grads(&x, &wt, &up, stride, padding);
            assert!(
                max_abs_diff(&gx, &rx) < 1e-4,
                "grad x s{stride} p{padding}: {}",
                max_abs_diff(&gx, &rx)
            );
            assert!(
                max_abs_diff(&gw, &rw) < 1e-3,
                "grad w s{stride} p{padding}: {}",
                max_abs_diff(&gw, &rw)
            );
        }
    }

    #[test]
    fn gradients_match_candle_backward() {
        // candle's own grouped-conv backward (where its conv-transpose shapes work out).
        for &(stride, padding) in &[(1, 1), (2, 1)] {
            let (x, wt) = inputs(2, 3, 8, 8, 3);
            let out = depthwise_conv2d(&x, &wt, stride, padding).unwrap();
            let up = Tensor::randn(0f32, 1., out.dims(), &Device::Cpu).unwrap();
            let (gx, gw) = our_grads(&x, &wt, &up, stride, padding, true);
            let (rx, rw) = our_grads(&x, &wt, &up, stride, padding, false);
            assert!(
                max_abs_diff(&gx, &rx) < 1e-4,
                "grad x s{stride} p{padding}: {}",
                max_abs_diff(&gx, &rx)
            );
            assert!(
                max_abs_diff(&gw, &rw) < 1e-3,
                "grad w s{stride} p{padding}: {}",
                max_abs_diff(&gw, &rw)
            );
        }
    }

    #[test]
    fn refuses_mismatched_weights() {
        let (x, _) = inputs(1, 3, 5, 5, 3);
        let bad = Tensor::zeros((4, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(depthwise_conv2d(&x, &bad, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("3 channels"));
    }
}
