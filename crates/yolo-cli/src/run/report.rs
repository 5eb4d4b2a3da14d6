//! What `yolo-cli run` tells the user: each image's detections on stdout in the chosen
//! format, errors and the progress bar on stderr, and the closing summary line with the
//! exit status.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use yolov3_head::Detection;

use crate::output::{self, Format};

/// Time spent per stage, summed over images.
#[derive(Debug, Default)]
pub(super) struct Timings {
    /// Reading and decoding the image files.
    pub load: Duration,
    /// Resizing and normalising into the input tensor.
    pub preprocess: Duration,
    /// The network's forward pass.
    pub inference: Duration,
    /// Decoding the heads and NMS.
    pub postprocess: Duration,
}

/// The running account of a `yolo-cli run`: what has been printed, skipped and found.
pub(super) struct Report {
    format: Format,
    bar: ProgressBar,
    /// Time per stage, filled in by the detection loop.
    pub timings: Timings,
    done: usize,
    videos: usize,
    frames: u64,
    failures: usize,
    detections: usize,
    json: Vec<(String, Vec<Detection>)>,
}

/// A progress bar on stderr when stdout is a terminal and there is more than one image.
fn progress_bar(images: usize) -> ProgressBar {
    if !(std::io::stdout().is_terminal() && images > 1) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(images as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

impl Report {
    /// A report for `images` images printed in `format`, starting with `failures` inputs
    /// already skipped.
    pub fn new(format: Format, images: usize, failures: usize) -> Self {
        Self {
            format,
            bar: progress_bar(images),
            timings: Timings::default(),
            done: 0,
            videos: 0,
            frames: 0,
            failures,
            detections: 0,
            json: Vec::new(),
        }
    }

    /// Prints an error line (above the progress bar) and counts a failure.
    pub fn error(&mut self, text: String) {
        self.bar.suspend(|| eprintln!("{text}"));
        self.failures += 1;
    }

    /// [`Report::error`] for an image that is given up: it also advances the bar.
    pub fn skip_image(&mut self, text: String) {
        self.error(text);
        self.bar.inc(1);
    }

    /// Prints one image's detections on stdout (`--format json` waits for the end).
    pub fn show(&self, shown: &str, dims: (u32, u32), dets: &[Detection]) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Table => output::table(shown, dims, dets),
            Format::Jsonl => output::jsonl(shown, dims, dets)?,
            Format::Json => return Ok(()),
        };
        let mut r = Ok(());
        self.bar.suspend(|| r = crate::stdout::print(&text));
        r
    }

    /// Counts one image as done (after [`Report::show`] and its files).
    pub fn done(&mut self, shown: String, dets: Vec<Detection>) {
        self.detections += dets.len();
        self.done += 1;
        if self.format == Format::Json {
            self.json.push((shown, dets));
        }
        self.bar.inc(1);
    }

    /// Counts one video as done, with its frames and detections.
    pub fn done_video(&mut self, frames: u64, detections: usize) {
        self.videos += 1;
        self.frames += frames;
        self.detections += detections;
    }

    /// Ends the run: prints the `--format json` document, then the summary line on
    /// stderr (naming `output` when files were written), and gives the exit status
    /// (failure when any input was skipped).
    pub fn finish(self, output: Option<&Path>) -> anyhow::Result<ExitCode> {
        self.bar.finish_and_clear();
        if self.format == Format::Json {
            crate::stdout::print(&output::json(&self.json)?)?;
        }
        eprintln!("{}", self.summary(output));
        Ok(if self.failures > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }

    /// `N images (K skipped), D detections; mean per image: … [; results in DIR]`, with
    /// `V videos (F frames)` after the images when there were videos (the means are then
    /// per image or frame, and load includes decoding).
    fn summary(&self, output: Option<&Path>) -> String {
        let images = self.done;
        let done = images + self.frames as usize;
        let ms = |d: Duration| {
            if done == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e3 / done as f64
            }
        };
        let t = &self.timings;
        let (videos, per) = if self.videos == 0 {
            (String::new(), "image")
        } else {
            (
                format!(
                    ", {} video{} ({} frame{})",
                    self.videos,
                    if self.videos == 1 { "" } else { "s" },
                    self.frames,
                    if self.frames == 1 { "" } else { "s" }
                ),
                "image or frame",
            )
        };
        format!(
            "{images} image{}{videos} ({} skipped), {} detection{}; mean per {per}: load {:.1} ms, preprocess {:.1} ms, inference {:.1} ms, postprocess {:.1} ms{}",
            if images == 1 { "" } else { "s" },
            self.failures,
            self.detections,
            if self.detections == 1 { "" } else { "s" },
            ms(t.load),
            ms(t.preprocess),
            ms(t.inference),
            ms(t.postprocess),
            match output {
                Some(dir) if done > 0 => format!("; results in {}", dir.display()),
                _ => String::new(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_means() {
        let mut r = Report::new(Format::Table, 2, 1);
        r.timings.inference = Duration::from_millis(30);
        r.done("a.png".into(), Vec::new());
        r.done("b.png".into(), Vec::new());
        assert_eq!(
            r.summary(Some(Path::new("out"))),
            "2 images (1 skipped), 0 detections; mean per image: load 0.0 ms, preprocess 0.0 ms, inference 15.0 ms, postprocess 0.0 ms; results in out"
        );
        let r = Report::new(Format::Json, 1, 0);
        assert!(r
            .summary(Some(Path::new("out")))
            .starts_with("0 images (0 skipped), 0 detections;"));
        assert!(!r.summary(Some(Path::new("out"))).contains("results in"));
    }
}
