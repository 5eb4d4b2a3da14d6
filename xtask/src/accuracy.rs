//! `cargo xtask accuracy`: what bf16 and int8 cost in accuracy, on a trained checkpoint.
//!
//! 1. the checkpoint: `--weights` (any f32 file `yolo-cli` reads), or by default the model
//!    of the synthetic-set proof (docs/training.md): `make_synthetic data 320 100 64 0`
//!    and MobileNetV2-YOLO trained from scratch at 64 px for 60 epochs, once, cached in
//!    `target/synthetic-proof/` (about 30 to 60 minutes on two cores);
//! 2. quantises it with `yolo-cli quantize` on `--calib` (default: the synthetic set's
//!    image folder, whose first images by name are training images, not held-out ones);
//! 3. `yolo-cli eval --json` at f32, bf16 and int8: mAP@0.5 on the held-out annotations;
//! 4. `yolo-cli run --format jsonl` on the same images at each precision (the thresholds
//!    of `run`), and the share of the f32 detections each precision reproduces: same
//!    class and IoU above `--iou` (0.9), each detection matched at most once;
//! 5. prints the table with the targets of the precision issue (bf16 within 0.5 point of
//!    f32's mAP@0.5, int8 within 1.5) and writes `results.json` beside the files.
//!
//! Every step runs the release `yolo-cli`, as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{cargo, run, stdout_of};

/// Arguments of `cargo xtask accuracy`.
#[derive(Debug, clap::Args)]
pub struct AccuracyArgs {
    /// An f32 checkpoint (default: the synthetic-set model, trained once and cached).
    #[arg(long, requires_all = ["annotations", "classes", "calib"])]
    weights: Option<PathBuf>,
    /// Held-out annotation file (`path x1,y1,x2,y2,cls ...`), with --weights.
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// Class names, with --weights.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Folder of calibration images for `yolo-cli quantize`, with --weights.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Backbone of --weights.
    #[arg(long, default_value = "mobilenetv2")]
    backbone: String,
    /// Input side of --weights (the synthetic model's is 64).
    #[arg(long, default_value = "416")]
    input_size: String,
    /// Anchors file of --weights (default: the YOLOv3 anchors).
    #[arg(long)]
    anchors: Option<PathBuf>,
    /// Calibration images `quantize` reads.
    #[arg(long, default_value_t = 100)]
    calib_images: usize,
    /// Calibration method of `quantize` (percentile or minmax).
    #[arg(long, default_value = "percentile")]
    method: String,
    /// IoU above which a detection reproduces an f32 one of the same class.
    #[arg(long, default_value_t = 0.9)]
    iou: f32,
    /// Where the int8 file and the results go (default: target/accuracy/<weights' stem>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The checkpoint and its data, with the folder the paths are relative to.
struct Setup {
    cwd: PathBuf,
    weights: PathBuf,
    annotations: PathBuf,
    classes: PathBuf,
    calib: PathBuf,
    backbone: String,
    input_size: String,
    anchors: Option<PathBuf>,
    out: PathBuf,
}

/// The precisions compared, f32 first (the reference of the others).
const PRECISIONS: [&str; 3] = ["f32", "bf16", "int8"];

/// The mAP@0.5 targets (points of f32's) of bf16 and int8.
const TARGETS: [(&str, f64); 2] = [("bf16", 0.5), ("int8", 1.5)];

/// Runs `cargo xtask accuracy`.
pub fn accuracy(root: &Path, args: AccuracyArgs) -> Result<()> {
    run(cargo()
        .args(["build", "--release", "-p", "yolo-cli", "--bin", "yolo-cli"])
        .current_dir(root))?;
    let cli = root.join("target/release/yolo-cli");
    let setup = match &args.weights {
        Some(w) => user_setup(&args, w)?,
        None => synthetic_setup(root, &cli)?,
    };
    std::fs::create_dir_all(&setup.out)
        .with_context(|| format!("creating {}", setup.out.display()))?;

    let int8 = setup.out.join("int8.safetensors");
    let mut quantize = model_command(&cli, &setup, "quantize");
    quantize
        .arg("--weights")
        .arg(&setup.weights)
        .arg("--calib")
        .arg(&setup.calib)
        .args(["--images", &args.calib_images.to_string()])
        .args(["--method", &args.method, "--force", "-o"])
        .arg(&int8);
    run(&mut quantize)?;

    let images = image_paths(&setup.cwd.join(&setup.annotations))?;
    let mut rows = Vec::new();
    for precision in PRECISIONS {
        let weights = if precision == "int8" {
            &int8
        } else {
            &setup.weights
        };
        let mut eval = model_command(&cli, &setup, "eval");
        eval.arg("--weights")
            .arg(weights)
            .arg("--annotations")
            .arg(&setup.annotations)
            .args(["--precision", precision, "--json"]);
        let report = stdout_json(&mut eval)?;
        let map50 = report
            .get("map50")
            .and_then(Value::as_f64)
            .with_context(|| format!("no map50 in eval's report: {report}"))?;
        let mut detect = model_command(&cli, &setup, "run");
        detect
            .arg("--weights")
            .arg(weights)
            .args(["--precision", precision, "--format", "jsonl", "--no-draw"])
            .args(&images);
        let dets = detections(&mut detect)?;
        rows.push((precision, map50, dets));
    }

    let reference = rows[0].2.clone();
    let f32_map = rows[0].1;
    let total: usize = reference.iter().map(Vec::len).sum();
    println!();
    println!(
        "{} ({} {}), {} held-out images of {}; {} f32 detections at run's thresholds",
        setup.weights.display(),
        setup.backbone,
        setup.input_size,
        images.len(),
        setup.annotations.display(),
        total
    );
    println!();
    println!("| precision | mAP@0.5 | vs f32 (points) | target | detections | f32 detections reproduced (same class, IoU > {}) |", args.iou);
    println!("|---|---|---|---|---|---|");
    let mut records = Vec::new();
    for (precision, map50, dets) in &rows {
        let matched = reproduced(&reference, dets, args.iou);
        let share = match total {
            0 => "-".to_string(),
            n => format!("{:.1} %", 100.0 * matched as f64 / n as f64),
        };
        let delta = 100.0 * (map50 - f32_map);
        let target = TARGETS.iter().find(|(p, _)| p == precision).map(|&(_, t)| {
            let met = delta.abs() <= t;
            format!("±{t} ({})", if met { "met" } else { "NOT met" })
        });
        println!(
            "| {precision} | {:.4} | {delta:+.2} | {} | {} | {matched} of {total} ({share}) |",
            map50,
            target.as_deref().unwrap_or("-"),
            dets.iter().map(Vec::len).sum::<usize>(),
        );
        records.push(json!({
            "precision": precision, "map50": map50, "delta_points": delta,
            "detections": dets.iter().map(Vec::len).sum::<usize>(),
            "reproduced": matched, "f32_detections": total,
        }));
    }
    let results = setup.out.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&records)?)?;
    println!();
    println!(
        "int8 file: {}; results: {}",
        int8.display(),
        results.display()
    );
    Ok(())
}

