//! The training loop: the reference's `train.py` + `fit_one_epoch` with a freeze phase,
//! warm-up/cosine LR per epoch, a loader thread feeding batches through a channel,
//! validation loss, optional mAP, atomic checkpoints (`last/`, `best/`), resume, a JSONL
//! log, and a table and plots of the epochs (`results.csv`, `results.png`).
//!
//! - `config`: [`TrainConfig`], its defaults and builders;
//! - `events`: what a run reports, [`Event`] and [`EpochRecord`];
//! - `loader`: the loader thread that builds batches;
//! - `model`: the model being trained ([`build_train_model`], [`folded_model`]);
//! - `checkpoint`: saving, resuming and loading weights ([`load_matching`],
//!   [`load_pretrained_backbone`], [`anchors_file_text`]);
//! - `evaluate`: mAP of a model on a data set ([`evaluate_model`]);
//! - `run`: the loop itself, [`train`].

mod checkpoint;
mod config;
mod evaluate;
mod events;
mod loader;
mod model;
mod run;

pub use checkpoint::{
    anchors_file_text, backbone_prefix, load_matching, load_pretrained_backbone, state_json_history,
};
pub use config::TrainConfig;
pub use evaluate::{detect_samples, evaluate_model};
#[cfg(test)]
pub(crate) use events::synthetic_history;
pub use events::{EpochRecord, Event};
pub use model::{build_train_model, folded_model};
pub use run::train;
