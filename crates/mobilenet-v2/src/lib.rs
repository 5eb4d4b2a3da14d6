#![doc = include_str!("../README.md")]

mod inverted_residual;
mod model;

pub use inverted_residual::InvertedResidual;
pub use model::{Config, MobileNetV2, MobileNetV2Backbone};