/// The paths of a user's checkpoint, relative to the current directory.
fn user_setup(args: &AccuracyArgs, weights: &Path) -> Result<Setup> {
    let stem = weights
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".into());
    let cwd = std::env::current_dir()?;
    Ok(Setup {
        out: args
            .out
            .clone()
            .unwrap_or_else(|| crate::workspace_root().join("target/accuracy").join(stem)),
        weights: weights.to_path_buf(),
        annotations: args.annotations.clone().context("--annotations")?,
        classes: args.classes.clone().context("--classes")?,
        calib: args.calib.clone().context("--calib")?,
        backbone: args.backbone.clone(),
        input_size: args.input_size.clone(),
        anchors: args.anchors.clone(),
        cwd,
    })
}

/// The synthetic-set proof's model, trained on first use into `target/synthetic-proof/`.
fn synthetic_setup(root: &Path, cli: &Path) -> Result<Setup> {
    let dir = root.join("target/synthetic-proof");
    let weights = dir.join("run/best/weights.safetensors");
    if !weights.exists() {
        train_synthetic(root, cli, &dir)?;
    }
    Ok(Setup {
        weights,
        annotations: "data/val.txt".into(),
        classes: "data/classes.txt".into(),
        calib: "data/images".into(),
        backbone: "mobilenetv2".into(),
        input_size: "64".into(),
        anchors: None,
        out: root.join("target/accuracy/synthetic-proof"),
        cwd: dir,
    })
}

/// Makes the synthetic set and trains the model of docs/training.md's proof on it.
fn train_synthetic(root: &Path, cli: &Path, dir: &Path) -> Result<()> {
    eprintln!(
        "training the synthetic-set model once into {} (MobileNetV2 at 64 px, 60 epochs: \
         30 to 60 minutes on two cores)",
        dir.display()
    );
    run(cargo()
        .args(["build", "--release", "-p", "yolo-train", "--example"])
        .arg("make_synthetic")
        .current_dir(root))?;
    std::fs::create_dir_all(dir)?;
    for stale in ["data", "run"] {
        let p = dir.join(stale);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    run(
        Command::new(root.join("target/release/examples/make_synthetic"))
            .args(["data", "320", "100", "64", "0"])
            .current_dir(dir),
    )?;
    run(Command::new(cli)
        .args(["train", "--device", "cpu", "--backbone", "mobilenetv2"])
        .args(["--train", "data/train.txt", "--val", "data/val.txt"])
        .args(["--classes", "data/classes.txt", "--input-size", "64"])
        .args(["--epochs", "60", "--freeze-epochs", "0", "--batch", "8"])
        .args([
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--no-lr-fit",
            "--seed",
            "0",
        ])
        .args([
            "--eval-period",
            "10",
            "--save-period",
            "0",
            "--save-dir",
            "run",
        ])
        .current_dir(dir))
}

/// `yolo-cli SUBCOMMAND` with the model flags of `setup`, run in its folder.
fn model_command(cli: &Path, setup: &Setup, subcommand: &str) -> Command {
    let mut cmd = Command::new(cli);
    cmd.arg(subcommand)
        .args(["--device", "cpu", "--backbone", &setup.backbone])
        .args(["--input-size", &setup.input_size])
        .arg("--classes")
        .arg(&setup.classes)
        .current_dir(&setup.cwd);
    if let Some(a) = &setup.anchors {
        cmd.arg("--anchors").arg(a);
    }
    cmd
}

/// The image paths of an annotation file (the first field of each non-empty line).
fn image_paths(annotations: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(annotations)
        .with_context(|| format!("reading {}", annotations.display()))?;
    let paths: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if paths.is_empty() {
        bail!("{} lists no image", annotations.display());
    }
    Ok(paths)
}

/// Runs `cmd` and parses its whole stdout as one JSON value.
fn stdout_json(cmd: &mut Command) -> Result<Value> {
    let stdout = output(cmd)?;
    serde_json::from_str(&stdout).with_context(|| format!("parsing the output of {cmd:?}"))
}

/// Runs `cmd`, failing with its stderr; returns its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    // `run`'s command line lists every held-out image: show its start
    let shown = format!("{cmd:?}");
    match shown.char_indices().nth(400) {
        Some((cut, _)) => eprintln!(
            "$ {} ... ({} arguments)",
            &shown[..cut],
            cmd.get_args().len()
        ),
        None => eprintln!("$ {shown}"),
    }
    stdout_of(cmd)
}

