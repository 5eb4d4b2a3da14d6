//! MobileNetV2 on candle, with the three feature taps YOLOv3 uses.
//!
//! Mirrors the seed's PyTorch code (torchvision's `mobilenet_v2`): `_make_divisible`,
//! `ConvBNReLU`, `InvertedResidual`, `MobileNetV2` — and its YOLOv3 wrapper, which
//! splits `features` into `[:7]`, `[7:14]`, `[14:18]` for out3/out4/out5
//! (bubbliiiing/mobilenet-yolov4-pytorch `nets/mobilenet_v2.py` + `nets/yolo.py`).
//!
//! Tensor names are those of the PyTorch `state_dict`: `features.{i}...`, `classifier.1`.
//! Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018.

mod inverted_residual;
mod model;

pub use inverted_residual::InvertedResidual;
pub use model::{Config, MobileNetV2, MobileNetV2Backbone};
