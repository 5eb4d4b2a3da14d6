//! The number formats: bf16 rounding, the u8 activation quantisation ([`ActQuant`],
//! with its calibration helpers) and the s8 per-channel weight quantisation, plus the
//! packing of `f32` rows into the 32-bit words the micro-kernels read.

use candle_core::{DType, Result, Tensor};
use multiversion::multiversion;

/// The bf16 bit pattern of `v` rounded to nearest, ties to even (NaN stays a quiet
/// NaN, overflow goes to infinity): the upper 16 bits of the rounded `f32`.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return (b >> 16) | 0x40;
    }
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

/// The `f32` value of bf16 bits `h` (in the low 16 bits).
#[inline(always)]
pub(crate) fn bf16_value(h: u32) -> f32 {
    f32::from_bits(h << 16)
}

/// `v` rounded to bf16 (8 significant bits, to nearest, ties to even) and back: the
/// value the bf16 kernels multiply in its place.
pub fn bf16_round(v: f32) -> f32 {
    bf16_value(bf16_bits(v))
}

/// The per-tensor quantisation of a layer's input activations: `q = clamp(round(x /
/// scale) + 128, 0, 255)`, `x ≈ scale * (q - 128)` (round to nearest even; `x / scale`
/// is computed as `x * (1 / scale)`).
///
/// The zero point is fixed at 128, so the representable range is symmetric,
/// `[-128 scale, 127 scale]`: inputs outside it are clamped. With the scale from
/// [`ActQuant::from_max_abs`] (or a calibration helper) every calibrated value lies
/// inside. Maps that are never negative (after ReLU6) use half of the 256 steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    scale: f32,
}

impl ActQuant {
    /// The u8 code of 0.0.
    pub const ZERO_POINT: u8 = 128;

    /// A quantisation with this step; errors unless it is finite and positive.
    pub fn new(scale: f32) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            candle_core::bail!("activation scale must be finite and positive, got {scale}");
        }
        Ok(Self { scale })
    }

    /// The finest quantisation whose range holds `[-max_abs, max_abs]`: scale
    /// `max_abs / 127`. Errors unless `max_abs` is finite and positive.
    pub fn from_max_abs(max_abs: f32) -> Result<Self> {
        Self::new(max_abs / 127.0)
    }

    /// The finest quantisation whose range holds `[min, max]` (the zero point is 128,
    /// so this is [`ActQuant::from_max_abs`] of the larger magnitude).
    pub fn from_range(min: f32, max: f32) -> Result<Self> {
        Self::from_max_abs(min.abs().max(max.abs()))
    }

    /// Min-max calibration: the range of `values` (the layer's inputs over a few
    /// calibration images; NaNs are skipped). Errors when every value is 0 or NaN.
    pub fn calibrate_min_max(values: &[f32]) -> Result<Self> {
        let m = values
            .iter()
            .filter(|v| !v.is_nan())
            .fold(0f32, |m, v| m.max(v.abs()));
        Self::from_max_abs(m)
    }

    /// Percentile calibration: the range `[-m, m]` where `m` is the `percentile`-th
    /// percentile (0..=100, e.g. 99.99) of `|values|`: clamps the rare outliers to
    /// quantise the bulk more finely. Errors on an empty or all-zero input or a
    /// percentile outside 0..=100.
    pub fn calibrate_percentile(values: &[f32], percentile: f32) -> Result<Self> {
        if !(0.0..=100.0).contains(&percentile) {
            candle_core::bail!("percentile must be in 0..=100, got {percentile}");
        }
        let mut mags: Vec<f32> = values
            .iter()
            .filter(|v| !v.is_nan())
            .map(|v| v.abs())
            .collect();
        if mags.is_empty() {
            candle_core::bail!("percentile calibration of no values");
        }
        // The value of rank ceil(p/100 * n) - 1 (the nearest-rank percentile).
        let n = mags.len();
        let rank = ((f64::from(percentile) / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (_, m, _) = mags.select_nth_unstable_by(rank, f32::total_cmp);
        Self::from_max_abs(*m)
    }

    /// The quantisation step.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The u8 code of `x` (as the kernels compute it while packing).
    pub fn quantize(&self, x: f32) -> u8 {
        quantize_u8(x, 1.0 / self.scale) as u8
    }

    /// The value code `q` stands for: `scale * (q - 128)`.
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (i32::from(q) - 128) as f32
    }

    /// `x` quantised and dequantised with candle's operations, on any device: the
    /// values the int8 kernels multiply in place of `x`, `f32`, same shape. On the
    /// CPU the codes are exactly the kernels' (the same `x * (1/scale) + 128`,
    /// clamped, rounded half to even by adding and subtracting 2^23).
    pub fn fake_quantize(&self, x: &Tensor) -> Result<Tensor> {
        let (inv, s) = (f64::from(1.0 / self.scale), f64::from(self.scale));
        const MAGIC: f64 = 8_388_608.0;
        // t = clamp(x / s + 128, 0, 255), then q = round_half_even(t), then s (q - 128).
        let t = x
            .to_dtype(DType::F32)?
            .affine(inv, 128.0)?
            .clamp(0f32, 255f32)?;
        let q = t.affine(1.0, MAGIC)?.affine(1.0, -MAGIC)?;
        q.affine(1.0, -128.0)?.affine(s, 0.0)
    }
}

