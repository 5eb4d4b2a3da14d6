//! `yolo-cli anchors`: anchor boxes by k-means with the IoU distance, as the reference's
//! `kmeans_for_anchors.py` (see `yolo_train::kmeans`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use yolo_train::dataset::BadLinePolicy;
use yolo_train::kmeans::{
    anchors_text, avg_iou, boxes_from_annotations, boxes_from_voc_dir, kmeans, to_anchor_pixels,
    KmeansConfig, Wh,
};
use yolov3_head::ClassNames;

/// Arguments of `yolo-cli anchors`.
#[derive(Debug, Args)]
pub struct AnchorsArgs {
    /// Annotation files (`path x1,y1,x2,y2,cls ...` per line) or folders of VOC XML files
    /// (e.g. VOCdevkit/VOC2007/Annotations, as the reference reads).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Network input side (the clusters are scaled to it), or WxH.
    #[arg(long, default_value = "416")]
    pub input_size: String,
    /// Number of anchors (`yolo-cli run --anchors` takes 9).
    #[arg(long, default_value_t = 9)]
    pub num_anchors: usize,
    /// Seed of the initial centres: the same seed gives the same anchors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// At most this many k-means updates.
    #[arg(long, default_value_t = 1000)]
    pub max_iter: usize,
    /// The anchors file to write (`w,h, w,h, ...`, smallest first).
    #[arg(long, short, default_value = "yolo_anchors.txt")]
    pub output: PathBuf,
    /// Class names: when given, boxes of other class ids are bad lines.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Refuse an annotation file with a bad line instead of skipping the line.
    #[arg(long)]
    pub strict: bool,
}

/// Runs `yolo-cli anchors`.
pub fn run(args: AnchorsArgs) -> anyhow::Result<std::process::ExitCode> {
    let input_wh = crate::train::parse_size(&args.input_size).context("--input-size")?;
    let num_classes = match &args.classes {
        Some(p) => Some(ClassNames::from_file(p)?.len()),
        None => None,
    };
    let policy = if args.strict {
        BadLinePolicy::Refuse
    } else {
        BadLinePolicy::Skip
    };
    let mut boxes: Vec<Wh> = Vec::new();
    for input in &args.inputs {
        let (b, skipped) = if input.is_dir() {
            boxes_from_voc_dir(input)?
        } else {
            boxes_from_annotations(&[input.as_path()], num_classes, policy)?
        };
        for s in &skipped {
            eprintln!("warning: skipped {s}");
        }
        eprintln!("{}: {} boxes", input.display(), b.len());
        boxes.extend(b);
    }
    let cfg = KmeansConfig {
        k: args.num_anchors,
        seed: args.seed,
        max_iter: args.max_iter,
    };
    let r = kmeans(&boxes, &cfg)?;
    if r.converged {
        eprintln!(
            "k-means: {} boxes, {} clusters, converged after {} updates",
            boxes.len(),
            cfg.k,
            r.iterations
        );
    } else {
        eprintln!(
            "warning: k-means stopped after --max-iter {} updates before converging",
            r.iterations
        );
    }
    let px = to_anchor_pixels(&r.clusters, input_wh);
    let written: Vec<Wh> = px
        .iter()
        .map(|&(w, h)| [w as f64 / input_wh.0 as f64, h as f64 / input_wh.1 as f64])
        .collect();
    println!("anchor        w        h   boxes");
    for (j, c) in r.clusters.iter().enumerate() {
        let n = r.assignment.iter().filter(|&&a| a == j).count();
        println!(
            "{:>6} {:>8.2} {:>8.2} {:>7}",
            j + 1,
            c[0] * input_wh.0 as f64,
            c[1] * input_wh.1 as f64,
            n
        );
    }
    println!(
        "avg IoU (acc): {:.4} ({:.4} with the integer anchors written)",
        r.avg_iou,
        avg_iou(&boxes, &written)
    );
    let text = anchors_text(&px);
    // An existing anchors file is replaced, as before: it is this command's output.
    yolo_io::write_bytes_atomic(&args.output, yolo_io::Overwrite::Allow, text.as_bytes())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!("{}: {text}", args.output.display());
    if cfg.k != 9 {
        eprintln!("note: {} anchors; yolo-cli run --anchors takes 9", cfg.k);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
