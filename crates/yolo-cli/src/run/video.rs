//! Videos in `yolo-cli run`: each video's frames decoded on their own thread
//! ([`yolo_video::FrameSource`]), run through the detector in batches of `--batch`, and
//! written out per frame (`--format jsonl`), per video (the table summary, the drawn MP4,
//! the `--save-txt` label file).

use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use yolo_io::{AtomicFile, Overwrite};
use yolo_video::{Frame, FrameSource, SourceOptions, VideoWriter};
use yolov3_head::{Detection, Detector};

use super::detect;
use super::report::Report;
use super::save::Saver;
use crate::draw::Painter;
use crate::output::{self, Format};

/// What every video of a run shares.
pub(super) struct VideoRun<'a> {
    /// The detector.
    pub detector: &'a Detector,
    /// Its device.
    pub device: &'a Device,
    /// Draws the boxes; `None` with `--no-draw`.
    pub painter: Option<&'a Painter>,
    /// The network input size (for the line width).
    pub input_size: (usize, usize),
    /// Frames per forward pass.
    pub batch: usize,
    /// `--vid-stride`, `--max-frames`, `--max-pixels`.
    pub options: SourceOptions,
    /// `--save-txt`.
    pub save_txt: bool,
    /// `--format`.
    pub format: Format,
}

/// Whether `path` is a video by its first bytes (an unreadable file is left to the
/// image loader, which names the error).
pub(super) fn is_video(path: &Path) -> bool {
    matches!(yolo_video::sniff_file(path), Ok(Some(_)))
}

/// Runs detection on the video `path`; an error names the file (the caller reports it and
/// goes on with the other inputs).
pub(super) fn process(
    run: &VideoRun<'_>,
    path: &Path,
    saver: &mut Saver,
    report: &mut Report,
) -> anyhow::Result<()> {
    let source = FrameSource::open(path, run.options)?;
    let info = source.info().clone();
    let shown = path.display().to_string();
    let (drawn_path, labels_path) = saver.video_outputs(path);
    let out_fps = info.fps / run.options.stride.max(1) as f64;
    let mut writer = match run.painter {
        Some(_) => Some(VideoWriter::create(
            &drawn_path,
            info.width,
            info.height,
            out_fps,
            info.timescale,
        )?),
        None => None,
    };
    let mut labels = if run.save_txt {
        Some(BufWriter::new(AtomicFile::create(
            &labels_path,
            Overwrite::Allow,
        )?))
    } else {
        None
    };
    let bar = progress_bar(source.expected_frames());
    let mut per_class: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let (mut frames_done, mut detections) = (0u64, 0usize);
    let mut frames = source.spawn()?;
    loop {
        let mut batch: Vec<Frame> = Vec::with_capacity(run.batch);
        for item in frames.by_ref() {
            let frame = item?;
            report.timings.load += frame.decode_time;
            batch.push(frame);
            if batch.len() == run.batch {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let mut images: Vec<_> = batch
            .iter_mut()
            .map(|f| std::mem::take(&mut f.image))
            .collect();
        let results = detect::detect_batch(run.detector, run.device, &images, &mut report.timings)?;
        for ((frame, img), dets) in batch.iter().zip(&mut images).zip(results) {
            if run.format == Format::Jsonl {
                let line = frame_jsonl(&shown, frame, img.dimensions(), &dets)?;
                let mut r = Ok(());
                bar.suspend(|| r = crate::stdout::print(&line));
                r?;
            }
            if let Some(w) = labels.as_mut() {
                for line in output::label_lines(&dets).lines() {
                    writeln!(w, "{} {line}", frame.index)
                        .with_context(|| format!("cannot write {}", labels_path.display()))?;
                }
            }
            if let (Some(p), Some(w)) = (run.painter, writer.as_mut()) {
                p.draw(img, &dets, run.input_size);
                w.write(img, frame.pts)?;
            }
            for d in &dets {
                *per_class
                    .entry((d.class_id, d.class_name.clone()))
                    .or_default() += 1;
            }
            detections += dets.len();
            frames_done += 1;
            bar.inc(1);
        }
    }
    drop(frames);
    bar.finish_and_clear();
    if let Some(w) = writer {
        w.finish()?;
    }
    if let Some(w) = labels {
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", labels_path.display()))?;
        file.commit()?;
    }
    if run.format == Format::Table {
        let text = summary_table(&shown, &info, frames_done, &per_class);
        crate::stdout::print(&text)?;
    }
    report.done_video(frames_done, detections);
    Ok(())
}

/// A progress bar of `frames` frames on stderr when stdout is a terminal.
fn progress_bar(frames: u64) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(frames);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} frames, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One `--format jsonl` line of a video frame (with its newline).
fn frame_jsonl(
    path: &str,
    frame: &Frame,
    size: (u32, u32),
    detections: &[Detection],
) -> anyhow::Result<String> {
    let v = serde_json::json!({
        "path": path,
        "frame": frame.index,
        "pts_ms": (frame.pts_ms * 1000.0).round() / 1000.0,
        "width": size.0,
        "height": size.1,
        "detections": detections,
    });
    Ok(serde_json::to_string(&v)? + "\n")
}

/// The table summary of one video: its size, frames and rate, and detections per class.
fn summary_table(
    path: &str,
    info: &yolo_video::VideoInfo,
    frames: u64,
    per_class: &BTreeMap<(usize, String), usize>,
) -> String {
    let total: usize = per_class.values().sum();
    let mut s = format!(
        "{path} ({}x{}, H.264 {}, {:.2} fps): {frames} frame{}, {total} detection{}\n",
        info.width,
        info.height,
        info.profile,
        info.fps,
        if frames == 1 { "" } else { "s" },
        if total == 1 { "" } else { "s" },
    );
    if !per_class.is_empty() {
        s += &format!("  {:>5}  {:<16} {:>10}\n", "class", "name", "detections");
    }
    for ((id, name), n) in per_class {
        s += &format!("  {id:>5}  {name:<16} {n:>10}\n");
    }
    s
}

/// The video inputs of `files`, leaving the images.
pub(super) fn split_videos(files: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    files.into_iter().partition(|f| !is_video(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_summary_counts_per_class() {
        let info = yolo_video::VideoInfo {
            width: 320,
            height: 240,
            frames: 16,
            fps: 15.0,
            timescale: 15360,
            profile: "High".into(),
        };
        let mut per_class = BTreeMap::new();
        per_class.insert((1, "bicycle".to_string()), 3);
        per_class.insert((11, "dog".to_string()), 16);
        let t = summary_table("clip.mp4", &info, 16, &per_class);
        assert!(
            t.starts_with("clip.mp4 (320x240, H.264 High, 15.00 fps): 16 frames, 19 detections\n"),
            "{t}"
        );
        assert!(t.contains("    11  dog                      16\n"), "{t}");
        let f = Frame {
            index: 3,
            pts_ms: 200.0,
            pts: 3072,
            timescale: 15360,
            image: image::RgbImage::new(1, 1),
            decode_time: std::time::Duration::ZERO,
        };
        let line = frame_jsonl("clip.mp4", &f, (320, 240), &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["detections", "frame", "height", "path", "pts_ms", "width"]
        );
        assert_eq!(v["frame"], 3);
    }
}
