//! The bf16 dense convolution: weights rounded to bf16 once at load, activations
//! rounded (to nearest even) while they are packed, products summed in `f32`.
//!
//! Three micro-kernels, 8 channels x 48 columns of `f32` accumulators in 24 registers,
//! each step two depths of one channel's weights against 16 columns x 2 depths of
//! activations:
//!
//! - `vdpbf16ps` (AVX512_BF16): two pairs of bf16 multiplied and both products added
//!   to an `f32` lane, 32 products per instruction;
//! - fused multiply-adds on the operands widened to `f32` (AVX-512F): two FMAs per 32
//!   products;
//! - portable Rust.
//!
//! Which of the two SIMD kernels is faster depends on the CPU: on the Xeons measured,
//! `vdpbf16ps` issues at a quarter of the FMA rate (the FMAs win 2x); on AMD Zen 4 at
//! the FMA rate (it wins about 1.8x). [`Isa::Native`] therefore times both instructions
//! once per process ([`dot_outruns_fma`], a few tens of microseconds on registers) and
//! takes the faster; [`Isa::Bf16Dot`] takes `vdpbf16ps` wherever the CPU has it.
//!
//! All three add the same exact products (bf16 x bf16 fits in `f32`) in the same order
//! (`acc + x1 w1`, then `+ x0 w0`, as `vdpbf16ps` is specified), so they agree but for
//! the instruction's flushing of denormals.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::driver::{self, Format, Lane, OutTile, MR, NR};
use super::quant::{bf16_bits, bf16_slice, bf16_split, bf16_value, pack_bf16};
use super::{activate_scalar, has_avx512_bf16, has_avx512f, Isa};
use crate::elementwise::bias_act;
use crate::epilogue::Epilogue;
use crate::im2col::Geom;
use crate::storage::contiguous_f32;

/// Where the prepared weights live.
#[derive(Debug, Clone)]
enum Stored {
    /// Panels of MR channels for the CPU kernel: (C_out / MR, groups, MR) words of two
    /// bf16 each (the first of the group in the low half), in the groups of
    /// [`driver::depth_groups`].
    Packed(Vec<u32>),
    /// A bf16 tensor (C_out, C_in, KH, KW) on another device, for candle's operations.
    Device(Tensor),
}

/// Dense convolution weights rounded to bf16 and packed for the bf16 kernel (prepared
/// once, at load).
#[derive(Debug, Clone)]
pub struct Bf16ConvWeights {
    /// (C_out, C_in, KH, KW)
    dims: (usize, usize, usize, usize),
    stored: Stored,
}

impl Bf16ConvWeights {
    /// Rounds `weight` (C_out, C_in, KH, KW) to bf16 (to nearest even). Weights on the
    /// CPU are packed for the kernel; weights elsewhere become a bf16 tensor on their
    /// device (see [`conv2d_bf16_bias_act`]).
    pub fn new(weight: &Tensor) -> Result<Self> {
        let dims = weight.dims4()?;
        if !weight.device().is_cpu() {
            let stored = Stored::Device(weight.to_dtype(DType::BF16)?.contiguous()?);
            return Ok(Self { dims, stored });
        }
        // (C_out, C_in, KH, KW)
        let w = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let packed = driver::pack_weights(dims, u16::PER_WORD, |i| bf16_bits(w[i]));
        Ok(Self {
            dims,
            stored: Stored::Packed(packed),
        })
    }

    /// (C_out, C_in, KH, KW)
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        self.dims
    }
}

/// The bf16 micro-kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust (auto-vectorised).
    Portable,
    /// AVX-512F: the operands widened to `f32`, fused multiply-adds.
    Fma,
    /// AVX512_BF16: `vdpbf16ps`.
    Dot,
}

impl Kernel {
    /// The kernel `isa` asks for on this CPU: [`Isa::Native`] takes `vdpbf16ps` where
    /// the CPU has it and it outruns the FMAs ([`dot_outruns_fma`]), else the FMA
    /// kernel; [`Isa::Bf16Dot`] takes `vdpbf16ps` wherever the CPU has it.
    pub(crate) fn choose(isa: Isa) -> Self {
        match isa {
            Isa::Bf16Dot if has_avx512_bf16() => Kernel::Dot,
            Isa::Native if has_avx512_bf16() && dot_outruns_fma() => Kernel::Dot,
            Isa::Native | Isa::Bf16Dot if has_avx512f() => Kernel::Fma,
            _ => Kernel::Portable,
        }
    }

