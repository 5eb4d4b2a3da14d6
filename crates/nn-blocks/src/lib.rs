//! Shared layers of yolo-rs.
//!
//! - [`ConvBnAct`]: `Conv2d` + `BatchNorm2d` + activation, the building block of
//!   every network here (the seed's `ConvBNReLU`, the head's `conv2d`, Darknet53's
//!   conv/bn/LeakyReLU triples), with the PyTorch tensor names of each variant.
//! - [`depthwise_conv2d`]: a fast depthwise convolution op (CPU kernel + backward).
//! - [`conv_fast`]: a fast dense convolution with fused bias and activation for
//!   inference on the CPU (GEMM on NCHW, tiled im2col; Winograd F(2x2, 3x3) for 3x3
//!   stride-1 layers of 13x13 and larger).
//! - [`make_divisible`]: the seed's `_make_divisible` channel rounding.
//! - [`Backbone`]: what the YOLOv3 head needs from a feature extractor.
//! - [`summary`]: per-layer shape/parameter/multiply-add accounting (torchsummaryX-like).
//! - [`weights`]: weight sources beyond candle's own: deterministic synthetic weights
//!   (shared with the Python reference script) and a recorder of which tensors a
//!   model reads.

mod backbone;
mod conv_bn;
pub mod conv_fast;
mod depthwise;
mod divisible;
mod error;
pub mod process;
pub mod summary;
pub mod weights;
mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_avx512;

pub use backbone::{Backbone, FeatureChannels};
pub use conv_bn::{Activation, BnMode, ConvBnAct, ConvBnConfig, DEFAULT_BN_EPS};
pub use depthwise::depthwise_conv2d;
pub use divisible::make_divisible;
pub use error::{Error, Result};
