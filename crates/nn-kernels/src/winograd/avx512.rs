//! The filter transform of [`crate::winograd`] for 16 x 16 blocks of (output channel,
//! input channel) pairs, in AVX-512.
//!
//! The portable version spends most of its time on the gather that puts the taps of 16
//! output channels side by side (9 scalar loads and stores per filter). Here each
//! channel's run of 16 filters (144 contiguous floats) is loaded as 9 vectors and the
//! 16 x 144 block turned into 144 x 16 by nine in-register 16 x 16 transposes, which
//! makes the transform several times faster.
//!
//! Also F(4x4, 3x3)'s output transform for 16 channels of a patch: computed across the
//! channels, then turned by one such transpose into each channel's 4x4 block, which
//! goes to the image in four 128-bit stores instead of 16 scalar ones.

use std::arch::x86_64::{
    __m512, __m512i, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_extractf32x4_ps,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_max_ps,
    _mm512_min_ps, _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_set1_ps, _mm512_setr_epi32,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_sub_ps, _mm512_unpackhi_pd,
    _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps, _mm_mask_storeu_ps, _mm_prefetch,
    _mm_storeu_ps, _MM_HINT_T0,
};

use super::tile::{Tile, LANES};
use crate::epilogue::Epilogue;

/// Whether this CPU runs [`transform_block`] and [`output_block_f4`] (AVX-512F and VL;
/// asked once per process).
pub(crate) fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

