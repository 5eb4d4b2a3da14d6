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
