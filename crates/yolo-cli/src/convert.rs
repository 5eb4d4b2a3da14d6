//! `yolo-cli convert IN OUT.safetensors`: import a checkpoint into the canonical format.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use yolo_weights::{convert_file, ConvertOptions, Naming, SourceFormat};
use yolov3_head::BackboneKind;

/// Convert a checkpoint (zip .pth, darknet .weights, candle-yolo-v3 or timm safetensors)
/// into the project's safetensors (reference names, f32, BN eps in the metadata).
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input checkpoint.
    pub input: PathBuf,
    /// Output `.safetensors` file.
    pub output: PathBuf,
    /// Backbone (inferred from the tensor names otherwise).
    #[arg(long)]
    pub backbone: Option<BackboneKind>,
    /// Number of classes (inferred from the head; 80 for darknet .weights).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// MobileNetV2 width multiplier of a classifier (inferred from the channels).
    #[arg(long)]
    pub width_mult: Option<f64>,
    /// BatchNorm epsilon to record (default: 1e-6 for darknet-trained weights, else 1e-5).
    #[arg(long)]
    pub bn_eps: Option<f64>,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

fn format_name(f: SourceFormat) -> &'static str {
    match f {
        SourceFormat::Darknet => "darknet .weights",
        SourceFormat::Pth => "PyTorch zip .pth",
        SourceFormat::Safetensors => "safetensors",
    }
}

fn naming_name(n: Naming) -> &'static str {
    match n {
        Naming::Reference => "reference PyTorch names",
        Naming::Darknet => "darknet cfg order",
        Naming::CandleYoloV3 => "candle-yolo-v3 names",
        Naming::Timm => "timm names",
    }
}

/// Runs the conversion.
pub fn run(args: ConvertArgs) -> Result<ExitCode> {
    if args.output.exists() && !args.force {
        bail!(
            "{} already exists (use --force to overwrite)",
            args.output.display()
        );
    }
    if args.output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("OUT must end in .safetensors: {}", args.output.display());
    }
    let opts = ConvertOptions {
        backbone: args.backbone,
        num_classes: args.num_classes,
        width_mult: args.width_mult,
        bn_eps: args.bn_eps,
        format: None,
    };
    let converted = convert_file(&args.input, &opts)
        .with_context(|| format!("converting {}", args.input.display()))?;
    let sha = converted
        .save(&args.output, args.force)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let r = &converted.report;
    let m = &converted.meta;
    eprintln!(
        "read {} ({}, {}): {} tensors matched, {} parameters{}{}{}",
        args.input.display(),
        format_name(r.format),
        naming_name(r.naming),
        r.matched,
        converted.numel(),
        if r.dropped_counters > 0 {
            format!(", {} num_batches_tracked dropped", r.dropped_counters)
        } else {
            String::new()
        },
        if r.dropped_unused.is_empty() {
            String::new()
        } else {
            format!(
                ", {} tensors the detector never reads dropped",
                r.dropped_unused.len()
            )
        },
        if r.stripped_module_prefix {
            ", `module.` prefix stripped"
        } else {
            ""
        },
    );
    eprintln!(
        "wrote {}: {} {} ({} classes, bn_eps {:e}), sha256 {sha}",
        args.output.display(),
        m.model.name(),
        m.backbone,
        m.num_classes,
        m.bn_eps
    );
    Ok(ExitCode::SUCCESS)
}
