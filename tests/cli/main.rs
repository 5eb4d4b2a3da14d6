//! End-to-end tests of `yolo-cli run` on files the tests generate.
//!
//! One synthetic-weights file (MobileNetV2 body, 20 VOC classes, the deterministic
//! weights of `nn_blocks::weights::synthetic_values`) is written once per build into
//! Cargo's integration-test temp dir and shared by every test; inputs are small
//! images and the network runs at 64x64.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

#[path = "../common/output.rs"]
mod output;
#[path = "../common/synthetic.rs"]
mod synthetic;

mod precision;
use output::{assert_no_panic, stderr_of, stdout_of};
use synthetic::{image, weights, MODEL_FLAGS};

/// `yolo-cli SUBCOMMAND` with the model flags of the synthetic MobileNetV2 at 64x64 on
/// the weights `w`, run in `cwd`.
fn model_command(cwd: &Path, subcommand: &str, w: &Path) -> Command {
    let mut cmd = Command::cargo_bin("yolo-cli").unwrap();
    cmd.current_dir(cwd)
        .arg(subcommand)
        .args(MODEL_FLAGS)
        .arg("--weights")
        .arg(w);
    cmd
}

/// `yolo-cli run` on the synthetic weights at 64x64, run in `cwd`.
fn run(cwd: &Path) -> Command {
    model_command(cwd, "run", weights())
}

#[test]
fn detects_writes_json_images_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    image(40, 30, 1).save(dir.path().join("a.png")).unwrap();
    image(64, 48, 2).save(dir.path().join("b.jpg")).unwrap();
    let out = run(dir.path())
        .args([
            "a.png",
            "b.jpg",
            "--conf",
            "0.05",
            "--format",
            "json",
            "--save-txt",
            "--output",
            "out",
        ])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: Value = serde_json::from_str(&stdout_of(&out)).expect("stdout is one JSON document");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["a.png", "b.jpg"]);
    let mut total = 0;
    for (dets, (stem, (w, h))) in obj.values().zip([("a", (40.0, 30.0)), ("b", (64.0, 48.0))]) {
        let dets = dets.as_array().unwrap();
        total += dets.len();
        for d in dets {
            let d = d.as_object().unwrap();
            let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(
                keys,
                ["class_id", "class_name", "score", "x1", "x2", "y1", "y2"]
            );
            let f = |k: &str| d[k].as_f64().unwrap();
            assert!(
                0.0 <= f("x1") && f("x1") <= f("x2") && f("x2") <= w,
                "{d:?}"
            );
            assert!(
                0.0 <= f("y1") && f("y1") <= f("y2") && f("y2") <= h,
                "{d:?}"
            );
            assert!(f("score") >= 0.05);
            assert!(d["class_id"].as_u64().unwrap() < 20);
        }
        let labels =
            std::fs::read_to_string(dir.path().join(format!("out/labels/{stem}.txt"))).unwrap();
        assert_eq!(labels.lines().count(), dets.len());
    }
    assert!(total > 0, "the synthetic weights give boxes at conf 0.05");
    assert_eq!(
        image::open(dir.path().join("out/a.png")).unwrap().width(),
        40
    );
    assert_eq!(
        image::open(dir.path().join("out/b.jpg")).unwrap().height(),
        48
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("2 images (0 skipped)") && err.contains("inference"),
        "{err}"
    );
}