    /// The kernel's name in logs and benchmarks.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Fma => "fma",
            Kernel::Dot => "vdpbf16ps",
        }
    }
}

/// Whether `vdpbf16ps` does its 32 products faster than the two FMAs of the widened
/// kernel on this CPU: both instructions timed once per process on independent register
/// chains (no memory traffic; the best of several short rounds, so that a preemption
/// does not decide). False where the CPU lacks AVX512_BF16.
pub(crate) fn dot_outruns_fma() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if has_avx512_bf16() {
            // SAFETY: the CPU has AVX-512F, BW and BF16 (checked just above).
            let (dot, fma) = unsafe { avx512::time_dot_and_fma() };
            return dot < fma;
        }
        false
    })
}

/// The bf16 format of the dense driver.
struct Bf16 {
    /// (C_out,)
    bias: Vec<f32>,
    kernel: Kernel,
}

/// bf16 bits, two depths to a word (the first in the low half).
impl Lane for u16 {
    const PER_WORD: usize = 2;
    const PAD: u16 = 0;

    #[inline(always)]
    fn word(e: [u16; 4]) -> u32 {
        u32::from(e[0]) | u32::from(e[1]) << 16
    }

    #[inline(always)]
    fn words16(rows: [&[u16; 16]; 4]) -> [u32; 16] {
        // Plain loops: `array::map` and `from_fn` were left as calls in the hot loop.
        let mut words = [0u32; 16];
        for (j, row) in rows[..2].iter().enumerate() {
            for (w, &v) in words.iter_mut().zip(row.iter()) {
                *w |= u32::from(v) << (16 * j);
            }
        }
        words
    }

    fn pack_taps(g: &Geom, x: &[u16], cols: (usize, usize), dst: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx512bw_vl() {
            // SAFETY: the CPU has AVX-512F, BW and VL (checked above).
            return unsafe { pack_avx512::pack_taps(g, x, cols, dst) };
        }
        pack_taps_u16(g, x, cols, dst);
    }
}

/// [`driver::pack_taps_generic`] on bf16 bits, in plain Rust.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub(super) fn pack_taps_u16(g: &Geom, x: &[u16], cols: (usize, usize), dst: &mut [u32]) {
    driver::pack_taps_generic(g, x, cols, dst, driver::interleave_portable);
}

/// [`driver::pack_taps_generic`] on bf16 bits with AVX-512 (as the int8 one: masked
/// last steps, no scalar tail).
#[cfg(target_arch = "x86_64")]
mod pack_avx512 {
    use std::arch::x86_64::{
        _mm256_maskz_loadu_epi16, _mm512_cvtepu16_epi32, _mm512_mask_storeu_epi32, _mm512_or_si512,
        _mm512_slli_epi32,
    };

    use super::{driver, Geom};

    /// # Safety
    /// The CPU must have AVX-512F, BW and VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn pack_taps(g: &Geom, x: &[u16], cols: (usize, usize), dst: &mut [u32]) {
        // SAFETY: this function's features are the ones `interleave` needs.
        driver::pack_taps_generic(g, x, cols, dst, |rows, words| unsafe {
            interleave(rows, words)
        });
    }

    /// `words[c]` = `rows[0][c]` in the low half, `rows[1][c]` in the high half (each
    /// row `words.len()` long; `rows[2..]` unused).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn interleave(rows: [&[u16]; 4], words: &mut [u32]) {
        let n = words.len();
        assert!(rows[..2].iter().all(|r| r.len() == n));
        for c in (0..n).step_by(16) {
            let lanes = (n - c).min(16);
            let mask = (u32::MAX >> (32 - lanes)) as u16;
            // SAFETY: lanes c..c + lanes of both rows and of `words` exist (n long);
            // masked-off lanes are neither read nor written.
            unsafe {
                let half = |j: usize| {
                    let v = _mm256_maskz_loadu_epi16(mask, rows[j].as_ptr().add(c).cast());
                    _mm512_cvtepu16_epi32(v)
                };
                let w = _mm512_or_si512(half(0), _mm512_slli_epi32::<16>(half(1)));
                _mm512_mask_storeu_epi32(words.as_mut_ptr().add(c).cast(), mask, w);
            }
        }
    }
}

impl Format for Bf16 {
    type Elem = u16;

    fn convert(&self, x: &[f32], dst: &mut [u16]) {
        bf16_slice(x, dst);
    }

    fn convert_split(&self, x: &[f32], w: usize, dst: &mut [u16]) {
        bf16_split(x, w, dst);
    }

