//! The f32 FMA peak of this CPU: the ceiling any convolution kernel here works under.
//!
//! ```sh
//! cargo run --release -p nn-kernels --example fma_peak -- 2   # threads (default 1)
//! ```
//!
//! Each thread runs 24 independent chains of fused multiply-adds on registers (no memory
//! traffic), with AVX-512 where the CPU has it and AVX2+FMA otherwise, and prints its
//! GFLOP/s (2 FLOP per lane per FMA).

// `core::arch` intrinsics behind run-time feature checks.
#![allow(unsafe_code)]

use std::time::Instant;

/// FMAs per chain.
const STEPS: u64 = 100_000_000;

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    /// Runs `$steps` rounds of one FMA on each of the named registers, with `$fma`.
    macro_rules! chains {
        ($steps:expr, $fma:ident, $a:expr, $b:expr, $($x:ident),+) => {
            for _ in 0..$steps {
                $( $x = $fma($x, $a, $b); )+
            }
        };
    }

    /// 24 chains of 16-lane FMAs (named variables: an array here ends up on the stack);
    /// returns a sum so that nothing is optimised away.
    #[target_feature(enable = "avx512f")]
    pub fn avx512(steps: u64) -> f32 {
        // Distinct starting values: equal chains would be merged by the compiler.
        let z: [__m512; 24] = std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 1e-3));
        let (a, b) = (_mm512_set1_ps(0.9999), _mm512_set1_ps(1e-4));
        let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5, mut x6, mut x7, mut x8, mut x9, mut x10, mut x11, mut x12, mut x13, mut x14, mut x15, mut x16, mut x17, mut x18, mut x19, mut x20, mut x21, mut x22, mut x23] =
            z;
        #[rustfmt::skip]
        chains!(steps, _mm512_fmadd_ps, a, b,
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11,
            x12, x13, x14, x15, x16, x17, x18, x19, x20, x21, x22, x23);
        [
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15, x16, x17, x18,
            x19, x20, x21, x22, x23,
        ]
        .iter()
        .map(|&x| _mm512_reduce_add_ps(x))
        .sum()
    }

    /// 12 chains of 8-lane FMAs (AVX2 has 16 registers).
    #[target_feature(enable = "avx2,fma")]
    pub fn avx2(steps: u64) -> f32 {
        let z: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32 * 1e-3));
        let (a, b) = (_mm256_set1_ps(0.9999), _mm256_set1_ps(1e-4));
        let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5, mut x6, mut x7, mut x8, mut x9, mut x10, mut x11] =
            z;
        #[rustfmt::skip]
        chains!(steps, _mm256_fmadd_ps, a, b, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11);
        let sum = [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11]
            .iter()
            .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

/// GFLOP/s of one thread, and the instruction set used.
fn peak() -> (f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        let t = Instant::now();
        let (sum, flop_per_step, isa) = if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected.
            (
                unsafe { kernels::avx512(STEPS) },
                24.0 * 16.0 * 2.0,
                "AVX-512",
            )
        } else if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected.
            (
                unsafe { kernels::avx2(STEPS) },
                12.0 * 8.0 * 2.0,
                "AVX2+FMA",
            )
        } else {
            return (f64::NAN, "no FMA");
        };
        std::hint::black_box(sum);
        (
            STEPS as f64 * flop_per_step / t.elapsed().as_secs_f64() / 1e9,
            isa,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (f64::NAN, "not x86-64")
    }
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(peak)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (gflops, isa)) in results.iter().enumerate() {
        println!("thread {i}: {gflops:.1} GFLOP/s ({isa})");
    }
    let total: f64 = results.iter().map(|r| r.0).sum();
    println!("total: {total:.1} GFLOP/s on {threads} thread(s)");
}
