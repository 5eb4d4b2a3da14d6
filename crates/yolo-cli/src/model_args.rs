//! The model flags that `run` and `serve` share, and the [`Detector`] they build.

use std::path::{Path, PathBuf};

use candle_core::Device;
use nn_blocks::Precision;
use yolov3_head::{
    Anchors, BackboneKind, ClassNames, Detector, DetectorConfig, ResizeMode, YoloConfig,
    DEFAULT_MAX_PIXELS,
};

use crate::args::{InputSize, KernelArgs};
use crate::model::{self, DeviceChoice};

/// The model and its detection settings, shared by `run` and `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Feature extractor: darknet53 (COCO) or mobilenetv2 (VOC).
    #[arg(long, default_value = "darknet53")]
    pub backbone: BackboneKind,
    /// Weights (.safetensors, or a PyTorch .pth state_dict); default:
    /// {darknet53-coco,mobilenetv2-voc}.safetensors in the weights directory
    /// (--weights-dir), or in model_data/weights/ of the current directory when there.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Class names, one per line; default: COCO for darknet53, VOC for mobilenetv2.
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Anchors file (`10,13, 16,30, …`, 9 w,h pairs); default: the YOLOv3 anchors.
    #[arg(long, value_name = "FILE")]
    pub anchors: Option<PathBuf>,
    /// Network input size: N or WxH, multiples of 32.
    #[arg(long, default_value = "416")]
    pub input_size: InputSize,
    /// Score threshold (objectness x class score), in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = unit_interval)]
    pub conf: f64,
    /// IoU above which NMS suppresses a same-class box, in [0, 1].
    #[arg(long, default_value_t = 0.3, value_parser = unit_interval)]
    pub nms_iou: f64,
    /// Stretch images to the input size instead of letterboxing them.
    #[arg(long)]
    pub no_letterbox: bool,
    /// Device; default: the best one built in (cuda, metal, then cpu).
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "N")]
    pub max_pixels: u64,
    /// Arithmetic of the convolutions: f32, bf16 (weights converted at load) or int8
    /// (needs a file written by `yolo-cli quantize`); default: the file's (f32, or int8
    /// for a quantised file).
    #[arg(long, value_name = "f32|bf16|int8")]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

/// What [`ModelArgs::resolve`] found: the class names (and where they came from), the
/// anchors and the weights file, all checked before the model is built.
#[derive(Debug)]
pub struct ResolvedModel {
    /// One name per class.
    pub class_names: ClassNames,
    /// Where the names came from, for the error when the weights hold another count.
    pub classes_from: String,
    /// The anchor boxes.
    pub anchors: Anchors,
    /// The weights file.
    pub weights: PathBuf,
}

impl ModelArgs {
    /// Reads the classes and anchors and finds the weights (downloading the default ones
    /// when missing); the default weights are looked for in `weights_dir` as
    /// [`model::resolve_weights`] says.
    pub fn resolve(&self, weights_dir: Option<&Path>) -> anyhow::Result<ResolvedModel> {
        let (class_names, classes_from) =
            model::resolve_classes(self.classes.as_deref(), self.backbone)?;
        let anchors = model::resolve_anchors(self.anchors.as_deref())?;
        let weights = model::resolve_weights(self.weights.as_deref(), self.backbone, weights_dir)?;
        Ok(ResolvedModel {
            class_names,
            classes_from,
            anchors,
            weights,
        })
    }

    /// Letterbox, or stretch with `--no-letterbox`.
    pub fn resize(&self) -> ResizeMode {
        if self.no_letterbox {
            ResizeMode::Stretch
        } else {
            ResizeMode::Letterbox
        }
    }
}

/// A value in [0, 1] (`--conf`, `--nms-iou`).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1]"))
    }
}

/// Loads the weights and builds the detector with the thresholds, input size, resize
/// mode and kernels of `args`. When the weights hold another number of classes, the
/// error says where the class names came from.
pub fn build_detector(
    args: &ModelArgs,
    resolved: ResolvedModel,
    device: &Device,
) -> anyhow::Result<Detector> {
    let ResolvedModel {
        class_names,
        classes_from,
        anchors,
        weights,
    } = resolved;
    let num_classes = class_names.len();
    let cfg = YoloConfig::new(args.backbone, num_classes).with_kernels(args.kernels.policy());
    let model = model::load_model(&weights, &cfg, args.precision, device).map_err(|e| {
        // The class count is the likely culprit only when the weights say so: a file that
        // cannot be read is named first, on its own.
        if model::is_class_count_mismatch(&e) {
            e.context(format!(
                "{num_classes} classes come from {classes_from}; the weights must match"
            ))
        } else {
            e
        }
    })?;
    let size = args.input_size;
    Ok(Detector::new(
        model,
        DetectorConfig::new(class_names)
            .with_input_size(size.width, size.height)
            .with_resize(args.resize())
            .with_conf_threshold(args.conf as f32)
            .with_nms_iou(args.nms_iou)
            .with_anchors(anchors)
            .with_device(device.clone()),
    )?)
}
