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
/// `scratch` is this thread's buffer, its contents left from earlier calls; `simd`
/// runs the rows on AVX-512 (the CPU must have AVX-512F).
///
/// The codes `q - 128` (|.| <= 128) and the taps (|.| <= 127) are held as `f32`: each
/// product (|.| <= 16 256) and each sum of nine (< 2^18) is an integer below 2^24, so
/// the `f32` arithmetic is exact, in any order, and equals the `i32` sums of the
/// scheme bit for bit, at the rate of `f32` multiplies and adds (a vector `i32`
/// multiply is several times slower on x86).
#[allow(clippy::too_many_arguments)]
fn plane_int8(
    x: &[f32],
    (h, w): (usize, usize),
    inv: f32,
    taps: &[i8; 9],
    epilogue: (f32, f32, Epilogue),
    s: usize,
    simd: bool,
    scratch: &mut Vec<f32>,
    out: &mut [MaybeUninit<f32>],
) {
    let (wp, ow) = (w + 2, (w - 1) / s + 1);
    let len = (h + 2) * wp;
    if scratch.len() < len + ow {
        scratch.resize(len + ow, 0.0);
    }
    let (plane, acc) = scratch.split_at_mut(len);
    fill_plane(x, (h, w), inv, s, plane);
    let t: [f32; 9] = taps.map(f32::from);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set where the CPU has AVX-512F.
        return unsafe { avx512::rows(plane, (wp, ow), &t, epilogue, s, out) };
    }
    let _ = simd;
    rows_portable(plane, wp, &t, epilogue, s, &mut acc[..ow], out);
}

/// Fills `plane` ((H + 2) x (W + 2)) with the codes `q - 128` of `x` (H, W) inside a
/// border of zero points (code 0): padded row j holds input row j - 1, padded column
/// i input column i - 1; for stride 2 each padded row is stored as its even columns,
/// then its odd ones. Every element is written.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn fill_plane(x: &[f32], (h, w): (usize, usize), inv: f32, s: usize, plane: &mut [f32]) {
    let wp = w + 2;
    let half = wp.div_ceil(2);
    // Where padded column i of a row is stored.
    let slot = |i: usize| match s {
        1 => i,
        _ => (i % 2) * half + i / 2,
    };
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
}

/// The output rows of one plane in plain Rust: each row as three passes of three
/// taps over whole rows into `acc` (OW), then the epilogue.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn rows_portable(
    plane: &[f32],
    wp: usize,
    t: &[f32; 9],
    (scale, bias, act): (f32, f32, Epilogue),
    s: usize,
    acc: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    let ow = acc.len();
    let half = wp.div_ceil(2);
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

/// The output rows on AVX-512: all nine taps and the epilogue in one pass per row,
/// sixteen outputs per step and the last step masked (the rows of MobileNetV2's
/// 13x13 to 52x52 maps are one to four vectors long: in plain Rust their remainders
/// took most of the time).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
        _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
    };
    use std::mem::MaybeUninit;

    use crate::epilogue::Epilogue;
    use crate::lowp::activate;

    /// As [`super::rows_portable`], for the plane `plane` of padded rows `wp` long.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(
        plane: &[f32],
        (wp, ow): (usize, usize),
        t: &[f32; 9],
        (scale, bias, act): (f32, f32, Epilogue),
        s: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let half = wp.div_ceil(2);
        let mut taps = [_mm512_setzero_ps(); 9];
        for (v, &t) in taps.iter_mut().zip(t) {
            *v = _mm512_set1_ps(t);
        }
        let (scale, bias) = (_mm512_set1_ps(scale), _mm512_set1_ps(bias));
        for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
            // Output ox reads padded columns s*ox + kx of padded rows s*oy + ky: for
            // stride 1 at r[ox + kx], for stride 2 (rows split into even and odd
            // columns) at even[ox], odd[ox], even[ox + 1]. Each stream has `ow`
            // elements within its row (w + 2 = wp, even has ceil(wp / 2) >= ow + 1,
            // odd floor(wp / 2) >= ow).
            // The streams' starts in `plane` (indexing, not `array::from_fn`, which
            // the compiler left as calls in this loop).
            let row0 = oy * s * wp;
            let next = if s == 1 { [0, 1, 2] } else { [0, half, 1] };
            let mut starts = [0usize; 9];
            for (k, start) in starts.iter_mut().enumerate() {
                *start = row0 + (k / 3) * wp + next[k % 3];
            }
            assert!(row0 + 3 * wp <= plane.len() && next[2] + ow <= wp && next[1] + ow <= wp);
            for c in (0..ow).step_by(16) {
                let lanes = (ow - c).min(16);
                let mask = (u32::MAX >> (32 - lanes)) as u16;
                let mut acc = _mm512_setzero_ps();
                for (k, &tap) in taps.iter().enumerate() {
                    // SAFETY: lanes c..c + lanes of the stream, starts[k] + c.. within
                    // its row (asserted above: every stream's `ow` elements lie in
                    // it); masked-off lanes are not read.
                    let v =
                        unsafe { _mm512_maskz_loadu_ps(mask, plane.as_ptr().add(starts[k] + c)) };
                    acc = _mm512_fmadd_ps(tap, v, acc);
                }
                // `a * scale + bias` rounded twice, as the portable rows.
                let y = activate(_mm512_add_ps(_mm512_mul_ps(acc, scale), bias), act);
                // SAFETY: lanes c..c + lanes of the row (ow long) exist and are this
                // call's; masked-off lanes are not written.
                unsafe { _mm512_mask_storeu_ps(orow.as_mut_ptr().add(c).cast(), mask, y) };
            }
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
    /// The rows on AVX-512 ([`plane_int8`]).
    simd: bool,
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
            let taps = &self.weights.values[ch];
            let epilogue = (self.scale[ch], self.bias[ch], self.act);
            PLANE.with(|plane| {
                let plane = &mut plane.borrow_mut();
                let (inv, simd) = (self.inv, self.simd);
                plane_int8(x, (h, w), inv, taps, epilogue, s, simd, plane, out)
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
    let simd = super::has_avx512f();
    depthwise_int8_rows(x, weights, x_quant, bias, stride, epilogue, simd)
}

/// [`depthwise3x3_int8_bias_act`] with its rows on AVX-512 or not (`simd`: the CPU
/// must have AVX-512F); the same results either way, bit for bit.
pub(crate) fn depthwise_int8_rows(
    x: &Tensor,
    weights: &Int8DepthwiseWeights,
    x_quant: ActQuant,
    bias: Option<&Tensor>,
    stride: usize,
    epilogue: Epilogue,
    simd: bool,
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
        simd,
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
