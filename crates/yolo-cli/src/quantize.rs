//! `yolo-cli quantize`: post-training static int8 quantisation of an `f32` weights file.
//!
//! The `f32` model runs the calibration images (letterboxed as `run` does) while every
//! quantised block records the range of its inputs; then each block's folded weights
//! are quantised per output channel and its input scale taken from the recorded range.
//! The file format is in `docs/precision.md` and [`yolo_weights::load`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use nn_blocks::{CalibrationMethod, Precision};
use yolo_weights::load::{canonical_bytes, write_atomic};
use yolo_weights::{ModelKind, WeightsMeta};
use yolov3_head::{load_image, Detector, DetectorConfig, YoloBody, YoloConfig};

use crate::model;
use crate::model_args::ModelArgs;
use crate::run::inputs::IMAGE_EXTENSIONS;

/// Quantise an f32 weights file to int8 (post-training, static): calibrate the
/// activation ranges on a folder of images, write the int8 file.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder of calibration images, like those the model will see (not searched
    /// recursively).
    #[arg(long, value_name = "DIR")]
    pub calib: PathBuf,
    /// How many calibration images: the first N of the folder by file name.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub images: u32,
    /// How the input ranges become scales: the largest magnitude seen (minmax), or the
    /// 99.99th percentile of the magnitudes (clamps rare outliers).
    #[arg(long, value_enum, default_value = "percentile")]
    pub method: Method,
    /// The int8 weights file to write (.safetensors).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Overwrite OUT if it exists (never the input weights).
    #[arg(long)]
    pub force: bool,
}

/// `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// The largest magnitude seen.
    Minmax,
    /// The 99.99th percentile of the magnitudes.
    Percentile,
}

impl Method {
    fn calibration(self) -> CalibrationMethod {
        match self {
            Method::Minmax => CalibrationMethod::MinMax,
            Method::Percentile => CalibrationMethod::Percentile(99.99),
        }
    }
}

/// Which blocks an int8 file keeps in `f32`: the first convolution (3 input channels:
/// the image itself), whose int8 error is the largest of all blocks and which is a
/// small share of the work (see `docs/precision.md`).
pub fn keep_f32(block: &nn_blocks::ConvBnAct) -> bool {
    block.config().in_channels == 3
}

/// The calibration images: the first `n` image files of `dir` by name.
pub fn calibration_images(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("--calib {}: cannot read the folder", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "--calib {} is not a folder: pass a folder of calibration images",
            dir.display()
        );
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--calib {}: cannot list the folder", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("--calib {}: cannot list", dir.display()))?;
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|x| x.to_str())
            .map(str::to_ascii_lowercase)
            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.as_str()));
        if is_image && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        bail!(
            "--calib {}: no images in the folder (looked for {})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    files.sort();
    files.truncate(n);
    Ok(files)
}

/// Whether `a` and `b` name the same file (when both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs the quantisation.
pub fn run(args: QuantizeArgs, weights_dir: Option<&Path>) -> Result<ExitCode> {
    if let Some(p) = args.model.precision.filter(|&p| p != Precision::F32) {
        bail!("--precision {p}: quantize calibrates the f32 model; drop --precision");
    }
    if args.output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("-o {}: OUT must end in .safetensors", args.output.display());
    }
    if args.output.exists() && !args.force {
        bail!(
            "{} already exists (use --force to overwrite)",
            args.output.display()
        );
    }
    let resolved = args.model.resolve(weights_dir)?;
    if same_file(&resolved.weights, &args.output) {
        bail!(
            "-o {} is the input weights file: write the int8 file elsewhere",
            args.output.display()
        );
    }
    let images = calibration_images(&args.calib, args.images as usize)?;
    let device = model::select_device(args.model.device)?;
    let cfg = YoloConfig::new(args.model.backbone, resolved.class_names.len())
        .with_kernels(args.model.kernels.policy())
        .with_calibration(true);
    let weights = resolved.weights.clone();
    let body = model::load_model(&weights, &cfg, Some(Precision::F32), &device)
        .context("quantize needs f32 weights")?;
    let size = args.model.input_size;
    let detector = Detector::new(
        body,
        DetectorConfig::new(resolved.class_names)
            .with_input_size(size.width, size.height)
            .with_resize(args.model.resize())
            .with_anchors(resolved.anchors)
            .with_device(device.clone()),
    )?;
    eprintln!(
        "calibrating on {} image(s) of {} ...",
        images.len(),
        args.calib.display()
    );
    for path in &images {
        let img = load_image(path, args.model.max_pixels)
            .with_context(|| format!("calibration image {}", path.display()))?;
        let x = detector.preprocess(&[img])?; // (1, 3, H, W)
        detector
            .infer(&x)
            .with_context(|| format!("calibration image {}", path.display()))?;
    }
    let body: &YoloBody = detector.model();
    let method = args.method.calibration();
    let tensors = body.int8_tensors(method, keep_f32)?;
    let bc = body.config();
    let meta = WeightsMeta {
        model: ModelKind::Yolo,
        backbone: bc.backbone,
        num_classes: bc.num_classes,
        bn_eps: bc.bn_eps,
        width_mult: 1.0,
        source: format!(
            "int8 quantisation of {}",
            weights
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        precision: Precision::Int8,
        calibration: Some((method.describe(), images.len())),
    };
    let bytes = canonical_bytes(&tensors, &meta)?;
    write_atomic(&args.output, &bytes, args.force)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let in_size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    let kept: Vec<&str> = body
        .blocks()
        .into_iter()
        .filter(|b| keep_f32(b) || !b.int8_capable())
        .map(|b| b.name())
        .collect();
    eprintln!(
        "wrote {}: {} bytes (the f32 {} is {} bytes, {:.2}x); {} calibration, {} image(s); kept in f32: {} and the heads' final 1x1 convs",
        args.output.display(),
        bytes.len(),
        weights.display(),
        in_size,
        in_size as f64 / bytes.len().max(1) as f64,
        method.describe(),
        images.len(),
        if kept.is_empty() { "none".to_string() } else { kept.join(", ") },
    );
    Ok(ExitCode::SUCCESS)
}
