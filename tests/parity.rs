//! Parity with the PyTorch reference (`tools/reference/make_golden.py`).
//!
//! The reference script builds the seed's models in PyTorch, fills every tensor with
//! the closed-form synthetic weights of `nn_blocks::weights` and records
//! - `keys_{model}.json`: every `state_dict` entry (name, shape, param/buffer);
//! - `{model}_{H}x{W}.safetensors`: for each output `k`, its shape, a strided sample
//!   (`flat[::ceil(numel/4096)]`), `max |out|` and per-channel sums, batch 2;
//! - `param_counts.json`: parameter counts and multiply-adds at 416.
//!
//! Here the Rust models are built on the same synthetic weights, through a recorder,
//! and compared: names and shapes, parameter counts, multiply-adds, and outputs
//! within 1e-4 relative (max abs difference / max abs value) at batch 1 and 2.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use darknet53::DarkNet;
use mobilenet_v2::{MobileNetV2, MobileNetV2Backbone};
use nn_blocks::weights::{synthetic_input, ReadLog, RecordingBackend, SyntheticWeights};
use nn_blocks::Backbone;
use yolov3_head::{YoloBody, YoloConfig};

const TOLERANCE: f32 = 1e-4;
const SIZES: [(usize, usize); 2] = [(416, 416), (320, 480)];

/// The device under test: the CPU, or `YOLO_TEST_DEVICE=cuda` / `metal` on a
/// build with that feature (e.g. `cargo test -p yolov3-head --features cuda --test parity`).
fn device() -> Device {
    match std::env::var("YOLO_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("YOLO_TEST_DEVICE=cuda needs the cuda feature and a GPU")
        }
        Ok("metal") => {
            Device::new_metal(0).expect("YOLO_TEST_DEVICE=metal needs the metal feature")
        }
        _ => Device::Cpu,
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

/// A model under test and the tensors it read while loading.
enum Model {
    Classifier(MobileNetV2),
    Backbone(Box<dyn Backbone>),
    Yolo(Box<YoloBody>),
}

impl Model {
    /// Runs the model and names its outputs as the fixture does.
    fn outputs(&self, x: &Tensor) -> Vec<(&'static str, Tensor)> {
        match self {
            Model::Classifier(m) => vec![("logits", m.forward(x).unwrap())],
            Model::Backbone(m) => {
                let (a, b, c) = m.forward(x).unwrap();
                vec![("out3", a), ("out4", b), ("out5", c)]
            }
            Model::Yolo(m) => {
                let (a, b, c) = m.forward(x).unwrap();
                vec![("out0", a), ("out1", b), ("out2", c)]
            }
        }
    }
}

fn build(name: &str) -> (Model, ReadLog) {
    let (backend, log) = RecordingBackend::new(SyntheticWeights);
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device());
    let model = match name {
        "mobilenetv2_classifier" => {
            Model::Classifier(MobileNetV2::new(&mobilenet_v2::Config::imagenet(), vb).unwrap())
        }
        "mobilenetv2_backbone" => Model::Backbone(Box::new(
            MobileNetV2Backbone::new(&mobilenet_v2::Config::imagenet(), vb).unwrap(),
        )),
        "darknet53_backbone" => Model::Backbone(Box::new(
            DarkNet::new(&darknet53::Config::darknet53(), vb).unwrap(),
        )),
        "yolo_mobilenetv2_voc20" => Model::Yolo(Box::new(
            YoloBody::new(&YoloConfig::voc_mobilenetv2(), vb).unwrap(),
        )),
        "yolo_darknet53_coco80" => Model::Yolo(Box::new(
            YoloBody::new(&YoloConfig::coco_darknet53(), vb).unwrap(),
        )),
        other => panic!("unknown model {other}"),
    };
    (model, log)
}

/// Each model is built once per test binary and shared by its tests.
fn model(name: &'static str) -> &'static (Model, ReadLog) {
    static CACHE: OnceLock<std::sync::Mutex<HashMap<&'static str, &'static (Model, ReadLog)>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap();
    guard
        .entry(name)
        .or_insert_with(|| Box::leak(Box::new(build(name))))
}

#[derive(Debug)]
struct KeyEntry {
    shape: Vec<usize>,
    param: bool,
}

fn reference_keys(model: &str) -> BTreeMap<String, KeyEntry> {
    let path = golden_dir().join(format!("keys_{model}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                e["name"].as_str().unwrap().to_string(),
                KeyEntry {
                    shape,
                    param: e["kind"] == "param",
                },
            )
        })
        .collect()
}

