//! The detection work of `yolo-cli run`: the detector built from the arguments, and a
//! batch of image files loaded and run through it, timed per stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use image::RgbImage;
use yolov3_head::{
    load_image, Anchors, ClassNames, Detection, Detector, DetectorConfig, ResizeMode, YoloConfig,
};

use super::report::{Report, Timings};
use super::RunArgs;
use crate::model;

/// Loads the weights and builds the detector with the thresholds, input size and resize
/// mode of `args`. `classes_from` says where the class names came from, for the error
/// when the weights hold another number of classes.
pub(super) fn build_detector(
    args: &RunArgs,
    class_names: ClassNames,
    classes_from: &str,
    anchors: Anchors,
    weights: &Path,
    device: &Device,
) -> anyhow::Result<Detector> {
    let num_classes = class_names.len();
    let cfg = YoloConfig::new(args.backbone, num_classes).with_kernels(args.kernels.policy());
    let model = model::load_model(weights, &cfg, device).map_err(|e| {
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
    let resize = if args.no_letterbox {
        ResizeMode::Stretch
    } else {
        ResizeMode::Letterbox
    };
    Ok(Detector::new(
        model,
        DetectorConfig::new(class_names)
            .with_input_size(size.width, size.height)
            .with_resize(resize)
            .with_conf_threshold(args.conf as f32)
            .with_nms_iou(args.nms_iou)
            .with_anchors(anchors)
            .with_device(device.clone()),
    )?)
}

/// The images of one batch that could be read, with their files.
pub(super) struct LoadedBatch<'a> {
    /// The decoded images.
    pub images: Vec<RgbImage>,
    /// The file of each image.
    pub paths: Vec<&'a PathBuf>,
}

/// Reads the images of `chunk`; a file that cannot be read (or is over `max_pixels`) is
/// reported and skipped.
pub(super) fn load_batch<'a>(
    chunk: &'a [PathBuf],
    max_pixels: u64,
    report: &mut Report,
) -> LoadedBatch<'a> {
    let mut batch = LoadedBatch {
        images: Vec::new(),
        paths: Vec::new(),
    };
    for path in chunk {
        let start = Instant::now();
        match load_image(path, max_pixels) {
            Ok(img) => {
                report.timings.load += start.elapsed();
                batch.images.push(img);
                batch.paths.push(path);
            }
            Err(e) => report.skip_image(format!("error: skipping {}: {e}", path.display())),
        }
    }
    batch
}

/// Runs `images` through the detector as one batch: the detections of each image, in
/// its own pixel coordinates.
pub(super) fn detect_batch(
    detector: &Detector,
    device: &Device,
    images: &[RgbImage],
    timings: &mut Timings,
) -> anyhow::Result<Vec<Vec<Detection>>> {
    let start = Instant::now();
    let input = detector.preprocess(images)?;
    timings.preprocess += start.elapsed();
    let start = Instant::now();
    let heads = detector.infer(&input)?;
    device.synchronize()?;
    timings.inference += start.elapsed();
    let start = Instant::now();
    let sizes: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
    let results = detector.postprocess(&heads, &sizes)?;
    timings.postprocess += start.elapsed();
    Ok(results)
}
