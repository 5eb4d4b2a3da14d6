//! `yolo-cli`: YOLOv3 (MobileNetV2 / Darknet53) on candle from the command line.

mod anchors;
mod args;
mod convert;
mod download;
mod draw;
mod eval;
mod model;
mod model_args;
mod output;
mod process;
mod quantize;
mod run;
mod serve;
mod stdout;
mod summary;
mod train;
mod voc_annotation;
mod weights_dir;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// YOLOv3 object detection (MobileNetV2 or Darknet53 backbone) on candle.
#[derive(Debug, Parser)]
#[command(name = "yolo-cli", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads (0: one per physical core); sets RAYON_NUM_THREADS for candle.
    #[arg(
        long,
        global = true,
        env = "RAYON_NUM_THREADS",
        value_name = "N",
        value_parser = process::parse_threads
    )]
    threads: Option<usize>,
    /// Reuse freed memory for activation buffers (glibc malloc tuning); 0 keeps glibc's
    /// defaults, for comparisons.
    #[arg(
        long,
        global = true,
        env = "NN_BLOCKS_REUSE_BUFFERS",
        value_name = "0|1",
        default_value = "1",
        action = clap::ArgAction::Set,
        value_parser = nn_kernels::parse_switch,
        hide_default_value = true
    )]
    reuse_buffers: bool,
    /// Where downloaded weights are kept and `run` looks for its default weights
    /// (default: yolo-rs/weights in the user's data directory, e.g.
    /// ~/.local/share/yolo-rs/weights).
    #[arg(long, global = true, env = "YOLO_RS_WEIGHTS_DIR", value_name = "DIR")]
    weights_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect objects in images and directories of images.
    Run(run::RunArgs),
    /// Serve detection over HTTP: a JSON API, metrics and a web page.
    Serve(serve::ServeArgs),
    /// Print a per-layer table of output shapes, parameters and multiply-adds.
    Summary(summary::SummaryArgs),
    /// Convert a checkpoint (.pth, darknet .weights, candle-yolo-v3/timm safetensors)
    /// into the project's safetensors.
    Convert(convert::ConvertArgs),
    /// Train a model on annotation files (the reference's train.py).
    Train(train::TrainArgs),
    /// VOC mAP@0.5 and COCO-style mAP@[.5:.95] on an annotation file.
    Eval(eval::EvalArgs),
    /// Anchor boxes by k-means with the IoU distance (the reference's kmeans_for_anchors.py).
    Anchors(anchors::AnchorsArgs),
    /// A VOCdevkit folder to annotation files (the reference's voc_annotation.py).
    VocAnnotation(voc_annotation::VocAnnotationArgs),
    /// Download, verify and convert weights into the weights directory.
    Download(download::DownloadArgs),
    /// Quantise f32 weights to int8, calibrating on a folder of images.
    Quantize(quantize::QuantizeArgs),
}

fn main() -> std::process::ExitCode {
    // Parsing starts no thread, and the process settings come right after it, before
    // anything else can: setting RAYON_NUM_THREADS is only sound while no other thread
    // reads the environment, and malloc's tuning should hold for every buffer.
    let cli = Cli::parse();
    // candle's thread count worked out once, not in every op
    process::fix_thread_count(cli.threads);
    // activation buffers are recycled by malloc instead of mapped afresh each layer
    process::reuse_freed_buffers(cli.reuse_buffers);
    let result = match cli.command {
        Command::Run(args) => run::run(args, cli.weights_dir.as_deref()),
        Command::Serve(args) => serve::serve(args, cli.weights_dir.as_deref()),
        Command::Summary(args) => summary::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Anchors(args) => anchors::run(args),
        Command::VocAnnotation(args) => voc_annotation::run(args),
        Command::Download(args) => download::run(args, cli.weights_dir.as_deref()),
        Command::Quantize(args) => quantize::run(args, cli.weights_dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_message(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message
/// already holds (library errors such as `cannot read FILE: {io error}` show their source
/// themselves), so nothing is said twice.
fn error_message(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::{error_message, Cli};
    use clap::CommandFactory;

    #[test]
    fn error_causes_are_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let lib = yolov3_head::Error::Io {
            path: "a.txt".into(),
            source: io,
        };
        let err = anyhow::Error::new(lib).context("--anchors");
        assert_eq!(
            error_message(&err),
            "--anchors: cannot read a.txt: no such file"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
