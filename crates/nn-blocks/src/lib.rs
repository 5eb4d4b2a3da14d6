#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! - [`ConvBnAct`]: `Conv2d` + `BatchNorm2d` + activation, the building block of
//!   every network here (the seed's `ConvBNReLU`, the head's `conv2d`, Darknet53's
//!   conv/bn/LeakyReLU triples), with the PyTorch tensor names of each variant. Folded
//!   blocks run on the CPU kernels of `nn-kernels`, as their [`KernelPolicy`] says.
//! - [`BlockOptions`]: what every block of a network shares (BatchNorm epsilon and
//!   mode, kernel policy); each network's config carries one.
//! - [`make_divisible`]: the seed's `_make_divisible` channel rounding.
//! - [`Backbone`]: what the YOLOv3 head needs from a feature extractor.
//! - [`summary`]: per-layer shape/parameter/multiply-add accounting (torchsummaryX-like).
//! - [`weights`]: weight sources beyond candle's own: deterministic synthetic weights
//!   (shared with the Python reference script), a recorder of which tensors a model
//!   reads, and a backend that hands tensors over instead of copying them.
//!
//! Errors are candle's (`candle_core::Error`), which name the tensor and the shapes.

mod backbone;
mod conv_bn;
mod divisible;
pub mod summary;
pub mod weights;

pub use backbone::{Backbone, FeatureChannels};
pub use conv_bn::{
    Activation, BlockOptions, BnMode, CalibrationMethod, ConvBnAct, ConvBnConfig, DEFAULT_BN_EPS,
    INT8_TENSORS,
};
pub use divisible::make_divisible;
pub use nn_kernels::{
    add_owned, conv2d_bias_act, depthwise_conv2d, Epilogue, KernelPolicy, Precision, RangeObserver,
    Winograd,
};