fn reference_counts(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("param_counts.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json[model].clone()
}

/// What PyTorch keeps but the Rust model deliberately never reads, per model.
fn never_read(model: &str, name: &str) -> bool {
    // BatchNorm's step counter only matters for training with momentum=None.
    if name.ends_with("num_batches_tracked") {
        return true;
    }
    // The YOLOv3 wrapper stops at features[:18]: the last 1x1 conv and the
    // ImageNet classifier are held by the module but never run.
    let unused_prefixes: &[&str] = match model {
        "mobilenetv2_backbone" => &["model.features.18.", "model.classifier."],
        "yolo_mobilenetv2_voc20" => &["backbone.model.features.18.", "backbone.model.classifier."],
        _ => &[],
    };
    unused_prefixes.iter().any(|p| name.starts_with(p))
}

/// The tensors read, deduplicated by name (a class-count probe may read one twice).
fn reads(log: &ReadLog) -> BTreeMap<String, Vec<usize>> {
    log.entries().into_iter().collect()
}

fn check_keys(name: &'static str) {
    let (_, log) = model(name);
    let reference = reference_keys(name);
    let read = reads(log);
    for (key, shape) in &read {
        let entry = reference.get(key).unwrap_or_else(|| {
            panic!("{name}: Rust reads `{key}` which PyTorch's state_dict lacks")
        });
        assert_eq!(&entry.shape, shape, "{name}: shape of `{key}`");
    }
    for key in reference.keys() {
        assert_eq!(
            read.contains_key(key),
            !never_read(name, key),
            "{name}: `{key}` is {} by Rust",
            if read.contains_key(key) {
                "read"
            } else {
                "not read"
            }
        );
    }
    // Parameters used by the forward pass, as PyTorch counts them (autograd), and the
    // total the module holds.
    let counts = reference_counts(name);
    let used: usize = read
        .iter()
        .filter(|(k, _)| reference[*k].param)
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(
        used as u64,
        counts["params_used"].as_u64().unwrap(),
        "{name}: parameters used"
    );
    let total: usize = reference
        .values()
        .filter(|e| e.param)
        .map(|e| e.shape.iter().product::<usize>())
        .sum();
    assert_eq!(
        total as u64,
        counts["params_total"].as_u64().unwrap(),
        "{name}: parameters held"
    );
}

#[test]
fn keys_mobilenetv2_classifier() {
    check_keys("mobilenetv2_classifier");
}

#[test]
fn keys_mobilenetv2_backbone() {
    check_keys("mobilenetv2_backbone");
}

#[test]
fn keys_darknet53_backbone() {
    check_keys("darknet53_backbone");
}

#[test]
fn keys_yolo_mobilenetv2_voc20() {
    check_keys("yolo_mobilenetv2_voc20");
}

#[test]
fn keys_yolo_darknet53_coco80() {
    check_keys("yolo_darknet53_coco80");
}

/// The figures the issue quotes from PyTorch, independent of the fixture files.
#[test]
fn parameter_counts_match_pytorch_figures() {
    let used = |name: &'static str| -> usize {
        let reference = reference_keys(name);
        reads(&model(name).1)
            .iter()
            .filter(|(k, _)| reference[*k].param)
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    assert_eq!(used("mobilenetv2_classifier"), 3_504_872);
    assert_eq!(used("yolo_mobilenetv2_voc20"), 22_357_217);
    assert_eq!(used("yolo_darknet53_coco80"), 61_949_149);
    let unused = MobileNetV2Backbone::unused_reference_params(&mobilenet_v2::Config::imagenet());
    assert_eq!(22_357_217 + unused, 24_050_377);
}

#[test]
fn summary_multiply_adds_match_pytorch() {
    for (name, figure) in [
        ("yolo_mobilenetv2_voc20", 8.9515e9),
        ("yolo_darknet53_coco80", 32.932e9),
    ] {
        let Model::Yolo(m) = &model(name).0 else {
            unreachable!()
        };
        let s = m.summary(&[1, 3, 416, 416]).unwrap();
        let counts = reference_counts(name);
        // `macs_416` is torchsummaryX's own count: it adds one per BatchNorm channel.
        assert_eq!(
            s.total_macs(),
            counts["macs_416_conv_linear"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            s.total_macs_torchsummaryx(),
            counts["macs_416"].as_u64().unwrap(),
            "{name}"
        );
        assert!(
            (s.total_macs() as f64 / figure - 1.0).abs() < 1e-4,
            "{name}: {}",
            s.total_macs()
        );
        assert_eq!(
            s.total_params() as u64,
            counts["params_used"].as_u64().unwrap(),
            "{name}"
        );
    }
    let Model::Yolo(m) = &model("yolo_darknet53_coco80").0 else {
        unreachable!()
    };
    assert_eq!(
        m.summary(&[1, 3, 416, 416])
            .unwrap()
            .total_macs_torchsummaryx(),
        32_932_063_936
    );
}

/// Relative error: max |a - b| / max |b|.
fn rel_err(ours: &[f32], reference: &[f32], scale: f32) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    diff / scale.max(f32::MIN_POSITIVE)
}

fn check_outputs(name: &'static str, (h, w): (usize, usize), batch: usize) {
    let (m, _) = model(name);
    let path = golden_dir().join(format!("{name}_{h}x{w}.safetensors"));
    let golden = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let x = synthetic_input(batch, h, w, &device()).unwrap();
    for (k, out) in m.outputs(&x) {
        let get = |suffix: &str| {
            golden
                .get(&format!("{k}.{suffix}"))
                .unwrap_or_else(|| panic!("{k}.{suffix} missing"))
        };
        let mut shape: Vec<usize> = get("shape")
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&d| d as usize)
            .collect();
        let full_numel: usize = shape.iter().product();
        shape[0] = batch;
        assert_eq!(
            out.dims(),
            shape.as_slice(),
            "{name} {h}x{w} b{batch}: shape of {k}"
        );

        let out = out.to_device(&Device::Cpu).unwrap();
        let ours: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        let absmax = get("absmax").to_vec1::<f32>().unwrap()[0];
        let stride = full_numel.div_ceil(4096);
        let sample: Vec<f32> = get("sample").to_vec1().unwrap();
        let (ours_s, ref_s): (Vec<f32>, Vec<f32>) = sample
            .iter()
            .enumerate()
            .map(|(i, &r)| (i * stride, r))
            .filter(|(idx, _)| *idx < ours.len())
            .map(|(idx, r)| (ours[idx], r))
            .unzip();
        let sample_err = rel_err(&ours_s, &ref_s, absmax);
        assert!(
            sample_err <= TOLERANCE,
            "{name} {h}x{w} b{batch} {k}: sample rel err {sample_err:.3e}"
        );

        let chsum = get("chsum");
        let ref_sum: Vec<f32> = chsum
            .narrow(0, 0, batch)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours_sum: Vec<f32> = if out.rank() > 2 {
            out.flatten_from(2)
                .unwrap()
                .sum(2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        } else {
            ours.clone()
        };
        let sum_scale = ref_sum.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = rel_err(&ours_sum, &ref_sum, sum_scale);
        assert!(
            err <= TOLERANCE,
            "{name} {h}x{w} b{batch} {k}: channel-sum rel err {err:.3e}"
        );

        if batch == shape_batch(&golden, k) {
            let ours_max = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                (ours_max - absmax).abs() <= TOLERANCE * absmax,
                "{name} {k}: absmax {ours_max} vs {absmax}"
            );
        }
        eprintln!(
            "{name} {h}x{w} b{batch} {k}: ok (absmax {absmax:.4}, sample rel err {sample_err:.1e}, channel-sum rel err {err:.1e})"
        );
    }
}