/// The same images, the same detections in the same order; numbers within rounding.
fn assert_same_detections(a: &Value, b: &Value) {
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, da) in a {
        let (da, db) = (da.as_array().unwrap(), b[path].as_array().unwrap());
        assert_eq!(da.len(), db.len(), "{path}: number of detections");
        for (x, y) in da.iter().zip(db) {
            assert_eq!(x["class_id"], y["class_id"], "{path}");
            let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
            assert!(
                (f(x, "score") - f(y, "score")).abs() < 1e-4,
                "{path}: {x} vs {y}"
            );
            for k in ["x1", "y1", "x2", "y2"] {
                assert!((f(x, k) - f(y, k)).abs() < 1e-2, "{path}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn batches_and_stretch_give_consistent_results() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (w, h)) in [(50, 20), (20, 50), (33, 33)].iter().enumerate() {
        image(*w, *h, i as u8)
            .save(dir.path().join(format!("{i}.png")))
            .unwrap();
    }
    let json = |extra: &[&str]| -> Value {
        let out = run(dir.path())
            .args([".", "--conf", "0.05", "--format", "json", "--no-draw"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_str(&stdout_of(&out)).unwrap()
    };
    let one = json(&[]);
    assert_eq!(one.as_object().unwrap().len(), 3);
    // Batching changes only the summation order inside the GEMMs: the same detections,
    // in the same order, to float rounding.
    assert_same_detections(&one, &json(&["--batch", "2"]));
    let stretched = json(&["--no-letterbox", "--batch", "3"]);
    assert_eq!(stretched.as_object().unwrap().len(), 3);
    assert_ne!(one, stretched);
    // --no-draw and no --save-txt: nothing written
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn bad_files_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("imgs");
    std::fs::create_dir(&d).unwrap();
    image(30, 20, 3).save(d.join("good.png")).unwrap();
    std::fs::write(d.join("empty.png"), b"").unwrap();
    std::fs::write(
        d.join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 this is not really a jpeg",
    )
    .unwrap();
    let mut png = Vec::new();
    image(64, 64, 4)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(d.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image\n").unwrap();
    let out = run(dir.path())
        .args([
            "imgs",
            "notes.txt",
            "missing.png",
            "--format",
            "jsonl",
            "--no-draw",
        ])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    for bad in [
        "empty.png",
        "corrupt.jpg",
        "truncated.png",
        "notes.txt",
        "missing.png",
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains("skipping") && l.contains(bad)),
            "{bad}: {err}"
        );
    }
    let lines: Vec<Value> = stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["path"].as_str().unwrap().ends_with("good.png"));
    assert!(err.contains("1 image (5 skipped)"), "{err}");
}

#[test]
fn decompression_bomb_is_refused_by_the_pixel_limit() {
    let dir = tempfile::tempdir().unwrap();
    // A PNG whose header claims 100000x100000 RGB (30 GB) and that holds almost no data.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    // a few bytes of zlib data: far too little for the claimed size
    chunk(b"IDAT", b"\x78\x9c\x63\x60\x00\x00\x00\x02\x00\x01");
    chunk(b"IEND", b"");
    std::fs::write(dir.path().join("bomb.png"), &png).unwrap();
    image(16, 16, 5).save(dir.path().join("ok.png")).unwrap();
    let out = run(dir.path())
        .args(["bomb.png", "ok.png", "--no-draw"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("bomb.png") && err.contains("100000x100000") && err.contains("over the limit"),
        "{err}"
    );
    assert!(stdout_of(&out).contains("ok.png"));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn unusable_output_directory_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 6).save(dir.path().join("a.png")).unwrap();
    std::fs::write(dir.path().join("taken"), b"a file").unwrap();
    // the weights do not exist either: the output directory is checked first
    let out = Command::cargo_bin("yolo-cli")
        .unwrap()
        .current_dir(dir.path())
        .args([
            "run",
            "a.png",
            "--weights",
            "nowhere.safetensors",
            "--output",
            "taken/sub",
        ])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("cannot create the output directory taken/sub"),
        "{err}"
    );
    assert!(!err.contains("nowhere"), "{err}");
}

#[test]
fn class_count_mismatch_names_both_numbers() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 7).save(dir.path().join("a.png")).unwrap();
    std::fs::write(dir.path().join("three.txt"), "cat\ndog\nbird\n").unwrap();
    let out = run(dir.path())
        .args(["a.png", "--classes", "three.txt", "--no-draw"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("trained for 20 classes") && err.contains("configured for 3"),
        "{err}"
    );
    assert!(err.contains("three.txt"), "{err}");
}

#[test]
fn malformed_anchors_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 8).save(dir.path().join("a.png")).unwrap();
    std::fs::write(
        dir.path().join("anchors.txt"),
        "10,13, 16,30, 33,23\n30,61, 62,four5\n",
    )
    .unwrap();
    let out = run(dir.path())
        .args(["a.png", "--anchors", "anchors.txt", "--no-draw"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("anchors.txt line 2") && err.contains("`four5`"),
        "{err}"
    );
}

