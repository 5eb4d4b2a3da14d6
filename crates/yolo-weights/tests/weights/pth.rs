//! The tiny zip `.pth` made by tools/reference/make_pth_fixture.py loads and matches
//! PyTorch's outputs; wrapped state dicts and `module.` prefixes are handled.

use candle_core::{DType, Device, Module};
use nn_blocks::weights::synthetic_input;
use yolo_weights::pth::read_pth;
use yolo_weights::{convert_file, load_canonical, ConvertOptions, Error, ModelKind, SourceFormat};

use super::common::{fixture, max_abs_diff};

#[test]
fn tiny_pth_matches_pytorch() {
    let c = convert_file(
        &fixture("weights/mobilenetv2_w010.pth"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(c.report.format, SourceFormat::Pth);
    assert_eq!(c.meta.model, ModelKind::Classifier);
    assert_eq!((c.meta.num_classes, c.meta.width_mult), (8, 0.1));
    assert!(c.report.dropped_counters > 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w010.safetensors");
    c.save(&out, false).unwrap();
    let w = load_canonical(&out, &Device::Cpu).unwrap();
    let model = mobilenet_v2::MobileNetV2::new(
        &w.meta.classifier_config().unwrap(),
        w.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = synthetic_input(2, 64, 64, &Device::Cpu).unwrap();
    let logits = model.forward(&x).unwrap();
    let expected = candle_core::safetensors::load(
        fixture("weights/mobilenetv2_w010_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .remove("logits")
    .unwrap();
    let d = max_abs_diff(&logits, &expected);
    assert!(d < 1e-4, "max abs diff {d}");
}

#[test]
fn wrapped_state_dicts_and_module_prefix() {
    for (file, prefix) in [("wrapped_module.pth", "module."), ("wrapped_model.pth", "")] {
        let t = read_pth(&fixture(&format!("weights/{file}"))).unwrap();
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                format!("{prefix}features.0.0.weight"),
                format!("{prefix}features.0.1.num_batches_tracked"),
                format!("{prefix}features.0.1.running_var"),
            ],
            "{file}"
        );
        let w = &t[0].1;
        assert_eq!(w.dims(), &[2, 3, 2, 2]);
        assert_eq!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap()[23], 23.0);
    }
    // The converter strips `module.` before matching the model.
    let mut t = read_pth(&fixture("weights/mobilenetv2_w010.pth")).unwrap();
    for (n, _) in t.iter_mut() {
        *n = format!("module.{n}");
    }
    let c = yolo_weights::convert::convert_tensors(
        t,
        yolo_weights::Naming::Reference,
        SourceFormat::Pth,
        &ConvertOptions::default(),
        "test",
    )
    .unwrap();
    assert!(c.report.stripped_module_prefix);
    assert!(c.tensors.contains_key("features.0.0.weight"));
}

#[test]
fn legacy_pth_is_a_clear_error() {
    let err = convert_file(&fixture("weights/legacy.pth"), &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, Error::LegacyPth { .. }), "{err}");
    assert!(err.to_string().contains("legacy non-zip"), "{err}");
    let err = read_pth(&fixture("weights/legacy.pth")).unwrap_err();
    assert!(matches!(err, Error::LegacyPth { .. }), "{err}");
}

/// The checkpoints of `fuzz/regressions/pth/` (made by its `make_pth.py`): records that
/// made candle's `.pth` reader panic or allocate what they claimed.
#[test]
fn malformed_pickles_and_records_are_refused_not_panicked_on() {
    let dir = fixture("../../fuzz/regressions/pth");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let err = read_pth(&p).unwrap_err();
        assert!(
            matches!(err, Error::NotACheckpoint { .. }) && err.to_string().contains(&name),
            "{name}: {err}"
        );
        let msg = err.to_string();
        let want = match name.as_str() {
            "short_rebuild_args.pth" => "tensor `w`: fewer than 4 _rebuild_tensor_v2 arguments",
            "huge_tensor_claim.pth" => "4398046511104 bytes wanted at 0 of an entry of 16 bytes",
            "huge_string.pth" => "4294967295 bytes wanted",
            "long1_shift.pth" => "an integer of 255 bytes",
            "memo_doubling.pth" => "more than 100000 objects",
            "short_from_type.pth" => "a _rebuild_from_type_v2 without its arguments",
            other => panic!("no expectation for {other}: {msg}"),
        };
        assert!(msg.contains(want), "{name}: {msg}");
        seen.push(name);
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[test]
fn row_and_column_major_records_read_as_torch_lays_them_out() {
    let corpus = fixture("../../fuzz/corpus/pth");
    let t = read_pth(&corpus.join("handmade_2x2.pth")).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, "w");
    let v = t[0].1.to_vec2::<f32>().unwrap();
    assert_eq!(v, [[1.0, 2.0], [3.0, 4.0]]);
    let t = read_pth(&corpus.join("handmade_2x2_fortran.pth")).unwrap();
    let v = t[0].1.to_vec2::<f32>().unwrap();
    assert_eq!(v, [[1.0, 3.0], [2.0, 4.0]]);
}