fn shape_batch(golden: &HashMap<String, Tensor>, k: &str) -> usize {
    golden[&format!("{k}.shape")].to_vec1::<i64>().unwrap()[0] as usize
}

fn check_all_sizes(name: &'static str) {
    for size in SIZES {
        for batch in [1, 2] {
            check_outputs(name, size, batch);
        }
    }
}

#[test]
fn outputs_mobilenetv2_classifier() {
    check_all_sizes("mobilenetv2_classifier");
}

#[test]
fn outputs_mobilenetv2_backbone() {
    check_all_sizes("mobilenetv2_backbone");
}

#[test]
fn outputs_darknet53_backbone() {
    check_all_sizes("darknet53_backbone");
}

#[test]
fn outputs_yolo_mobilenetv2_voc20() {
    check_all_sizes("yolo_mobilenetv2_voc20");
}

#[test]
fn outputs_yolo_darknet53_coco80() {
    check_all_sizes("yolo_darknet53_coco80");
}

/// A checkpoint laid out as PyTorch saves it: every `state_dict` entry of the reference
/// (including `features.18`, `classifier` and the int64 `num_batches_tracked`), with
/// the synthetic values, written to safetensors and loaded by name.
#[test]
fn safetensors_checkpoint_with_reference_names_loads() {
    let name = "yolo_mobilenetv2_voc20";
    let mut tensors = HashMap::new();
    for (key, entry) in reference_keys(name) {
        let t = if key.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &Device::Cpu).unwrap()
        } else {
            let values = nn_blocks::weights::synthetic_values(&key, &entry.shape);
            Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu).unwrap()
        };
        tensors.insert(key, t);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("yolo.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(loaded, DType::F32, &device());
    let from_file = YoloBody::new(&YoloConfig::voc_mobilenetv2(), vb).unwrap();
    let Model::Yolo(synthetic) = &model(name).0 else {
        unreachable!()
    };
    let x = synthetic_input(1, 64, 96, &device()).unwrap();
    let (a, b, c) = from_file.forward(&x).unwrap();
    let (ra, rb, rc) = synthetic.forward(&x).unwrap();
    for (ours, reference) in [(a, ra), (b, rb), (c, rc)] {
        let diff: f32 = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    // The same file as the wrong class count: explained, not a bare shape error.
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(loaded, DType::F32, &device());
    let err = YoloBody::new(
        &YoloConfig::new(yolov3_head::BackboneKind::MobileNetV2, 80),
        vb,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("trained for 20 classes") && msg.contains("configured for 80"),
        "{msg}"
    );
}
