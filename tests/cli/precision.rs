//! `yolo-cli quantize` and `run --precision`: the int8 file's size and use, bf16, and
//! the refusals (each naming the flag or file, never a panic).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use serde_json::Value;

use super::{assert_no_panic, image, model_command, run, stderr_of, stdout_of, weights};

/// `yolo-cli quantize` on the synthetic weights at 64x64, run in `cwd`.
fn quantize(cwd: &Path) -> Command {
    model_command(cwd, "quantize", weights())
}

/// `yolo-cli run` at 64x64 on the weights `w`, run in `cwd`.
fn run_on(cwd: &Path, w: &Path) -> Command {
    model_command(cwd, "run", w)
}

/// The int8 file of the synthetic weights (made once per test process), and the
/// quantize command's stderr.
fn int8_weights() -> &'static (PathBuf, String) {
    static W: OnceLock<(PathBuf, String)> = OnceLock::new();
    W.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-quantize-{}", std::process::id()));
        let calib = dir.join("calib");
        std::fs::create_dir_all(&calib).unwrap();
        for i in 0..3u8 {
            image(48 + 8 * i as u32, 40, i)
                .save(calib.join(format!("c{i}.png")))
                .unwrap();
        }
        std::fs::write(calib.join("notes.txt"), "not an image").unwrap();
        let out_path = dir.join("int8.safetensors");
        let out = quantize(&dir)
            .args(["--calib", "calib", "--images", "2", "-o"])
            .arg(&out_path)
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert!(out.status.success(), "{}", stderr_of(&out));
        (out_path, stderr_of(&out))
    })
}

#[test]
fn quantize_writes_a_quarter_size_file() {
    let (path, log) = int8_weights();
    let f32_len = std::fs::metadata(weights()).unwrap().len();
    let int8_len = std::fs::metadata(path).unwrap().len();
    let ratio = f32_len as f64 / int8_len as f64;
    eprintln!("f32 file: {f32_len} bytes, int8 file: {int8_len} bytes ({ratio:.2}x smaller)");
    assert!((3.5..4.1).contains(&ratio), "{ratio}");
    assert!(
        log.contains("2 image(s)") && log.contains("kept in f32"),
        "{log}"
    );
    // the metadata says what the file is
    let (meta, _) = yolo_weights::load::read_safetensors(path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(meta.get("precision").map(String::as_str), Some("int8"));
    assert_eq!(
        meta.get("calibration_images").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        meta.get("calibration_method").map(String::as_str),
        Some("percentile(99.99)")
    );
}

/// The JSON keys of every detection of a `--format json` run.
fn schema(v: &Value) -> Vec<Vec<String>> {
    let mut keys: Vec<Vec<String>> = v
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d.as_array().unwrap().clone())
        .map(|d| {
            let mut k: Vec<String> = d.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        })
        .collect();
    keys.dedup();
    keys
}

#[test]
fn int8_and_bf16_runs_write_the_f32_schema() {
    let (int8, _) = int8_weights();
    let dir = tempfile::tempdir().unwrap();
    image(40, 30, 1).save(dir.path().join("a.png")).unwrap();
    let json = |cmd: &mut Command| {
        let out = cmd
            .args(["a.png", "--conf", "0.01", "--format", "json", "--no-draw"])
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_str::<Value>(&stdout_of(&out)).expect("one JSON document")
    };
    let f32_run = json(&mut run(dir.path()));
    let bf16_run = json(run(dir.path()).args(["--precision", "bf16"]));
    // an int8 file runs in int8 by itself, or with --precision int8
    let int8_run = json(&mut run_on(dir.path(), int8));
    let int8_explicit = json(run_on(dir.path(), int8).args(["--precision", "int8"]));
    assert_eq!(int8_run, int8_explicit);
    for v in [&bf16_run, &int8_run] {
        assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["a.png"]);
        let s = schema(v);
        assert!(
            s.is_empty() || schema(&f32_run).is_empty() || s == schema(&f32_run),
            "{s:?}"
        );
    }
}

#[test]
fn precision_refusals_name_the_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    image(40, 30, 1).save(dir.path().join("a.png")).unwrap();
    let fails = |cmd: &mut Command, needles: &[&str]| {
        let out = cmd.output().unwrap();
        assert_no_panic(&out);
        assert!(!out.status.success());
        let err = stderr_of(&out);
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
    };
    fails(
        run(dir.path()).args(["a.png", "--precision", "fp16"]),
        &["--precision", "fp16", "bf16"],
    );
    // int8 on an f32 file says how to make an int8 one
    let w = weights().display().to_string();
    fails(
        run(dir.path()).args(["a.png", "--precision", "int8"]),
        &["--precision int8", &w, "yolo-cli quantize"],
    );
    // an int8 file refuses another precision
    let (int8, _) = int8_weights();
    fails(
        run_on(dir.path(), int8).args(["a.png", "--precision", "bf16"]),
        &["int8 weights", &int8.display().to_string()],
    );
}

#[test]
fn quantize_refusals_name_the_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |cmd: &mut Command, needles: &[&str]| {
        let out = cmd.output().unwrap();
        assert_no_panic(&out);
        assert!(!out.status.success());
        let err = stderr_of(&out);
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
    };
    let d = dir.path();
    // missing, empty, and a corrupt image
    fails(
        quantize(d).args(["--calib", "nowhere", "-o", "q.safetensors"]),
        &["--calib", "nowhere"],
    );
    std::fs::create_dir(d.join("empty")).unwrap();
    fails(
        quantize(d).args(["--calib", "empty", "-o", "q.safetensors"]),
        &["--calib", "empty", "no images"],
    );
    std::fs::create_dir(d.join("bad")).unwrap();
    std::fs::write(d.join("bad/broken.jpg"), b"\xff\xd8 not a jpeg").unwrap();
    fails(
        quantize(d).args(["--calib", "bad", "-o", "q.safetensors"]),
        &["broken.jpg"],
    );
    assert!(!d.join("q.safetensors").exists());
    // the input weights are never the output, and an existing output needs --force
    std::fs::create_dir(d.join("ok")).unwrap();
    image(32, 32, 3).save(d.join("ok/a.png")).unwrap();
    fails(
        quantize(d)
            .args(["--calib", "ok", "--force", "-o"])
            .arg(weights()),
        &["input weights"],
    );
    std::fs::write(d.join("taken.safetensors"), b"mine").unwrap();
    fails(
        quantize(d).args(["--calib", "ok", "-o", "taken.safetensors"]),
        &["taken.safetensors", "--force"],
    );
    assert_eq!(std::fs::read(d.join("taken.safetensors")).unwrap(), b"mine");
    fails(
        quantize(d).args(["--calib", "ok", "--method", "median", "-o", "q.safetensors"]),
        &["--method", "median"],
    );
}
