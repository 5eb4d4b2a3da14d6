//! `yolo-cli summary`: a torchsummaryX-style table of the network.

use std::process::ExitCode;

use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use clap::Args;
use nn_blocks::summary::group_thousands;
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

use crate::args::InputSize;

/// Arguments of `yolo-cli summary`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Feature extractor: mobilenetv2 or darknet53.
    #[arg(long, default_value = "mobilenetv2")]
    backbone: BackboneKind,
    /// Number of classes (20 for VOC, 80 for COCO).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    num_classes: u32,
    /// Input size: N or WxH, multiples of 32.
    #[arg(long, default_value = "416")]
    input_size: InputSize,
}

/// Builds the model on zero weights (only shapes matter) and prints its summary.
pub fn run(args: SummaryArgs) -> anyhow::Result<ExitCode> {
    let cfg = YoloConfig::new(args.backbone, args.num_classes as usize);
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = YoloBody::new(&cfg, vb).context("building the model")?;
    let input = [1, 3, args.input_size.height, args.input_size.width];
    let summary = model.summary(&input)?;
    let mut text = format!(
        "YoloBody({}, {} classes) at {} (WxH), batch 1\n\n{}",
        args.backbone,
        args.num_classes,
        args.input_size,
        summary.render()
    );
    if args.backbone == BackboneKind::MobileNetV2 {
        let unused = mobilenet_v2::MobileNetV2Backbone::unused_reference_params(
            &mobilenet_v2::Config::imagenet(),
        );
        text += &format!(
            "The PyTorch module also holds features.18 and classifier ({} parameters, {} in all) that the detector never runs.\n",
            group_thousands(unused as u64),
            group_thousands((summary.total_params() + unused) as u64)
        );
    }
    crate::stdout::print(&text)?;
    Ok(ExitCode::SUCCESS)
}
