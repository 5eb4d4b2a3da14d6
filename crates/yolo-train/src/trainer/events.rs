//! What a training run reports: [`Event`]s to its caller as it goes, and one
//! [`EpochRecord`] per finished epoch (a line of the JSONL log, kept in checkpoints).

use serde::{Deserialize, Serialize};

/// What the loop reports to its caller (the CLI draws the progress bar from these).
#[derive(Debug, Clone)]
pub enum Event {
    /// A message (loaded weights, resumed, frozen...).
    Info(String),
    /// An epoch begins.
    EpochStart {
        /// 1-based.
        epoch: usize,
        /// Of.
        epochs: usize,
        /// Training steps in it.
        steps: usize,
    },
    /// A training step ended.
    Step {
        /// Step index in the epoch, from 0.
        step: usize,
        /// Running means over the epoch so far: total, loc, conf, cls.
        means: [f32; 4],
        /// Learning rate.
        lr: f64,
        /// Training images per second so far in the epoch.
        images_per_s: f64,
    },
    /// Validation and saving done.
    EpochEnd(EpochRecord),
}

/// One line of the JSONL log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f32,
    /// Mean location term.
    pub loc: f32,
    /// Mean objectness term.
    pub conf: f32,
    /// Mean class term.
    pub cls: f32,
    /// Mean validation loss.
    pub val_loss: f32,
    /// mAP@0.5 on the validation set, when computed.
    pub map50: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Backbone frozen.
    pub frozen: bool,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}
