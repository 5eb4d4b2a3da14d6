//! Darknet `.weights` and candle-yolo-v3 imports give the model that loading the
//! tensors directly gives, and the BN eps (1e-6) travels with them.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::weights::synthetic_input;
use yolo_weights::darknet::{darknet_bytes, parse_darknet, yolov3_float_count, DarknetHeader};
use yolo_weights::maps::yolov3_convs;
use yolo_weights::{convert_file, load_canonical, ConvertOptions, Error, ModelKind, Naming};
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

use super::common::{keys, max_abs_diff, synthetic};

fn forward(
    tensors: &BTreeMap<String, Tensor>,
    bn_eps: f64,
    x: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let vb = VarBuilder::from_tensors(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        DType::F32,
        &Device::Cpu,
    );
    let cfg = YoloConfig {
        bn_eps,
        ..YoloConfig::coco_darknet53()
    };
    YoloBody::new(&cfg, vb).unwrap().forward(x).unwrap()
}

/// One test for the 62M-parameter network: darknet write/read, the BN eps, the
/// canonical round trip, the candle-yolo-v3 import and the trailing-data error.
#[test]
fn darknet_and_candle_yolo_v3_imports_match_direct_loading() {
    let keys = keys("yolo_darknet53_coco80");
    // Small running variances make the eps visible, as in real darknet weights (one
    // layer only, with gamma scaled down alike, so the synthetic network stays finite).
    let mut tensors = synthetic(&keys);
    for (k, scale) in [
        ("last_layer2.5.bn.running_var", 1e-5),
        ("last_layer2.5.bn.weight", 3e-3),
    ] {
        let t = (&tensors[k] * scale).unwrap();
        tensors.insert(k.to_string(), t);
    }
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let header = DarknetHeader {
        major: 0,
        minor: 2,
        revision: 5,
        seen: 32_013_312,
    };
    let bytes = darknet_bytes(&header, &map, 80).unwrap();
    assert_eq!(
        bytes.len(),
        248_007_048,
        "the size of darknet's yolov3.weights"
    );

    let dir = tempfile::tempdir().unwrap();
    let wpath = dir.path().join("yolov3.weights");
    std::fs::write(&wpath, &bytes).unwrap();
    let converted = convert_file(&wpath, &ConvertOptions::default()).unwrap();
    assert_eq!(converted.report.naming, Naming::Darknet);
    assert_eq!(converted.report.matched, keys.len());
    assert_eq!(converted.meta.model, ModelKind::Yolo);
    assert_eq!(converted.meta.backbone, BackboneKind::Darknet53);
    assert_eq!(converted.meta.num_classes, 80);
    assert_eq!(converted.meta.bn_eps, 1e-6);
    assert!(
        converted.meta.source.contains("seen 32013312"),
        "{}",
        converted.meta.source
    );
    for (k, t) in &tensors {
        assert_eq!(max_abs_diff(t, &converted.tensors[k]), 0.0, "{k}");
    }

    // Canonical file round trip: bn_eps 1e-6 in the metadata and used by the model.
    let out = dir.path().join("darknet53-coco.safetensors");
    converted.save(&out, false).unwrap();
    drop(converted);
    let loaded = load_canonical(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.meta.bn_eps, 1e-6);
    let cfg = loaded.meta.yolo_config().unwrap();
    assert_eq!(cfg.bn_eps, 1e-6);
    let x = synthetic_input(1, 64, 64, &Device::Cpu).unwrap();
    let via_file = YoloBody::new(&cfg, loaded.var_builder(DType::F32, &Device::Cpu))
        .unwrap()
        .forward(&x)
        .unwrap();
    drop(loaded);
    let direct = forward(&tensors, 1e-6, &x);
    assert_eq!(max_abs_diff(&via_file.0, &direct.0), 0.0);
    assert_eq!(max_abs_diff(&via_file.1, &direct.1), 0.0);
    assert_eq!(max_abs_diff(&via_file.2, &direct.2), 0.0);
    // With PyTorch's eps the outputs differ visibly: the eps matters.
    let torch_eps = forward(&tensors, 1e-5, &x);
    let d = max_abs_diff(&torch_eps.2, &direct.2);
    assert!(d > 1e-2, "eps 1e-5 vs 1e-6: max abs diff {d}");
    // Elsewhere (variances near 1) the eps barely matters.
    let d0 = max_abs_diff(&torch_eps.0, &direct.0);
    assert!(d0 < d / 10.0, "{d0} vs {d}");
    // Refuses to overwrite without being asked.
    assert!(matches!(tensors_save_again(&out), Err(Error::Exists(_))));

    // Trailing data: say how many floats were expected and found.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 6]);
    let err = parse_darknet(&longer, 80, &wpath).unwrap_err();
    assert!(
        matches!(err, Error::DarknetTrailing { extra_bytes: 6, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("62001757") && msg.contains("trailing"),
        "{msg}"
    );
    // A 20-class file read as 80 classes: truncated, with a hint.
    let err = parse_darknet(&bytes[..20 + yolov3_float_count(20) * 4], 80, &wpath).unwrap_err();
    assert!(err.to_string().contains("--num-classes 20"), "{err}");
    drop(bytes);
    drop(longer);

    // candle-yolo-v3: the same tensors under `{i}.conv_{i}` names.
    let mut candle = HashMap::new();
    for slot in yolov3_convs(80) {
        let b = slot.block;
        candle.insert(
            format!("{b}.conv_{b}.weight"),
            tensors[&slot.weight].clone(),
        );
        if let Some(bias) = &slot.bias {
            candle.insert(format!("{b}.conv_{b}.bias"), tensors[bias].clone());
        }
        if let Some(bn) = &slot.bn {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                candle.insert(
                    format!("{b}.batch_norm_{b}.{p}"),
                    tensors[&format!("{bn}.{p}")].clone(),
                );
            }
        }
    }
    let cpath = dir.path().join("yolo-v3.safetensors");
    candle_core::safetensors::save(&candle, &cpath).unwrap();
    drop(candle);
    let c = convert_file(&cpath, &ConvertOptions::default()).unwrap();
    assert_eq!(c.report.naming, Naming::CandleYoloV3);
    assert_eq!(c.report.matched, keys.len());
    assert_eq!((c.meta.num_classes, c.meta.bn_eps), (80, 1e-6));
    for (k, t) in &tensors {
        assert_eq!(max_abs_diff(t, &c.tensors[k]), 0.0, "{k}");
    }
}

fn tensors_save_again(out: &std::path::Path) -> Result<(), Error> {
    yolo_weights::load::write_atomic(out, b"broken", false)
}
