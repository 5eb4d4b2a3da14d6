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
    /// Mean validation location term (absent in records of older versions).
    #[serde(default)]
    pub val_loc: Option<f32>,
    /// Mean validation objectness term (absent in records of older versions).
    #[serde(default)]
    pub val_conf: Option<f32>,
    /// Mean validation class term (absent in records of older versions).
    #[serde(default)]
    pub val_cls: Option<f32>,
    /// mAP@0.5 on the validation set, when computed.
    pub map50: Option<f64>,
    /// COCO-style mAP@[.5:.95] on the validation set, when computed (absent in records
    /// of older versions).
    #[serde(default)]
    pub map50_95: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Backbone frozen.
    pub frozen: bool,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// `n` records of a made-up run for tests: falling losses, mAP every other epoch, the
/// first two epochs frozen.
#[cfg(test)]
pub(crate) fn synthetic_history(n: usize) -> Vec<EpochRecord> {
    (1..=n)
        .map(|e| {
            let f = 1.0 / e as f32;
            EpochRecord {
                epoch: e,
                loss: 10.0 * f,
                loc: 2.0 * f,
                conf: 6.0 * f,
                cls: 2.0 * f,
                val_loss: 11.0 * f,
                val_loc: Some(2.5 * f),
                val_conf: Some(6.0 * f),
                val_cls: Some(2.5 * f),
                map50: (e % 2 == 0).then_some(0.05 * e as f64),
                map50_95: (e % 2 == 0).then_some(0.025 * e as f64),
                lr: 1e-3 * f as f64,
                frozen: e <= 2,
                seconds: 1.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_versions_still_read() {
        let old = r#"{"epoch":3,"loss":2.5,"loc":0.5,"conf":1.5,"cls":0.5,"val_loss":2.75,"map50":0.25,"lr":0.001,"frozen":false,"seconds":4.0}"#;
        let r: EpochRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.epoch, r.map50, r.map50_95), (3, Some(0.25), None));
        assert_eq!((r.val_loc, r.val_conf, r.val_cls), (None, None, None));
        // and new ones go through JSON unchanged
        let new = &synthetic_history(2)[1];
        let back: EpochRecord = serde_json::from_str(&serde_json::to_string(new).unwrap()).unwrap();
        assert_eq!(&back, new);
    }
}