/// One detection: class and box.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Det {
    class_id: u64,
    score: f64,
    bbox: [f32; 4],
}

/// The detections per image of a `run --format jsonl`, in its input order.
fn detections(cmd: &mut Command) -> Result<Vec<Vec<Det>>> {
    let stdout = output(cmd)?;
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
            let dets = v
                .get("detections")
                .and_then(Value::as_array)
                .with_context(|| format!("no detections in {line}"))?;
            dets.iter().map(det).collect()
        })
        .collect()
}

fn det(v: &Value) -> Result<Det> {
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("no {k} in {v}"))
    };
    Ok(Det {
        class_id: v
            .get("class_id")
            .and_then(Value::as_u64)
            .with_context(|| format!("no class_id in {v}"))?,
        score: num("score")?,
        bbox: [
            num("x1")? as f32,
            num("y1")? as f32,
            num("x2")? as f32,
            num("y2")? as f32,
        ],
    })
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// How many of `reference`'s detections `other` reproduces: per image, in descending
/// score, each reference detection takes the unmatched detection of the same class with
/// the highest IoU, if that IoU is above `min_iou`.
fn reproduced(reference: &[Vec<Det>], other: &[Vec<Det>], min_iou: f32) -> usize {
    let mut count = 0;
    for (refs, others) in reference.iter().zip(other) {
        let mut order: Vec<&Det> = refs.iter().collect();
        order.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut taken = vec![false; others.len()];
        for r in order {
            let best = others
                .iter()
                .enumerate()
                .filter(|(i, o)| !taken[*i] && o.class_id == r.class_id)
                .map(|(i, o)| (i, iou(&r.bbox, &o.bbox)))
                .filter(|&(_, v)| v > min_iou)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, _)) = best {
                taken[i] = true;
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(class_id: u64, score: f64, bbox: [f32; 4]) -> Det {
        Det {
            class_id,
            score,
            bbox,
        }
    }

    #[test]
    fn a_detection_is_reproduced_by_the_same_class_at_a_close_box_once() {
        let a = d(0, 0.9, [0.0, 0.0, 10.0, 10.0]);
        let b = d(1, 0.8, [20.0, 20.0, 30.0, 30.0]);
        let reference = vec![vec![a, b]];
        // the same boxes: both reproduced
        assert_eq!(reproduced(&reference, &reference, 0.9), 2);
        // b's class changed, a's box moved by a tenth of its side (IoU 0.82): neither
        let moved = d(0, 0.9, [1.0, 0.0, 11.0, 10.0]);
        let other = vec![vec![moved, d(2, 0.8, b.bbox)]];
        assert!((iou(&a.bbox, &moved.bbox) - 9.0 / 11.0).abs() < 1e-6);
        assert_eq!(reproduced(&reference, &other, 0.9), 0);
        assert_eq!(reproduced(&reference, &other, 0.8), 1);
        // one detection cannot reproduce two
        let twice = vec![vec![a, d(0, 0.5, [0.0, 0.0, 10.0, 10.2])]];
        assert_eq!(reproduced(&twice, &[vec![a]], 0.9), 1);
        // images are matched in order; a missing image reproduces nothing
        assert_eq!(reproduced(&[vec![], vec![a]], &[vec![a]], 0.9), 0);
    }

    #[test]
    fn jsonl_detections_are_read_with_their_fields() {
        let v: Value = serde_json::from_str(
            r#"{"x1":1,"y1":2,"x2":3.5,"y2":4,"score":0.7,"class_id":2,"class_name":"t"}"#,
        )
        .unwrap();
        assert_eq!(det(&v).unwrap(), d(2, 0.7, [1.0, 2.0, 3.5, 4.0]));
        let missing: Value = serde_json::from_str(r#"{"x1":1}"#).unwrap();
        assert!(det(&missing).unwrap_err().to_string().contains("no "));
    }
}
