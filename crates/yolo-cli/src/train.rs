//! `yolo-cli train`: the reference's `train.py` (see the yolo-train crate).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use yolo_train::augment::AugmentConfig;
use yolo_train::dataset::{load_annotations, BadLinePolicy};
use yolo_train::optim::OptimizerKind;
use yolo_train::{Event, TrainConfig};
use yolov3_head::{BackboneKind, ClassNames};

use crate::model::{select_device, DeviceChoice};

/// Arguments of `yolo-cli train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training annotation file (`path x1,y1,x2,y2,cls ...` per line).
    #[arg(long)]
    pub train: PathBuf,
    /// Validation annotation file.
    #[arg(long)]
    pub val: PathBuf,
    /// Class names, one per line.
    #[arg(long)]
    pub classes: PathBuf,
    /// Backbone: mobilenetv2 or darknet53.
    #[arg(long, default_value = "mobilenetv2")]
    pub backbone: BackboneKind,
    /// Start from these weights (safetensors, reference names; tensors that do not fit keep
    /// their initialisation), e.g. a whole model to fine-tune or a converted backbone.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// ImageNet weights for the backbone alone (e.g. model_data/weights/mobilenetv2-imagenet.safetensors
    /// from `cargo xtask download-weights mobilenetv2-imagenet`; `features.*` names).
    #[arg(long)]
    pub pretrained_backbone: Option<PathBuf>,
    /// Network input side (multiple of 32), or WxH.
    #[arg(long, default_value = "416")]
    pub input_size: String,
    /// Anchors file (`w,h, w,h, ...`, 9 pairs in input pixels, e.g. from `yolo-cli
    /// anchors`); default: the YOLOv3 anchors. Each checkpoint keeps a copy as anchors.txt.
    #[arg(long)]
    pub anchors: Option<PathBuf>,
    /// Total epochs.
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    /// Epochs with the backbone frozen (0: none).
    #[arg(long, default_value_t = 50)]
    pub freeze_epochs: usize,
    /// Batch size while frozen.
    #[arg(long, default_value_t = 16)]
    pub freeze_batch: usize,
    /// Batch size after the freeze phase.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// sgd or adam.
    #[arg(long, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// Init_lr (default 1e-2 for SGD, 1e-3 for Adam), scaled by batch / 64.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Use --lr as it is instead of scaling it by batch / 64 and clamping it.
    #[arg(long)]
    pub no_lr_fit: bool,
    /// Weight decay on conv weights (default 5e-4 for SGD, 0 for Adam).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Output folder: last/, best/, log.jsonl, results.csv, results.png (the last two
    /// redrawn after every epoch).
    #[arg(long, default_value = "runs/train")]
    pub save_dir: PathBuf,
    /// Also keep epoch_NNN.safetensors every N epochs (0: never).
    #[arg(long, default_value_t = 10)]
    pub save_period: usize,
    /// mAP@0.5 on the validation set every N epochs and at the end (0: never).
    #[arg(long, default_value_t = 10)]
    pub eval_period: usize,
    /// Seed: the same seed gives the same run.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// Continue from save-dir/last.
    #[arg(long)]
    pub resume: bool,
    /// No augmentation (plain letterbox for training too).
    #[arg(long)]
    pub no_augment: bool,
    /// At most this many steps per epoch.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Refuse the whole file on a bad annotation line instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Where the network runs (default: the best one built in); the loss's target
    /// assignment and the data loading stay on the CPU.
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
}

/// Parses `416` or `640x480` (width x height).
pub fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = match s.split_once(['x', 'X']) {
        Some((w, h)) => (w.parse()?, h.parse()?),
        None => {
            let v: u32 = s.parse()?;
            (v, v)
        }
    };
    Ok((w, h))
}