/// Streaming calibration of one layer's input: the largest magnitude seen and a
/// histogram of magnitudes, fed batch by batch ([`RangeObserver::observe`]) while the
/// calibration images run through the `f32` model, then read as an [`ActQuant`] by
/// min-max or by percentile, in constant memory.
///
/// The histogram has [`RangeObserver::BINS`] bins over `[0, top)`, `top` a power of two
/// that doubles (merging bins in pairs) whenever a larger value arrives, so a
/// percentile is read to within one bin, `top / BINS`, above the exact one.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeObserver {
    max_abs: f32,
    top: f32,
    bins: Vec<u64>,
}

impl Default for RangeObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeObserver {
    /// Bins of the histogram.
    pub const BINS: usize = 2048;

    /// An observer that has seen nothing.
    pub fn new() -> Self {
        Self {
            max_abs: 0.0,
            top: 0.0,
            bins: vec![0; Self::BINS],
        }
    }

    /// Adds `values` (NaNs and infinities are skipped).
    pub fn observe(&mut self, values: &[f32]) {
        let m = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        if m == 0.0 && self.top == 0.0 {
            // Only zeros so far: they all go to bin 0 once a range exists.
            self.bins[0] += values.iter().filter(|v| v.is_finite()).count() as u64;
            return;
        }
        self.max_abs = self.max_abs.max(m);
        if self.top == 0.0 {
            self.top = 2f32.powi(m.log2().floor() as i32 + 1);
        }
        while self.max_abs >= self.top {
            // Double the range: bins 2i and 2i + 1 become bin i.
            for i in 0..Self::BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[Self::BINS / 2..].fill(0);
            self.top *= 2.0;
        }
        let per = Self::BINS as f32 / self.top;
        for v in values.iter().filter(|v| v.is_finite()) {
            let b = ((v.abs() * per) as usize).min(Self::BINS - 1);
            self.bins[b] += 1;
        }
    }

    /// Adds the values of a tensor (any shape, dtype and device; copied to the host).
    pub fn observe_tensor(&mut self, t: &Tensor) -> Result<()> {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.observe(&v);
        Ok(())
    }

    /// Values seen (finite ones).
    pub fn count(&self) -> u64 {
        self.bins.iter().sum()
    }

    /// The largest magnitude seen.
    pub fn max_abs(&self) -> f32 {
        self.max_abs
    }

    /// Min-max calibration: [`ActQuant::from_max_abs`] of the largest magnitude seen.
    pub fn min_max(&self) -> Result<ActQuant> {
        ActQuant::from_max_abs(self.max_abs)
    }

    /// Percentile calibration: the range holds `percentile`% (0..=100) of the
    /// magnitudes seen, read from the histogram (the upper edge of the bin where that
    /// share is reached, at most the largest magnitude).
    pub fn percentile(&self, percentile: f32) -> Result<ActQuant> {
        if !(0.0..=100.0).contains(&percentile) {
            candle_core::bail!("percentile must be in 0..=100, got {percentile}");
        }
        let total = self.count();
        let want = (f64::from(percentile) / 100.0 * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                let edge = (i + 1) as f32 * self.top / Self::BINS as f32;
                return ActQuant::from_max_abs(edge.min(self.max_abs));
            }
        }
        ActQuant::from_max_abs(self.max_abs)
    }
}

