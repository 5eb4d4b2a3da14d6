//! The configuration of a training run: [`TrainConfig`], its defaults (the reference's
//! `train.py` settings) and builders, and the checks made on it before a run starts.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use yolov3_head::{Anchors, BackboneKind};

use crate::augment::AugmentConfig;
use crate::optim::OptimizerKind;
use crate::{Error, Result};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Backbone.
    pub backbone: BackboneKind,
    /// Class names (their count fixes the head).
    pub class_names: Vec<String>,
    /// Network input `(width, height)`, multiples of 32.
    pub input_wh: (u32, u32),
    /// Anchor boxes in input pixels (the YOLOv3 ones, or `yolo-cli anchors` output for
    /// data whose boxes are far from them); written to each checkpoint as `anchors.txt`.
    pub anchors: Anchors,
    /// Total epochs (the reference's `UnFreeze_Epoch`).
    pub epochs: usize,
    /// Epochs with the backbone frozen (`Freeze_Epoch`; 0: no freeze phase).
    pub freeze_epochs: usize,
    /// Batch size while frozen.
    pub freeze_batch: usize,
    /// Batch size after.
    pub batch: usize,
    /// SGD or Adam.
    pub optimizer: OptimizerKind,
    /// `Init_lr` (1e-2 for SGD, 1e-3 for Adam), scaled by batch / 64.
    pub init_lr: f64,
    /// `Min_lr` as a fraction of `init_lr`: 0.01.
    pub min_lr_ratio: f64,
    /// Momentum: 0.937.
    pub momentum: f64,
    /// Weight decay on conv weights: 5e-4 (the reference uses 0 for Adam).
    pub weight_decay: f64,
    /// Where checkpoints, the log and the plot go.
    pub save_dir: PathBuf,
    /// Also keep `epoch_NNN.safetensors` every this many epochs (0: never).
    pub save_period: usize,
    /// mAP on the validation set every this many epochs and at the end (0: never).
    pub eval_period: usize,
    /// Makes a run repeatable.
    pub seed: u64,
    /// Augmentation of the training images (None: plain letterbox).
    pub augment: Option<AugmentConfig>,
    /// Start from these weights (safetensors with the reference names; missing or
    /// mismatched tensors keep their initialisation, as the reference's partial load).
    pub weights: Option<PathBuf>,
    /// ImageNet weights for the backbone alone, with the names of the bare network
    /// (`features.*` of torchvision's MobileNetV2 as `cargo xtask download-weights
    /// mobilenetv2-imagenet` installs it, or Darknet53's `conv1`, `layer1.*`...).
    pub pretrained_backbone: Option<PathBuf>,
    /// Continue from `save_dir/last`.
    pub resume: bool,
    /// Cap on steps per epoch (None: the whole set).
    pub max_steps: Option<usize>,
    /// Scale and clamp the learning rate to the batch size as the reference (`Init_lr *
    /// batch / 64` within `[5e-4, 5e-2]` for SGD, `[3e-4, 1e-3]` for Adam); when false,
    /// `init_lr` is used as it is.
    pub fit_lr_to_batch: bool,
    /// Raised from elsewhere (the CLI's Ctrl-C handler) to stop before the next step; the
    /// run then ends with [`Error::Interrupted`] and the finished epochs stay saved.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainConfig {
    /// The reference's `train.py` settings for `backbone` and `class_names`, saving to
    /// `save_dir`: 416x416 input, the YOLOv3 anchors, 300 epochs of which the first 50
    /// with the backbone frozen (batch 16 frozen, 8 after), SGD ([`Self::with_optimizer`]
    /// switches), a checkpoint and an evaluation every 10 epochs, augmentation on, seed
    /// 11, the learning rate fitted to the batch size.
    pub fn new(
        backbone: BackboneKind,
        class_names: Vec<String>,
        save_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            backbone,
            class_names,
            input_wh: (416, 416),
            anchors: Anchors::yolov3(),
            epochs: 300,
            freeze_epochs: 50,
            freeze_batch: 16,
            batch: 8,
            optimizer: OptimizerKind::Sgd,
            init_lr: 1e-2,
            min_lr_ratio: 0.01,
            momentum: 0.937,
            weight_decay: 5e-4,
            save_dir: save_dir.into(),
            save_period: 10,
            eval_period: 10,
            seed: 11,
            augment: Some(AugmentConfig::default()),
            weights: None,
            pretrained_backbone: None,
            resume: false,
            max_steps: None,
            fit_lr_to_batch: true,
            stop: None,
        }
    }

    /// Uses `optimizer` with the reference's learning rate and weight decay for it:
    /// `Init_lr` 1e-2 and weight decay 5e-4 for SGD, 1e-3 and 0 for Adam.
    pub fn with_optimizer(mut self, optimizer: OptimizerKind) -> Self {
        self.optimizer = optimizer;
        (self.init_lr, self.weight_decay) = match optimizer {
            OptimizerKind::Sgd => (1e-2, 5e-4),
            OptimizerKind::Adam => (1e-3, 0.0),
        };
        self
    }

    /// Refuses an input size the network cannot take: sides must be positive multiples
    /// of 32.
    pub(super) fn check_input_size(&self) -> Result<()> {
        let (w, h) = self.input_wh;
        if w == 0 || h == 0 || w % 32 != 0 || h % 32 != 0 {
            return Err(Error::Config(format!(
                "input size {w}x{h}: sides must be positive multiples of 32"
            )));
        }
        Ok(())
    }
}
