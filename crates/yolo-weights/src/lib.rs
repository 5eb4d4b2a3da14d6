#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! The canonical file (reference PyTorch names: bubbliiiing's `YoloBody`, torchvision's
//! `MobileNetV2`) is read and written by [`load`]. Everything else is converted into it:
//!
//! - [`darknet`]: darknet `.weights` (YOLOv3-Darknet53) in cfg order, read and written;
//! - [`pth`]: PyTorch zip `.pth` state dicts (bare, or under `model`/`state_dict`);
//! - [`maps`]: candle-yolo-v3 and timm names onto the reference names;
//! - [`convert`]: format and naming detection, and a check against the model that
//!   names every missing, left-over or misshapen tensor;
//! - [`download`] and [`manifest`]: the registry of downloadable weights and their
//!   installation through hf-hub (what `yolo-cli download` runs).
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use yolov3_head::YoloBody;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = yolo_weights::load_canonical("model_data/weights/darknet53-coco.safetensors".as_ref(), &Device::Cpu)?;
//! let cfg = w.meta.yolo_config().expect("YOLO weights"); // bn_eps 1e-6 for darknet weights
//! let model = YoloBody::new(&cfg, w.var_builder(DType::F32, &Device::Cpu))?;
//! # Ok(()) }
//! ```

pub mod convert;
pub mod darknet;
pub mod download;
mod error;
pub mod load;
pub mod manifest;
pub mod maps;
mod pickle;
pub mod pth;
mod safetensors_file;

pub use convert::{convert_file, ConvertOptions, ConvertReport, Converted, Naming, SourceFormat};
pub use download::{install, DownloadOptions, Installed, Outcome};
pub use error::{Error, Result, ShapeMismatch};
pub use load::{load_canonical, LoadedWeights, ModelKind, WeightsMeta};
pub use manifest::{lookup, registry, Manifest, WeightSpec, DEFAULT_MODEL, WEIGHTS_DIR};
