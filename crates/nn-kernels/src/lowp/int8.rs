//! The int8 dense convolution: post-training static quantisation with s8 weights
//! (symmetric, one scale per output channel) and u8 activations (one scale per tensor,
//! zero point 128), `i32` accumulation, `f32` output.
//!
//! With `x ≈ sx (qx - 128)` and `w ≈ sw[co] qw`, each output is
//! `y = act(sx sw[co] (Σ qw qx - 128 Σ qw) + bias[co])`: the second sum, the zero-point
//! compensation, is the weight row sum computed once at load. The micro-kernel
//! (`vpdpbusd`, AVX512_VNNI) multiplies four u8 codes by four s8 weights and adds the
//! products to an `i32` lane in one instruction, 64 products per instruction: each
//! step broadcasts four depths of one channel's weights against 16 columns x 4 depths
//! of codes, 8 channels x 48 columns of accumulators in 24 registers. CPUs with
//! AVX-VNNI but no AVX-512 run the same tile on 256-bit registers in four parts; others
//! the portable kernel (about 0.4x the speed of the `f32` path: there, use `f32`).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::driver::{self, Format, Lane, OutTile, MR, NR};
use super::quant::{pack_u8, quantize_channel_s8, quantize_u8_slice, quantize_u8_split, ActQuant};
use super::{activate_scalar, has_avx_vnni, has_vnni, Isa};
use crate::elementwise::bias_act;
use crate::epilogue::Epilogue;
use crate::im2col::Geom;
use crate::storage::contiguous_f32;

/// Largest depth `C_in * KH * KW` of the int8 kernel: with at most 255 * 128 per
/// product (codes of -128 allowed), every `i32` sum stays exact.
pub const INT8_MAX_DEPTH: usize = (i32::MAX as usize) / (255 * 128);

/// Dense convolution weights quantised to s8 with one `f32` scale per output channel,
/// packed for the int8 kernel (prepared once, at load). Holds the codes as given (for
/// [`Int8ConvWeights::values`], what a quantised file stores) and their packed copy:
/// about two bytes per weight, half of `f32`.
#[derive(Debug, Clone)]
pub struct Int8ConvWeights {
    /// (C_out, C_in, KH, KW)
    dims: (usize, usize, usize, usize),
    /// (C_out, C_in * KH * KW), `w ≈ scales[co] * values[co, k]`.
    values: Vec<i8>,
    /// (C_out,)
    scales: Vec<f32>,
    /// Σ_k values[co, k], for the zero-point compensation. (C_out,)
    row_sums: Vec<i32>,
    /// Panels of MR channels: (C_out / MR, groups, MR) words of four s8 each, in the
    /// groups of [`driver::depth_groups`].
    packed: Vec<u32>,
}

impl Int8ConvWeights {
    /// Quantises `weight` (C_out, C_in, KH, KW) to s8, per output channel:
    /// `scale = max |w| / 127`, `q = round(w / scale)` (to nearest even).
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        let dims = weight.dims4()?;
        let depth = dims.1 * dims.2 * dims.3;
        // (C_out, K) on the host.
        let w = weight
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut values = vec![0i8; w.len()];
        let scales = if depth == 0 {
            vec![1.0; dims.0]
        } else {
            w.chunks_exact(depth)
                .zip(values.chunks_exact_mut(depth))
                .map(|(w, q)| quantize_channel_s8(w, q))
                .collect()
        };
        Self::from_quantized(values, scales, dims)
    }

    /// Weights already quantised (say, read from a quantised file): `values`
    /// (C_out, C_in, KH, KW) row-major with `weight ≈ scales[co] * values`, `scales`
    /// (C_out,) finite and positive. Codes of -128 are allowed (the sums stay exact).
    pub fn from_quantized(
        values: Vec<i8>,
        scales: Vec<f32>,
        dims: (usize, usize, usize, usize),
    ) -> Result<Self> {
        let (cout, cin, kh, kw) = dims;
        let depth = cin * kh * kw;
        if values.len() != cout * depth || scales.len() != cout {
            candle_core::bail!(
                "int8 weights {dims:?}: {} values and {} scales",
                values.len(),
                scales.len()
            );
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            candle_core::bail!("int8 weight scale {s} is not finite and positive");
        }
        if depth > INT8_MAX_DEPTH {
            candle_core::bail!("int8 convolution depth {depth} over {INT8_MAX_DEPTH}");
        }
        let row_sums = if depth == 0 {
            vec![0; cout]
        } else {
            values
                .chunks_exact(depth)
                .map(|r| r.iter().map(|&v| i32::from(v)).sum())
                .collect()
        };
        let packed = driver::pack_weights(dims, u8::PER_WORD, |i| u32::from(values[i] as u8));
        Ok(Self {
            dims,
            values,
            scales,
            row_sums,
            packed,
        })
    }

    /// (C_out, C_in, KH, KW)
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        self.dims
    }

    /// The s8 codes, (C_out, C_in, KH, KW) row-major (what a quantised file stores).
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// The per-output-channel scales, (C_out,).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The weights the kernel effectively multiplies, `scales[co] * values`, as an
    /// `f32` tensor (C_out, C_in, KH, KW) on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let depth = self.dims.1 * self.dims.2 * self.dims.3;
        let w: Vec<f32> = self
            .values
            .iter()
            .enumerate()
            .map(|(i, &q)| self.scales[i / depth.max(1)] * f32::from(q))
            .collect();
        Tensor::from_vec(w, self.dims, device)
    }
}