/// Missing default weights: offline (empty cache), or with the Hub unreachable (a
/// loopback port nothing listens on), the run stops with the command to fetch them.
#[test]
fn missing_default_weights_say_which_command_to_run() {
    let hint = "error: no weights at model_data/weights/darknet53-coco.safetensors: run `cargo xtask download-weights darknet53-coco` or pass --weights FILE";
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 9).save(dir.path().join("a.png")).unwrap();
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (key, value) in [
        ("HF_HUB_OFFLINE", "1".to_string()),
        ("HF_ENDPOINT", format!("http://127.0.0.1:{unused_port}")),
    ] {
        let out = Command::cargo_bin("yolo-cli")
            .unwrap()
            .current_dir(dir.path())
            // the checkout's directory, where `cargo xtask download-weights` installs
            .env("YOLO_RS_WEIGHTS_DIR", "model_data/weights")
            .env("HF_HOME", dir.path().join("hf"))
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{unused_port}"))
            .env(key, value)
            .args(["run", "a.png", "--no-draw"])
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert!(!out.status.success());
        let err = stderr_of(&out);
        assert!(err.contains(hint), "{key}: {err}");
        assert!(!dir
            .path()
            .join("model_data/weights/darknet53-coco.safetensors")
            .exists());
    }
    // The MobileNetV2 detector has no public weights: the error says to train one.
    let out = Command::cargo_bin("yolo-cli")
        .unwrap()
        .current_dir(dir.path())
        .env("YOLO_RS_WEIGHTS_DIR", "model_data/weights")
        .args(["run", "a.png", "--no-draw", "--backbone", "mobilenetv2"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("no public weights") && err.contains("yolo-cli train"),
        "{err}"
    );
}

#[test]
fn drawn_images_never_overwrite_inputs_and_names_do_not_clash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("x")).unwrap();
    image(20, 20, 10).save(dir.path().join("a.png")).unwrap();
    image(24, 24, 11).save(dir.path().join("x/a.png")).unwrap();
    let before = std::fs::read(dir.path().join("a.png")).unwrap();
    // the output directory is the inputs' own directory
    let out = run(dir.path())
        .args(["a.png", "x/a.png", "--output", ".", "--conf", "0.05"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(dir.path().join("a.png")).unwrap(), before);
    assert_eq!(image::open(dir.path().join("a-2.png")).unwrap().width(), 20);
    assert_eq!(image::open(dir.path().join("a-3.png")).unwrap().width(), 24);
}