    fn pack_f32(&self, rows: [&[f32]; 4], dst: &mut [u32]) {
        pack_bf16([rows[0], rows[1]], dst);
    }

    unsafe fn tile(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue) {
        let bias = &self.bias[out.co0..out.co0 + out.rows];
        #[cfg(target_arch = "x86_64")]
        match self.kernel {
            // SAFETY: Dot is only chosen where the CPU has AVX-512F/BW/BF16; the
            // caller's contract covers `out`.
            Kernel::Dot => return unsafe { avx512::tile_dot(x, w, out, bias, act) },
            // SAFETY: Fma is only chosen where the CPU has AVX-512F; as above.
            Kernel::Fma => return unsafe { avx512::tile_fma(x, w, out, bias, act) },
            Kernel::Portable => {}
        }
        let mut acc = [[0f32; NR]; MR];
        accumulate_portable(x, w, &mut acc);
        for (r, acc) in acc.iter().enumerate().take(out.rows) {
            // SAFETY: row r of the tile, `cols` floats, valid and ours (the caller's
            // contract).
            let row =
                unsafe { std::slice::from_raw_parts_mut(out.ptr.add(r * out.stride), out.cols) };
            for (o, &a) in row.iter_mut().zip(acc) {
                *o = activate_scalar(a + bias[r], act);
            }
        }
    }
}

