//! The detection work of `yolo-cli run`: a batch of image files loaded and run through
//! the detector, timed per stage.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use image::RgbImage;
use yolov3_head::{load_image, Detection, Detector};

use super::report::{Report, Timings};

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
