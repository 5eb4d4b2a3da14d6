//! The fused 3x3 depthwise convolution of inference: the nine taps summed in registers,
//! the bias and the activation applied in the same pass.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use multiversion::multiversion;

use super::trainable::depthwise_conv2d;
use crate::elementwise::bias_act_owned;
use crate::epilogue::Epilogue;
use crate::policy::KernelPolicy;
use crate::pool::for_each_chunk_mut;
use crate::storage::{bias_f32, contiguous_f32};

/// One channel of a 3x3 depthwise convolution: `x` (H, W) into `out` (OH, OW), row by
/// row. Also compiled for AVX-512 and picked at run time (16 lanes where the baseline
/// x86-64 build has SSE2's 4): a third fewer CPU samples in MobileNetV2's depthwise
/// layers.
#[multiversion(targets("x86_64+avx512f"))]
fn depthwise3x3_plane(
    x: &[f32],
    (h, w): (usize, usize),
    wk: &[f32; 9],
    bias: f32,
    s: usize,
    act: Epilogue,
    out: &mut [f32],
) {
    let ow = (w - 1) / s + 1;
    let mut scratch = vec![0f32; if s == 2 { 2 * (w / 2 + 1) } else { 0 }];
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        let row = |ky: usize| {
            (oy * s + ky)
                .checked_sub(1)
                .filter(|&iy| iy < h)
                .map(|iy| &x[iy * w..(iy + 1) * w])
        };
        let rows = [row(0), row(1), row(2)];
        depthwise3x3_row(rows, wk, bias, s, act, orow, &mut scratch);
    }
}

/// Output row `orow` (OW) of a 3x3 depthwise convolution with padding 1 and stride
/// `s` (1 or 2) from the input rows `rows[ky]` (W each; `None` above or below the
/// image), `bias` and the activation applied. `scratch` holds 2 * (W / 2 + 1) floats
/// for the stride-2 deinterleave.
#[inline(always)]
fn depthwise3x3_row(
    rows: [Option<&[f32]>; 3],
    wk: &[f32; 9],
    bias: f32,
    s: usize,
    act: Epilogue,
    orow: &mut [f32],
    scratch: &mut [f32],
) {
    let ow = orow.len();
    orow.fill(bias);
    // Border outputs (any tap may fall outside): the general formula with checks.
    let tap = |r: &[f32], ix: isize| {
        if ix >= 0 && (ix as usize) < r.len() {
            r[ix as usize]
        } else {
            0.0
        }
    };
    let edge = |ox: usize, o: &mut f32| {
        for (ky, r) in rows.iter().enumerate() {
            if let Some(r) = r {
                for kx in 0..3 {
                    *o += wk[ky * 3 + kx] * tap(r, (ox * s + kx) as isize - 1);
                }
            }
        }
    };
    let w = rows.iter().flatten().next().map_or(0, |r| r.len());
    // Interior: 1 <= ox and ox * s + 1 < w.
    let hi = if w >= 2 { ((w - 2) / s + 1).min(ow) } else { 0 };
    let lo = 1.min(hi);
    for ox in (0..lo).chain(hi.max(lo)..ow) {
        edge(ox, &mut orow[ox]);
    }
    if hi > lo {
        let n = hi - lo;
        let o = &mut orow[lo..hi];
        for (ky, r) in rows.iter().enumerate() {
            let Some(r) = r else { continue };
            let (w0, w1, w2) = (wk[ky * 3], wk[ky * 3 + 1], wk[ky * 3 + 2]);
            if s == 1 {
                // in[ox - 1], in[ox], in[ox + 1] for ox in lo..hi.
                let (a, b, c) = (
                    &r[lo - 1..lo - 1 + n],
                    &r[lo..lo + n],
                    &r[lo + 1..lo + 1 + n],
                );
                for i in 0..n {
                    o[i] += w0 * a[i] + w1 * b[i] + w2 * c[i];
                }
            } else {
                // in[2ox - 1] = odd[ox - 1], in[2ox] = even[ox], in[2ox + 1] = odd[ox].
                let (even, odd) = scratch.split_at_mut(scratch.len() / 2);
                let pairs = r.chunks_exact(2);
                for ((e, d), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = p[0];
                    *d = p[1];
                }
                let (a, b, c) = (
                    &odd[lo - 1..lo - 1 + n],
                    &even[lo..lo + n],
                    &odd[lo..lo + n],
                );
                for i in 0..n {
                    o[i] += w0 * a[i] + w1 * b[i] + w2 * c[i];
                }
            }
        }
    }
    act.apply(orow, 0.0);
}