/// The portable micro-kernel's sums: `acc[r][c]` over the depth groups of
/// `acc + x1 w1 + x0 w0` (each product exact in `f32`), as `vdpbf16ps` adds them.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn accumulate_portable(x: &[u32], w: &[u32], acc: &mut [[f32; NR]; MR]) {
    *acc = [[0.0; NR]; MR];
    for (xg, wg) in x.chunks_exact(NR).zip(w.chunks_exact(MR)) {
        for (acc, &wv) in acc.iter_mut().zip(wg) {
            let (w0, w1) = (bf16_value(wv & 0xffff), bf16_value(wv >> 16));
            for (a, &xv) in acc.iter_mut().zip(xg) {
                let (x0, x1) = (bf16_value(xv & 0xffff), bf16_value(xv >> 16));
                *a = (*a + x1 * w1) + x0 * w0;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, __m512bh, __m512i, _mm256_and_si256, _mm256_loadu_si256, _mm256_set1_epi32,
        _mm256_slli_epi32, _mm256_storeu_si256, _mm512_add_ps, _mm512_and_si512,
        _mm512_castsi512_ps, _mm512_dpbf16_ps, _mm512_fmadd_ps, _mm512_loadu_si512,
        _mm512_mask_storeu_ps, _mm512_reduce_add_ps, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_ps, _mm512_slli_epi32,
    };

    use super::{OutTile, MR, NR};
    use crate::epilogue::Epilogue;
    use crate::lowp::activate;

    /// Depth groups of weights widened to `f32` at a time by [`tile_fma`].
    const CHUNK: usize = 128;

    /// Steps of [`dot_round`] and [`fma_round`].
    const PROBE_STEPS: usize = 2048;

    /// 12 independent accumulator chains of `PROBE_STEPS` steps `acc = $step` (enough
    /// chains to hide the latency, so that the issue rate decides); their sum.
    macro_rules! probe_chains {
        ($acc:ident => $step:expr) => {{
            let mut chains = [_mm512_setzero_ps(); 12];
            for _ in 0..PROBE_STEPS {
                for c in &mut chains {
                    let $acc = *c;
                    *c = $step;
                }
            }
            let sum = chains
                .iter()
                .fold(_mm512_setzero_ps(), |s, &c| _mm512_add_ps(s, c));
            _mm512_reduce_add_ps(sum)
        }};
    }

    /// `vdpbf16ps` chains: 32 products per chain and step.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn dot_round() -> f32 {
        // 1.0 in both bf16 halves: the sums stay exact and finite
        let ones = _mm512_set1_epi32(std::hint::black_box(0x3f80_3f80));
        // SAFETY: 512 bits of plain data either way.
        let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(ones) };
        probe_chains!(acc => _mm512_dpbf16_ps(acc, x, x))
    }

    /// The same 32 products per chain and step as [`dot_round`], in two FMAs.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_round() -> f32 {
        let x = _mm512_set1_ps(std::hint::black_box(1.0));
        probe_chains!(acc => _mm512_fmadd_ps(x, x, _mm512_fmadd_ps(x, x, acc)))
    }

    /// The time of [`dot_round`] and of [`fma_round`], each the best of 7 rounds (so
    /// that a preemption does not decide): `(dot, fma)`, in nanoseconds.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and BF16.
    pub(super) unsafe fn time_dot_and_fma() -> (u128, u128) {
        let best = |round: unsafe fn() -> f32| {
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    // SAFETY: the caller's contract covers both rounds' features.
                    std::hint::black_box(unsafe { round() });
                    t.elapsed().as_nanos()
                })
                .min()
                .unwrap_or(u128::MAX)
        };
        (best(dot_round), best(fma_round))
    }

    /// The AVX512_BF16 micro-kernel: 8 channels x 48 columns of `f32` accumulators;
    /// each depth group loads three vectors of 16 columns x 2 bf16 and, per channel,
    /// broadcasts its two bf16 weights into three `vdpbf16ps`.
    ///
    /// # Safety
    /// As [`super::Format::tile`]; the CPU must have AVX-512F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile_dot(x: &[u32], w: &[u32], out: OutTile, bias: &[f32], act: Epilogue) {
        let groups = w.len() / MR;
        assert!(x.len() >= groups * NR);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        // The same 512 bits seen as 32 bf16.
        let bh = |v: __m512i| -> __m512bh {
            // SAFETY: both types are 512 bits of plain data; any bit pattern is valid.
            unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
        };
        for g in 0..groups {
            let xv: [__m512bh; 3] = std::array::from_fn(|v| {
                // SAFETY: words g * NR..(g + 1) * NR of x exist (asserted above).
                bh(unsafe { _mm512_loadu_si512(xp.add(g * NR + 16 * v).cast()) })
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: g * MR + r < groups * MR = w.len().
                let wv = bh(_mm512_set1_epi32(unsafe { *wp.add(g * MR + r) } as i32));
                for (a, &xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_dpbf16_ps(*a, xv, wv);
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { store(&acc, out, bias, act) }
    }

    /// The AVX-512F micro-kernel: the same products, widened to `f32` (a bf16 is the
    /// upper half of an `f32`) and summed by fused multiply-adds in the order of
    /// `vdpbf16ps` (`acc + x1 w1`, then `+ x0 w0`; each product is exact, so the
    /// results are the same). Two FMAs per 32 products, where this Xeon's `vdpbf16ps`
    /// takes the time of four. Each chunk of weight groups is first widened into
    /// `[w0; MR], [w1; MR]` floats, so that the FMAs take them as broadcast operands.
    ///
    /// # Safety
    /// As [`super::Format::tile`]; the CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_fma(x: &[u32], w: &[u32], out: OutTile, bias: &[f32], act: Epilogue) {
        let groups = w.len() / MR;
        assert!(x.len() >= groups * NR);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let mut wf = [0f32; CHUNK * 2 * MR];
        let (xp, wp, wfp) = (x.as_ptr(), w.as_ptr(), wf.as_mut_ptr());
        let hi = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        for g0 in (0..groups).step_by(CHUNK) {
            let n = CHUNK.min(groups - g0);
            for g in 0..n {
                // SAFETY: words (g0 + g) * MR.. + 8 of w exist (g0 + g < groups), and
                // floats 16g..16g + 16 of wf (g < CHUNK).
                unsafe {
                    let v = _mm256_loadu_si256(wp.add((g0 + g) * MR).cast());
                    _mm256_storeu_si256(wfp.add(16 * g).cast(), _mm256_slli_epi32::<16>(v));
                    let h = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000_u32 as i32));
                    _mm256_storeu_si256(wfp.add(16 * g + MR).cast(), h);
                }
            }
            for g in 0..n {
                let xv: [__m512i; 3] = std::array::from_fn(|v| {
                    // SAFETY: words (g0 + g) * NR..(g0 + g + 1) * NR of x exist.
                    unsafe { _mm512_loadu_si512(xp.add((g0 + g) * NR + 16 * v).cast()) }
                });
                let x0: [__m512; 3] = xv.map(|v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)));
                let x1: [__m512; 3] = xv.map(|v| _mm512_castsi512_ps(_mm512_and_si512(v, hi)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let (w0, w1) = (
                        _mm512_set1_ps(wf[16 * g + r]),
                        _mm512_set1_ps(wf[16 * g + MR + r]),
                    );
                    for v in 0..3 {
                        acc[v] = _mm512_fmadd_ps(x1[v], w1, acc[v]);
                        acc[v] = _mm512_fmadd_ps(x0[v], w0, acc[v]);
                    }
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { store(&acc, out, bias, act) }
    }

    /// `act(acc + bias)` of the tile's rows, stored with masks at the right edge.
    ///
    /// # Safety
    /// As [`super::Format::tile`].
    #[target_feature(enable = "avx512f")]
    unsafe fn store(acc: &[[__m512; 3]; MR], out: OutTile, bias: &[f32], act: Epilogue) {
        for (r, acc) in acc.iter().enumerate().take(out.rows) {
            let b = _mm512_set1_ps(bias[r]);
            for (v, &a) in acc.iter().enumerate() {
                let lanes = out.cols.saturating_sub(16 * v).min(16);
                if lanes == 0 {
                    break;
                }
                let t = activate(_mm512_add_ps(a, b), act);
                let mask = ((1u32 << lanes) - 1) as u16;
                // SAFETY: columns 16v..16v + lanes of row r lie inside the tile (the
                // caller's contract); masked lanes are not touched.
                unsafe { _mm512_mask_storeu_ps(out.ptr.add(r * out.stride + 16 * v), mask, t) };
            }
        }
    }
}

/// The fused bf16 op on a CPU input: `x -> act(conv_bf16(x) + bias)`.
struct Bf16Conv<'a> {
    packed: &'a [u32],
    geom: Geom,
    format: Bf16,
    act: Epilogue,
}

