//! YOLOv3 configuration: backbone, classes, anchors.

use std::fmt;
use std::str::FromStr;

use nn_blocks::{BlockOptions, BnMode, KernelPolicy, Precision, DEFAULT_BN_EPS};

/// Which feature extractor feeds the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackboneKind {
    /// MobileNetV2-1.0 taps (32, 96, 320 channels): the seed's model.
    MobileNetV2,
    /// Darknet53 taps (256, 512, 1024 channels): the original YOLOv3.
    Darknet53,
}

impl BackboneKind {
    /// The name used on the command line and in weight manifests.
    pub fn name(&self) -> &'static str {
        match self {
            BackboneKind::MobileNetV2 => "mobilenetv2",
            BackboneKind::Darknet53 => "darknet53",
        }
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackboneKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mobilenetv2" | "mobilenet_v2" | "mobilenet-v2" => Ok(BackboneKind::MobileNetV2),
            "darknet53" | "darknet" => Ok(BackboneKind::Darknet53),
            _ => Err(format!(
                "unknown backbone `{s}` (expected mobilenetv2 or darknet53)"
            )),
        }
    }
}

/// The anchors of `model_data/yolo_anchors.txt`, in input pixels (w, h), smallest first.
pub const YOLO_ANCHORS: [(f32, f32); 9] = [
    (10., 13.),
    (16., 30.),
    (33., 23.),
    (30., 61.),
    (62., 45.),
    (59., 119.),
    (116., 90.),
    (156., 198.),
    (373., 326.),
];

/// Which anchors each head uses: the 13x13 head the largest, the 52x52 head the smallest.
pub const YOLO_ANCHORS_MASK: [[usize; 3]; 3] = [[6, 7, 8], [3, 4, 5], [0, 1, 2]];

/// Everything that fixes the shape of a YOLOv3 body.
#[derive(Debug, Clone, PartialEq)]
pub struct YoloConfig {
    /// The feature extractor.
    pub backbone: BackboneKind,
    /// Number of object classes (20 for VOC, 80 for COCO).
    pub num_classes: usize,
    /// Anchor indices per head (13x13, 26x26, 52x52).
    pub anchors_mask: [[usize; 3]; 3],
    /// BatchNorm epsilon of every block (1e-5 in PyTorch, 1e-6 in darknet weights).
    pub bn_eps: f64,
    /// BatchNorm folded for inference (default) or kept for training.
    pub bn_mode: BnMode,
    /// The CPU kernels of the folded blocks (default: the fastest).
    pub kernels: KernelPolicy,
    /// The arithmetic of the folded blocks: `f32` (default), bf16 (converted at load)
    /// or int8 (from a quantised file, see [`crate::YoloBody::int8_tensors`]).
    pub precision: Precision,
    /// Record each block's input range while running, for int8 calibration.
    pub calibrate: bool,
}

impl YoloConfig {
    /// A configuration with the standard anchors mask and PyTorch's BN epsilon.
    pub fn new(backbone: BackboneKind, num_classes: usize) -> Self {
        Self {
            backbone,
            num_classes,
            anchors_mask: YOLO_ANCHORS_MASK,
            bn_eps: DEFAULT_BN_EPS,
            bn_mode: BnMode::Folded,
            kernels: KernelPolicy::default(),
            precision: Precision::F32,
            calibrate: false,
        }
    }

    /// The same configuration with the kernel policy `kernels`.
    pub fn with_kernels(mut self, kernels: KernelPolicy) -> Self {
        self.kernels = kernels;
        self
    }

    /// The same configuration with the precision `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The same configuration, recording each block's input range (or not).
    pub fn with_calibration(mut self, calibrate: bool) -> Self {
        self.calibrate = calibrate;
        self
    }

    /// The options every block shares.
    pub fn block_options(&self) -> BlockOptions {
        BlockOptions {
            bn_eps: self.bn_eps,
            bn_mode: self.bn_mode,
            kernels: self.kernels,
            precision: self.precision,
            calibrate: self.calibrate,
        }
    }

    /// The seed's model: MobileNetV2 backbone, the 20 VOC classes.
    pub fn voc_mobilenetv2() -> Self {
        Self::new(BackboneKind::MobileNetV2, 20)
    }

    /// The original YOLOv3: Darknet53 backbone, the 80 COCO classes.
    pub fn coco_darknet53() -> Self {
        Self::new(BackboneKind::Darknet53, 80)
    }

    /// Output channels of head `i`: `len(mask[i]) * (5 + num_classes)`.
    pub fn head_channels(&self, i: usize) -> usize {
        self.anchors_mask[i].len() * (5 + self.num_classes)
    }
}