/// The int8 format of the dense driver.
struct Int8 {
    /// `1 / sx`.
    inv: f32,
    /// `sx * sw[co]`. (C_out,)
    scale: Vec<f32>,
    /// `128 * Σ_k qw[co, k]`. (C_out,)
    comp: Vec<i32>,
    /// (C_out,)
    bias: Vec<f32>,
    kernel: Kernel,
}

/// The int8 micro-kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust (auto-vectorised).
    Portable,
    /// `vpdpbusd` on 512-bit registers (AVX-512F, BW and VNNI).
    Avx512Vnni,
    /// `vpdpbusd` on 256-bit registers (AVX2 and AVX-VNNI: client CPUs without
    /// AVX-512).
    AvxVnni,
}

impl Kernel {
    /// The kernel `isa` asks for on this CPU: the widest VNNI it has unless
    /// [`Isa::Portable`].
    pub(crate) fn choose(isa: Isa) -> Self {
        match isa {
            Isa::Portable => Kernel::Portable,
            _ if has_vnni() => Kernel::Avx512Vnni,
            _ if has_avx_vnni() => Kernel::AvxVnni,
            _ => Kernel::Portable,
        }
    }

    /// The kernel's name, for logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
        }
    }
}

impl Int8 {
    /// The format of one call: input quantisation `x_quant`, `bias` (C_out,), on
    /// micro-kernel `kernel` (which this CPU must run).
    fn new(weights: &Int8ConvWeights, x_quant: ActQuant, bias: Vec<f32>, kernel: Kernel) -> Self {
        Self {
            inv: 1.0 / x_quant.scale(),
            scale: weights.scales.iter().map(|s| x_quant.scale() * s).collect(),
            comp: weights.row_sums.iter().map(|s| 128 * s).collect(),
            bias,
            kernel,
        }
    }

    /// The epilogue parameters of the output channels of `out`.
    fn epilogue(&self, out: &OutTile, act: Epilogue) -> TileEpilogue<'_> {
        let co = out.co0..out.co0 + out.rows;
        TileEpilogue {
            comp: &self.comp[co.clone()],
            scale: &self.scale[co.clone()],
            bias: &self.bias[co],
            act,
        }
    }
}

/// u8 codes, four depths to a word (byte `j` is depth `4g + j`).
impl Lane for u8 {
    const PER_WORD: usize = 4;
    const PAD: u8 = ActQuant::ZERO_POINT;

    #[inline(always)]
    fn word(e: [u8; 4]) -> u32 {
        u32::from_le_bytes(e)
    }

    #[inline(always)]
    fn words16(rows: [&[u8; 16]; 4]) -> [u32; 16] {
        // Plain loops: `array::map` and `from_fn` were left as calls in the hot loop.
        let mut words = [0u32; 16];
        for (j, row) in rows.iter().enumerate() {
            for (w, &v) in words.iter_mut().zip(row.iter()) {
                *w |= u32::from(v) << (8 * j);
            }
        }
        words
    }

    fn pack_taps(g: &Geom, x: &[u8], cols: (usize, usize), dst: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx512bw_vl() {
            // SAFETY: the CPU has AVX-512F, BW and VL (checked above).
            return unsafe { pack_avx512::pack_taps(g, x, cols, dst) };
        }
        pack_taps_u8(g, x, cols, dst);
    }
}

