//! The int8 depthwise 3x3 convolution (padding 1, stride 1 or 2) with the bias and
//! activation fused, in the int8 scheme of the dense kernel: s8 weights with one scale
//! per channel, u8 activations with one scale per tensor and zero point 128, `i32`
//! sums, `f32` output.
//!
//! Each channel's plane is quantised once into a zero-bordered buffer of `q - 128`
//! (held as `f32` integers; the border is the zero point, so no tap needs a bounds
//! check), then each output row is nine multiply-adds of whole rows, vectorised by the
//! compiler (the function is also compiled for AVX-512 and picked at run time). Every
//! product and sum is an integer below 2^24, exact in `f32`: the results are the `i32`
//! sums of the scheme, the same in every build.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use multiversion::multiversion;

use super::activate_scalar;
use super::quant::{quantize_channel_s8, quantize_u8, ActQuant};
use crate::elementwise::bias_act;
use crate::epilogue::Epilogue;
use crate::pool::for_each_chunk_mut;
use crate::storage::contiguous_f32;

thread_local! {
    /// This thread's quantised, zero-bordered plane and row of sums, reused from call
    /// to call.
    static PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Depthwise 3x3 weights quantised to s8 with one `f32` scale per channel.
#[derive(Debug, Clone)]
pub struct Int8DepthwiseWeights {
    /// (C, 9): the taps of each channel, row-major; `w ≈ scales[c] * values[c, t]`.
    values: Vec<[i8; 9]>,
    /// (C,)
    scales: Vec<f32>,
}

impl Int8DepthwiseWeights {
    /// Quantises `weight` (C, 1, 3, 3) to s8 per channel: `scale = max |w| / 127`,
    /// `q = round(w / scale)` (to nearest even).
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        let (c, one, kh, kw) = weight.dims4()?;
        if (one, kh, kw) != (1, 3, 3) {
            candle_core::bail!(
                "int8 depthwise: weight {:?} is not (C, 1, 3, 3)",
                weight.dims()
            );
        }
        let w = weight
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut values = vec![[0i8; 9]; c];
        let scales = w
            .chunks_exact(9)
            .zip(values.iter_mut())
            .map(|(w, q)| quantize_channel_s8(w, q))
            .collect();
        Self::from_quantized(values, scales)
    }

    /// Weights already quantised: the nine s8 taps (row-major) of each channel and the
    /// channels' scales, finite and positive.
    pub fn from_quantized(values: Vec<[i8; 9]>, scales: Vec<f32>) -> Result<Self> {
        if values.len() != scales.len() {
            candle_core::bail!(
                "int8 depthwise: {} channels of taps, {} scales",
                values.len(),
                scales.len()
            );
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            candle_core::bail!("int8 weight scale {s} is not finite and positive");
        }
        Ok(Self { values, scales })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.values.len()
    }

    /// The s8 taps of each channel, (C, 9).
    pub fn values(&self) -> &[[i8; 9]] {
        &self.values
    }

    /// The per-channel scales, (C,).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The weights the kernel effectively multiplies, `f32` (C, 1, 3, 3) on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let w: Vec<f32> = self
            .values
            .iter()
            .zip(&self.scales)
            .flat_map(|(q, &s)| q.map(|v| s * f32::from(v)))
            .collect();
        Tensor::from_vec(w, (self.channels(), 1, 3, 3), device)
    }
}

/// One channel: `x` (H, W) into `out` (OH, OW) with padding 1 and stride `s`;
/// `scratch` is this thread's buffer, its contents left from earlier calls.
///
/// The codes `q - 128` (|.| <= 128) and the taps (|.| <= 127) are held as `f32`: each
/// product (|.| <= 16 256) and each sum of nine (< 2^18) is an integer below 2^24, so
/// the `f32` arithmetic is exact and equals the `i32` sums of the scheme bit for bit,
/// at the rate of `f32` multiplies and adds (a vector `i32` multiply is several times
/// slower on x86).
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
#[allow(clippy::too_many_arguments)]
fn plane_int8(
    x: &[f32],
    (h, w): (usize, usize),
    inv: f32,
    taps: &[i8; 9],
    (scale, bias): (f32, f32),
    s: usize,
    act: Epilogue,
    scratch: &mut Vec<f32>,
    out: &mut [MaybeUninit<f32>],
) {
    // Padded row j holds input row j - 1, padded column i input column i - 1; for
    // stride 2 each padded row is stored as its even columns, then its odd ones.
    let (wp, ow) = (w + 2, (w - 1) / s + 1);
    let len = (h + 2) * wp;
    if scratch.len() < len + ow {
        scratch.resize(len + ow, 0.0);
    }
    let (plane, acc) = scratch.split_at_mut(len);
    let acc = &mut acc[..ow];
    let half = wp.div_ceil(2);
    // Where padded column i of a row is stored.
    let slot = |i: usize| match s {
        1 => i,
        _ => (i % 2) * half + i / 2,
    };
    // The border is the zero point: code 0. Every other slot is written below.
    plane[..wp].fill(0.0);
    plane[(h + 1) * wp..].fill(0.0);
    for (iy, row) in x.chunks_exact(w).enumerate() {
        let dst = &mut plane[(iy + 1) * wp..(iy + 2) * wp];
        dst[slot(0)] = 0.0;
        dst[slot(w + 1)] = 0.0;
        let code = |v: f32| (quantize_u8(v, inv) as i32 - 128) as f32;
        if s == 1 {
            for (d, &v) in dst[1..=w].iter_mut().zip(row) {
                *d = code(v);
            }
        } else {
            // Padded column i = ix + 1 is stored at i / 2 if even, at half + i / 2 if
            // odd: input columns 2j and 2j + 1 go to odd[j] and even[j + 1].
            let (even, odd) = dst.split_at_mut(half);
            let pairs = row.chunks_exact(2);
            if let [last] = pairs.remainder() {
                odd[w / 2] = code(*last);
            }
            for ((o, e), p) in odd.iter_mut().zip(&mut even[1..]).zip(pairs) {
                *o = code(p[0]);
                *e = code(p[1]);
            }
        }
    }
    let t: [f32; 9] = taps.map(f32::from);
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        for ky in 0..3 {
            let r = &plane[(oy * s + ky) * wp..][..wp];
            let (w0, w1, w2) = (t[3 * ky], t[3 * ky + 1], t[3 * ky + 2]);
            // Output ox reads padded columns s*ox, s*ox + 1, s*ox + 2.
            let (a, b, c) = if s == 1 {
                (&r[..ow], &r[1..ow + 1], &r[2..ow + 2])
            } else {
                let (even, odd) = r.split_at(half);
                (&even[..ow], &odd[..ow], &even[1..ow + 1])
            };
            let taps = acc.iter_mut().zip(a).zip(b).zip(c);
            if ky == 0 {
                taps.for_each(|(((acc, &a), &b), &c)| *acc = w0 * a + w1 * b + w2 * c);
            } else {
                taps.for_each(|(((acc, &a), &b), &c)| *acc += w0 * a + w1 * b + w2 * c);
            }
        }
        // One loop per activation, so that each vectorises.
        let pre = |a: f32| a * scale + bias;
        let pairs = orow.iter_mut().zip(&*acc);
        match act {
            Epilogue::Identity => pairs.for_each(|(o, &a)| {
                o.write(pre(a));
            }),
            Epilogue::Relu6 => pairs.for_each(|(o, &a)| {
                o.write(activate_scalar(pre(a), act));
            }),
            Epilogue::Leaky(_) => pairs.for_each(|(o, &a)| {
                o.write(activate_scalar(pre(a), act));
            }),
        }
    }
}