#[test]
fn directories_need_recursive_to_descend() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
    image(16, 16, 12)
        .save(dir.path().join("d/top.png"))
        .unwrap();
    image(16, 16, 13)
        .save(dir.path().join("d/sub/deep.bmp"))
        .unwrap();
    std::fs::write(
        dir.path().join("d/readme.md"),
        "ignored: not an image extension",
    )
    .unwrap();
    let paths = |extra: &[&str]| -> Vec<String> {
        let out = run(dir.path())
            .args(["d", "--format", "jsonl", "--no-draw"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        stdout_of(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        paths(&[]),
        [Path::new("d").join("top.png").display().to_string()]
    );
    assert_eq!(
        paths(&["--recursive"]),
        [
            Path::new("d").join("sub/deep.bmp").display().to_string(),
            Path::new("d").join("top.png").display().to_string()
        ]
    );
}

#[test]
fn table_output_and_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 14).save(dir.path().join("a.png")).unwrap();
    let out = run(dir.path())
        .args(["a.png", "--no-draw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).starts_with("a.png (16x16): "),
        "{}",
        stdout_of(&out)
    );
    for bad in [
        ["--conf", "1.5"],
        ["--nms-iou", "-0.1"],
        ["--input-size", "100"],
        ["--batch", "0"],
    ] {
        let out = run(dir.path()).arg("a.png").args(bad).output().unwrap();
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// Outputs of an earlier run are replaced whole, through a temporary file that does not
/// stay behind; the inputs are untouched.
#[test]
fn outputs_are_replaced_whole_and_leave_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    image(20, 20, 17).save(dir.path().join("a.png")).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(out_dir.join("labels")).unwrap();
    let stale = vec![b'x'; 100_000];
    std::fs::write(out_dir.join("a.png"), &stale).unwrap();
    std::fs::write(out_dir.join("labels/a.txt"), &stale).unwrap();
    let out = run(dir.path())
        .args(["a.png", "--output", "out", "--save-txt", "--conf", "0.05"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(image::open(out_dir.join("a.png")).unwrap().width(), 20);
    let labels = std::fs::read_to_string(out_dir.join("labels/a.txt")).unwrap();
    assert!(
        labels.lines().all(|l| l.split(' ').count() >= 7),
        "{labels}"
    );
    for d in [&out_dir, &out_dir.join("labels")] {
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{}: {names:?}", d.display());
    }
}

/// A weights file that cannot be read is named first, with what is wrong with it; the
/// class list is not blamed (it is fine).
#[test]
fn unreadable_weights_are_named_without_blaming_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 15).save(dir.path().join("img.png")).unwrap();
    std::fs::write(
        dir.path().join("corrupt.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all, and short}",
    )
    .unwrap();
    let good = std::fs::read(weights()).unwrap();
    std::fs::write(
        dir.path().join("truncated.safetensors"),
        &good[..good.len() / 2],
    )
    .unwrap();
    for file in ["corrupt.safetensors", "truncated.safetensors"] {
        let out = Command::cargo_bin("yolo-cli")
            .unwrap()
            .current_dir(dir.path())
            .args([
                "run",
                "--backbone",
                "mobilenetv2",
                "--input-size",
                "64",
                "--no-draw",
                "--weights",
                file,
                "img.png",
            ])
            .output()
            .unwrap();
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(
            err.starts_with(&format!("error: cannot read weights {file}: ")),
            "{err}"
        );
        assert!(!err.contains("classes come from"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_directory_as_weights_is_called_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    image(16, 16, 16).save(dir.path().join("img.png")).unwrap();
    std::fs::create_dir(dir.path().join("some_directory")).unwrap();
    let out = Command::cargo_bin("yolo-cli")
        .unwrap()
        .current_dir(dir.path())
        .args([
            "run",
            "--no-draw",
            "--weights",
            "some_directory/",
            "img.png",
        ])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("some_directory") && err.contains("is a directory"),
        "{err}"
    );
    assert!(!err.contains("does not exist"), "{err}");
}

/// The process settings are CLI options: `--threads` (or RAYON_NUM_THREADS) and
/// NN_BLOCKS_REUSE_BUFFERS=0 change how the work runs, not what it finds.
#[test]
fn process_settings_do_not_change_detections() {
    let dir = tempfile::tempdir().unwrap();
    image(40, 30, 18).save(dir.path().join("a.png")).unwrap();
    let json = |cmd: &mut Command| -> Value {
        let out = cmd
            .args(["a.png", "--conf", "0.05", "--format", "json", "--no-draw"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_str(&stdout_of(&out)).unwrap()
    };
    let plain = json(&mut run(dir.path()));
    assert_same_detections(&plain, &json(run(dir.path()).args(["--threads", "1"])));
    assert_same_detections(
        &plain,
        &json(
            run(dir.path())
                .env("NN_BLOCKS_REUSE_BUFFERS", "0")
                .env("RAYON_NUM_THREADS", "2"),
        ),
    );
    let out = run(dir.path())
        .args(["a.png", "--threads", "many"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--threads"), "{}", stderr_of(&out));
}

/// The kernel flags (or their NN_BLOCKS_* variables) reach the kernels: at 224 the
/// head's 3x3 layers take Winograd unless told not to, and each path rounds its own way.
/// (That the paths agree numerically is nn-kernels' `policies` test and the parity tests.)
#[test]
fn kernel_flags_and_variables_choose_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    image(60, 45, 7).save(dir.path().join("a.png")).unwrap();
    let json = |extra: &[&str], env: &[(&str, &str)]| -> String {
        let mut cmd = Command::cargo_bin("yolo-cli").unwrap();
        cmd.current_dir(dir.path())
            .args(["run", "--backbone", "mobilenetv2", "--input-size", "224"])
            .args(["--device", "cpu", "--weights"])
            .arg(weights())
            .args(["a.png", "--conf", "0.05", "--format", "json", "--no-draw"])
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        stdout_of(&out)
    };
    let f4 = json(&[], &[]);
    let f2 = json(&["--winograd", "f2"], &[]);
    let direct = json(&["--winograd", "off"], &[]);
    let candle = json(&["--fast-conv", "off"], &[]);
    assert_ne!(f4, f2, "--winograd f2 changed nothing");
    assert_ne!(f4, direct, "--winograd off changed nothing");
    assert_ne!(f4, candle, "--fast-conv off changed nothing");
    // A variable does what its flag does, and a flag wins over its variable.
    assert_eq!(f2, json(&[], &[("NN_BLOCKS_WINOGRAD", "f2")]));
    assert_eq!(candle, json(&[], &[("NN_BLOCKS_FAST_CONV", "0")]));
    assert_eq!(
        f4,
        json(&["--winograd", "f4"], &[("NN_BLOCKS_WINOGRAD", "off")])
    );
    // Without the fast path, the Winograd choice has nothing to act on.
    assert_eq!(
        candle,
        json(&["--fast-conv", "off", "--winograd", "f2"], &[])
    );
    let mut cmd = run(dir.path());
    let out = cmd.args(["a.png", "--winograd", "f3"]).output().unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("f3"), "{}", stderr_of(&out));
}

#[test]
fn download_help_and_unknown_models() {
    let help = Command::cargo_bin("yolo-cli")
        .unwrap()
        .args(["download", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{}", stderr_of(&help));
    let text = stdout_of(&help);
    for opt in [
        "[MODEL]...",
        "--force",
        "--dir <DIR>",
        "--all",
        "--offline",
        "--list",
    ] {
        assert!(text.contains(opt), "{opt}: {text}");
    }
    // An unknown name is refused before anything is fetched (the Hub is a closed port).
    let dir = tempfile::tempdir().unwrap();
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::cargo_bin("yolo-cli")
        .unwrap()
        .current_dir(dir.path())
        .env("HF_HOME", dir.path().join("hf"))
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{unused_port}"))
        .args(["download", "darknet53-coco", "yolo-v9000", "--dir", "w"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("error: ") && err.contains("yolo-v9000"),
        "{err}"
    );
    for spec in yolo_weights::registry() {
        assert!(err.contains(&spec.name), "{}: {err}", spec.name);
    }
    assert!(!dir.path().join("w").exists() && !dir.path().join("hf").exists());
}

/// `yolo-cli run a.png` without `--weights` (offline) at 64x64, run in `cwd`: the
/// default weights of `backbone` (`mobilenetv2-voc.safetensors`, `darknet53-coco...`).
fn run_default_weights(cwd: &Path, backbone: &str) -> Command {
    let mut cmd = Command::cargo_bin("yolo-cli").unwrap();
    cmd.current_dir(cwd)
        .env_remove("YOLO_RS_WEIGHTS_DIR")
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "run",
            "--backbone",
            backbone,
            "--input-size",
            "64",
            "--device",
            "cpu",
            "--conf",
            "0.05",
            "--format",
            "json",
            "--no-draw",
            "a.png",
        ]);
    cmd
}

/// The default weights come from `--weights-dir` or `YOLO_RS_WEIGHTS_DIR` (the flag wins),
/// from any current directory; a missing default names the directory and the command
/// that installs there.
#[test]
fn weights_dir_flag_and_variable_hold_the_default_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights_dir = dir.path().join("weights");
    std::fs::create_dir(&weights_dir).unwrap();
    std::fs::copy(weights(), weights_dir.join("mobilenetv2-voc.safetensors")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    image(40, 30, 3).save(elsewhere.join("a.png")).unwrap();
    let reference = run(&elsewhere)
        .args(["a.png", "--conf", "0.05", "--format", "json", "--no-draw"])
        .output()
        .unwrap();
    assert!(reference.status.success(), "{}", stderr_of(&reference));
    let expected: Value = serde_json::from_str(&stdout_of(&reference)).unwrap();

    let by_variable = run_default_weights(&elsewhere, "mobilenetv2")
        .env("YOLO_RS_WEIGHTS_DIR", &weights_dir)
        .output()
        .unwrap();
    assert!(by_variable.status.success(), "{}", stderr_of(&by_variable));
    let by_flag = run_default_weights(&elsewhere, "mobilenetv2")
        .env("YOLO_RS_WEIGHTS_DIR", dir.path().join("nothing here"))
        .arg("--weights-dir")
        .arg(&weights_dir)
        .output()
        .unwrap();
    assert!(by_flag.status.success(), "{}", stderr_of(&by_flag));
    for out in [&by_variable, &by_flag] {
        let got: Value = serde_json::from_str(&stdout_of(out)).unwrap();
        assert_same_detections(&got, &expected);
    }

    // darknet53-coco is not there: offline, the error names the file and the command
    let empty = dir.path().join("empty");
    let out = run_default_weights(&elsewhere, "darknet53")
        .env("YOLO_RS_WEIGHTS_DIR", &empty)
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    let file = empty.join("darknet53-coco.safetensors");
    assert!(
        err.contains(&format!("no weights at {}", file.display()))
            && err.contains(&format!(
                "run `yolo-cli download darknet53-coco --dir {}`",
                empty.display()
            )),
        "{err}"
    );
    assert!(!file.exists());
}

/// Without `--weights-dir` or the variable, the default weights live in the user's data
/// directory (`$XDG_DATA_HOME/yolo-rs/weights` on Linux).
#[cfg(target_os = "linux")]
#[test]
fn default_weights_dir_is_in_the_users_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weights_dir = data.join("yolo-rs/weights");
    std::fs::create_dir_all(&weights_dir).unwrap();
    std::fs::copy(weights(), weights_dir.join("mobilenetv2-voc.safetensors")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    image(40, 30, 4).save(elsewhere.join("a.png")).unwrap();
    let out = run_default_weights(&elsewhere, "mobilenetv2")
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", &data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let got: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(got.as_object().map(|o| o.len()), Some(1), "{got}");
}

/// `cargo install --path crates/yolo-cli` into a temporary root, then the installed
/// binary's `summary` and `run` from a directory outside the checkout, its default
/// weights found through `YOLO_RS_WEIGHTS_DIR` and through the data directory.
///
/// Ignored by default: it is a release build of the whole binary. `.ci/run` runs it
/// (`cargo test -p yolo-cli --test cli -- --ignored installed_binary`).
#[test]
#[ignore = "a release build (cargo install); run by .ci/run"]
fn installed_binary_runs_from_any_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    // the workspace's target directory, so that an earlier release build is reused
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .arg("install")
        .arg("--locked")
        .arg("--path")
        .arg(root.join("crates/yolo-cli"))
        .arg("--root")
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("start cargo install");
    assert!(status.success(), "cargo install failed: {status}");
    let bin = prefix
        .join("bin")
        .join(format!("yolo-cli{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{}", bin.display());

    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let installed = || {
        let mut cmd = Command::new(&bin);
        cmd.current_dir(&elsewhere)
            .env_remove("YOLO_RS_WEIGHTS_DIR")
            .env("HF_HUB_OFFLINE", "1");
        cmd
    };

    let summary = installed()
        .args([
            "summary",
            "--backbone",
            "darknet53",
            "--num-classes",
            "80",
            "--input-size",
            "64",
        ])
        .output()
        .unwrap();
    assert!(summary.status.success(), "{}", stderr_of(&summary));
    assert!(
        stdout_of(&summary).contains("YoloBody(darknet53, 80 classes) at 64x64"),
        "{}",
        stdout_of(&summary)
    );

    image(40, 30, 5).save(elsewhere.join("a.png")).unwrap();
    let weights_dir = tmp.path().join("weights");
    std::fs::create_dir(&weights_dir).unwrap();
    std::fs::copy(weights(), weights_dir.join("mobilenetv2-voc.safetensors")).unwrap();
    let args = ["run", "a.png", "--conf", "0.05", "--format", "json"];
    let expected = run(&elsewhere)
        .args(["a.png", "--conf", "0.05", "--format", "json", "--no-draw"])
        .output()
        .unwrap();
    let expected: Value = serde_json::from_str(&stdout_of(&expected)).unwrap();
    let by_variable = installed()
        .env("YOLO_RS_WEIGHTS_DIR", &weights_dir)
        .args(args)
        .args(MODEL_FLAGS)
        .output()
        .unwrap();
    assert!(by_variable.status.success(), "{}", stderr_of(&by_variable));
    let got: Value = serde_json::from_str(&stdout_of(&by_variable)).unwrap();
    assert_same_detections(&got, &expected);
    // the drawn image, with the built-in font, in runs/detect of the current directory
    assert!(elsewhere.join("runs/detect/a.png").is_file());

    if cfg!(target_os = "linux") {
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("yolo-rs")).unwrap();
        std::fs::rename(&weights_dir, data.join("yolo-rs/weights")).unwrap();
        let by_data_dir = installed()
            .env("HOME", tmp.path())
            .env("XDG_DATA_HOME", &data)
            .args(args)
            .args(MODEL_FLAGS)
            .arg("--no-draw")
            .output()
            .unwrap();
        assert!(by_data_dir.status.success(), "{}", stderr_of(&by_data_dir));
        let got: Value = serde_json::from_str(&stdout_of(&by_data_dir)).unwrap();
        assert_same_detections(&got, &expected);
    }
}