/// [`driver::pack_taps_generic`] on u8 codes, in plain Rust.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub(super) fn pack_taps_u8(g: &Geom, x: &[u8], cols: (usize, usize), dst: &mut [u32]) {
    driver::pack_taps_generic(g, x, cols, dst, driver::interleave_portable);
}

/// [`driver::pack_taps_generic`] on u8 codes with AVX-512: sixteen words per step, the
/// last step of a run with masked loads and stores (no scalar tail: the runs of 13x13
/// and 26x26 maps are shorter than two vectors).
#[cfg(target_arch = "x86_64")]
mod pack_avx512 {
    use std::arch::x86_64::{
        _mm512_cvtepu8_epi32, _mm512_mask_storeu_epi32, _mm512_or_si512, _mm512_slli_epi32,
        _mm_maskz_loadu_epi8,
    };

    use super::{driver, Geom};

    /// # Safety
    /// The CPU must have AVX-512F, BW and VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn pack_taps(g: &Geom, x: &[u8], cols: (usize, usize), dst: &mut [u32]) {
        // SAFETY: this function's features are the ones `interleave` needs.
        driver::pack_taps_generic(g, x, cols, dst, |rows, words| unsafe {
            interleave(rows, words)
        });
    }

    /// `words[c]` = byte `j` from `rows[j][c]` (each row `words.len()` long).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn interleave(rows: [&[u8]; 4], words: &mut [u32]) {
        let n = words.len();
        assert!(rows.iter().all(|r| r.len() == n));
        for c in (0..n).step_by(16) {
            let lanes = (n - c).min(16);
            let mask = (u32::MAX >> (32 - lanes)) as u16;
            // SAFETY: lanes c..c + lanes of each row and of `words` exist (n long);
            // masked-off lanes are neither read nor written.
            unsafe {
                let byte = |j: usize| {
                    let v = _mm_maskz_loadu_epi8(mask, rows[j].as_ptr().add(c).cast());
                    _mm512_cvtepu8_epi32(v)
                };
                let lo = _mm512_or_si512(byte(0), _mm512_slli_epi32::<8>(byte(1)));
                let hi = _mm512_or_si512(
                    _mm512_slli_epi32::<16>(byte(2)),
                    _mm512_slli_epi32::<24>(byte(3)),
                );
                let w = _mm512_or_si512(lo, hi);
                _mm512_mask_storeu_epi32(words.as_mut_ptr().add(c).cast(), mask, w);
            }
        }
    }
}

impl Format for Int8 {
    type Elem = u8;

    fn convert(&self, x: &[f32], dst: &mut [u8]) {
        quantize_u8_slice(x, self.inv, dst);
    }

    fn convert_split(&self, x: &[f32], w: usize, dst: &mut [u8]) {
        quantize_u8_split(x, w, self.inv, dst);
    }

    fn pack_f32(&self, rows: [&[f32]; 4], dst: &mut [u32]) {
        pack_u8(rows, self.inv, dst);
    }

    unsafe fn tile(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue) {
        let ep = self.epilogue(&out, act);
        #[cfg(target_arch = "x86_64")]
        match self.kernel {
            // SAFETY: Avx512Vnni is only chosen where the CPU has AVX-512F/BW/VNNI;
            // the caller's contract covers `out`.
            Kernel::Avx512Vnni => return unsafe { vnni::tile(x, w, out, &ep) },
            // SAFETY: AvxVnni is only chosen where the CPU has AVX2 and AVX-VNNI; as
            // above.
            Kernel::AvxVnni => return unsafe { avx_vnni::tile(x, w, out, &ep) },
            Kernel::Portable => {}
        }
        // SAFETY: the caller's contract covers `out`.
        unsafe { tile_portable(x, w, out, &ep) }
    }

    unsafe fn tiles(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Kernel::Avx512Vnni {
            let ep = self.epilogue(&out, act);
            // SAFETY: Avx512Vnni is only chosen where the CPU has AVX-512F/BW/VNNI; the
            // caller's contract covers `out`.
            return unsafe { vnni::tiles(x, w, out, &ep) };
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { driver::tile_by_tile(self, x, w, out, act) }
    }
}

/// The per-channel parameters of one tile's epilogue (`rows` long each):
/// `y = act(((acc - comp) as f32) * scale + bias)`, a product then a sum in both
/// kernels, so that they agree bit for bit.
struct TileEpilogue<'a> {
    comp: &'a [i32],
    scale: &'a [f32],
    bias: &'a [f32],
    act: Epilogue,
}

