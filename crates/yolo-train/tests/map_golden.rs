//! The metrics against numbers of the reference's own evaluation code: bubbliiiing's
//! `utils/utils_map.py` (`get_map` for VOC AP@0.5, `get_coco_map` through pycocotools for
//! AP@[.5:.95] and AP@.5) run by `tools/reference/make_golden_map.py` on a seeded problem
//! with duplicates, misses, false positives, tied scores, a class without detections and
//! one without ground truth.

use std::path::Path;

use serde_json::Value;
use yolo_train::metrics::{
    coco_ap_at, coco_iou_thresholds, evaluate, round_as_get_map_txt, DetBox, GtBox,
};

struct Problem {
    names: Vec<String>,
    gts: Vec<GtBox>,
    dets: Vec<DetBox>,
    reference: Value,
}

fn load() -> Problem {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/map/get_map.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names: Vec<String> = fx["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (mut gts, mut dets) = (Vec::new(), Vec::new());
    // the reference reads the files in sorted name order: the fixture lists them so
    for (image, im) in fx["images"].as_array().unwrap().iter().enumerate() {
        let nums = |v: &Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        for g in im["gt"].as_array().unwrap() {
            let g = nums(g);
            gts.push(GtBox {
                image,
                class_id: g[0] as usize,
                bbox: [g[1] as f32, g[2] as f32, g[3] as f32, g[4] as f32],
            });
        }
        for d in im["dets"].as_array().unwrap() {
            let d = nums(d);
            dets.push(DetBox {
                image,
                class_id: d[0] as usize,
                score: d[1] as f32,
                bbox: [d[2] as f32, d[3] as f32, d[4] as f32, d[5] as f32],
            });
        }
    }
    Problem {
        names,
        gts,
        dets,
        reference: fx["reference"].clone(),
    }
}

#[test]
fn voc_map50_matches_get_map() {
    let p = load();
    let report = evaluate(&p.dets, &p.gts, &p.names);
    let want = p.reference["map50"].as_f64().unwrap();
    assert!(
        (report.map50 - want).abs() < 1e-12,
        "mAP@0.5 {} vs reference {want}",
        report.map50
    );
    let per_class = p.reference["ap50"].as_object().unwrap();
    for c in &report.classes {
        match per_class.get(&c.name) {
            Some(v) => {
                let want = v.as_f64().unwrap();
                assert!(
                    (c.ap50 - want).abs() < 1e-12,
                    "{}: {} vs {want}",
                    c.name,
                    c.ap50
                );
            }
            // no ground truth: the reference leaves the class out
            None => assert_eq!(c.num_gt, 0, "{}", c.name),
        }
    }
    // the problem exercises what it claims to
    assert!(per_class.values().any(|v| v.as_f64() == Some(0.0)));
    assert!(report
        .classes
        .iter()
        .any(|c| c.num_gt == 0 && c.num_det > 0));
}

#[test]
fn coco_map_matches_pycocotools() {
    let p = load();
    let report = evaluate(&p.dets, &p.gts, &p.names);
    let want = p.reference["coco_map50_95"].as_f64().unwrap();
    assert!(
        (report.map50_95 - want).abs() < 1e-9,
        "mAP@[.5:.95] {} vs pycocotools {want}",
        report.map50_95
    );
    let at50: Vec<f64> = coco_ap_at(&p.dets, &p.gts, p.names.len(), coco_iou_thresholds()[0])
        .into_iter()
        .flatten()
        .collect();
    let mean50 = at50.iter().sum::<f64>() / at50.len() as f64;
    let want50 = p.reference["coco_map50"].as_f64().unwrap();
    assert!(
        (mean50 - want50).abs() < 1e-9,
        "COCO AP@.5 {mean50} vs pycocotools {want50}"
    );
}

#[test]
fn detections_are_rounded_as_get_map_txt_writes_them() {
    let d = DetBox {
        image: 0,
        class_id: 1,
        score: 0.123_456_79,
        bbox: [10.9, -0.5, 99.99, 42.0],
    };
    let r = round_as_get_map_txt(&d);
    assert_eq!(r.score, 0.1234);
    assert_eq!(r.bbox, [10.0, 0.0, 99.0, 42.0]);
    assert_eq!((r.image, r.class_id), (0, 1));
    for (score, text) in [(1.0f32, 1.0f32), (0.5, 0.5), (0.001_234_9, 0.0012)] {
        assert_eq!(round_as_get_map_txt(&DetBox { score, ..d }).score, text);
    }
    // the fixture's detections are already in that form
    let p = load();
    for d in &p.dets {
        assert_eq!(round_as_get_map_txt(d), *d);
    }
}