/// The transpose of the 16 x 16 matrix whose rows are `r`.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Within each 128-bit lane j, rows 4g..4g + 4 become columns: s[4g + q] holds, in
    // lane j, column 4j + q of rows 4g..4g + 4.
    let mut s = r;
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a, b));
        let t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a, b));
        let t2 = _mm512_castps_pd(_mm512_unpacklo_ps(c, d));
        let t3 = _mm512_castps_pd(_mm512_unpackhi_ps(c, d));
        s[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        s[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        s[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        s[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    // Then the 128-bit lanes: column 4j + q is lane j of s[q], s[4 + q], s[8 + q],
    // s[12 + q].
    let mut out = r;
    for q in 0..4 {
        // Lanes 0 and 2 (0x88) or 1 and 3 (0xdd) of each operand.
        let ta = _mm512_shuffle_f32x4::<0x88>(s[q], s[4 + q]);
        let tb = _mm512_shuffle_f32x4::<0xdd>(s[q], s[4 + q]);
        let tc = _mm512_shuffle_f32x4::<0x88>(s[8 + q], s[12 + q]);
        let td = _mm512_shuffle_f32x4::<0xdd>(s[8 + q], s[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(ta, tc);
        out[8 + q] = _mm512_shuffle_f32x4::<0xdd>(ta, tc);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(tb, td);
        out[12 + q] = _mm512_shuffle_f32x4::<0xdd>(tb, td);
    }
    out
}

/// `u[ξ * pl + (row0 + i) * nc + at + l] = (G g Gᵀ)[ξ]` for the filters g of output
/// channel `c + l` and input channel `ci0 + i`, `l, i` in 0..16, of `w`
/// (C_out, C_in, 3, 3). The arithmetic is that of the portable
/// `winograd::filter_transform`, so the results are the same.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
///
/// # Panics
/// If the block lies outside `w` or `u`.
#[target_feature(enable = "avx512f")]
// Row r of G g is element r of each of its columns: an index reads clearest.
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn transform_block(
    tile: Tile,
    w: &[f32],
    cin: usize,
    (c, ci0): (usize, usize),
    u: &mut [f32],
    (pl, row0, nc, at): (usize, usize, usize, usize),
) {
    assert!(ci0 + 16 <= cin && ((c + 15) * cin + ci0 + 16) * 9 <= w.len());
    assert!(at + 16 <= nc && u.len() >= (tile.planes() - 1) * pl + (row0 + 15) * nc + at + 16);
    // The next block of input channels of each run, into L1 meanwhile: the hardware
    // prefetcher does not follow 16 short runs at once (a prefetch never faults, so
    // one past the end of w is harmless).
    for l in 0..16 {
        let next = w.as_ptr().wrapping_add(((c + l) * cin + ci0 + 16) * 9);
        for line in 0..9 {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(16 * line).cast());
        }
    }
    // taps[16v + e], lane l: float 16v + e of channel c + l's run, where tap k of input
    // channel ci0 + i is float 9i + k. Left uninitialised (zeroing it cost a memset of
    // 9 KiB per block): all 144 are written below before any is read.
    let mut taps = [std::mem::MaybeUninit::<__m512>::uninit(); 144];
    for v in 0..9 {
        // SAFETY: run l is w[((c + l) * cin + ci0) * 9..][..144], inside w (asserted).
        let rows: [__m512; 16] = std::array::from_fn(|l| unsafe {
            _mm512_loadu_ps(w.as_ptr().add(((c + l) * cin + ci0) * 9 + 16 * v))
        });
        for (t, col) in taps[16 * v..16 * v + 16].iter_mut().zip(transpose16(rows)) {
            t.write(col);
        }
    }
    for i in 0..16 {
        // SAFETY: all 144 taps were written above.
        let g: [__m512; 9] = std::array::from_fn(|k| unsafe { taps[9 * i + k].assume_init() });
        let at = (row0 + i) * nc + at;
        // SAFETY: xi * pl + at + 16 <= u.len() for every plane ξ (asserted above).
        let mut store =
            |xi: usize, v: __m512| unsafe { _mm512_storeu_ps(u.as_mut_ptr().add(xi * pl + at), v) };
        // G over each column k of the filter, then over each row i of G g.
        match tile {
            Tile::F2 => {
                let gg: [[__m512; 4]; 3] = std::array::from_fn(|k| g_f2(g[k], g[3 + k], g[6 + k]));
                for r in 0..4 {
                    for (j, v) in g_f2(gg[0][r], gg[1][r], gg[2][r]).into_iter().enumerate() {
                        store(4 * r + j, v);
                    }
                }
            }
            Tile::F4 => {
                let gg: [[__m512; 6]; 3] = std::array::from_fn(|k| g_f4(g[k], g[3 + k], g[6 + k]));
                for r in 0..6 {
                    for (j, v) in g_f4(gg[0][r], gg[1][r], gg[2][r]).into_iter().enumerate() {
                        store(6 * r + j, v);
                    }
                }
            }
        }
    }
}

/// F2's G applied to three taps (a column or a row of a filter), as in
/// [`filter_transform`].
#[inline]
#[target_feature(enable = "avx512f")]
fn g_f2(a: __m512, b: __m512, d: __m512) -> [__m512; 4] {
    let half = _mm512_set1_ps(0.5);
    [
        a,
        _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(a, b), d)),
        _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(a, b), d)),
        d,
    ]
}

/// F4's G applied to three taps, as in [`filter_transform`].
#[inline]
#[target_feature(enable = "avx512f")]
fn g_f4(a: __m512, b: __m512, d: __m512) -> [__m512; 6] {
    let k = _mm512_set1_ps;
    let (q, s, t) = (1.0 / 4.0, 1.0 / 6.0, 1.0 / 24.0);
    let (ta, tb, td) = (
        _mm512_mul_ps(k(t), a),
        _mm512_mul_ps(k(2.0 * t), b),
        _mm512_mul_ps(k(4.0 * t), d),
    );
    [
        _mm512_mul_ps(k(q), a),
        _mm512_mul_ps(k(-s), _mm512_add_ps(_mm512_add_ps(a, b), d)),
        _mm512_mul_ps(k(-s), _mm512_add_ps(_mm512_sub_ps(a, b), d)),
        _mm512_add_ps(_mm512_add_ps(ta, tb), td),
        _mm512_add_ps(_mm512_sub_ps(ta, tb), td),
        d,
    ]
}

