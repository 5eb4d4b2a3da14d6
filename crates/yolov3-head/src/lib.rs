#![doc = include_str!("../README.md")]
//!
//! ## Tensor names
//!
//! Mirrors the seed's `YoloBody(anchors_mask, num_classes, backbone)` and
//! `make_last_layers` (bubbliiiing/yolo3-pytorch `nets/yolo.py`), with the same
//! `state_dict` names: `backbone.*`, `last_layer0.{0..6}`, `last_layer1_conv`,
//! `last_layer1`, `last_layer2_conv`, `last_layer2`.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use yolov3_head::{YoloBody, YoloConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! let vb = unsafe {
//!     VarBuilder::from_mmaped_safetensors(&["yolo.safetensors"], DType::F32, &device)?
//! };
//! let model = YoloBody::new(&YoloConfig::voc_mobilenetv2(), vb)?;
//! let x = Tensor::zeros((1, 3, 416, 416), DType::F32, &device)?;
//! let (out0, out1, out2) = model.forward(&x)?; // (1,75,13,13), (1,75,26,26), (1,75,52,52)
//! # Ok(()) }
//! ```

mod body;
mod config;
mod error;

pub use body::{LastLayers, YoloBody, INPUT_STRIDE};
pub use config::{BackboneKind, YoloConfig, YOLO_ANCHORS, YOLO_ANCHORS_MASK};
pub use error::{Error, Result};

mod anchors;
mod classes;
pub mod decode;
mod detection;
mod detector;
pub mod nms;
pub mod postprocess;
pub mod preprocess;

pub use anchors::Anchors;
pub use classes::ClassNames;
pub use detection::Detection;
pub use detector::{postprocess_heads, Detector, DetectorConfig};
pub use preprocess::{load_image, load_image_from_memory, ResizeMode, DEFAULT_MAX_PIXELS};