/// `clamp(round(x * inv) + 128, 0, 255)` as the low byte of the result: the addition of
/// 2^23 rounds to an integer (to nearest even) in every lane without a rounding
/// instruction, so this vectorises on any x86-64 (NaN gives 0).
#[inline(always)]
// max/min rather than clamp: NaN goes to 0 instead of through.
#[allow(clippy::manual_clamp)]
pub(crate) fn quantize_u8(x: f32, inv: f32) -> u32 {
    let t = (x * inv + 128.0).max(0.0).min(255.0);
    (t + 8_388_608.0).to_bits() & 0xff
}

/// s8 weights of one output channel: `q = clamp(round(w / scale), -127, 127)` with
/// `scale = max |w| / 127` (1 for an all-zero channel), written to `q`; returns the
/// scale.
pub(crate) fn quantize_channel_s8(w: &[f32], q: &mut [i8]) -> f32 {
    let m = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if m > 0.0 && m.is_finite() {
        m / 127.0
    } else {
        1.0
    };
    for (q, &v) in q.iter_mut().zip(w) {
        *q = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// `dst[i]` = the u8 code of `x[i]` (`1 / scale` = `inv`), for a whole input at once.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn quantize_u8_slice(x: &[f32], inv: f32, dst: &mut [u8]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = quantize_u8(v, inv) as u8;
    }
}

/// [`quantize_u8_slice`] of rows `w` long, each row written as its even columns, then
/// its odd ones: the layout in which every tap of a stride-2 convolution reads a
/// contiguous run.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn quantize_u8_split(x: &[f32], w: usize, inv: f32, dst: &mut [u8]) {
    let half = w.div_ceil(2);
    for (row, out) in x.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        let (even, odd) = out.split_at_mut(half);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[half - 1] = quantize_u8(*last, inv) as u8;
        }
        for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
            *e = quantize_u8(p[0], inv) as u8;
            *o = quantize_u8(p[1], inv) as u8;
        }
    }
}

/// `dst[i]` = the bf16 bits of `x[i]`, for a whole input at once.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn bf16_slice(x: &[f32], dst: &mut [u16]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = bf16_bits(v) as u16;
    }
}

/// [`bf16_slice`] of rows `w` long, each row written as its even columns, then its odd
/// ones (as [`quantize_u8_split`]).
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn bf16_split(x: &[f32], w: usize, dst: &mut [u16]) {
    let half = w.div_ceil(2);
    for (row, out) in x.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        let (even, odd) = out.split_at_mut(half);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[half - 1] = bf16_bits(*last) as u16;
        }
        for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
            *e = bf16_bits(p[0]) as u16;
            *o = bf16_bits(p[1]) as u16;
        }
    }
}

/// Packs four rows of `f32` activations (`rows[j][c]` is depth `4g + j` of column `c`,
/// all of one length `cols <= dst.len()`) into the u8 words of one depth group:
/// byte `j` of `dst[c]` is the code of `rows[j][c]`. Columns `cols..` get the zero
/// point.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn pack_u8(rows: [&[f32]; 4], inv: f32, dst: &mut [u32]) {
    let cols = rows[0].len();
    let (head, tail) = dst.split_at_mut(cols);
    let [r0, r1, r2, r3] = rows;
    let (r1, r2, r3) = (&r1[..cols], &r2[..cols], &r3[..cols]);
    for c in 0..cols {
        head[c] = quantize_u8(r0[c], inv)
            | quantize_u8(r1[c], inv) << 8
            | quantize_u8(r2[c], inv) << 16
            | quantize_u8(r3[c], inv) << 24;
    }
    tail.fill(0x8080_8080);
}

