//! Whole models in bf16 and int8 against the same model in `f32`: MobileNetV2-YOLO and
//! Darknet53-YOLO on synthetic weights, 64x64 inputs (debug builds stay fast).
//!
//! The bounds, on each raw head `(B, 3*(5+C), h, w)`, relative to the largest magnitude
//! of the `f32` head (`max|lowp - f32| / max|f32|`), and the mean error against the mean
//! magnitude:
//!
//! - bf16: each bf16 layer rounds its input and weights to 8 significant bits (relative
//!   error 2^-8 = 0.4% per operand), and the errors of the layers add up (the 3x3
//!   stride-1 ones stay `f32` on the CPU: Winograd's). Darknet53 measured 0.5% to 0.9%
//!   (bound 5%). The synthetic MobileNetV2 amplifies every per-layer error about ten
//!   times more (linear bottlenecks and residual sums of synthetic BatchNorms): 6% to
//!   11% measured, bound 25%.
//! - int8: each layer's input has 8 bits over its calibrated range (7 for the
//!   non-negative maps after ReLU6) and the weights 8 bits per channel, so a layer adds
//!   about 1% of its range. Darknet53 measured 4% to 7% (bound 15%), the synthetic
//!   MobileNetV2 20% to 30% (bound 60%). A broken scale, zero point or weight layout
//!   gives errors of 100% and more.
//!
//! These are measurements on synthetic weights and noise images, not an accuracy claim
//! for trained models (docs/precision.md).
//!
//! The mean error is checked too, against the mean magnitude: it is what moves boxes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::weights::{synthetic_input, synthetic_values, RecordingBackend, SyntheticWeights};
use nn_blocks::{CalibrationMethod, ConvBnAct, Precision};
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

/// The synthetic weights of `cfg`'s body, as a tensor map (made once per model).
fn synthetic_tensors(cfg: &YoloConfig) -> HashMap<String, Tensor> {
    let (backend, log) = RecordingBackend::new(SyntheticWeights);
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    YoloBody::new(cfg, vb).expect("synthetic model");
    log.entries()
        .into_iter()
        .map(|(name, dims)| {
            let t = Tensor::from_vec(synthetic_values(&name, &dims), dims, &Device::Cpu).unwrap();
            (name, t)
        })
        .collect()
}

