//! End-to-end tests of `yolo-cli run` on videos: the H.264 clips of
//! `tests/fixtures/video` (made by `tools/make_video_fixtures.sh`) against the same
//! frames as PNG files, the drawn MP4 and label file, and the bad inputs.
//!
//! The weights are the synthetic MobileNetV2/VOC ones of the `cli` tests
//! (`tests/common/synthetic.rs`, written once per build), and the network runs at 64x64.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use yolo_video::{VideoReader, DEFAULT_MAX_PIXELS};

#[path = "../../../tests/common/output.rs"]
mod output;
// the weights file of the `cli` and `serve` tests (its `image` is not needed here)
#[allow(dead_code)]
#[path = "../../../tests/common/synthetic.rs"]
mod synthetic;
use output::{assert_no_panic, stderr_of, stdout_of};
use synthetic::{weights, MODEL_FLAGS};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/video")
        .join(name)
}

/// `yolo-cli run` on the synthetic weights at 64x64 (score threshold 0.05), run in `cwd`.
fn run(cwd: &Path) -> Command {
    let mut cmd = Command::cargo_bin("yolo-cli").unwrap();
    cmd.current_dir(cwd)
        .arg("run")
        .args(MODEL_FLAGS)
        .args(["--conf", "0.05", "--weights"])
        .arg(weights());
    cmd
}

fn jsonl(out: &std::process::Output) -> Vec<Value> {
    stdout_of(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The same detections in the same order, numbers within rounding (another batch size
/// sums in another order).
fn assert_close(a: &Value, b: &Value) {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "number of detections");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["class_id"], y["class_id"]);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        assert!((f(x, "score") - f(y, "score")).abs() < 1e-4, "{x} vs {y}");
        for k in ["x1", "y1", "x2", "y2"] {
            assert!((f(x, k) - f(y, k)).abs() < 1e-2, "{x} vs {y}");
        }
    }
}