/// `act(Aᵀ M A + bias)` of one F(4x4, 3x3) patch for 16 channels, stored to the image:
/// element ξ of channel l is `m[ξ * plane_stride + l]`; channel l's 4x4 block goes to
/// `dst + l * channel_stride`, rows `w` apart, its first `rows` rows and `cols` columns
/// (fewer at the image's bottom and right edges). The arithmetic is the portable
/// `output_tile_f4`'s, with fused multiply-adds.
///
/// # Safety
/// The CPU must have AVX-512F and VL ([`available`]); the 36 runs of 16 floats of `m`
/// valid for reads; the outputs valid for writes, and no one else's meanwhile.
#[target_feature(enable = "avx512f,avx512vl")]
// s[r][j] from column j's outputs r: indices read clearest.
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn output_block_f4(
    (m, plane_stride): (*const f32, usize),
    bias: &[f32; LANES],
    act: Epilogue,
    dst: *mut f32,
    (channel_stride, w): (usize, usize),
    (rows, cols): (usize, usize),
) {
    debug_assert!(rows <= 4 && cols <= 4);
    // Aᵀ over the rows i of ξ = 6i + j: s[r][j]; then over the columns: y[4r + c],
    // output (r, c) of the 16 channels.
    // SAFETY: the caller's 16 floats of plane ξ.
    let m = |xi: usize| unsafe { _mm512_loadu_ps(m.add(xi * plane_stride)) };
    let mut s = [[_mm512_setzero_ps(); 6]; 4];
    for j in 0..6 {
        let o = at_f4([m(j), m(6 + j), m(12 + j), m(18 + j), m(24 + j), m(30 + j)]);
        for r in 0..4 {
            s[r][j] = o[r];
        }
    }
    // SAFETY: bias holds 16 floats.
    let b = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
    let mut y = [_mm512_setzero_ps(); 16];
    for r in 0..4 {
        for (c, v) in at_f4(s[r]).into_iter().enumerate() {
            y[4 * r + c] = activate(act, _mm512_add_ps(v, b));
        }
    }
    // blocks[l], lane 4r + c: output (r, c) of channel l.
    let blocks = transpose16(y);
    let mask = (1u8 << cols) - 1;
    for (l, block) in blocks.into_iter().enumerate() {
        let p = dst.wrapping_add(l * channel_stride);
        let row_of = [
            _mm512_extractf32x4_ps::<0>(block),
            _mm512_extractf32x4_ps::<1>(block),
            _mm512_extractf32x4_ps::<2>(block),
            _mm512_extractf32x4_ps::<3>(block),
        ];
        // SAFETY: the caller's outputs (the mask leaves out columns past `cols`).
        unsafe {
            if rows == 4 && cols == 4 {
                for (r, v) in row_of.into_iter().enumerate() {
                    _mm_storeu_ps(p.add(r * w), v);
                }
            } else {
                for (r, v) in row_of.into_iter().take(rows).enumerate() {
                    _mm_mask_storeu_ps(p.add(r * w), mask, v);
                }
            }
        }
    }
}

/// F4's Aᵀ over one dimension: the 4 outputs of 6 transformed values.
#[inline]
#[target_feature(enable = "avx512f")]
fn at_f4(v: [__m512; 6]) -> [__m512; 4] {
    let (p1, m1) = (_mm512_add_ps(v[1], v[2]), _mm512_sub_ps(v[1], v[2]));
    let (p2, m2) = (_mm512_add_ps(v[3], v[4]), _mm512_sub_ps(v[3], v[4]));
    [
        _mm512_add_ps(_mm512_add_ps(v[0], p1), p2),
        _mm512_fmadd_ps(m2, _mm512_set1_ps(2.0), m1),
        _mm512_fmadd_ps(p2, _mm512_set1_ps(4.0), p1),
        _mm512_add_ps(_mm512_fmadd_ps(m2, _mm512_set1_ps(8.0), m1), v[5]),
    ]
}

/// The activation of [`Epilogue::apply`] on a vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn activate(act: Epilogue, v: __m512) -> __m512 {
    match act {
        Epilogue::Identity => v,
        Epilogue::Relu6 => {
            _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
        }
        // max(x, s * x), as the portable code.
        Epilogue::Leaky(s) => _mm512_max_ps(v, _mm512_mul_ps(v, _mm512_set1_ps(s))),
    }
}

