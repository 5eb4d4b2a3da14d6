//! [`Detector`]: the whole pipeline of the reference's `YOLO.detect_image`, reusable.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::anchors::Anchors;
use crate::body::{YoloBody, INPUT_STRIDE};
use crate::classes::ClassNames;
use crate::decode::decode_heads;
use crate::detection::Detection;
use crate::nms::{non_max_suppression, select_candidates};
use crate::postprocess::{clip_to_image, yolo_correct_box};
use crate::preprocess::{images_to_tensor, resize_image, ResizeMode};
use crate::{Error, Result};

/// Settings of a [`Detector`]; [`DetectorConfig::new`] gives the reference's defaults.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Network input width, a multiple of 32.
    pub input_width: usize,
    /// Network input height, a multiple of 32.
    pub input_height: usize,
    /// Letterbox or stretch.
    pub resize: ResizeMode,
    /// Keep boxes with `obj * class_score >= conf_threshold`.
    pub conf_threshold: f32,
    /// NMS suppresses same-class boxes whose IoU is above this.
    pub nms_iou: f64,
    /// Anchor boxes in input pixels.
    pub anchors: Anchors,
    /// One name per class of the model.
    pub class_names: ClassNames,
    /// Where the network input is put: the device the model's weights are on.
    pub device: Device,
}

impl DetectorConfig {
    /// 416x416, letterbox, conf 0.5, NMS IoU 0.3, the YOLOv3 anchors, on the CPU.
    pub fn new(class_names: ClassNames) -> Self {
        Self {
            input_width: 416,
            input_height: 416,
            resize: ResizeMode::Letterbox,
            conf_threshold: 0.5,
            nms_iou: 0.3,
            anchors: Anchors::yolov3(),
            class_names,
            device: Device::Cpu,
        }
    }

    /// Sets the network input size (multiples of 32).
    pub fn with_input_size(mut self, width: usize, height: usize) -> Self {
        self.input_width = width;
        self.input_height = height;
        self
    }

    /// Sets letterbox or stretch.
    pub fn with_resize(mut self, resize: ResizeMode) -> Self {
        self.resize = resize;
        self
    }

    /// Sets the score threshold.
    pub fn with_conf_threshold(mut self, conf: f32) -> Self {
        self.conf_threshold = conf;
        self
    }

    /// Sets the NMS IoU threshold.
    pub fn with_nms_iou(mut self, iou: f64) -> Self {
        self.nms_iou = iou;
        self
    }

    /// Sets the anchors.
    pub fn with_anchors(mut self, anchors: Anchors) -> Self {
        self.anchors = anchors;
        self
    }

    /// Sets the device (the one the model's weights were loaded on).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
}

/// A YOLOv3 detector: preprocessing, the network, decoding, NMS and box correction.
///
/// ```no_run
/// use candle_core::{DType, Device};
/// use candle_nn::VarBuilder;
/// use yolov3_head::{load_image, ClassNames, Detector, DetectorConfig, YoloBody, YoloConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let device = Device::Cpu;
/// let tensors = candle_core::safetensors::load("model_data/weights/darknet53-coco.safetensors", &device)?;
/// let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
/// let model = YoloBody::new(&YoloConfig::coco_darknet53(), vb)?;
/// let detector = Detector::new(model, DetectorConfig::new(ClassNames::coco()).with_device(device))?;
/// let image = load_image("model_data/dog.jpg".as_ref(), yolov3_head::DEFAULT_MAX_PIXELS)?;
/// for d in detector.detect(&image)? {
///     println!("{} {:.2} ({:.0}, {:.0}, {:.0}, {:.0})", d.class_name, d.score, d.x1, d.y1, d.x2, d.y2);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Detector {
    model: YoloBody,
    config: DetectorConfig,
}

