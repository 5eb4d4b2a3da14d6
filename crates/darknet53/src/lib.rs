//! Darknet53 on candle, with the three feature taps YOLOv3 uses.
//!
//! Follows bubbliiiing/yolo3-pytorch `nets/darknet.py` (`BasicBlock`, `DarkNet`,
//! `darknet53()`), with the same `state_dict` names: `conv1`, `bn1`,
//! `layer{1..5}.ds_conv`, `layer{1..5}.ds_bn`, `layer{k}.residual_{i}.{conv1,bn1,conv2,bn2}`.
//! Paper: Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018.

mod model;

pub use model::{BasicBlock, Config, DarkNet};
