//! `yolo-cli voc-annotation`: a VOCdevkit folder to annotation files, as the reference's
//! `voc_annotation.py` (see `yolo_train::voc`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use yolo_train::voc::{discover_classes, write_annotation_files, write_image_sets, SplitConfig};
use yolov3_head::ClassNames;

/// What to do (the reference's `annotation_mode` 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Split, then write the annotation files (0).
    All,
    /// Only write `ImageSets/Main/{trainval,train,val,test}.txt` (1).
    Split,
    /// Only write the annotation files from the existing `ImageSets/Main` lists (2).
    Annotations,
}

/// Arguments of `yolo-cli voc-annotation`.
#[derive(Debug, Args)]
pub struct VocAnnotationArgs {
    /// The VOCdevkit folder (holding VOC{year}/Annotations, JPEGImages, ImageSets/Main).
    #[arg(default_value = "VOCdevkit")]
    pub devkit: PathBuf,
    /// The data set year: VOC{year}, {year}_train.txt.
    #[arg(long, default_value = "2007")]
    pub year: String,
    /// Class names, one per line (their order gives the class ids); without it the names
    /// found in the XML files are used, sorted, and written to OUTPUT_DIR/{year}_classes.txt.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// all: split then annotate; split: only the ImageSets lists; annotations: only the
    /// annotation files.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// Fraction of the images in train + val (the rest is test).
    #[arg(long, default_value_t = 0.9)]
    pub trainval_percent: f64,
    /// Fraction of train + val in train (the rest is val).
    #[arg(long, default_value_t = 0.9)]
    pub train_percent: f64,
    /// Seed of the split: the same seed gives the same split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The image sets to write annotation files for.
    #[arg(long, value_delimiter = ',', default_value = "train,val")]
    pub sets: Vec<String>,
    /// Where {year}_{set}.txt go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Start image paths with the devkit path as given instead of making it absolute.
    #[arg(long)]
    pub relative: bool,
}

/// Shows at most this many unknown-class objects one by one.
const SHOW: usize = 20;

/// Runs `yolo-cli voc-annotation`.
pub fn run(args: VocAnnotationArgs) -> anyhow::Result<std::process::ExitCode> {
    let voc = yolo_train::voc::voc_dir(&args.devkit, &args.year);
    if !voc.join("Annotations").is_dir() {
        anyhow::bail!("{} is not a folder", voc.join("Annotations").display());
    }
    if matches!(args.mode, Mode::All | Mode::Split) {
        let cfg = SplitConfig {
            trainval_percent: args.trainval_percent,
            train_percent: args.train_percent,
            seed: args.seed,
        };
        let s = write_image_sets(&args.devkit, &args.year, &cfg)?;
        eprintln!(
            "{}: train {}, val {}, test {} (trainval {})",
            voc.join("ImageSets/Main").display(),
            s.train.len(),
            s.val.len(),
            s.test.len(),
            s.trainval.len()
        );
    }
    if args.mode == Mode::Split {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let classes: Vec<String> = match &args.classes {
        Some(p) => ClassNames::from_file(p)?.names().to_vec(),
        None => {
            let names = discover_classes(&args.devkit, &args.year)?;
            let p = args.output_dir.join(format!("{}_classes.txt", args.year));
            let text: String = names.iter().map(|n| format!("{n}\n")).collect();
            // Replaced when it exists, as before: it is this command's output.
            yolo_io::write_bytes_atomic(&p, yolo_io::Overwrite::Allow, text.as_bytes())
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("{} classes found, written to {}", names.len(), p.display());
            names
        }
    };
    let sets: Vec<&str> = args.sets.iter().map(String::as_str).collect();
    let rep = write_annotation_files(
        &args.devkit,
        &args.year,
        &sets,
        &classes,
        &args.output_dir,
        !args.relative,
    )?;
    for (p, n) in &rep.files {
        eprintln!("wrote {} ({n} images)", p.display());
    }
    let width = classes.iter().map(String::len).max().unwrap_or(0).max(5);
    println!("{:<width$} objects", "class");
    for (c, n) in classes.iter().zip(&rep.class_counts) {
        println!("{c:<width$} {n:>7}");
    }
    if rep.difficult > 0 {
        eprintln!("{} difficult objects left out", rep.difficult);
    }
    if !rep.unknown.is_empty() {
        for u in rep.unknown_objects.iter().take(SHOW) {
            eprintln!("warning: skipped {u}");
        }
        if rep.unknown_objects.len() > SHOW {
            eprintln!(
                "warning: ... and {} more such objects",
                rep.unknown_objects.len() - SHOW
            );
        }
        let summary: Vec<String> = rep
            .unknown
            .iter()
            .map(|(n, k)| format!("{n} ({k})"))
            .collect();
        eprintln!(
            "warning: objects of classes not in the class list were left out: {}",
            summary.join(", ")
        );
    }
    for p in rep.missing_images.iter().take(SHOW) {
        eprintln!("warning: listed image {} does not exist", p.display());
    }
    if rep.missing_images.len() > SHOW {
        eprintln!(
            "warning: ... and {} more missing images",
            rep.missing_images.len() - SHOW
        );
    }
    if rep.files.first().is_some_and(|(_, n)| *n <= 500) {
        eprintln!("note: 500 training images or fewer is a small data set: train for more epochs to take enough steps");
    }
    if rep.class_counts.iter().sum::<usize>() == 0 {
        eprintln!("warning: no object was written: check that --classes names the classes of this data set");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
