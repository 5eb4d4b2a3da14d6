//! The candle-yolo-v3 and timm maps cover every tensor of the model exactly once.

use std::collections::{BTreeMap, BTreeSet};

use yolo_weights::maps::{candle_yolo_v3_name, rename_all, timm_mobilenetv2_name, yolov3_convs};

use super::common::keys;

/// The block types of darknet's yolov3.cfg, written out from the cfg's structure:
/// `c` conv with BN, `h` linear head conv with bias, `s` shortcut, `r` route,
/// `u` upsample, `y` yolo.
fn yolov3_cfg_blocks() -> Vec<char> {
    let mut b = vec!['c'];
    for n in [1, 2, 8, 8, 4] {
        b.push('c');
        for _ in 0..n {
            b.extend(['c', 'c', 's']);
        }
    }
    // Three heads: 6 convs, head conv, yolo; the first two then route, conv, upsample, route.
    for i in 0..3 {
        b.extend(['c'; 6]);
        b.extend(['h', 'y']);
        if i < 2 {
            b.extend(['r', 'c', 'u', 'r']);
        }
    }
    b
}

#[test]
fn candle_yolo_v3_map_covers_yolobody_exactly_once() {
    let blocks = yolov3_cfg_blocks();
    assert_eq!(blocks.len(), 107);
    let heads: Vec<usize> = (0..blocks.len()).filter(|&i| blocks[i] == 'h').collect();
    assert_eq!(heads, vec![81, 93, 105]);
    let mut names = Vec::new();
    for (i, &t) in blocks.iter().enumerate() {
        match t {
            'c' => {
                names.push(format!("{i}.conv_{i}.weight"));
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    names.push(format!("{i}.batch_norm_{i}.{p}"));
                }
            }
            'h' => {
                names.push(format!("{i}.conv_{i}.weight"));
                names.push(format!("{i}.conv_{i}.bias"));
            }
            _ => {}
        }
    }
    let table = yolov3_convs(80);
    let mapped = rename_all(
        "candle-yolo-v3",
        names.iter().map(|n| (n.clone(), ())).collect(),
        |n| candle_yolo_v3_name(n, &table),
    )
    .unwrap();
    let ours: BTreeSet<String> = keys("yolo_darknet53_coco80")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let got: BTreeSet<String> = mapped.keys().cloned().collect();
    assert_eq!(mapped.len(), names.len(), "a name mapped twice");
    assert_eq!(got, ours);
    // Spot checks of the head ordering.
    let src = |ours: &str| mapped.get(ours).unwrap().0.clone();
    assert_eq!(src("last_layer0.0.conv.weight"), "75.conv_75.weight");
    assert_eq!(src("last_layer0.6.bias"), "81.conv_81.bias");
    assert_eq!(
        src("last_layer1_conv.bn.running_var"),
        "84.batch_norm_84.running_var"
    );
    assert_eq!(src("last_layer1.0.conv.weight"), "87.conv_87.weight");
    assert_eq!(src("last_layer2_conv.conv.weight"), "96.conv_96.weight");
    assert_eq!(src("last_layer2.6.weight"), "105.conv_105.weight");
    assert_eq!(
        src("backbone.layer4.residual_7.conv2.weight"),
        "60.conv_60.weight"
    );
    // And the shapes in the table are those of the model.
    let shapes: BTreeMap<String, Vec<usize>> = keys("yolo_darknet53_coco80").into_iter().collect();
    for slot in &table {
        assert_eq!(shapes[&slot.weight], slot.shape.to_vec(), "{}", slot.weight);
    }
}

/// timm's mobilenetv2_100 names, written out from timm's module structure.
fn timm_names() -> Vec<String> {
    let bn = |p: &str| -> Vec<String> {
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
        .iter()
        .map(|s| format!("{p}.{s}"))
        .collect()
    };
    let mut v = vec!["conv_stem.weight".to_string()];
    v.extend(bn("bn1"));
    for (i, &n) in [1usize, 2, 3, 4, 3, 3, 1].iter().enumerate() {
        for j in 0..n {
            let b = format!("blocks.{i}.{j}");
            if i == 0 {
                v.push(format!("{b}.conv_dw.weight"));
                v.extend(bn(&format!("{b}.bn1")));
                v.push(format!("{b}.conv_pw.weight"));
                v.extend(bn(&format!("{b}.bn2")));
            } else {
                v.push(format!("{b}.conv_pw.weight"));
                v.extend(bn(&format!("{b}.bn1")));
                v.push(format!("{b}.conv_dw.weight"));
                v.extend(bn(&format!("{b}.bn2")));
                v.push(format!("{b}.conv_pwl.weight"));
                v.extend(bn(&format!("{b}.bn3")));
            }
        }
    }
    v.push("conv_head.weight".into());
    v.extend(bn("bn2"));
    v.push("classifier.weight".into());
    v.push("classifier.bias".into());
    v
}

#[test]
fn timm_map_covers_torchvision_mobilenetv2_exactly_once() {
    let names = timm_names();
    let mapped = rename_all(
        "timm",
        names.iter().map(|n| (n.clone(), ())).collect(),
        timm_mobilenetv2_name,
    )
    .unwrap();
    let ours: BTreeSet<String> = keys("mobilenetv2_classifier")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let got: BTreeSet<String> = mapped.keys().cloned().collect();
    assert_eq!(got, ours);
    let counters = names
        .iter()
        .filter(|n| n.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(mapped.len() + counters, names.len());
}

#[test]
fn timm_safetensors_converts_to_a_checked_classifier() {
    use candle_core::{Device, Tensor};
    use yolo_weights::{convert_file, ConvertOptions, ModelKind, Naming};
    // A synthetic timm file: every timm name with the shape of its torchvision twin.
    let shapes: BTreeMap<String, Vec<usize>> = keys("mobilenetv2_classifier").into_iter().collect();
    let mut ts = BTreeMap::new();
    for n in timm_names() {
        let t = match timm_mobilenetv2_name(&n) {
            Some(ours) => Tensor::ones(
                shapes[&ours].as_slice(),
                candle_core::DType::F32,
                &Device::Cpu,
            ),
            None => Tensor::new(7i64, &Device::Cpu),
        };
        ts.insert(n, t.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&ts.into_iter().collect(), &p).unwrap();
    let c = convert_file(&p, &ConvertOptions::default()).unwrap();
    assert_eq!(c.report.naming, Naming::Timm);
    assert_eq!(c.meta.model, ModelKind::Classifier);
    assert_eq!(
        (c.meta.num_classes, c.meta.width_mult, c.meta.bn_eps),
        (1000, 1.0, 1e-5)
    );
    assert_eq!(c.report.matched, shapes.len());
}