/// `act(depthwise_conv2d(x, weight) + bias)` for inference: `x` (B, C, H, W), `weight`
/// (C, 1, K, K), `bias` (C,).
///
/// 3x3 kernels with padding 1 and stride 1 or 2 (all of MobileNetV2's) run a fused
/// row kernel on the CPU with `f32` (the nine taps summed in registers, bias and
/// activation in the same pass); anything else runs [`super::depthwise_conv2d`] and
/// then the bias and activation.
pub fn depthwise_conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    epilogue: Epilogue,
    policy: KernelPolicy,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.dims() == [c, 1, 3, 3]
        && padding == 1
        && (stride == 1 || stride == 2)
        && h > 0
        && w > 0
        && policy.fast_conv;
    if !fused {
        let y = depthwise_conv2d(x, weight, stride, padding)?;
        return bias_act_owned(y, bias, epilogue, policy);
    }
    let bias = bias_f32(bias, c, x.device())?;
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias,
        &Depthwise3x3 {
            stride,
            act: epilogue,
        },
    )
}

/// The fused depthwise op: `(x, weight, bias) -> act(dwconv3x3(x, weight) + bias)`.
struct Depthwise3x3 {
    stride: usize,
    act: Epilogue,
}

impl CustomOp3 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        "depthwise3x3-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "input")?;
        let weight = contiguous_f32(s2, l2, "weight")?;
        let bias = contiguous_f32(s3, l3, "bias")?;
        let s = self.stride;
        // (B, C, OH, OW) with padding 1: OH = (H + 2 - 3) / s + 1.
        let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
        let mut out = vec![0f32; b * c * oh * ow];
        let act = self.act;
        for_each_chunk_mut(&mut out, oh * ow, |plane, out| {
            let ch = plane % c;
            let x = &x[plane * h * w..(plane + 1) * h * w];
            let mut wk = [0f32; 9];
            wk.copy_from_slice(&weight[ch * 9..ch * 9 + 9]);
            depthwise3x3_plane(x, (h, w), &wk, bias[ch], s, act, out);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elementwise::bias_act;
    use candle_core::Device;
    use test_support::{max_abs, max_abs_diff};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs(b).max(1e-6)
    }

    #[test]
    fn depthwise_3x3_matches_candle() {
        let dev = Device::Cpu;
        // (batch, channels, h, w, stride)
        for (b, c, h, w, s) in [
            (1, 3, 7, 9, 1),
            (2, 5, 8, 8, 2),
            (1, 4, 9, 11, 2),
            (1, 2, 1, 1, 1),
            (1, 2, 2, 3, 2),
            (1, 2, 1, 5, 2),
            (3, 6, 26, 26, 1),
            (1, 8, 52, 52, 2),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.5, (c, 1, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
            for act in [Epilogue::Identity, Epilogue::Relu6, Epilogue::Leaky(0.1)] {
                let got = depthwise_conv2d_bias_act(
                    &x,
                    &wt,
                    Some(&bias),
                    s,
                    1,
                    act,
                    KernelPolicy::default(),
                )
                .unwrap();
                let y = x.conv2d(&wt, 1, s, 1, c).unwrap();
                let want = bias_act(&y, Some(&bias), act).unwrap();
                let d = max_rel_diff(&got, &want);
                assert!(d < 1e-5, "{b}x{c}x{h}x{w} s{s} {act:?}: {d}");
            }
        }
        // Non-contiguous input.
        let x = Tensor::randn(0f32, 1., (1, 9, 4, 10), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let wt = Tensor::randn(0f32, 0.5, (4, 1, 3, 3), &dev).unwrap();
        let got = depthwise_conv2d_bias_act(
            &x,
            &wt,
            None,
            2,
            1,
            Epilogue::Identity,
            KernelPolicy::default(),
        )
        .unwrap();
        let want = x.conv2d(&wt, 1, 2, 1, 4).unwrap();
        assert!(max_rel_diff(&got, &want) < 1e-5);
    }
}
