//! `yolo-cli run`: detection on images, videos and directories of them.
//!
//! [`inputs`] turns the arguments into image files and checks the output directory,
//! [`detect`] loads the model and runs batches of images through it, [`save`] writes the
//! drawn images and label files, [`video`] does the same for videos frame by frame, and
//! [`report`] prints the results and the summary.

mod detect;
pub(crate) mod inputs;
mod report;
mod save;
mod video;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::draw::Painter;
use crate::model;
use crate::model_args::{self, ModelArgs};
use clap::Args;

use crate::output::Format;
use report::Report;
use save::Saver;

/// Arguments of `yolo-cli run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image files, videos (H.264 in MP4/MOV, recognised by content) or directories.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Descend into subdirectories of directory inputs.
    #[arg(long, short = 'r')]
    recursive: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Directory for drawn images and labels (created if needed).
    #[arg(long, short = 'o', default_value = "runs/detect", value_name = "DIR")]
    output: PathBuf,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write DIR/labels/NAME.txt: `class_id score x1 y1 x2 y2 class_name` per box.
    #[arg(long)]
    save_txt: bool,
    /// Do not write drawn images.
    #[arg(long)]
    no_draw: bool,
    /// Videos: run on every Nth frame only.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    vid_stride: u64,
    /// Videos: stop after N frames (counted after --vid-stride).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_frames: Option<u64>,
}

impl RunArgs {
    /// Whether the run writes files (drawn images or labels) into `--output`.
    fn writes(&self) -> bool {
        !self.no_draw || self.save_txt
    }
}

/// Runs detection; the default weights are looked for in `weights_dir` (`--weights-dir`)
/// as [`model::resolve_weights`] says.
pub fn run(args: RunArgs, weights_dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    // Everything that can be refused is refused before any model or image is loaded.
    let writes = args.writes();
    if writes {
        inputs::prepare_output(&args.output, args.save_txt)?;
    }
    let resolved = args.model.resolve(weights_dir)?;
    let mut failures = 0usize;
    let files = inputs::collect_inputs(&args.inputs, args.recursive, &mut failures);
    inputs::require_images(&files, &args.inputs)?;
    let (files, videos) = video::split_videos(files);
    if !videos.is_empty() && args.format == Format::Json {
        anyhow::bail!(
            "--format json cannot hold videos ({} is one): use --format jsonl, a line per frame",
            videos[0].display()
        );
    }

    let device = model::select_device(args.model.device)?;
    let num_classes = resolved.class_names.len();
    let detector = model_args::build_detector(&args.model, resolved, &device)?;
    let painter = if args.no_draw {
        None
    } else {
        Some(Painter::new(num_classes)?)
    };
    let size = (args.model.input_size.width, args.model.input_size.height);
    let all_inputs: Vec<PathBuf> = files.iter().chain(&videos).cloned().collect();
    let mut saver = Saver::new(&args.output, &all_inputs, painter, args.save_txt, size);
    let mut report = Report::new(args.format, files.len(), failures);

    for chunk in files.chunks(args.batch as usize) {
        let batch = detect::load_batch(chunk, args.model.max_pixels, &mut report);
        if batch.images.is_empty() {
            continue;
        }
        let results = detect::detect_batch(&detector, &device, &batch.images, &mut report.timings)?;
        for ((path, mut img), dets) in batch.paths.into_iter().zip(batch.images).zip(results) {
            let shown = path.display().to_string();
            report.show(&shown, img.dimensions(), &dets)?;
            if writes {
                for e in saver.save(path, &mut img, &dets) {
                    report.error(format!("error: {e:#}"));
                }
            }
            report.done(shown, dets);
        }
    }
    let video_painter = if args.no_draw || videos.is_empty() {
        None
    } else {
        Some(Painter::new(num_classes)?)
    };
    let video_run = video::VideoRun {
        detector: &detector,
        device: &device,
        painter: video_painter.as_ref(),
        input_size: size,
        batch: args.batch as usize,
        options: yolo_video::SourceOptions {
            max_pixels: args.model.max_pixels,
            stride: args.vid_stride,
            max_frames: args.max_frames,
            queue: 2 * args.batch as usize,
        },
        save_txt: args.save_txt,
        format: args.format,
    };
    for path in &videos {
        if let Err(e) = video::process(&video_run, path, &mut saver, &mut report) {
            report.error(format!("error: skipping {}: {e:#}", path.display()));
        }
    }
    report.finish(writes.then_some(args.output.as_path()))
}