impl Detector {
    /// Checks the configuration against the model: as many class names as the head has
    /// classes, input sides positive multiples of 32, thresholds in [0, 1], enough anchors.
    pub fn new(model: YoloBody, config: DetectorConfig) -> Result<Self> {
        let classes = model.config().num_classes;
        if config.class_names.len() != classes {
            return Err(Error::ClassNamesMismatch {
                names: config.class_names.len(),
                model_classes: classes,
            });
        }
        let (w, h) = (config.input_width, config.input_height);
        if w == 0 || h == 0 || w % INPUT_STRIDE != 0 || h % INPUT_STRIDE != 0 {
            return Err(Error::Config(format!(
                "input size {w}x{h}: sides must be positive multiples of {INPUT_STRIDE}"
            )));
        }
        if !(0.0..=1.0).contains(&config.conf_threshold) {
            return Err(Error::Config(format!(
                "confidence threshold {} is not in [0, 1]",
                config.conf_threshold
            )));
        }
        if !(0.0..=1.0).contains(&config.nms_iou) {
            return Err(Error::Config(format!(
                "NMS IoU threshold {} is not in [0, 1]",
                config.nms_iou
            )));
        }
        let needed = model
            .config()
            .anchors_mask
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(0)
            + 1;
        if config.anchors.len() < needed {
            return Err(Error::Config(format!(
                "{} anchors given, the anchors mask needs {needed}",
                config.anchors.len()
            )));
        }
        Ok(Self { model, config })
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The network.
    pub fn model(&self) -> &YoloBody {
        &self.model
    }

    /// Detects objects in one RGB image.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>> {
        Ok(self
            .detect_batch(std::slice::from_ref(image))?
            .pop()
            .unwrap_or_default())
    }

    /// Detects objects in several images at once (one forward pass of batch `len`).
    pub fn detect_batch(&self, images: &[RgbImage]) -> Result<Vec<Vec<Detection>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.preprocess(images)?;
        let heads = self.infer(&input)?;
        let sizes: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
        self.postprocess(&heads, &sizes)
    }

    /// Step 1: resize (letterbox or stretch) and stack -> `(B, 3, H, W)` on the device.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Tensor> {
        let (w, h) = (
            self.config.input_width as u32,
            self.config.input_height as u32,
        );
        let resized = images
            .iter()
            .map(|img| resize_image(img, w, h, self.config.resize))
            .collect::<Result<Vec<_>>>()?;
        images_to_tensor(&resized, &self.config.device)
    }

    /// Step 2: the network -> the three raw heads `(B, 3*(5+C), H/32, W/32)`, `…/16`, `…/8`.
    pub fn infer(&self, input: &Tensor) -> Result<[Tensor; 3]> {
        let (a, b, c) = self.model.forward(input)?;
        Ok([a, b, c])
    }

    /// Step 3: decode, threshold, NMS per class, undo the letterbox and clip. `image_sizes`
    /// are the original images' `(width, height)`, one per batch item.
    pub fn postprocess(
        &self,
        heads: &[Tensor; 3],
        image_sizes: &[(u32, u32)],
    ) -> Result<Vec<Vec<Detection>>> {
        postprocess_heads(
            heads,
            &self.config,
            &self.model.config().anchors_mask,
            image_sizes,
        )
    }
}