impl CustomOp1 for Bf16Conv<'_> {
    fn name(&self) -> &'static str {
        "conv2d-bf16-bias-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        // (B, C_in, H, W)
        let x = contiguous_f32(s, l, "input")?;
        // (B, C_out, OH, OW)
        let out = driver::run_to_vec(&self.format, g, x, self.packed, self.act);
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.cout, g.oh, g.ow))))
    }
}

/// `act(conv2d(x, w) + bias)` in bf16 for inference: `x` (B, C_in, H, W) `f32` is
/// rounded to bf16 while it is packed, multiplied by the bf16 weights with `f32` sums,
/// and `act(acc + bias[co])` is written as `f32` (B, C_out, OH, OW). `bias` is (C_out,).
///
/// On the CPU this runs the AVX512_BF16 kernel where the CPU has it and `isa` is
/// [`Isa::Native`], else the portable one. With weights prepared on another device it
/// runs candle's `conv2d` on bf16 tensors there (bf16 output rounding included), then
/// the bias and activation in `f32`; the input must be on the weights' device.
pub fn conv2d_bf16_bias_act(
    x: &Tensor,
    weights: &Bf16ConvWeights,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    epilogue: Epilogue,
    isa: Isa,
) -> Result<Tensor> {
    let g = driver::geometry(x.dims4()?, weights.dims, stride, padding)?;
    let packed = match (&weights.stored, x.device().is_cpu()) {
        (Stored::Packed(p), true) => p,
        (Stored::Device(w), false) => {
            let y = x.to_dtype(DType::BF16)?.conv2d(w, padding, stride, 1, 1)?;
            return bias_act(&y.to_dtype(DType::F32)?, bias, epilogue);
        }
        _ => candle_core::bail!(
            "conv2d_bf16: input on {:?}, weights prepared for another device",
            x.device()
        ),
    };
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; g.cout],
    };
    if bias.len() != g.cout {
        candle_core::bail!(
            "conv: bias of {} for {} output channels",
            bias.len(),
            g.cout
        );
    }
    let op = Bf16Conv {
        packed,
        geom: g,
        format: Bf16 {
            bias,
            kernel: Kernel::choose(isa),
        },
        act: epilogue,
    };
    x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&op)
}

/// The bf16 convolution with an explicit thread count (for the tests of both
/// scheduling modes): `out` (B, C_out, OH, OW) from `x` (B, C_in, H, W).
#[cfg(test)]
pub(crate) fn conv_bf16_threads(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    weights: &Bf16ConvWeights,
    bias: &[f32],
    (stride, padding): (usize, usize),
    act: Epilogue,
    (isa, threads): (Isa, usize),
) -> Vec<f32> {
    let g = driver::geometry(dims, weights.dims, stride, padding).unwrap();
    let Stored::Packed(packed) = &weights.stored else {
        panic!("CPU weights expected")
    };
    let format = Bf16 {
        bias: bias.to_vec(),
        kernel: Kernel::choose(isa),
    };
    let len = g.b * g.cout * g.positions();
    let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); len];
    driver::run(&format, &g, x, packed, act, &mut out, threads);
    // SAFETY: NaN-initialised above.
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}
