//! `yolo-cli run`: detection on images and directories of images.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use yolov3_head::{
    load_image, BackboneKind, Detection, Detector, DetectorConfig, ResizeMode, YoloConfig,
    DEFAULT_MAX_PIXELS,
};

use crate::args::InputSize;
use crate::draw::Painter;
use crate::model::{self, DeviceChoice};
use crate::output::{self, Format, OutputNamer};

/// Extensions picked up when a directory is given (files named explicitly are always tried).
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "pnm", "pbm", "pgm", "ppm", "qoi",
    "tga", "ico",
];

/// Arguments of `yolo-cli run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image files or directories.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Descend into subdirectories of directory inputs.
    #[arg(long, short = 'r')]
    recursive: bool,
    /// Feature extractor: darknet53 (COCO) or mobilenetv2 (VOC).
    #[arg(long, default_value = "darknet53")]
    backbone: BackboneKind,
    /// Weights (.safetensors, or a PyTorch .pth state_dict); default:
    /// model_data/weights/{darknet53-coco,mobilenetv2-voc}.safetensors.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Class names, one per line; default: COCO for darknet53, VOC for mobilenetv2.
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Anchors file (`10,13, 16,30, …`, 9 w,h pairs); default: the YOLOv3 anchors.
    #[arg(long, value_name = "FILE")]
    anchors: Option<PathBuf>,
    /// Network input size: N or WxH, multiples of 32.
    #[arg(long, default_value = "416")]
    input_size: InputSize,
    /// Score threshold (objectness x class score), in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = unit_interval)]
    conf: f64,
    /// IoU above which NMS suppresses a same-class box, in [0, 1].
    #[arg(long, default_value_t = 0.3, value_parser = unit_interval)]
    nms_iou: f64,
    /// Stretch images to the input size instead of letterboxing them.
    #[arg(long)]
    no_letterbox: bool,
    /// Device; default: the best one built in (cuda, metal, then cpu).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
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
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
}

fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1]"))
    }
}

/// Time spent per stage, summed over images.
#[derive(Debug, Default)]
struct Timings {
    load: Duration,
    preprocess: Duration,
    inference: Duration,
    postprocess: Duration,
}

/// Expands directories into their image files (sorted); missing inputs are reported.
fn collect_inputs(inputs: &[PathBuf], recursive: bool, failures: &mut usize) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let walk = walkdir::WalkDir::new(input)
                .follow_links(true)
                .sort_by_file_name()
                .max_depth(if recursive { usize::MAX } else { 1 });
            for entry in walk {
                match entry {
                    Ok(e) if e.file_type().is_file() => {
                        let is_image = e
                            .path()
                            .extension()
                            .and_then(|x| x.to_str())
                            .map(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
                            .unwrap_or(false);
                        if is_image {
                            files.push(e.into_path());
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        eprintln!("error: skipping {}: {err}", input.display());
                        *failures += 1;
                    }
                }
            }
        } else if input.exists() {
            files.push(input.clone());
        } else {
            eprintln!(
                "error: skipping {}: no such file or directory",
                input.display()
            );
            *failures += 1;
        }
    }
    files
}