impl TileEpilogue<'_> {
    /// The output of row `r` for accumulator `acc`.
    #[inline(always)]
    fn apply(&self, r: usize, acc: i32) -> f32 {
        let t = (acc.wrapping_sub(self.comp[r])) as f32 * self.scale[r] + self.bias[r];
        activate_scalar(t, self.act)
    }
}

/// The portable micro-kernel's sums: `acc[r][c] = Σ` of the u8 x s8 products of
/// channel r and column c (the same sums as `vpdpbusd`, which cannot overflow here).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn accumulate_portable(x: &[u32], w: &[u32], acc: &mut [[i32; NR]; MR]) {
    *acc = [[0; NR]; MR];
    for (xg, wg) in x.chunks_exact(NR).zip(w.chunks_exact(MR)) {
        for (acc, &wv) in acc.iter_mut().zip(wg) {
            let wb = wv.to_le_bytes().map(|b| i32::from(b as i8));
            for (a, &xv) in acc.iter_mut().zip(xg) {
                let xb = xv.to_le_bytes().map(i32::from);
                *a += xb[0] * wb[0] + xb[1] * wb[1] + xb[2] * wb[2] + xb[3] * wb[3];
            }
        }
    }
}

/// The portable micro-kernel: [`accumulate_portable`], then the epilogue.
///
/// # Safety
/// As [`Format::tile`].
#[inline(never)] // (its 1.5 KiB of accumulators off the dispatching frame)
unsafe fn tile_portable(x: &[u32], w: &[u32], out: OutTile, ep: &TileEpilogue) {
    let mut acc = [[0i32; NR]; MR];
    accumulate_portable(x, w, &mut acc);
    for (r, acc) in acc.iter().enumerate().take(out.rows) {
        // SAFETY: row r of the tile, `cols` floats, valid and ours (the caller's
        // contract).
        let row = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(r * out.stride), out.cols) };
        for (o, &a) in row.iter_mut().zip(acc) {
            *o = ep.apply(r, a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::{
        __m512i, _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_loadu_si512,
        _mm512_mask_storeu_ps, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_si512, _mm512_sub_epi32,
    };

    use super::{OutTile, TileEpilogue, MR, NR};
    use crate::lowp::activate;

    /// The VNNI micro-kernel: 8 channels x 48 columns of `i32` accumulators; each
    /// depth group loads three vectors of 16 columns x 4 codes and, per channel,
    /// broadcasts its four s8 weights into three `vpdpbusd`. A tile of at most 32 or 16
    /// columns (the last panel of an image: 169 = 3 x 48 + 25 positions at 13x13,
    /// 676 = 14 x 48 + 4 at 26x26) runs on two or one vector only.
    ///
    /// # Safety
    /// As [`super::Format::tile`]; the CPU must have AVX-512F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(x: &[u32], w: &[u32], out: OutTile, ep: &TileEpilogue) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match out.cols.div_ceil(16) {
                0 | 1 => tile_vectors::<1>(x, w, out, ep),
                2 => tile_vectors::<2>(x, w, out, ep),
                _ => tile_vectors::<3>(x, w, out, ep),
            }
        }
    }

    /// [`tile`] along a row of tiles, as [`super::Format::tiles`].
    ///
    /// # Safety
    /// As [`super::Format::tiles`]; the CPU must have AVX-512F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tiles(x: &[u32], w: &[u32], out: OutTile, ep: &TileEpilogue) {
        let words = w.len() / MR * NR;
        assert!(x.len() >= out.cols.div_ceil(NR) * words);
        for pi in 0..out.cols.div_ceil(NR) {
            let tile = OutTile {
                // SAFETY: column pi * NR < out.cols of the row (the caller's contract).
                ptr: unsafe { out.ptr.add(pi * NR) },
                cols: NR.min(out.cols - pi * NR),
                ..out
            };
            let x = &x[pi * words..][..words];
            // SAFETY: the tile is inside the caller's row; the CPU has the features.
            unsafe { self::tile(x, w, tile, ep) };
        }
    }

    /// [`tile`] on the first `V` vectors of 16 columns (`out.cols <= 16 V`).
    ///
    /// # Safety
    /// As [`tile`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_vectors<const V: usize>(x: &[u32], w: &[u32], out: OutTile, ep: &TileEpilogue) {
        let groups = w.len() / MR;
        assert!(x.len() >= groups * NR && out.cols <= 16 * V && V <= NR / 16);
        let mut acc = [[_mm512_setzero_si512(); V]; MR];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for g in 0..groups {
            // SAFETY: words g * NR..g * NR + 16 V of x exist (asserted above).
            let xv: [__m512i; V] = std::array::from_fn(|v| unsafe {
                _mm512_loadu_si512(xp.add(g * NR + 16 * v).cast())
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: g * MR + r < groups * MR = w.len().
                let wv = _mm512_set1_epi32(unsafe { *wp.add(g * MR + r) } as i32);
                for (a, &xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_dpbusd_epi32(*a, xv, wv);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(out.rows) {
            let comp = _mm512_set1_epi32(ep.comp[r]);
            let (scale, bias) = (_mm512_set1_ps(ep.scale[r]), _mm512_set1_ps(ep.bias[r]));
            for (v, &a) in acc.iter().enumerate() {
                let lanes = out.cols.saturating_sub(16 * v).min(16);
                if lanes == 0 {
                    break;
                }
                let t = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, comp));
                let t = activate(_mm512_add_ps(_mm512_mul_ps(t, scale), bias), ep.act);
                let mask = ((1u32 << lanes) - 1) as u16;
                // SAFETY: columns 16v..16v + lanes of row r lie inside the tile (the
                // caller's contract); masked lanes are not touched.
                unsafe { _mm512_mask_storeu_ps(out.ptr.add(r * out.stride + 16 * v), mask, t) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx_vnni {
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_add_ps, _mm256_cvtepi32_ps, _mm256_dpbusd_avx_epi32,
        _mm256_loadu_si256, _mm256_max_ps, _mm256_min_ps, _mm256_mul_ps, _mm256_set1_epi32,
        _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_storeu_ps,
        _mm256_sub_epi32,
    };

    use super::{OutTile, TileEpilogue, MR, NR};
    use crate::epilogue::Epilogue;

    /// `act` on 8 lanes, as [`TileEpilogue::apply`].
    #[inline]
    #[target_feature(enable = "avx2")]
    fn activate(t: __m256, act: Epilogue) -> __m256 {
        match act {
            Epilogue::Identity => t,
            Epilogue::Relu6 => {
                _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(6.0))
            }
            Epilogue::Leaky(s) => _mm256_max_ps(t, _mm256_mul_ps(t, _mm256_set1_ps(s))),
        }
    }

    /// The AVX-VNNI micro-kernel, for CPUs with 16 vector registers: the 8 x 48 tile
    /// as four sub-tiles of 4 channels x 24 columns (12 `i32` accumulators), each over
    /// the whole depth: per depth group three loads of 8 columns x 4 codes and, per
    /// channel, a broadcast of its four weights into three `vpdpbusd`.
    ///
    /// # Safety
    /// As [`super::Format::tile`]; the CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile(x: &[u32], w: &[u32], out: OutTile, ep: &TileEpilogue) {
        let groups = w.len() / MR;
        assert!(x.len() >= groups * NR);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for r0 in (0..out.rows).step_by(4) {
            for c0 in (0..out.cols).step_by(24) {
                let mut acc = [[_mm256_setzero_si256(); 3]; 4];
                for g in 0..groups {
                    let xv: [__m256i; 3] = std::array::from_fn(|v| {
                        // SAFETY: words g * NR + c0 + 8v.. + 8 of x exist (c0 + 8v + 8
                        // <= NR, asserted length).
                        unsafe { _mm256_loadu_si256(xp.add(g * NR + c0 + 8 * v).cast()) }
                    });
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: g * MR + r0 + r < groups * MR = w.len() (r0 + r < 8).
                        let wv = _mm256_set1_epi32(unsafe { *wp.add(g * MR + r0 + r) } as i32);
                        for (a, &xv) in acc.iter_mut().zip(&xv) {
                            *a = _mm256_dpbusd_avx_epi32(*a, xv, wv);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(out.rows - r0) {
                    let row = r0 + r;
                    let comp = _mm256_set1_epi32(ep.comp[row]);
                    let (scale, bias) =
                        (_mm256_set1_ps(ep.scale[row]), _mm256_set1_ps(ep.bias[row]));
                    for (v, &a) in acc.iter().enumerate() {
                        let col = c0 + 8 * v;
                        let lanes = out.cols.saturating_sub(col).min(8);
                        if lanes == 0 {
                            break;
                        }
                        let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(a, comp));
                        let t = activate(_mm256_add_ps(_mm256_mul_ps(t, scale), bias), ep.act);
                        let mut lane = [0f32; 8];
                        // SAFETY: `lane` holds 8 floats.
                        unsafe { _mm256_storeu_ps(lane.as_mut_ptr(), t) };
                        // SAFETY: columns col..col + lanes of this row lie inside the
                        // tile (the caller's contract).
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.ptr.add(row * out.stride + col),
                                lanes,
                            )
                        };
                        dst.copy_from_slice(&lane[..lanes]);
                    }
                }
            }
        }
    }
}

/// The fused int8 op on a CPU input: `x -> act(conv_int8(x) + bias)`.
struct Int8Conv<'a> {
    weights: &'a Int8ConvWeights,
    geom: crate::im2col::Geom,
    format: Int8,
    act: Epilogue,
}

