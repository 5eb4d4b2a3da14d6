#![doc = include_str!("../README.md")]

mod model;

pub use model::{BasicBlock, Config, DarkNet};
