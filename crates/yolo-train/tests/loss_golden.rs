//! `YoloLoss` against the reference's `YOLOLoss` (tools/reference/make_golden_loss.py):
//! every term of every head, the total, and the gradient with respect to the raw heads.

use candle_core::{Device, Tensor, Var};
use serde_json::Value;
use yolo_train::{TargetBox, YoloLoss};
use yolov3_head::{YOLO_ANCHORS, YOLO_ANCHORS_MASK};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/loss/loss_golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The same closed form as the script: a multiplicative hash of the index.
fn closed_form(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_mul(2654435761) + seed * 97531) % (1u64 << 32);
            let u = h as f64 / 2f64.powi(32);
            ((u * 2.0 - 1.0) * scale * 2.0) as f32
        })
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 2e-5 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

#[test]
fn every_term_matches_the_reference() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut saw_head0_positive = false;
    let mut saw_ignored = false;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let hw = case["input_hw"].as_array().unwrap();
        let (h, w) = (
            hw[0].as_u64().unwrap() as usize,
            hw[1].as_u64().unwrap() as usize,
        );
        let c = case["num_classes"].as_u64().unwrap() as usize;
        let seed = case["seed"].as_u64().unwrap();
        let scale = case["scale"].as_f64().unwrap();
        let targets: Vec<Vec<TargetBox>> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|img| {
                img.as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let v: Vec<f64> = b
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap())
                            .collect();
                        TargetBox {
                            cx: v[0] as f32,
                            cy: v[1] as f32,
                            w: v[2] as f32,
                            h: v[3] as f32,
                            class_id: v[4] as usize,
                        }
                    })
                    .collect()
            })
            .collect();
        let bs = targets.len();
        let loss = YoloLoss::new(&YOLO_ANCHORS, YOLO_ANCHORS_MASK, c, (h, w));
        let mut vars = Vec::new();
        let mut total = 0f64;
        let mut sum: Option<Tensor> = None;
        for (l, stride) in [32usize, 16, 8].into_iter().enumerate() {
            let shape = (bs, 3 * (5 + c), h / stride, w / stride);
            let n = bs * 3 * (5 + c) * (h / stride) * (w / stride);
            let data = closed_form(n, seed * 3 + l as u64, scale);
            let var =
                Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap();
            let t = loss.forward(l, var.as_tensor(), &targets).unwrap();
            let want = &case["layers"][l];
            let what = |k: &str| format!("{name} head {l} {k}");
            assert_eq!(
                t.num_pos as u64,
                want["num_pos"].as_u64().unwrap(),
                "{}",
                what("positives")
            );
            assert_eq!(
                t.num_conf as u64,
                want["num_conf"].as_u64().unwrap(),
                "{}",
                what("objectness count")
            );
            close(
                t.loc as f64,
                want["loc"].as_f64().unwrap() * 0.05,
                &what("loc"),
            );
            close(
                t.cls as f64,
                want["cls"].as_f64().unwrap() * c as f64 / 80.0,
                &what("cls"),
            );
            let obj_ratio = 5.0 * (h * w) as f64 / (416.0 * 416.0);
            let balance = [0.4, 1.0, 4.0][l];
            close(
                t.conf as f64,
                want["conf"].as_f64().unwrap() * balance * obj_ratio,
                &what("conf"),
            );
            let tv = t.total_value().unwrap() as f64;
            close(tv, want["total"].as_f64().unwrap(), &what("total"));
            saw_head0_positive |= l == 0 && t.num_pos > 0;
            // positives are always in the objectness term: fewer means some were ignored
            saw_ignored |= t.num_conf < bs * 3 * (h / stride) * (w / stride);
            total += tv;
            sum = Some(match sum {
                None => t.total,
                Some(s) => (s + t.total).unwrap(),
            });
            vars.push(var);
        }
        close(
            total,
            case["total"].as_f64().unwrap(),
            &format!("{name} total"),
        );
        let grads = sum.unwrap().backward().unwrap();
        for (l, var) in vars.iter().enumerate() {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let st = &case["grad_stats"][l];
            let max_abs = st["max_abs"].as_f64().unwrap();
            let sum: f64 = g.iter().sum();
            let abs_sum: f64 = g.iter().map(|v| v.abs()).sum();
            let sq_sum: f64 = g.iter().map(|v| v * v).sum();
            let m = g.iter().fold(0f64, |a, v| a.max(v.abs()));
            let what = format!("{name} grad head {l}");
            assert!(
                (m - max_abs).abs() <= 1e-4 * max_abs + 1e-9,
                "{what} max_abs {m} vs {max_abs}"
            );
            assert!(
                (abs_sum - st["abs_sum"].as_f64().unwrap()).abs() <= 1e-4 * abs_sum + 1e-9,
                "{what} abs_sum"
            );
            assert!(
                (sq_sum - st["sq_sum"].as_f64().unwrap()).abs() <= 1e-4 * sq_sum + 1e-12,
                "{what} sq_sum"
            );
            assert!(
                (sum - st["sum"].as_f64().unwrap()).abs() <= 1e-4 * abs_sum + 1e-9,
                "{what} sum"
            );
            if let Some(full) = case.get("grads") {
                let want: Vec<f64> = full[l]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(want.len(), g.len());
                for (i, (a, b)) in g.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * max_abs + 1e-6 * b.abs(),
                        "{what}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
    assert!(
        saw_head0_positive,
        "the fixture must exercise the 13x13 head"
    );
    assert!(saw_ignored, "the fixture must exercise the ignore mask");
}