/// Each frame of the video gives the detections `run` gives on that frame saved as a PNG
/// (the frames our decoder makes, which `yolo-video`'s tests hold identical to ffmpeg's).
#[test]
fn video_frames_detect_as_their_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    let mut reader = VideoReader::open(&fixture("clip_high.mp4"), DEFAULT_MAX_PIXELS).unwrap();
    let mut pts = Vec::new();
    while let Some(f) = reader.next_yuv().unwrap() {
        f.to_rgb()
            .save(frames_dir.join(format!("{:03}.png", f.index)))
            .unwrap();
        pts.push(f.pts_ms());
    }
    assert_eq!(pts.len(), 16);
    // the same batches of 4 on both sides: the same arithmetic, the same numbers
    let out = run(dir.path())
        .arg(fixture("clip_high.mp4"))
        .args(["--format", "jsonl", "--no-draw", "--batch", "4"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let video = jsonl(&out);
    let out = run(dir.path())
        .args(["frames", "--format", "jsonl", "--no-draw", "--batch", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let pngs = jsonl(&out);
    assert_eq!(video.len(), 16);
    assert_eq!(pngs.len(), 16);
    let mut total = 0;
    for (i, (v, p)) in video.iter().zip(&pngs).enumerate() {
        assert_eq!(v["frame"], i as u64);
        assert_eq!(v["path"], fixture("clip_high.mp4").display().to_string());
        assert!((v["pts_ms"].as_f64().unwrap() - pts[i]).abs() < 1e-3, "{v}");
        assert!((v["pts_ms"].as_f64().unwrap() - i as f64 * 1000.0 / 15.0).abs() < 1e-3);
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(320), Some(240))
        );
        assert_eq!(p["path"], format!("frames/{i:03}.png"));
        assert_eq!(v["detections"], p["detections"], "frame {i}");
        total += v["detections"].as_array().unwrap().len();
    }
    assert!(total > 0, "the synthetic weights find boxes at conf 0.05");
    let err = stderr_of(&out);
    assert!(err.contains("16 images (0 skipped)"), "{err}");

    // every 5th frame, at most 2 of them
    let out = run(dir.path())
        .arg(fixture("clip_high.mp4"))
        .args([
            "--format",
            "jsonl",
            "--no-draw",
            "--vid-stride",
            "5",
            "--max-frames",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let some = jsonl(&out);
    let frames: Vec<u64> = some.iter().map(|v| v["frame"].as_u64().unwrap()).collect();
    assert_eq!(frames, [0, 5]);
    // batch 1 here, 4 above: the same boxes to float rounding
    assert_close(&some[1]["detections"], &video[5]["detections"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("0 images, 1 video (2 frames) (0 skipped)"),
        "{err}"
    );
}

/// The drawn MP4 reads back with the input's frames, size and timestamps; the label file
/// has the frame index in front of each box.
#[test]
fn drawn_video_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path())
        .arg(fixture("clip_baseline.mp4"))
        .args([
            "--format",
            "table",
            "--save-txt",
            "--batch",
            "3",
            "-o",
            "out",
        ])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let table = stdout_of(&out);
    assert!(
        table.contains("clip_baseline.mp4 (320x240, H.264 Baseline, 15.00 fps): 16 frames, "),
        "{table}"
    );
    let drawn = dir.path().join("out/clip_baseline.mp4");
    let mut back = VideoReader::open(&drawn, DEFAULT_MAX_PIXELS).unwrap();
    let mut input = VideoReader::open(&fixture("clip_baseline.mp4"), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!((back.info().width, back.info().height), (320, 240));
    assert!((back.info().fps - 15.0).abs() < 1e-6);
    let mut n = 0;
    let mut changed = 0;
    while let Some(f) = back.next_yuv().unwrap() {
        let g = input.next_yuv().unwrap().unwrap();
        assert!((f.pts_ms() - g.pts_ms()).abs() < 1e-6);
        // boxes were drawn on some frames: those differ a lot from the input somewhere
        let max =
            f.y.iter()
                .zip(&g.y)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
        changed += usize::from(max > 100);
        n += 1;
    }
    assert_eq!(n, 16);
    assert!(changed > 0, "no frame has a box drawn");
    let labels = std::fs::read_to_string(dir.path().join("out/labels/clip_baseline.txt")).unwrap();
    let total: usize = table
        .lines()
        .next()
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(labels.lines().count(), total, "{labels}");
    let mut last = 0;
    for l in labels.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let frame: u64 = f[0].parse().unwrap();
        assert!(frame >= last && frame < 16, "{l}");
        last = frame;
        assert!(f[1].parse::<u64>().unwrap() < 20, "{l}");
        assert_eq!(f.len(), 8, "{l}");
    }
    // nothing half-written is left behind
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
}

/// Bad videos are named with what is wrong; the good one among them is still processed,
/// and the exit status is 1.
#[test]
fn bad_videos_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("clip_high.mp4")).unwrap();
    std::fs::write(dir.path().join("cut.mp4"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    // content decides: a video named .png is a video
    std::fs::write(dir.path().join("video.png"), &bytes).unwrap();
    let out = run(dir.path())
        .arg(fixture("clip.mkv"))
        .arg(fixture("clip_hevc.mp4"))
        .arg(fixture("audio_only.mp4"))
        .args(["cut.mp4", "video.png", "--format", "jsonl", "--no-draw"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    for needle in [
        "clip.mkv: Matroska/WebM files are not supported",
        "-c:v libx264 -pix_fmt yuv420p",
        "clip_hevc.mp4: the video track is H.265/HEVC (hev1), only H.264 (avc1) is supported",
        "audio_only.mp4: no video track",
        "cut.mp4: damaged or truncated MP4",
        "0 images, 1 video (16 frames) (4 skipped)",
    ] {
        assert!(err.contains(needle), "{needle} not in\n{err}");
    }
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 16);
    assert!(lines.iter().all(|v| v["path"] == "video.png"));

    // the pixel limit
    let out = run(dir.path())
        .args(["video.png", "--no-draw", "--max-pixels", "1000"])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("video.png: 320x240 frames are over the limit of 1000 pixels"),
        "{}",
        stderr_of(&out)
    );

    // --format json cannot stream frames: refused before any work
    let out = run(dir.path())
        .args(["video.png", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("use --format jsonl"),
        "{}",
        stderr_of(&out)
    );
}
