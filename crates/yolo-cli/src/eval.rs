//! `yolo-cli eval`: VOC mAP@0.5 (the reference's `get_map.py`) and COCO-style mAP@[.5:.95],
//! and with `--plots DIR` the pictures and tables of the evaluation.

use std::path::PathBuf;

use clap::Args;
use nn_blocks::Precision;
use yolo_train::dataset::{load_annotations, BadLinePolicy};
use yolo_train::plot::EvalPlotInput;
use yolov3_head::{BackboneKind, ClassNames, YoloConfig};

/// Arguments of `yolo-cli eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Weights (safetensors with the reference names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Annotation file of the images to evaluate.
    #[arg(long)]
    pub annotations: PathBuf,
    /// Class names, one per line.
    #[arg(long)]
    pub classes: PathBuf,
    /// Backbone: mobilenetv2 or darknet53.
    #[arg(long, default_value = "mobilenetv2")]
    pub backbone: BackboneKind,
    /// Network input side (multiple of 32), or WxH.
    #[arg(long, default_value = "416")]
    pub input_size: String,
    /// Anchors file the model was trained with (a training run writes it next to the
    /// weights as anchors.txt); default: the YOLOv3 anchors.
    #[arg(long)]
    pub anchors: Option<PathBuf>,
    /// Also draw the evaluation into DIR: a precision/recall curve per class with its AP
    /// (pr_curves/), all of them in pr_curves.png, AP and ground-truth counts per class as
    /// bar charts, the confusion matrix; and the numbers as ap_per_class.csv and
    /// confusion_matrix.csv.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// With --plots: the score from which a detection counts in the confusion matrix and
    /// in the precision, recall and F1 of ap_per_class.csv (the reference's
    /// score_threhold).
    #[arg(long, default_value_t = 0.5, value_name = "SCORE")]
    pub plot_conf: f32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refuse the file on a bad annotation line instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Where the network runs (default: the best one built in).
    #[arg(long, value_enum)]
    pub device: Option<crate::model::DeviceChoice>,
    /// Arithmetic of the convolutions, as `run`'s flag: f32, bf16 (weights converted at
    /// load) or int8 (needs a file written by `yolo-cli quantize`); default: the file's.
    #[arg(long, value_name = "f32|bf16|int8")]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub kernels: crate::args::KernelArgs,
}

/// Runs `yolo-cli eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<std::process::ExitCode> {
    if !(0.0..=1.0).contains(&args.plot_conf) {
        anyhow::bail!("--plot-conf {}: a score from 0 to 1", args.plot_conf);
    }
    let names = ClassNames::from_file(&args.classes)?;
    let policy = if args.strict {
        BadLinePolicy::Refuse
    } else {
        BadLinePolicy::Skip
    };
    let ann = load_annotations(&args.annotations, names.len(), policy)?;
    for s in &ann.skipped {
        eprintln!("warning: skipped {s}");
    }
    let device = crate::model::select_device(args.device)?;
    // the loader of `run`: any checkpoint `convert` reads, int8 files, --precision
    let cfg = YoloConfig::new(args.backbone, names.len()).with_kernels(args.kernels.policy());
    let model = crate::model::load_model(&args.weights, &cfg, args.precision, &device)?;
    let input_wh = crate::train::parse_size(&args.input_size)?;
    let anchors = crate::model::resolve_anchors(args.anchors.as_deref())?;
    let (dets, gts) = yolo_train::trainer::detect_samples(
        model,
        names.names(),
        &anchors,
        input_wh,
        &ann.samples,
        &device,
    )?;
    let report = yolo_train::metrics::evaluate(&dets, &gts, names.names());
    if let Some(dir) = &args.plots {
        let input = EvalPlotInput {
            dets: &dets,
            gts: &gts,
            names: names.names(),
            report: &report,
            conf: args.plot_conf,
        };
        let files = yolo_train::plot::write_eval_plots(dir, &input)?;
        eprintln!(
            "plots and tables: {} files in {}",
            files.len(),
            dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