fn build(cfg: &YoloConfig, tensors: HashMap<String, Tensor>) -> YoloBody {
    YoloBody::new(
        cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

/// `(max|a - b| / max|b|, mean|a - b| / mean|b|)` over the three heads.
fn rel_errors(a: &(Tensor, Tensor, Tensor), b: &(Tensor, Tensor, Tensor)) -> Vec<(f32, f32)> {
    [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)]
        .iter()
        .map(|(x, y)| {
            let d = (*x - *y).unwrap().abs().unwrap();
            let m = y.abs().unwrap();
            let max = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
            (max(&d) / max(&m), mean(&d) / mean(&m))
        })
        .collect()
}

/// Calibrates `cfg` on four synthetic images, quantises, and returns the int8 body
/// built from the quantised tensors (as an int8 file would give them).
fn int8_body(
    cfg: &YoloConfig,
    tensors: &HashMap<String, Tensor>,
    calib: &Tensor,
    keep_f32: impl Fn(&ConvBnAct) -> bool,
) -> YoloBody {
    let calibrating = build(&cfg.clone().with_calibration(true), tensors.clone());
    calibrating.forward(calib).unwrap();
    let q = calibrating
        .int8_tensors(CalibrationMethod::default(), keep_f32)
        .unwrap();
    // the U8 codes as an int8 file holds them
    assert!(q.values().any(|t| t.dtype() == DType::U8));
    build(
        &cfg.clone().with_precision(Precision::Int8),
        q.into_iter().collect(),
    )
}

/// `(bf16 bound, int8 bound)` on both relative errors (see the module's comment).
fn bounds(backbone: BackboneKind) -> (f32, f32) {
    match backbone {
        BackboneKind::Darknet53 => (0.05, 0.15),
        BackboneKind::MobileNetV2 => (0.25, 0.6),
    }
}

fn compare(backbone: BackboneKind) {
    let (bf16_bound, int8_bound) = bounds(backbone);
    let cfg = YoloConfig::new(backbone, 20);
    let tensors = synthetic_tensors(&cfg);
    // images 0..4 calibrate, image 4 (not seen in calibration) is compared
    let inputs = synthetic_input(5, 64, 64, &Device::Cpu).unwrap();
    let calib = inputs.narrow(0, 0, 4).unwrap();
    let x = inputs.narrow(0, 4, 1).unwrap();

    let f32_out = build(&cfg, tensors.clone()).forward(&x).unwrap();

    let bf16 = build(
        &cfg.clone().with_precision(Precision::Bf16),
        tensors.clone(),
    );
    // dense blocks run bf16, but those Winograd's path takes (3x3 stride 1) on the CPU
    let dense: Vec<&ConvBnAct> = bf16
        .blocks()
        .into_iter()
        .filter(|b| b.config().groups == 1)
        .collect();
    for b in &dense {
        let c = b.config();
        let winograd = c.kernels.winograd_applies(c.kernel_size, c.stride);
        let expected = if winograd {
            Precision::F32
        } else {
            Precision::Bf16
        };
        assert_eq!(b.runs_in(), expected, "{c:?}");
    }
    assert!(dense.iter().any(|b| b.runs_in() == Precision::Bf16));
    let e = rel_errors(&bf16.forward(&x).unwrap(), &f32_out);
    eprintln!("{backbone} bf16 (max, mean) relative error per head: {e:?}");
    for (max, mean) in e {
        assert!(
            max < bf16_bound && mean < bf16_bound,
            "{backbone} bf16: {max} {mean}"
        );
    }

    let first_kept = |b: &ConvBnAct| b.config().in_channels == 3;
    let int8 = int8_body(&cfg, &tensors, &calib, first_kept);
    let blocks = int8.blocks();
    assert_eq!(blocks[0].runs_in(), Precision::F32);
    assert!(blocks[1..].iter().all(|b| b.runs_in() == Precision::Int8));
    let e = rel_errors(&int8.forward(&x).unwrap(), &f32_out);
    eprintln!("{backbone} int8 (max, mean) relative error per head: {e:?}");
    for (max, mean) in e {
        assert!(
            max < int8_bound && mean < int8_bound,
            "{backbone} int8: {max} {mean}"
        );
    }

    // the first conv in int8 too (what docs/precision.md measured)
    let all = int8_body(&cfg, &tensors, &calib, |_| false);
    let e = rel_errors(&all.forward(&x).unwrap(), &f32_out);
    eprintln!("{backbone} int8 with the first conv in int8: {e:?}");
}

#[test]
fn mobilenetv2_in_bf16_and_int8_stays_close_to_f32() {
    compare(BackboneKind::MobileNetV2);
}

#[test]
fn darknet53_in_bf16_and_int8_stays_close_to_f32() {
    compare(BackboneKind::Darknet53);
}

#[test]
fn int8_from_f32_weights_is_refused_with_a_hint() {
    let cfg = YoloConfig::new(BackboneKind::MobileNetV2, 20);
    let tensors = synthetic_tensors(&cfg);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = YoloBody::new(&cfg.with_precision(Precision::Int8), vb)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight_q") && err.contains("quantize"),
        "{err}"
    );
}

#[test]
fn quantising_needs_calibration_data() {
    let cfg = YoloConfig::new(BackboneKind::MobileNetV2, 20);
    let tensors = synthetic_tensors(&cfg);
    let body = build(&cfg.with_calibration(true), tensors);
    let err = body
        .int8_tensors(CalibrationMethod::MinMax, |_| false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no calibration data"), "{err}");
}
