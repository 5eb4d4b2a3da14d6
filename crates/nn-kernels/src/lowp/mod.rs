//! Low-precision dense and depthwise convolutions for CPU inference: bf16 operands with
//! `f32` accumulation, and u8 x s8 products with `i32` accumulation.
//!
//! Both take and return `f32` NCHW feature maps, so that layers of different precisions
//! can be mixed: the input is rounded (bf16) or quantised (u8) while it is packed for
//! the micro-kernel, and the epilogue (scales, bias, activation) writes `f32`.
//!
//! - [`bf16`]: [`Bf16ConvWeights`] and [`conv2d_bf16_bias_act`] (FMAs on the operands
//!   widened to `f32` with AVX-512F, or `vdpbf16ps` with AVX512_BF16);
//! - [`int8`]: [`Int8ConvWeights`] and [`conv2d_int8_bias_act`] (`vpdpbusd` on
//!   AVX512_VNNI), the activation scale an [`ActQuant`] from calibration ([`quant`]);
//! - [`depthwise`]: [`Int8DepthwiseWeights`] and [`depthwise3x3_int8_bias_act`];
//! - [`driver`]: the tiling and threading both dense kernels share.
//!
//! Every kernel has a portable version with the same operands (and, for int8, the same
//! results bit for bit), run on CPUs without the instructions or when the caller asks
//! for [`Isa::Portable`]. The design, the data layouts and the error bounds are in
//! `docs/lowp-kernels.md`.

pub(crate) mod bf16;
pub(crate) mod depthwise;
pub(crate) mod driver;
pub(crate) mod int8;
pub(crate) mod quant;

#[cfg(test)]
mod tests;

pub use bf16::{conv2d_bf16_bias_act, Bf16ConvWeights};
pub use depthwise::{
    depthwise3x3_int8_bias_act, depthwise3x3_int8_simulated, Int8DepthwiseWeights,
};
pub use int8::{conv2d_int8_bias_act, conv2d_int8_simulated, Int8ConvWeights, INT8_MAX_DEPTH};
pub use quant::{bf16_round, ActQuant, RangeObserver};

/// Which micro-kernels the low-precision convolutions run: a plain argument, so that a
/// test can compare the two paths in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isa {
    /// The fastest SIMD kernels this CPU has (detected once per process): `vpdpbusd`
    /// for int8 (AVX512_VNNI, else AVX-VNNI on 256-bit registers); for bf16,
    /// `vdpbf16ps` (AVX512_BF16) where it outruns fused multiply-adds on the operands
    /// widened to `f32` (AVX-512F), else those (both timed once per process: the FMAs
    /// win 2x on the Xeons measured, `vdpbf16ps` 1.8x on AMD Zen 4). The portable
    /// kernels where the CPU lacks the instructions.
    #[default]
    Native,
    /// As [`Isa::Native`], but bf16 runs the `vdpbf16ps` micro-kernel wherever the CPU
    /// has AVX512_BF16, however fast (for tests and measurements).
    Bf16Dot,
    /// The portable kernels, whatever the CPU.
    Portable,
}

impl Isa {
    /// The int8 micro-kernel this choice runs on this CPU (for logs and benchmarks):
    /// `"avx512-vnni"`, `"avx-vnni"` or `"portable"`.
    pub fn int8_kernel(self) -> &'static str {
        int8::Kernel::choose(self).name()
    }

    /// The bf16 micro-kernel this choice runs on this CPU: `"vdpbf16ps"`, `"fma"` or
    /// `"portable"`.
    pub fn bf16_kernel(self) -> &'static str {
        bf16::Kernel::choose(self).label()
    }
}

/// Whether this CPU runs the bf16 FMA micro-kernel (AVX-512F; asked once per process).
pub(crate) fn has_avx512f() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU has AVX-512F, BW and VL: the masked byte and word loads that pack
/// activations in [`driver::pack_taps_generic`] (asked once per process).
pub(crate) fn has_avx512bw_vl() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU runs the 256-bit VNNI int8 micro-kernel (AVX2 and AVX-VNNI; asked
/// once per process).
pub(crate) fn has_avx_vnni() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("avxvnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU runs the VNNI int8 micro-kernel (AVX-512F, BW and VNNI; asked
/// once per process).
pub(crate) fn has_vnni() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU runs the bf16 micro-kernel (AVX-512F, BW and BF16; asked once per
/// process).
pub(crate) fn has_avx512_bf16() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `act` on 16 lanes (`Relu6` as `min(max(t, 0), 6)`, `Leaky(s)` as `max(t, s t)`): the
/// SIMD epilogues' activation, the same arithmetic as the portable ones'.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn activate(
    t: std::arch::x86_64::__m512,
    act: crate::epilogue::Epilogue,
) -> std::arch::x86_64::__m512 {
    use crate::epilogue::Epilogue;
    use std::arch::x86_64::{_mm512_max_ps, _mm512_min_ps, _mm512_mul_ps, _mm512_set1_ps};
    match act {
        Epilogue::Identity => t,
        Epilogue::Relu6 => {
            _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(0.0)), _mm512_set1_ps(6.0))
        }
        Epilogue::Leaky(s) => _mm512_max_ps(t, _mm512_mul_ps(t, _mm512_set1_ps(s))),
    }
}

/// `act(t)` on one value, as [`activate`] does on 16.
#[inline(always)]
pub(crate) fn activate_scalar(t: f32, act: crate::epilogue::Epilogue) -> f32 {
    use crate::epilogue::Epilogue;
    match act {
        Epilogue::Identity => t,
        Epilogue::Relu6 => t.clamp(0.0, 6.0),
        Epilogue::Leaky(s) => t.max(t * s),
    }
}
