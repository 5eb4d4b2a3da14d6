//! Bad input: each a clear error naming what is wrong.

use std::collections::HashMap;

use candle_core::Tensor;
use yolo_weights::convert::convert_tensors;
use yolo_weights::darknet::yolov3_float_count;
use yolo_weights::{convert_file, ConvertOptions, Error, Naming, SourceFormat};

use super::common::{keys, synthetic};

fn header(major: i32, minor: i32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [major, minor, 5] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&0u64.to_le_bytes());
    b
}

#[test]
fn truncated_darknet_says_expected_and_found_floats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.weights");
    let mut b = header(0, 2);
    b.extend(std::iter::repeat_n(0u8, 4000));
    std::fs::write(&p, &b).unwrap();
    let err = convert_file(&p, &ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::DarknetTruncated { expected, found: 1000, num_classes: 80, .. } if expected == yolov3_float_count(80)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("expected 62001757 floats") && msg.contains("found 1000"),
        "{msg}"
    );
}

#[test]
fn unknown_darknet_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.weights");
    let mut b = header(3, 7);
    b.extend([0u8; 64]);
    std::fs::write(&p, &b).unwrap();
    let err = convert_file(&p, &ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DarknetVersion {
                major: 3,
                minor: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("3.7"), "{err}");
}

#[test]
fn not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "these are not weights, just some text long enough").unwrap();
    let err = convert_file(&p, &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotACheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("not a checkpoint"), "{err}");
    // A zip that is no PyTorch file.
    let p = dir.path().join("empty.pth");
    std::fs::write(&p, b"PK\x03\x04garbage").unwrap();
    assert!(convert_file(&p, &ConvertOptions::default()).is_err());
    // safetensors without any known model.
    let p = dir.path().join("other.safetensors");
    let t: HashMap<String, Tensor> = [(
        "encoder.weight".to_string(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    )]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&t, &p).unwrap();
    let err = convert_file(&p, &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Unrecognized(_)), "{err}");
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() {
    let keys = keys("yolo_mobilenetv2_voc20");
    let mut t = synthetic(&keys);
    // features.18 and classifier are in the reference but never read: dropped, not errors.
    let ok = convert_tensors(
        t.clone().into_iter().collect(),
        Naming::Reference,
        SourceFormat::Safetensors,
        &ConvertOptions::default(),
        "test",
    )
    .unwrap();
    assert!(!ok.report.dropped_unused.is_empty());
    assert!(ok
        .report
        .dropped_unused
        .iter()
        .all(|n| n.contains("features.18") || n.contains("classifier")));
    assert_eq!(ok.meta.num_classes, 20);
    assert_eq!(ok.meta.bn_eps, 1e-5);

    t.remove("last_layer1.3.bn.running_var");
    t.insert(
        "last_layer1.9.extra".into(),
        Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    t.insert(
        "backbone.model.features.3.conv.1.0.weight".into(),
        Tensor::zeros(
            (144, 1, 5, 5),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    let err = convert_tensors(
        t.into_iter().collect(),
        Naming::Reference,
        SourceFormat::Safetensors,
        &ConvertOptions::default(),
        "test",
    )
    .unwrap_err();
    match &err {
        Error::Mismatch {
            missing,
            unexpected,
            shapes,
            ..
        } => {
            assert_eq!(missing, &vec!["last_layer1.3.bn.running_var".to_string()]);
            assert_eq!(unexpected, &vec!["last_layer1.9.extra".to_string()]);
            assert_eq!(shapes.len(), 1);
            assert_eq!(shapes[0].expected, vec![144, 1, 3, 3]);
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    for needle in [
        "last_layer1.3.bn.running_var",
        "last_layer1.9.extra",
        "[144, 1, 3, 3]",
        "[144, 1, 5, 5]",
    ] {
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn class_count_override_that_does_not_fit_is_explained() {
    let t = synthetic(&keys("yolo_mobilenetv2_voc20"));
    let err = convert_tensors(
        t.into_iter().collect(),
        Naming::Reference,
        SourceFormat::Safetensors,
        &ConvertOptions {
            num_classes: Some(80),
            ..Default::default()
        },
        "test",
    )
    .unwrap_err();
    assert!(err.to_string().contains("80"), "{err}");
}

/// The canonical loader reads tensor by tensor: mixed dtypes come back as f32 with the
/// same values, and a cut or inconsistent file is refused naming the file and tensor.
#[test]
fn canonical_loader_streams_and_refuses_truncated_files() {
    use candle_core::{DType, Device};
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let w = Tensor::arange(0f32, 2.0 * 3.0 * 300.0, &dev)
        .unwrap()
        .reshape((2, 3, 300))
        .unwrap();
    let tensors = HashMap::from([
        ("a.weight".to_string(), w.clone()),
        ("a.half".to_string(), w.to_dtype(DType::F16).unwrap()),
        (
            "a.num_batches_tracked".to_string(),
            Tensor::new(7i64, &dev).unwrap(),
        ),
    ]);
    let p = dir.path().join("w.safetensors");
    let meta = HashMap::from([
        ("model".to_string(), "yolov3".to_string()),
        ("backbone".to_string(), "darknet53".to_string()),
        ("num_classes".to_string(), "80".to_string()),
    ]);
    safetensors::serialize_to_file(tensors.iter(), Some(meta), &p).unwrap();
    let loaded = yolo_weights::load::load_canonical(&p, &dev).unwrap();
    assert_eq!(loaded.meta.num_classes, 80);
    assert_eq!(loaded.tensors.len(), 3);
    for name in ["a.weight", "a.half"] {
        let t = &loaded.tensors[name];
        assert_eq!((t.dtype(), t.dims()), (DType::F32, &[2usize, 3, 300][..]));
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        // f16 holds integers up to 2048 exactly
        assert_eq!(got, want, "{name}");
    }
    let n = &loaded.tensors["a.num_batches_tracked"];
    assert_eq!(n.to_scalar::<f32>().unwrap(), 7.0);

    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = yolo_weights::load::load_canonical(&cut, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, [1u8, 2, 3]).unwrap();
    let e = yolo_weights::load::load_canonical(&tiny, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiny.safetensors"), "{e}");
}

#[test]
fn sniffing_bytes_agrees_with_sniffing_the_file() {
    use yolo_weights::convert::{detect_format, detect_format_of};
    let dir = tempfile::tempdir().unwrap();
    let mut safetensors = 2u64.to_le_bytes().to_vec();
    safetensors.extend_from_slice(b"{}");
    let cases: [(&str, Vec<u8>); 5] = [
        ("a.pth", b"PK\x03\x04rest".to_vec()),
        ("b.bin", safetensors),
        ("c.weights", header(0, 2)),
        ("d.bin", header(0, 2)),
        ("e.pth", b"\x80\x02legacy".to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let from_file = detect_format(&p).map_err(|e| e.to_string());
        let from_bytes =
            detect_format_of(&bytes, bytes.len() as u64, &p).map_err(|e| e.to_string());
        assert_eq!(from_file, from_bytes, "{name}");
    }
    let p = dir.path().join("x.bin");
    assert_eq!(
        detect_format_of(b"PK\x03\x04", 4, &p).unwrap(),
        SourceFormat::Pth
    );
    // A header length past the end: not safetensors; too small for darknet.
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.push(b'{');
    assert!(matches!(
        detect_format_of(&b, 9, &p),
        Err(Error::NotACheckpoint { .. })
    ));
}

/// `fuzz/regressions/convert/` (the `convert` target's input: a first byte that picks
/// the extension, then the file): a head tensor with a zero-sized dimension made the
/// converter guess a billion classes and allocate the model's zeros (terabytes: an
/// abort), and any lone head tensor made it allocate a whole model of zeros (250 MB, seconds).
#[test]
fn a_lone_or_absurd_head_is_refused_without_building_a_model_of_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let regressions = super::common::fixture("../../fuzz/regressions/convert");
    let cases = [
        ("head_only_safetensors", "yolov3-mobilenetv2 (20 classes)"),
        ("huge_head_safetensors", "more than 1000000 classes"),
        ("huge_classifier_safetensors", "more than 1000000 classes"),
    ];
    for (name, want) in cases {
        let bytes = std::fs::read(regressions.join(name)).unwrap();
        assert_eq!(bytes[0], 2, "{name}: picks .safetensors");
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, &bytes[1..]).unwrap();
        let err = convert_file(&p, &ConvertOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::Mismatch { .. } | Error::Unrecognized(_)),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
}