/// [`Detector::postprocess`] without a model: raw heads `(B, 3*(5+C), h_i, w_i)` ->
/// per image detections, for `C = config.class_names.len()` classes. `image_sizes` are
/// the original images' `(width, height)`.
pub fn postprocess_heads(
    heads: &[Tensor; 3],
    config: &DetectorConfig,
    anchors_mask: &[[usize; 3]; 3],
    image_sizes: &[(u32, u32)],
) -> Result<Vec<Vec<Detection>>> {
    let cfg = config;
    let input_hw = (cfg.input_height, cfg.input_width);
    // 3 heads -> (B, N, 5+C)
    let decoded = decode_heads(
        &[&heads[0], &heads[1], &heads[2]],
        &cfg.anchors,
        anchors_mask,
        cfg.class_names.len(),
        input_hw,
    )?;
    let candidates = select_candidates(&decoded, cfg.conf_threshold)?;
    if candidates.len() != image_sizes.len() {
        return Err(Error::Config(format!(
            "{} image sizes for a batch of {}",
            image_sizes.len(),
            candidates.len()
        )));
    }
    let letterbox = cfg.resize == ResizeMode::Letterbox;
    Ok(candidates
        .iter()
        .zip(image_sizes)
        .map(|(cands, &(iw, ih))| {
            let image_hw = (ih as usize, iw as usize);
            non_max_suppression(cands, cfg.nms_iou)
                .iter()
                .map(|c| {
                    let tlbr = yolo_correct_box(c, input_hw, image_hw, letterbox);
                    let (x1, y1, x2, y2) = clip_to_image(tlbr, image_hw);
                    Detection {
                        x1,
                        y1,
                        x2,
                        y2,
                        score: c.score(),
                        class_id: c.class_id,
                        class_name: cfg.class_names.name(c.class_id),
                    }
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::YoloConfig;
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use nn_blocks::weights::SyntheticWeights;

    fn model(classes: usize) -> YoloBody {
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
        YoloBody::new(
            &YoloConfig::new(crate::BackboneKind::MobileNetV2, classes),
            vb,
        )
        .unwrap()
    }

    #[test]
    fn refuses_mismatched_names_and_bad_settings() {
        let names = ClassNames::new(vec!["a".into(), "b".into()]).unwrap();
        let e = Detector::new(model(3), DetectorConfig::new(names.clone())).unwrap_err();
        assert!(
            e.to_string().contains("2 class names") && e.to_string().contains("3 classes"),
            "{e}"
        );
        let e = Detector::new(
            model(2),
            DetectorConfig::new(names.clone()).with_input_size(100, 64),
        )
        .unwrap_err();
        assert!(e.to_string().contains("100x64"), "{e}");
        let e = Detector::new(
            model(2),
            DetectorConfig::new(names.clone()).with_conf_threshold(1.5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("1.5"), "{e}");
        let short = Anchors::new(vec![(1.0, 1.0); 8]).unwrap();
        let e =
            Detector::new(model(2), DetectorConfig::new(names).with_anchors(short)).unwrap_err();
        assert!(e.to_string().contains("needs 9"), "{e}");
    }

    #[test]
    fn detects_end_to_end_within_the_image() {
        let names = ClassNames::new(vec!["a".into(), "b".into()]).unwrap();
        let cfg = DetectorConfig::new(names)
            .with_input_size(64, 32)
            .with_conf_threshold(0.0)
            .with_nms_iou(1.0);
        let det = Detector::new(model(2), cfg).unwrap();
        let img = RgbImage::from_fn(37, 23, |x, y| image::Rgb([x as u8 * 5, y as u8 * 9, 77]));
        let batch = det.detect_batch(&[img.clone(), img.clone()]).unwrap();
        assert_eq!(batch.len(), 2);
        // conf 0 and IoU 1 keep every box: 3 anchors x (2x1 + 4x2 + 8x4)
        assert_eq!(batch[0].len(), 126);
        assert_eq!(batch[0], batch[1]);
        for d in &batch[0] {
            assert!(0.0 <= d.x1 && d.x1 <= d.x2 && d.x2 <= 37.0, "{d:?}");
            assert!(0.0 <= d.y1 && d.y1 <= d.y2 && d.y2 <= 23.0, "{d:?}");
            assert_eq!(d.class_name, ["a", "b"][d.class_id]);
        }
        // Alone or in a batch, the same boxes up to float rounding (the convolutions sum
        // in another order when the batch changes).
        let alone = det.detect(&img).unwrap();
        assert_eq!(alone.len(), batch[0].len());
        for d in &alone {
            assert!(
                batch[0].iter().any(|b| b.class_id == d.class_id
                    && (b.score - d.score).abs() < 1e-5
                    && [(b.x1, d.x1), (b.y1, d.y1), (b.x2, d.x2), (b.y2, d.y2)]
                        .iter()
                        .all(|(p, q)| (p - q).abs() < 1e-3)),
                "{d:?} has no match in the batch"
            );
        }
        assert!(det.detect_batch(&[]).unwrap().is_empty());
    }
}
