//! The filter transform of [`crate::winograd`] for 16 x 16 blocks of (output channel,
//! input channel) pairs, in AVX-512.
//!
//! The portable version spends most of its time on the gather that puts the taps of 16
//! output channels side by side (9 scalar loads and stores per filter). Here each
//! channel's run of 16 filters (144 contiguous floats) is loaded as 9 vectors and the
//! 16 x 144 block turned into 144 x 16 by nine in-register 16 x 16 transposes, which
//! makes the transform about 4x faster.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps, _mm512_mul_ps,
    _mm512_set1_ps, _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_sub_ps, _mm512_unpackhi_pd,
    _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps, _mm_prefetch, _MM_HINT_T0,
};

/// Whether this CPU runs [`transform_block`].
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
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

/// `planes[ξ][(row0 + i) * nc + at + l] = (G g Gᵀ)[ξ]` for the filters g of output
/// channel `c + l` and input channel `ci0 + i`, `l, i` in 0..16, of `w`
/// (C_out, C_in, 3, 3). Same arithmetic as the portable version, so the same results.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
///
/// # Panics
/// If the block lies outside `w` or the planes.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transform_block(
    w: &[f32],
    cin: usize,
    (c, ci0): (usize, usize),
    planes: &mut [&mut [f32]; 16],
    (row0, nc, at): (usize, usize, usize),
) {
    assert!(ci0 + 16 <= cin && ((c + 15) * cin + ci0 + 16) * 9 <= w.len());
    let first = (row0 + 15) * nc + at + 16;
    assert!(at + 16 <= nc && planes.iter().all(|p| p.len() >= first));
    // taps[16v + e][l] = float 16v + e of channel c + l's run: tap k of input channel
    // ci0 + i is float 9i + k.
    // The next block of input channels of each run, into L1 meanwhile: the hardware
    // prefetcher does not follow 16 short runs at once (a prefetch never faults, so
    // one past the end of w is harmless).
    for l in 0..16 {
        let next = w.as_ptr().wrapping_add(((c + l) * cin + ci0 + 16) * 9);
        for line in 0..9 {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(16 * line).cast());
        }
    }
    let mut taps = [_mm512_set1_ps(0.0); 144];
    for v in 0..9 {
        // SAFETY: run l is w[((c + l) * cin + ci0) * 9..][..144], inside w (asserted).
        let rows: [__m512; 16] = std::array::from_fn(|l| unsafe {
            _mm512_loadu_ps(w.as_ptr().add(((c + l) * cin + ci0) * 9 + 16 * v))
        });
        taps[16 * v..16 * v + 16].copy_from_slice(&transpose16(rows));
    }
    let half = _mm512_set1_ps(0.5);
    let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
    for i in 0..16 {
        let g = &taps[9 * i..9 * i + 9];
        // G g: 4x3, then (G g) Gᵀ: 4x4, as in `filter_transform`.
        let mut gg = [[half; 3]; 4];
        for k in 0..3 {
            let (g0, g1, g2) = (g[k], g[3 + k], g[6 + k]);
            gg[0][k] = g0;
            gg[1][k] = mul(half, add(add(g0, g1), g2));
            gg[2][k] = mul(half, add(sub(g0, g1), g2));
            gg[3][k] = g2;
        }
        let at = (row0 + i) * nc + at;
        for (row, [a, b, d]) in gg.into_iter().enumerate() {
            let vals = [
                a,
                mul(half, add(add(a, b), d)),
                mul(half, add(sub(a, b), d)),
                d,
            ];
            for (j, v) in vals.into_iter().enumerate() {
                // SAFETY: at + 16 <= planes[ξ].len() (asserted above).
                unsafe { _mm512_storeu_ps(planes[4 * row + j].as_mut_ptr().add(at), v) };
            }
        }
    }
}
