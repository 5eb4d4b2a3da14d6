#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! - [`conv2d_bias_act`] (`dense`): dense convolution by tiled im2col and GEMM with the
//!   epilogue fused; 3x3 stride-1 layers by Winograd's F(2x2, 3x3) or F(4x4, 3x3)
//!   (`winograd`, with AVX-512 transforms and a 64-row AVX-512 GEMM).
//! - [`depthwise_conv2d`] (with a backward pass, for training) and
//!   [`depthwise_conv2d_bias_act`] (the fused 3x3 kernel of inference).
//! - [`bias_act`], [`bias_act_owned`], [`add_owned`]: element-wise passes, in place
//!   where the tensor may be overwritten.
//! - Low precision (`lowp`): [`conv2d_bf16_bias_act`] with [`Bf16ConvWeights`] (bf16
//!   operands, `f32` sums; AVX-512 FMA or AVX512_BF16), [`conv2d_int8_bias_act`] with
//!   [`Int8ConvWeights`] and [`depthwise3x3_int8_bias_act`] with
//!   [`Int8DepthwiseWeights`] (u8 x s8, `i32` sums; AVX512_VNNI or AVX-VNNI), the
//!   activation scale an [`ActQuant`] from calibration ([`RangeObserver`]);
//!   [`conv2d_int8_simulated`] and [`depthwise3x3_int8_simulated`], the same arithmetic
//!   in candle's ops (any device). `f32` maps in and out; [`Isa`] picks the SIMD or the
//!   portable micro-kernels.
//! - [`KernelPolicy`]: which fast paths run, chosen by the caller for each call (a
//!   model holds one from its configuration), and [`Precision`], the arithmetic a
//!   model's convolutions run in. Nothing here reads the environment.
//! - [`pool_threads`]: the kernels run on candle's own CPU worker pool.
//!
//! This is the one crate of the workspace with `unsafe` code (raw GEMM entry points,
//! SIMD intrinsics, workers writing disjoint parts of one buffer); each block says why
//! it is sound in a `SAFETY` comment.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod dense;
mod depthwise;
mod elementwise;
mod epilogue;
mod gemm;
mod im2col;
mod lowp;
mod policy;
mod pool;
mod storage;
mod winograd;

pub use dense::{conv2d_bias_act, WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_POSITIONS};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_bias_act};
pub use elementwise::{add_owned, bias_act, bias_act_owned};
pub use epilogue::Epilogue;
pub use lowp::{
    bf16_round, conv2d_bf16_bias_act, conv2d_int8_bias_act, conv2d_int8_simulated,
    depthwise3x3_int8_bias_act, depthwise3x3_int8_simulated, ActQuant, Bf16ConvWeights,
    Int8ConvWeights, Int8DepthwiseWeights, Isa, RangeObserver, INT8_MAX_DEPTH,
};
pub use policy::{parse_switch, KernelPolicy, ParseSwitchError, Precision, Winograd};
pub use pool::pool_threads;