/// F4's B over the columns of each patch of one row of `Bᵀ d` (`row`, at least
/// 4 tw + 2 floats): `v[j][tx]`, tx in 0..tw, is value j of patch tx, whose columns are
/// `row[4tx..4tx + 6]`. Sixteen patches at a time: their six columns gathered by
/// permutes from four (and four more, one patch on) vector loads, masked at the end of
/// the row and of the patches. The arithmetic is that of the portable
/// `winograd::input_cols_f4`.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]); `v[j]` must be valid for writes of `tw`
/// floats, and no one else's meanwhile.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn input_cols_f4(row: &[f32], v: [*mut f32; 6], tw: usize) {
    let len = row.len();
    assert!(len >= 4 * tw + 2);
    // row[at..at + 16], zeros past its end.
    let load = |at: usize| -> __m512 {
        if at + 16 <= len {
            // SAFETY: inside row.
            unsafe { _mm512_loadu_ps(row.as_ptr().add(at)) }
        } else if at < len {
            // SAFETY: the mask keeps to row's last len - at floats.
            unsafe {
                _mm512_maskz_loadu_ps(((1u32 << (len - at)) - 1) as u16, row.as_ptr().add(at))
            }
        } else {
            _mm512_setzero_ps()
        }
    };
    // Lanes 0..8 take floats 4p + j, p in 0..8, of the 32 in (a, b).
    let idx: [__m512i; 4] = std::array::from_fn(|j| {
        let j = j as i32;
        _mm512_setr_epi32(
            j,
            4 + j,
            8 + j,
            12 + j,
            16 + j,
            20 + j,
            24 + j,
            28 + j,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        )
    });
    // Column j of the 16 patches from the 64 floats of src.
    let column = |src: &[__m512; 4], j: usize| -> __m512 {
        let lo = _mm512_permutex2var_ps(src[0], idx[j], src[1]);
        let hi = _mm512_permutex2var_ps(src[2], idx[j], src[3]);
        _mm512_shuffle_f32x4::<0x44>(lo, hi)
    };
    let k = _mm512_set1_ps;
    for k0 in (0..tw).step_by(16) {
        let base = 4 * k0;
        let a: [__m512; 4] = std::array::from_fn(|m| load(base + 16 * m));
        let b: [__m512; 4] = std::array::from_fn(|m| load(base + 4 + 16 * m));
        let (c0, c1, c2, c3) = (column(&a, 0), column(&a, 1), column(&a, 2), column(&a, 3));
        let (c4, c5) = (column(&b, 0), column(&b, 1));
        let out = [
            // 4 c0 - 5 c2 + c4
            _mm512_add_ps(
                _mm512_sub_ps(_mm512_mul_ps(k(4.0), c0), _mm512_mul_ps(k(5.0), c2)),
                c4,
            ),
            // (c3 + c4) - 4 (c1 + c2)
            _mm512_sub_ps(
                _mm512_add_ps(c3, c4),
                _mm512_mul_ps(k(4.0), _mm512_add_ps(c1, c2)),
            ),
            // 4 (c1 - c2) + (c4 - c3)
            _mm512_add_ps(
                _mm512_mul_ps(k(4.0), _mm512_sub_ps(c1, c2)),
                _mm512_sub_ps(c4, c3),
            ),
            // 2 (c3 - c1) + (c4 - c2)
            _mm512_add_ps(
                _mm512_mul_ps(k(2.0), _mm512_sub_ps(c3, c1)),
                _mm512_sub_ps(c4, c2),
            ),
            // 2 (c1 - c3) + (c4 - c2)
            _mm512_add_ps(
                _mm512_mul_ps(k(2.0), _mm512_sub_ps(c1, c3)),
                _mm512_sub_ps(c4, c2),
            ),
            // 4 c1 - 5 c3 + c5
            _mm512_add_ps(
                _mm512_sub_ps(_mm512_mul_ps(k(4.0), c1), _mm512_mul_ps(k(5.0), c3)),
                c5,
            ),
        ];
        let mask = ((1u32 << (tw - k0).min(16)) - 1) as u16;
        for (dst, val) in v.iter().zip(out) {
            // SAFETY: patches k0.. of the caller's rows, the mask keeping below tw.
            unsafe { _mm512_mask_storeu_ps(dst.add(k0), mask, val) };
        }
    }
}