/// Packs two rows of `f32` activations into the bf16 words of one depth group: the low
/// half of `dst[c]` is `rows[0][c]` rounded, the high half `rows[1][c]`. Columns
/// `cols..` get zeros.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
pub(crate) fn pack_bf16(rows: [&[f32]; 2], dst: &mut [u32]) {
    let cols = rows[0].len();
    let (head, tail) = dst.split_at_mut(cols);
    let [r0, r1] = rows;
    let r1 = &r1[..cols];
    for c in 0..cols {
        head[c] = bf16_bits(r0[c]) | bf16_bits(r1[c]) << 16;
    }
    tail.fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to the even upper.
        assert_eq!(bf16_round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            bf16_round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(bf16_round(-2.5), -2.5);
        assert!(bf16_round(f32::NAN).is_nan());
        assert_eq!(bf16_round(f32::MAX), f32::INFINITY);
        assert_eq!(bf16_round(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // Relative error at most 2^-8 (bf16 has 8 significant bits: half an ulp).
        for i in 0..1000 {
            let v = 0.37f32 * 1.013f32.powi(i) - 3.0;
            assert!((bf16_round(v) - v).abs() <= v.abs() * 2f32.powi(-8));
        }
    }

    #[test]
    fn u8_codes_round_half_to_even_and_clamp() {
        let q = ActQuant::new(0.5).unwrap();
        assert_eq!(q.quantize(0.0), 128);
        assert_eq!(q.quantize(0.25), 128); // 0.5 steps: ties to even 0
        assert_eq!(q.quantize(0.75), 130); // 1.5 -> 2
        assert_eq!(q.quantize(-0.75), 126);
        assert_eq!(q.quantize(63.5), 255);
        assert_eq!(q.quantize(1e9), 255);
        assert_eq!(q.quantize(-64.0), 0);
        assert_eq!(q.quantize(-1e9), 0);
        assert_eq!(q.dequantize(130), 1.0);
        assert!(ActQuant::new(0.0).is_err() && ActQuant::new(f32::NAN).is_err());
    }

    #[test]
    fn calibration() {
        let v = [0.5f32, -2.54, 1.0, f32::NAN];
        let q = ActQuant::calibrate_min_max(&v).unwrap();
        assert_eq!(q.scale(), 2.54 / 127.0);
        assert_eq!(q.quantize(-2.54), 1);
        assert!(ActQuant::calibrate_min_max(&[0.0]).is_err());
        // 1000 values 1..=1000 (and one outlier): the 99th percentile is 990.
        let mut v: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        v[500] = -1e6;
        let q = ActQuant::calibrate_percentile(&v, 99.0).unwrap();
        assert_eq!(q.scale(), 991.0 / 127.0);
        let q = ActQuant::calibrate_percentile(&v, 100.0).unwrap();
        assert_eq!(q.scale(), 1e6 / 127.0);
        assert!(ActQuant::calibrate_percentile(&v, 101.0).is_err());
        assert_eq!(
            ActQuant::from_range(-1.0, 3.0).unwrap(),
            ActQuant::from_max_abs(3.0).unwrap()
        );
    }

    #[test]
    fn range_observer() {
        let mut o = RangeObserver::new();
        assert!(o.min_max().is_err());
        o.observe(&[0.0, 0.0]);
        // 1..=1000 in two batches (the range doubles on the way), one NaN skipped.
        o.observe(&(1..=10).map(|i| i as f32).collect::<Vec<_>>());
        o.observe(
            &(11..=1000)
                .map(|i| -(i as f32))
                .chain([f32::NAN])
                .collect::<Vec<_>>(),
        );
        assert_eq!(o.count(), 1002);
        assert_eq!(o.max_abs(), 1000.0);
        assert_eq!(
            o.min_max().unwrap(),
            ActQuant::from_max_abs(1000.0).unwrap()
        );
        // The 99th percentile of |v| is 990 (rank 992 of 1002 with the two zeros):
        // read to within one bin (1024 / 2048) above.
        let m = o.percentile(99.0).unwrap().scale() * 127.0;
        assert!((990.0..=990.5 + 1e-3).contains(&m), "{m}");
        assert_eq!(o.percentile(100.0).unwrap(), o.min_max().unwrap());
        assert!(o.percentile(-1.0).is_err());
    }

    #[test]
    fn weights_quantise_per_channel() {
        let mut q = [0i8; 4];
        let s = quantize_channel_s8(&[0.5, -1.27, 0.004, 0.016], &mut q);
        assert_eq!(s, 1.27 / 127.0);
        assert_eq!(q, [50, -127, 0, 2]);
        assert_eq!(quantize_channel_s8(&[0.0; 4], &mut q), 1.0);
        assert_eq!(q, [0; 4]);
    }
}
