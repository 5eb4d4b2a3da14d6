//! Parity of the detection pipeline with the PyTorch reference
//! (`tools/reference/make_golden_pipeline.py`, fixtures in `tests/fixtures/pipeline/`).
//!
//! - `heads_{case}.safetensors`: fixed raw heads (`head0..2`) and the reference's
//!   `DecodeBox.decode_box` output (`decoded`).
//! - `expected_detections.json`: per case, the NMS output (normalised corners) and, per
//!   image size and resize mode, `yolo_correct_boxes` (top, left, bottom, right, unrounded).
//! - `preprocess.json` / `preprocess.safetensors` / `img_*.png`: PIL's letterbox and
//!   stretch resize of fixed images, and the network input they give.
//!
//! Edge cases covered by the cases: nothing above threshold (`empty`, image 1 of `main`),
//! a single class everywhere (`single_class`), equal scores (D1/D2, E1/E2 of `main`),
//! boxes beyond every border (F, G), a non-square input, non-square images in both
//! resize modes, 1x1 and 2000x50 images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use yolov3_head::decode::decode_heads;
use yolov3_head::nms::{non_max_suppression, select_candidates, Candidate};
use yolov3_head::postprocess::{clip_to_image, yolo_correct_box};
use yolov3_head::preprocess::{images_to_tensor, resize_image};
use yolov3_head::{
    load_image, postprocess_heads, Anchors, ClassNames, DetectorConfig, ResizeMode,
    DEFAULT_MAX_PIXELS, YOLO_ANCHORS_MASK,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pipeline")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).expect("fixture tensors")
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

/// IoU of two (a, b, c, d) boxes given as (min0, min1, max0, max1).
fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let i0 = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let i1 = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = i0 * i1;
    inter / (area(a) + area(b) - inter)
}

/// Same box: IoU > 0.999, or, for boxes of (almost) no area, corners within `tol`.
fn assert_same_box(got: [f64; 4], want: [f64; 4], tol: f64, what: &str) {
    let area = (want[2] - want[0]) * (want[3] - want[1]);
    if area > tol * tol * 1e4 {
        let v = iou(got, want);
        assert!(v > 0.999, "{what}: IoU {v}: got {got:?}, want {want:?}");
    } else {
        for k in 0..4 {
            assert!(
                (got[k] - want[k]).abs() <= tol,
                "{what}: got {got:?}, want {want:?}"
            );
        }
    }
}

struct Case {
    name: String,
    input_hw: (usize, usize),
    heads: [Tensor; 3],
    decoded: Tensor,
    value: Value,
}

fn cases() -> Vec<Case> {
    let expected = json("expected_detections.json");
    assert_eq!(f(&expected["conf_thres"]), 0.5);
    assert_eq!(f(&expected["nms_iou"]), 0.3);
    let anchors: Vec<f64> = expected["anchors_wh"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p.as_array().unwrap().iter().map(f))
        .collect();
    let ours: Vec<f64> = Anchors::yolov3()
        .pairs()
        .iter()
        .flat_map(|&(w, h)| [w as f64, h as f64])
        .collect();
    assert_eq!(anchors, ours);
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let t = tensors(c["heads_file"].as_str().unwrap());
            let hw = c["input_shape_hw"].as_array().unwrap();
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                input_hw: (f(&hw[0]) as usize, f(&hw[1]) as usize),
                heads: [t["head0"].clone(), t["head1"].clone(), t["head2"].clone()],
                decoded: t["decoded"].clone(),
                value: c.clone(),
            }
        })
        .collect()
}

fn decode(case: &Case) -> Tensor {
    let h = &case.heads;
    decode_heads(
        &[&h[0], &h[1], &h[2]],
        &Anchors::yolov3(),
        &YOLO_ANCHORS_MASK,
        20,
        case.input_hw,
    )
    .unwrap()
}

#[test]
fn fixtures_cover_the_edge_cases() {
    let cases = cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["main", "single_class", "empty"]);
    // nothing above threshold: the empty case and image 1 of main
    let counts = |c: &Case| -> Vec<usize> {
        c.value["nms_normalized"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_array().unwrap().len())
            .collect()
    };
    assert_eq!(counts(&cases[0])[1], 0);
    assert_eq!(counts(&cases[2]), [0]);
    assert!(counts(&cases[1])[0] > 100);
    assert_ne!(cases[1].input_hw.0, cases[1].input_hw.1);
}

#[test]
fn decode_matches_the_reference() {
    for case in cases() {
        let got = decode(&case);
        assert_eq!(got.dims(), case.decoded.dims(), "{}", case.name);
        let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = case
            .decoded
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{} element {i}: {a} vs {b}",
                case.name
            );
        }
    }
}

fn our_nms(case: &Case) -> Vec<Vec<Candidate>> {
    select_candidates(&decode(case), 0.5)
        .unwrap()
        .iter()
        .map(|c| non_max_suppression(c, 0.3))
        .collect()
}

#[test]
fn nms_matches_the_reference() {
    for case in cases() {
        let ours = our_nms(&case);
        let want = case.value["nms_normalized"].as_array().unwrap();
        assert_eq!(ours.len(), want.len(), "{}", case.name);
        for (b, (got, want)) in ours.iter().zip(want).enumerate() {
            let want = want.as_array().unwrap();
            assert_eq!(
                got.len(),
                want.len(),
                "{} image {b}: detection count",
                case.name
            );
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let w = w.as_array().unwrap();
                let what = format!("{} image {b} detection {k}", case.name);
                assert_eq!(g.class_id as f64, f(&w[6]), "{what}: class");
                assert!((g.score() as f64 - f(&w[7])).abs() <= 1e-5, "{what}: score");
                assert!((g.obj as f64 - f(&w[4])).abs() <= 1e-5, "{what}: obj");
                assert_same_box(
                    [g.x1, g.y1, g.x2, g.y2].map(|v| v as f64),
                    [f(&w[0]), f(&w[1]), f(&w[2]), f(&w[3])],
                    1e-5,
                    &what,
                );
            }
        }
    }
}