/// Rows of [`gemm_64`]'s products: four vectors of 16.
pub(crate) const GEMM_ROWS: usize = 64;

/// `M (+)= U · V` for one plane of a Winograd task: M (64 x n) column-major (column j
/// at `m + 64 j`), U (64 x k) column-major (column kk at `u + 64 kk`), V (k x n)
/// row-major with rows `v_stride` apart; adds to M where `accumulate`, else
/// overwrites it.
///
/// The `gemm` crate's kernel for the same product first copies U into its packed
/// layout, which U already has; here U is read in place, 64 x 6 blocks of M are held
/// in 24 registers while k runs, and V's six values per step are broadcast straight
/// from its rows.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]); the three matrices must be valid for
/// those reads and writes, and M no one else's meanwhile.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gemm_64(
    (n, k): (usize, usize),
    m: *mut f32,
    u: *const f32,
    (v, v_stride): (*const f32, usize),
    accumulate: bool,
) {
    let mut j = 0;
    while j + 6 <= n {
        // SAFETY: columns j..j + 6, inside n (the caller's word for the rest).
        unsafe { gemm_tile::<6>(k, m.add(GEMM_ROWS * j), u, (v.add(j), v_stride), accumulate) };
        j += 6;
    }
    // SAFETY: the last n - j < 6 columns.
    unsafe {
        let (m, v) = (m.add(GEMM_ROWS * j), (v.add(j), v_stride));
        match n - j {
            0 => {}
            1 => gemm_tile::<1>(k, m, u, v, accumulate),
            2 => gemm_tile::<2>(k, m, u, v, accumulate),
            3 => gemm_tile::<3>(k, m, u, v, accumulate),
            4 => gemm_tile::<4>(k, m, u, v, accumulate),
            _ => gemm_tile::<5>(k, m, u, v, accumulate),
        }
    }
}

/// [`gemm_64`] for N columns of M: 4 x N accumulators.
///
/// # Safety
/// As [`gemm_64`], for n = N.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn gemm_tile<const N: usize>(
    k: usize,
    m: *mut f32,
    u: *const f32,
    (v, v_stride): (*const f32, usize),
    accumulate: bool,
) {
    // Every pointer below stays inside the caller's matrices: M is (N, GEMM_ROWS), U
    // (k, GEMM_ROWS), V (k, N) with row stride v_stride (the function's contract).
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    if accumulate {
        for (c, col) in acc.iter_mut().enumerate() {
            for (r, a) in col.iter_mut().enumerate() {
                // SAFETY: 16 floats of M's column c (c < N), rows 16r..16r + 16 < 64.
                *a = unsafe { _mm512_loadu_ps(m.add(GEMM_ROWS * c + 16 * r)) };
            }
        }
    }
    for kk in 0..k {
        // SAFETY: row kk < k of U and of V.
        let (uk, vk) = unsafe { (u.add(GEMM_ROWS * kk), v.add(kk * v_stride)) };
        // SAFETY: 16 floats of U's row kk, at 16r < GEMM_ROWS.
        let a: [__m512; 4] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(uk.add(16 * r)) });
        for (c, col) in acc.iter_mut().enumerate() {
            // SAFETY: element c < N of V's row kk.
            let b = _mm512_set1_ps(unsafe { *vk.add(c) });
            for (r, x) in col.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(a[r], b, *x);
            }
        }
    }
    for (c, col) in acc.iter().enumerate() {
        for (r, a) in col.iter().enumerate() {
            // SAFETY: as the loads of M above.
            unsafe { _mm512_storeu_ps(m.add(GEMM_ROWS * c + 16 * r), *a) };
        }
    }
}