/// The fused op on a CPU input.
struct DepthwiseInt8<'a> {
    weights: &'a Int8DepthwiseWeights,
    inv: f32,
    /// `sx * sw[c]`. (C,)
    scale: Vec<f32>,
    /// (C,)
    bias: Vec<f32>,
    stride: usize,
    act: Epilogue,
}

impl CustomOp1 for DepthwiseInt8<'_> {
    fn name(&self) -> &'static str {
        "depthwise3x3-int8-bias-act"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        // (B, C, H, W)
        let x = contiguous_f32(st, l, "input")?;
        let s = self.stride;
        // (B, C, OH, OW) with padding 1.
        let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
        // left uninitialised: every plane is written whole below (not zero-filled first
        // on this thread while the others wait)
        let len = b * c * oh * ow;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        for_each_chunk_mut(&mut out.spare_capacity_mut()[..len], oh * ow, |p, out| {
            let ch = p % c;
            let x = &x[p * h * w..(p + 1) * h * w];
            let (taps, sb) = (&self.weights.values[ch], (self.scale[ch], self.bias[ch]));
            PLANE.with(|plane| {
                let plane = &mut plane.borrow_mut();
                plane_int8(x, (h, w), self.inv, taps, sb, s, self.act, plane, out)
            });
        });
        // SAFETY: the `len` elements are initialised: `plane_int8` writes each of the
        // OH*OW outputs of its plane, and the B*C planes cover the buffer.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// `act(depthwise_conv3x3(x, w) + bias)` in int8 for inference, padding 1, `stride` 1
/// or 2: `x` (B, C, H, W) `f32` quantised with `x_quant` (values outside its range
/// clamped), `i32` sums of the s8 taps, `act(sx sw[c] acc + bias[c])` written as `f32`
/// (B, C, OH, OW). `bias` is (C,).
///
/// On other devices it runs [`depthwise3x3_int8_simulated`]: slow, for checking.
pub fn depthwise3x3_int8_bias_act(
    x: &Tensor,
    weights: &Int8DepthwiseWeights,
    x_quant: ActQuant,
    bias: Option<&Tensor>,
    stride: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if c != weights.channels() {
        candle_core::bail!(
            "int8 depthwise: {} channels of weights for an input of {c}",
            weights.channels()
        );
    }
    if !(stride == 1 || stride == 2) || h == 0 || w == 0 {
        candle_core::bail!("int8 depthwise: stride {stride} on {h}x{w} (stride 1 or 2)");
    }
    let bias_v = match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; c],
    };
    if bias_v.len() != c {
        candle_core::bail!("int8 depthwise: bias of {} for {c} channels", bias_v.len());
    }
    if !x.device().is_cpu() {
        return depthwise3x3_int8_simulated(x, weights, x_quant, bias, stride, epilogue);
    }
    let op = DepthwiseInt8 {
        weights,
        inv: 1.0 / x_quant.scale(),
        scale: weights.scales.iter().map(|s| x_quant.scale() * s).collect(),
        bias: bias_v,
        stride,
        act: epilogue,
    };
    x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&op)
}

/// The arithmetic of [`depthwise3x3_int8_bias_act`] simulated with candle's
/// operations, on any device: `x` through [`ActQuant::fake_quantize`], an `f32`
/// grouped convolution with the dequantised weights, then the bias and activation
/// (what the function runs on other devices; a reference for tests).
pub fn depthwise3x3_int8_simulated(
    x: &Tensor,
    weights: &Int8DepthwiseWeights,
    x_quant: ActQuant,
    bias: Option<&Tensor>,
    stride: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let c = weights.channels();
    let xq = x_quant.fake_quantize(x)?;
    let y = xq.conv2d(&weights.dequantize(x.device())?, 1, stride, 1, c)?;
    bias_act(&y, bias, epilogue)
}
