//! Evaluation of a model on a data set as the reference's `get_map.py` does it.

use candle_core::Device;
use yolov3_head::{Anchors, ClassNames, Detector, DetectorConfig, YoloBody};

use super::loader::load_rgb;
use crate::dataset::Sample;
use crate::metrics::{evaluate, round_as_get_map_txt, DetBox, EvalReport, GtBox};
use crate::Result;

/// Runs the detector over `samples` (conf 0.001, NMS 0.5, letterbox) as the reference's
/// `get_map.py`; returns its detections, rounded as it writes them, and the ground truth,
/// both with the index of their sample as image.
pub fn detect_samples(
    model: YoloBody,
    names: &[String],
    anchors: &Anchors,
    input_wh: (u32, u32),
    samples: &[Sample],
    device: &Device,
) -> Result<(Vec<DetBox>, Vec<GtBox>)> {
    let cfg = DetectorConfig::new(ClassNames::new(names.to_vec())?)
        .with_anchors(anchors.clone())
        .with_input_size(input_wh.0 as usize, input_wh.1 as usize)
        .with_conf_threshold(0.001)
        .with_nms_iou(0.5)
        .with_device(device.clone());
    let det = Detector::new(model, cfg)?;
    let (mut dets, mut gts) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        let img = load_rgb(&s.path)?;
        for d in det.detect(&img)? {
            // as the reference writes them to map_out/detection-results for get_map.py
            dets.push(round_as_get_map_txt(&DetBox {
                image: i,
                class_id: d.class_id,
                score: d.score,
                bbox: [d.x1, d.y1, d.x2, d.y2],
            }));
        }
        for b in &s.boxes {
            gts.push(GtBox {
                image: i,
                class_id: b.class_id,
                bbox: [b.x1, b.y1, b.x2, b.y2],
            });
        }
    }
    Ok((dets, gts))
}

/// Runs the detector over `samples` and evaluates as the reference's `get_map.py` (see
/// [`detect_samples`]).
pub fn evaluate_model(
    model: YoloBody,
    names: &[String],
    anchors: &Anchors,
    input_wh: (u32, u32),
    samples: &[Sample],
    device: &Device,
) -> Result<EvalReport> {
    let (dets, gts) = detect_samples(model, names, anchors, input_wh, samples, device)?;
    Ok(evaluate(&dets, &gts, names))
}