/// `cpu`, `cuda:N` or `metal:N`, for messages.
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A flag the first Ctrl-C raises (training stops before its next step, the finished
/// epochs being saved already); a second Ctrl-C exits at once.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping before the next step (press again to exit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// Runs `yolo-cli train`.
pub fn run(args: TrainArgs) -> anyhow::Result<std::process::ExitCode> {
    let names = ClassNames::from_file(&args.classes)?;
    let nc = names.len();
    let policy = if args.strict {
        BadLinePolicy::Refuse
    } else {
        BadLinePolicy::Skip
    };
    let tr = load_annotations(&args.train, nc, policy)?;
    let va = load_annotations(&args.val, nc, policy)?;
    for s in tr.skipped.iter().chain(&va.skipped) {
        eprintln!("warning: skipped {s}");
    }
    let input_wh = parse_size(&args.input_size).context("--input-size")?;
    let device = select_device(args.device)?;
    let base = TrainConfig::new(args.backbone, names.names().to_vec(), args.save_dir.clone())
        .with_optimizer(args.optimizer);
    let cfg = TrainConfig {
        input_wh,
        anchors: crate::model::resolve_anchors(args.anchors.as_deref())?,
        epochs: args.epochs,
        freeze_epochs: args.freeze_epochs,
        freeze_batch: args.freeze_batch,
        batch: args.batch,
        init_lr: args.lr.unwrap_or(base.init_lr),
        weight_decay: args.weight_decay.unwrap_or(base.weight_decay),
        save_period: args.save_period,
        eval_period: args.eval_period,
        seed: args.seed,
        augment: (!args.no_augment).then(AugmentConfig::default),
        weights: args.weights.clone(),
        pretrained_backbone: args.pretrained_backbone.clone(),
        resume: args.resume,
        max_steps: args.max_steps,
        fit_lr_to_batch: !args.no_lr_fit,
        stop: Some(stop_on_ctrl_c()?),
        ..base
    };
    eprintln!(
        "training {} ({} classes) at {}x{} on {} images, validating on {}, on {}",
        args.backbone,
        nc,
        input_wh.0,
        input_wh.1,
        tr.samples.len(),
        va.samples.len(),
        device_name(&device)
    );
    let mut bar: Option<ProgressBar> = None;
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        .expect("template")
        .progress_chars("=> ");
    let t0 = std::time::Instant::now();
    let result = yolo_train::train(&cfg, tr.samples, va.samples, &device, &mut |e| match e {
        Event::Info(m) => eprintln!("{m}"),
        Event::EpochStart {
            epoch,
            epochs,
            steps,
        } => {
            let b = ProgressBar::new(*steps as u64).with_style(style.clone());
            b.set_prefix(format!("epoch {epoch}/{epochs}"));
            bar = Some(b);
        }
        Event::Step {
            means,
            lr,
            images_per_s,
            ..
        } => {
            if let Some(b) = &bar {
                b.set_message(format!(
                    "loss {:.4} (loc {:.4} obj {:.4} cls {:.4}) lr {lr:.2e} {images_per_s:.1} img/s",
                    means[0], means[1], means[2], means[3]
                ));
                b.inc(1);
            }
        }
        Event::EpochEnd(r) => {
            if let Some(b) = bar.take() {
                b.finish();
            }
            let map = r
                .map50
                .map(|m| format!(" mAP@0.5 {m:.4}"))
                .unwrap_or_default()
                + &r.map50_95
                    .map(|m| format!(" mAP@.5:.95 {m:.4}"))
                    .unwrap_or_default();
            eprintln!(
                "epoch {}: loss {:.4} val_loss {:.4}{map} ({:.1} s)",
                r.epoch, r.loss, r.val_loss, r.seconds
            );
        }
    });
    if let Some(b) = bar.take() {
        b.abandon();
    }
    let hist = match result {
        Err(e @ yolo_train::Error::Interrupted { .. }) => {
            eprintln!("{e}");
            return Ok(std::process::ExitCode::from(130));
        }
        r => r?,
    };
    eprintln!(
        "done in {:.1} s: {} epochs; weights {}, log {}, table {}, plots {}",
        t0.elapsed().as_secs_f64(),
        hist.len(),
        args.save_dir.join("best/weights.safetensors").display(),
        args.save_dir.join("log.jsonl").display(),
        args.save_dir.join("results.csv").display(),
        args.save_dir.join("results.png").display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