/// Unclipped `yolo_correct_boxes`, and the full postprocessing (clipped) against the
/// reference's boxes clipped to the image, for every image size and resize mode.
#[test]
fn corrected_boxes_match_the_reference() {
    let mut compared = 0;
    for case in cases() {
        let ours = our_nms(&case);
        for result in case.value["results"].as_array().unwrap() {
            let wh = result["image_size_wh"].as_array().unwrap();
            let (iw, ih) = (f(&wh[0]), f(&wh[1]));
            let letterbox = result["letterbox"].as_bool().unwrap();
            let resize = if letterbox {
                ResizeMode::Letterbox
            } else {
                ResizeMode::Stretch
            };
            let config = DetectorConfig::new(ClassNames::voc())
                .with_input_size(case.input_hw.1, case.input_hw.0)
                .with_resize(resize);
            let batch = ours.len();
            let sizes = vec![(iw as u32, ih as u32); batch];
            let full = postprocess_heads(&case.heads, &config, &YOLO_ANCHORS_MASK, &sizes).unwrap();
            let dets = result["detections"].as_array().unwrap();
            for b in 0..batch {
                let want = dets[b].as_array().unwrap();
                assert_eq!(ours[b].len(), want.len());
                assert_eq!(full[b].len(), want.len());
                for (k, w) in want.iter().enumerate() {
                    let w: Vec<f64> = w.as_array().unwrap().iter().map(f).collect();
                    let what = format!(
                        "{} image {b} ({iw}x{ih}, letterbox {letterbox}) detection {k}",
                        case.name
                    );
                    let tol = 1e-5 * iw.max(ih).max(1.0) * 10.0;
                    // unclipped (top, left, bottom, right)
                    let g = yolo_correct_box(
                        &ours[b][k],
                        case.input_hw,
                        (ih as usize, iw as usize),
                        letterbox,
                    );
                    assert_same_box(g.map(|v| v as f64), [w[0], w[1], w[2], w[3]], tol, &what);
                    // clipped, through the public pipeline: (x1, y1, x2, y2)
                    let d = &full[b][k];
                    let (x1, y1, x2, y2) = clip_to_image(
                        [w[0] as f32, w[1] as f32, w[2] as f32, w[3] as f32],
                        (ih as usize, iw as usize),
                    );
                    assert_same_box(
                        [d.x1, d.y1, d.x2, d.y2].map(|v| v as f64),
                        [x1, y1, x2, y2].map(|v| v as f64),
                        tol,
                        &what,
                    );
                    assert!(0.0 <= d.x1 && d.x2 as f64 <= iw && 0.0 <= d.y1 && d.y2 as f64 <= ih);
                    assert_eq!(d.class_id as f64, w[6], "{what}");
                    assert_eq!(d.class_name, ClassNames::voc().name(d.class_id));
                    assert!((d.score as f64 - w[7]).abs() <= 1e-5, "{what}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 2000, "{compared}");
}

#[test]
fn preprocessing_matches_pil() {
    let manifest = json("preprocess.json");
    let t = tensors("preprocess.safetensors");
    let mut pngs = 0;
    for entry in manifest.as_array().unwrap() {
        let key = entry["key"].as_str().unwrap();
        let img = load_image(
            &fixtures().join(entry["image"].as_str().unwrap()),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        let hw = entry["image_shape_hw"].as_array().unwrap();
        assert_eq!(
            (img.height() as f64, img.width() as f64),
            (f(&hw[0]), f(&hw[1])),
            "{key}"
        );
        let input = entry["input_shape_hw"].as_array().unwrap();
        let (h, w) = (f(&input[0]) as u32, f(&input[1]) as u32);
        let mode = if entry["letterbox"].as_bool().unwrap() {
            ResizeMode::Letterbox
        } else {
            ResizeMode::Stretch
        };
        let resized = resize_image(&img, w, h, mode).unwrap();
        // the resized pixels, exactly as PIL's
        if let Some(png) = entry["resized_png"].as_str() {
            let want = image::open(fixtures().join(png)).unwrap().into_rgb8();
            let diff = resized
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{key}: {diff} bytes differ from PIL");
            pngs += 1;
        }
        let rows = t[&format!("{key}.u8_rows")]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let step = (h / 8).max(1);
        let ours: Vec<u8> = (0..h)
            .step_by(step as usize)
            .flat_map(|y| {
                let start = (y * w * 3) as usize;
                resized.as_raw()[start..start + (w * 3) as usize].to_vec()
            })
            .collect();
        assert_eq!(ours, rows, "{key}: sampled rows");
        // the network input
        let x = images_to_tensor(&[resized], &Device::Cpu).unwrap();
        let shape = t[&format!("{key}.shape")].to_vec1::<i64>().unwrap();
        assert_eq!(
            x.dims().iter().map(|&d| d as i64).collect::<Vec<_>>(),
            shape,
            "{key}"
        );
        let stride = f(&entry["sample_stride"]) as usize;
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sample: Vec<f32> = flat.iter().step_by(stride).copied().collect();
        let want = t[&format!("{key}.sample")].to_vec1::<f32>().unwrap();
        assert_eq!(sample, want, "{key}: input sample");
        let chsum = x
            .sum((2, 3))
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let chsum = chsum.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let want = t[&format!("{key}.chsum")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (a, b) in chsum.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0) * 100.0,
                "{key}: {a} vs {b}"
            );
        }
    }
    assert!(pngs >= 12, "{pngs}");
}