impl CustomOp1 for Int8Conv<'_> {
    fn name(&self) -> &'static str {
        "conv2d-int8-bias-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        // (B, C_in, H, W)
        let x = contiguous_f32(s, l, "input")?;
        // (B, C_out, OH, OW)
        let out = driver::run_to_vec(&self.format, g, x, &self.weights.packed, self.act);
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.cout, g.oh, g.ow))))
    }
}

/// `act(conv2d(x, w) + bias)` in int8 for inference: `x` (B, C_in, H, W) `f32` is
/// quantised with `x_quant` (from calibration; values outside its range are clamped)
/// while it is packed, multiplied by the s8 weights with `i32` sums, and the result
/// `act(sx sw[co] acc + bias[co])` is written as `f32` (B, C_out, OH, OW), so that
/// layers exchange `f32` maps. `bias` is (C_out,).
///
/// On the CPU this runs the VNNI kernel where the CPU has AVX512_VNNI and `isa` is not
/// [`Isa::Portable`], else the portable one (same results, bit for bit). On other
/// devices it runs [`conv2d_int8_simulated`]: slow, for checking, not serving.
pub fn conv2d_int8_bias_act(
    x: &Tensor,
    weights: &Int8ConvWeights,
    x_quant: ActQuant,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    epilogue: Epilogue,
    isa: Isa,
) -> Result<Tensor> {
    let g = driver::geometry(x.dims4()?, weights.dims, stride, padding)?;
    let bias_v = match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; g.cout],
    };
    if bias_v.len() != g.cout {
        candle_core::bail!(
            "conv: bias of {} for {} output channels",
            bias_v.len(),
            g.cout
        );
    }
    if !x.device().is_cpu() {
        return conv2d_int8_simulated(x, weights, x_quant, bias, (stride, padding), epilogue);
    }
    let format = Int8::new(weights, x_quant, bias_v, Kernel::choose(isa));
    let op = Int8Conv {
        weights,
        geom: g,
        format,
        act: epilogue,
    };
    x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&op)
}

