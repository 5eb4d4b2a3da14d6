#![doc = include_str!("../README.md")]
//!
//! ## Reference
//!
//! Follows bubbliiiing/yolo3-pytorch (`nets/yolo_training.py`, `utils/dataloader.py`,
//! `train.py`, `utils/utils_fit.py`, `get_map.py`, `kmeans_for_anchors.py`,
//! `voc_annotation.py`).

mod error;
pub mod loss;

pub use error::{Error, Result};
pub use loss::{LossTerms, TargetBox, YoloLoss};
pub mod augment;
pub mod confusion;
pub mod dataset;
pub mod kmeans;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod tables;
mod tensor_file;
pub mod trainer;
pub mod voc;

pub use trainer::{train, EpochRecord, Event, TrainConfig};
pub mod synthetic;