/// Creates `dir` (and `dir/labels`) and checks that files can be written there.
fn prepare_output(dir: &Path, labels: bool) -> anyhow::Result<()> {
    let check = |d: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create the output directory {}", d.display()))?;
        let probe = d.join(format!(".yolo-cli-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .with_context(|| format!("cannot write in the output directory {}", d.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    };
    check(dir)?;
    if labels {
        check(&dir.join("labels"))?;
    }
    Ok(())
}

fn save_drawn(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let is_jpg = path.extension().is_some_and(|e| e == "jpg");
    if is_jpg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
            .encode_image(img)
            .with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        img.write_to(&mut w, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::io::Write::flush(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs detection.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be refused is refused before any model or image is loaded.
    let writes = !args.no_draw || args.save_txt;
    if writes {
        prepare_output(&args.output, args.save_txt)?;
    }
    let (class_names, classes_from) =
        model::resolve_classes(args.classes.as_deref(), args.backbone)?;
    let anchors = model::resolve_anchors(args.anchors.as_deref())?;
    let weights = model::resolve_weights(args.weights.as_deref(), args.backbone)?;

    let mut failures = 0usize;
    let files = collect_inputs(&args.inputs, args.recursive, &mut failures);
    if files.is_empty() {
        anyhow::bail!(
            "no images found in {}",
            args.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let device = model::select_device(args.device)?;
    let num_classes = class_names.len();
    let cfg = YoloConfig::new(args.backbone, num_classes);
    let model = model::load_model(&weights, &cfg, &device).with_context(|| {
        format!("{num_classes} classes come from {classes_from}; the weights must match")
    })?;
    let size = args.input_size;
    let detector = Detector::new(
        model,
        DetectorConfig::new(class_names)
            .with_input_size(size.width, size.height)
            .with_resize(if args.no_letterbox {
                ResizeMode::Stretch
            } else {
                ResizeMode::Letterbox
            })
            .with_conf_threshold(args.conf as f32)
            .with_nms_iou(args.nms_iou)
            .with_anchors(anchors)
            .with_device(device.clone()),
    )?;
    let painter = if args.no_draw {
        None
    } else {
        Some(Painter::new(num_classes)?)
    };
    let mut namer = OutputNamer::new(&args.output, &files);

    let show_bar = std::io::stdout().is_terminal() && files.len() > 1;
    let bar = if show_bar {
        let b = ProgressBar::new(files.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let say = |text: &str| -> anyhow::Result<()> {
        let mut r = Ok(());
        bar.suspend(|| r = crate::stdout::print(text));
        r
    };
    let complain = |text: String| bar.suspend(|| eprintln!("{text}"));

    let mut t = Timings::default();
    let mut done = 0usize;
    let mut total_dets = 0usize;
    let mut json_results: Vec<(String, Vec<Detection>)> = Vec::new();

    for chunk in files.chunks(args.batch as usize) {
        let mut images = Vec::new();
        let mut paths = Vec::new();
        for path in chunk {
            let start = Instant::now();
            match load_image(path, args.max_pixels) {
                Ok(img) => {
                    t.load += start.elapsed();
                    images.push(img);
                    paths.push(path);
                }
                Err(e) => {
                    complain(format!("error: skipping {}: {e}", path.display()));
                    failures += 1;
                    bar.inc(1);
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        let start = Instant::now();
        let input = detector.preprocess(&images)?;
        t.preprocess += start.elapsed();
        let start = Instant::now();
        let heads = detector.infer(&input)?;
        device.synchronize()?;
        t.inference += start.elapsed();
        let start = Instant::now();
        let sizes: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
        let results = detector.postprocess(&heads, &sizes)?;
        t.postprocess += start.elapsed();

        for ((path, mut img), dets) in paths.into_iter().zip(images).zip(results) {
            let shown = path.display().to_string();
            let dims = img.dimensions();
            match args.format {
                Format::Table => say(&output::table(&shown, dims, &dets))?,
                Format::Jsonl => say(&output::jsonl(&shown, dims, &dets)?)?,
                Format::Json => {}
            }
            if writes {
                let (stem, drawn_path) = namer.next(path);
                if let Some(p) = &painter {
                    p.draw(&mut img, &dets, (size.width, size.height));
                    if let Err(e) = save_drawn(&img, &drawn_path) {
                        complain(format!("error: {e:#}"));
                        failures += 1;
                    }
                }
                if args.save_txt {
                    let txt = args.output.join("labels").join(format!("{stem}.txt"));
                    if let Err(e) = std::fs::write(&txt, output::label_lines(&dets)) {
                        complain(format!("error: cannot write {}: {e}", txt.display()));
                        failures += 1;
                    }
                }
            }
            total_dets += dets.len();
            done += 1;
            if args.format == Format::Json {
                json_results.push((shown, dets));
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if args.format == Format::Json {
        crate::stdout::print(&output::json(&json_results)?)?;
    }

    let ms = |d: Duration| {
        if done == 0 {
            0.0
        } else {
            d.as_secs_f64() * 1e3 / done as f64
        }
    };
    eprintln!(
        "{done} image{} ({failures} skipped), {total_dets} detection{}; mean per image: load {:.1} ms, preprocess {:.1} ms, inference {:.1} ms, postprocess {:.1} ms{}",
        if done == 1 { "" } else { "s" },
        if total_dets == 1 { "" } else { "s" },
        ms(t.load),
        ms(t.preprocess),
        ms(t.inference),
        ms(t.postprocess),
        if writes && done > 0 {
            format!("; results in {}", args.output.display())
        } else {
            String::new()
        }
    );
    Ok(if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