/// The arithmetic of [`conv2d_int8_bias_act`] simulated with candle's operations, on
/// any device: `x` through [`ActQuant::fake_quantize`], an `f32` convolution with the
/// [`Int8ConvWeights::dequantize`]d weights (copied to `x`'s device at each call),
/// then the bias and activation. The same codes as the kernel, summed in `f32` instead
/// of `i32`: what [`conv2d_int8_bias_act`] runs on other devices (slow, for checking),
/// and a reference for tests.
pub fn conv2d_int8_simulated(
    x: &Tensor,
    weights: &Int8ConvWeights,
    x_quant: ActQuant,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    epilogue: Epilogue,
) -> Result<Tensor> {
    let xq = x_quant.fake_quantize(x)?;
    let y = xq.conv2d(&weights.dequantize(x.device())?, padding, stride, 1, 1)?;
    bias_act(&y, bias, epilogue)
}

/// The int8 convolution with an explicit thread count (for the tests of both
/// scheduling modes): `out` (B, C_out, OH, OW) from `x` (B, C_in, H, W).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_int8_threads(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    weights: &Int8ConvWeights,
    x_quant: ActQuant,
    bias: &[f32],
    (stride, padding): (usize, usize),
    act: Epilogue,
    (kernel, threads): (Kernel, usize),
) -> Vec<f32> {
    let g = driver::geometry(dims, weights.dims, stride, padding).unwrap();
    let format = Int8::new(weights, x_quant, bias.to_vec(), kernel);
    let len = g.b * g.cout * g.positions();
    let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); len];
    driver::run(&format, &g, x, &weights.packed, act, &mut out, threads);
    // SAFETY: NaN-initialised above.
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}
