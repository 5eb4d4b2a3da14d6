//! `cargo xtask bench`: CPU speed of yolo-rs against PyTorch eager and ONNX Runtime.
//!
//! 1. builds `yolov3-head`'s `bench_speed` example in release;
//! 2. installs the Python peers (`.venv-golden/` with `tools/reference/requirements.txt`
//!    and `tools/bench/requirements.txt`), exports each model to ONNX once
//!    (`target/bench/`);
//! 3. for each model (YoloBody-mobilenetv2-20 and YoloBody-darknet53-80 at 416) and each
//!    batch size, runs ours, PyTorch eager and ONNX Runtime one after the other, each in
//!    its own process (so that the peak RSS is its own) with the same thread count, in
//!    `--rounds` turns whose timed runs are pooled (a shared machine's bursts of load
//!    then fall on all three);
//! 4. times `yolo-cli run` end to end on copies of `model_data/dog.jpg` with synthetic
//!    darknet53 weights written as safetensors, split into load / preprocess /
//!    inference / postprocess as the CLI reports it;
//! 5. times `yolo-cli run clip.mp4` on an H.264 clip made by ffmpeg from
//!    `model_data/dog.jpg` (768x576, a pan, `--cli-images` frames) against the same
//!    frames as PNG files (the image pipeline), and against OpenCV `VideoCapture` + ONNX
//!    Runtime on the same clip and weights (`tools/bench/bench_py.py video`);
//! 6. prints one table with the ratios ours / theirs and writes every raw record to
//!    `target/bench/results.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Timed iterations per configuration, over all rounds (the median is reported).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed warm-up iterations (in each round).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Rounds per configuration: ours, PyTorch and ONNX Runtime take turns, each round
    /// timing ceil(iters / rounds) runs of each, and the medians are of all the runs
    /// pooled, so that a burst of load from the machine's neighbours lands on all three
    /// rather than on whichever was running.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Threads for every implementation (RAYON_NUM_THREADS, torch.set_num_threads,
    /// ORT intra-op threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// Models: mobilenetv2 (20 classes) and/or darknet53 (80 classes).
    #[arg(long, value_delimiter = ',', default_value = "mobilenetv2,darknet53")]
    models: Vec<String>,
    /// Input side.
    #[arg(long, default_value_t = 416)]
    size: usize,
    /// Only our implementation (no Python peers).
    #[arg(long)]
    no_python: bool,
    /// Also time ours with the fast convolution off (candle's conv2d), batch 1 only.
    #[arg(long)]
    candle_baseline: bool,
    /// Skip the end-to-end `yolo-cli run` timing.
    #[arg(long)]
    no_cli: bool,
    /// Skip the `yolo-cli run clip.mp4` timing.
    #[arg(long)]
    no_video: bool,
    /// Images for the `yolo-cli run` timing.
    #[arg(long, default_value_t = 20)]
    cli_images: usize,
    /// Python interpreter used to create the virtual environment.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// One model of the table.
struct Model {
    backbone: &'static str,
    num_classes: usize,
    label: &'static str,
}

fn model(name: &str) -> Result<Model> {
    match name {
        "mobilenetv2" => Ok(Model {
            backbone: "mobilenetv2",
            num_classes: 20,
            label: "YoloBody-mobilenetv2-20",
        }),
        "darknet53" => Ok(Model {
            backbone: "darknet53",
            num_classes: 80,
            label: "YoloBody-darknet53-80",
        }),
        other => bail!("unknown model {other} (mobilenetv2, darknet53)"),
    }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `cmd` with its stdout sent to our stderr (stdout carries only the table).
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` and parses the last stdout line that is a JSON object.
pub(crate) fn run_json(cmd: &mut Command) -> Result<Value> {
    eprintln!("$ {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON in the output of {cmd:?}:\n{stdout}"))?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    eprintln!("  {line}");
    Ok(v)
}

/// Creates or reuses `.venv-golden/` and installs torch and the ORT peers into it.
pub(crate) fn python_env(root: &Path, python: &str) -> Result<PathBuf> {
    let venv = root.join(".venv-golden");
    let py = venv.join("bin").join("python");
    if !py.exists() {
        run(Command::new(python).arg("-m").arg("venv").arg(&venv))?;
    }
    if !venv.join(".installed").exists() {
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-r"])
            .arg(root.join("tools/reference/requirements.txt")))?;
        std::fs::write(venv.join(".installed"), "")?;
    }
    if !venv.join(".installed-bench").exists() {
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-r"])
            .arg(root.join("tools/bench/requirements.txt")))?;
        std::fs::write(venv.join(".installed-bench"), "")?;
    }
    Ok(py)
}

/// One implementation's rounds of a configuration as one record: the median, minimum
/// and maximum of all their timed runs (`times_ms`) pooled, per batch and per image,
/// and the largest peak RSS; `None` for no rounds.
fn pooled(rounds: &[Value], batch: usize) -> Result<Option<Value>> {
    let Some(first) = rounds.first() else {
        return Ok(None);
    };
    let mut times = Vec::new();
    for r in rounds {
        let t = r
            .get("times_ms")
            .and_then(Value::as_array)
            .with_context(|| format!("no times_ms in {r}"))?;
        times.extend(t.iter().filter_map(Value::as_f64));
    }
    if times.is_empty() {
        bail!("no timed runs in {first}");
    }
    times.sort_by(f64::total_cmp);
    let median = median(&times);
    let per_image = median / batch as f64;
    let rss = rounds
        .iter()
        .filter_map(|r| f(r, "peak_rss_mib"))
        .fold(f64::NAN, f64::max);
    let mut out = first.clone();
    let obj = out
        .as_object_mut()
        .context("a record that is not an object")?;
    obj.remove("times_ms");
    for (k, v) in [
        ("median_ms", median),
        ("min_ms", times[0]),
        ("max_ms", times[times.len() - 1]),
        ("ms_per_image", per_image),
        ("images_per_s", 1e3 / per_image),
        ("peak_rss_mib", rss),
    ] {
        obj.insert(k.into(), serde_json::json!(v));
    }
    obj.insert("rounds".into(), serde_json::json!(rounds.len()));
    obj.insert("pooled_runs".into(), serde_json::json!(times.len()));
    Ok(Some(out))
}

/// The median of sorted values (the mean of the middle two for an even count).
pub(crate) fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// `a / b` formatted as a ratio, or `-`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// The machine in a few words: CPU model, cores, load averages.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, load average {load}")
}

/// Parses `mean per image: load X ms, preprocess Y ms, inference Z ms, postprocess W ms`
/// (`mean per image or frame` with videos).
pub(crate) fn cli_split(stderr: &str) -> Option<[f64; 4]> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("mean per image"))?;
    let mut out = [0.0; 4];
    for (i, key) in ["load ", "preprocess ", "inference ", "postprocess "]
        .iter()
        .enumerate()
    {
        let rest = &line[line.find(key)? + key.len()..];
        out[i] = rest.split_whitespace().next()?.parse().ok()?;
    }
    Some(out)
}

/// Times `yolo-cli run` on `n` copies of `model_data/dog.jpg` with synthetic darknet53
/// weights; returns a printable report.
fn bench_cli(root: &Path, py: &Path, args: &BenchArgs, dir: &Path) -> Result<String> {
    run(cargo()
        .args(["build", "--release", "-p", "yolo-cli"])
        .current_dir(root))?;
    let weights = cli_weights(root, py, dir)?;
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    for i in 0..args.cli_images {
        let dst = images.join(format!("dog_{i:03}.jpg"));
        if !dst.exists() {
            std::fs::copy(root.join("model_data/dog.jpg"), &dst)?;
        }
    }
    let rss_file = dir.join("cli_rss.json");
    let mut cmd = Command::new(py);
    cmd.arg(root.join("tools/bench/run_rss.py"))
        .arg(root.join("target/release/yolo-cli"))
        .args([
            "run",
            "--backbone",
            "darknet53",
            "--no-draw",
            "--format",
            "jsonl",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--output")
        .arg(dir.join("cli_out"))
        .arg(&images)
        .env("RUN_RSS_OUT", &rss_file)
        .env("RAYON_NUM_THREADS", args.threads.to_string())
        .current_dir(root);
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("starting yolo-cli run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("yolo-cli run failed with {}:\n{stderr}", out.status);
    }
    let rss: Value = serde_json::from_str(std::fs::read_to_string(&rss_file)?.trim())?;
    let weights_mib = std::fs::metadata(&weights)?.len() as f64 / (1024.0 * 1024.0);
    let peak = f(&rss, "peak_rss_mib").unwrap_or(f64::NAN);
    let split = cli_split(&stderr)
        .with_context(|| format!("no per-stage summary in yolo-cli's output:\n{stderr}"))?;
    Ok(format!(
        "yolo-cli run, darknet53 (synthetic weights, {weights_mib:.0} MiB safetensors), {} images \
         of 768x576, batch 1, {} threads:\n  mean per image: load {:.1} ms, preprocess {:.1} ms, \
         inference {:.1} ms, postprocess {:.1} ms; process wall {:.2} s (model load included); \
         peak RSS {peak:.0} MiB = {:.2}x the weights file",
        args.cli_images,
        args.threads,
        split[0],
        split[1],
        split[2],
        split[3],
        f(&rss, "wall_s").unwrap_or(f64::NAN),
        peak / weights_mib,
    ))
}

/// The darknet53 weights (synthetic, safetensors) of the `yolo-cli run` timings.
fn cli_weights(root: &Path, py: &Path, dir: &Path) -> Result<PathBuf> {
    let weights = dir.join("darknet53_80.safetensors");
    if !weights.exists() {
        run_json(
            Command::new(py)
                .arg(root.join("tools/bench/bench_py.py"))
                .args(["weights", "--backbone", "darknet53", "--num-classes", "80"])
                .arg("--out")
                .arg(&weights)
                .current_dir(root),
        )?;
    }
    Ok(weights)
}

/// `yolo-cli run --backbone darknet53 --no-draw --format jsonl` on `inputs` (release
/// build, `threads` threads): the per-stage means and the process's wall time.
fn time_cli(
    root: &Path,
    weights: &Path,
    inputs: &Path,
    size: usize,
    threads: usize,
) -> Result<([f64; 4], f64)> {
    let mut cmd = Command::new(root.join("target/release/yolo-cli"));
    cmd.args([
        "run",
        "--backbone",
        "darknet53",
        "--no-draw",
        "--format",
        "jsonl",
    ])
    .arg("--weights")
    .arg(weights)
    .arg(inputs)
    .args(["--input-size", &size.to_string()])
    .env("RAYON_NUM_THREADS", threads.to_string())
    .current_dir(root);
    eprintln!("$ {cmd:?}");
    let start = std::time::Instant::now();
    let out = cmd.output().context("starting yolo-cli run")?;
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("yolo-cli run failed with {}:\n{stderr}", out.status);
    }
    let split = cli_split(&stderr)
        .with_context(|| format!("no per-stage summary in yolo-cli's output:\n{stderr}"))?;
    Ok((split, wall))
}

/// Times `yolo-cli run clip.mp4` (darknet53 at `--size`) on an H.264 clip of `--cli-images` frames made by ffmpeg, against the same frames as PNG
/// files and against OpenCV + ONNX Runtime; returns a printable report.
fn bench_video(root: &Path, py: &Path, args: &BenchArgs, dir: &Path) -> Result<String> {
    run(cargo()
        .args(["build", "--release", "-p", "yolo-cli"])
        .current_dir(root))?;
    let weights = cli_weights(root, py, dir)?;
    let frames = args.cli_images;
    let clip = dir.join(format!("clip_768x576_{frames}.mp4"));
    if !clip.exists() {
        run(Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-loop",
                "1",
                "-framerate",
                "25",
                "-i",
            ])
            .arg(root.join("model_data/dog.jpg"))
            .args(["-frames:v", &frames.to_string()])
            .args([
                "-vf",
                "scale=800:600,crop=768:576:x='n':y='n',format=yuv420p",
            ])
            .args(["-c:v", "libx264", "-profile:v", "high", "-crf", "23"])
            .arg(&clip))
        .context("making the clip (needs ffmpeg with libx264)")?;
    }
    // the same frames as PNG files, for the image pipeline
    let pngs = dir.join(format!("clip_frames_{frames}"));
    if !pngs.exists() {
        let tmp = dir.join(format!("clip_frames_{frames}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        run(Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i"])
            .arg(&clip)
            .args(["-pix_fmt", "rgb24"])
            .arg(tmp.join("%04d.png")))?;
        std::fs::rename(&tmp, &pngs)?;
    }
    let (video, video_wall) = time_cli(root, &weights, &clip, args.size, args.threads)?;
    let (images, images_wall) = time_cli(root, &weights, &pngs, args.size, args.threads)?;
    let onnx = dir.join(format!("yolo_darknet53_80_{}.onnx", args.size));
    if !onnx.exists() {
        run_json(
            Command::new(py)
                .arg(root.join("tools/bench/bench_py.py"))
                .args(["export", "--backbone", "darknet53", "--num-classes", "80"])
                .args(["--size", &args.size.to_string()])
                .arg("--onnx")
                .arg(&onnx)
                .current_dir(root),
        )?;
    }
    let peer = run_json(
        Command::new(py)
            .arg(root.join("tools/bench/bench_py.py"))
            .arg("video")
            .arg("--onnx")
            .arg(&onnx)
            .arg("--video")
            .arg(&clip)
            .args(["--size", &args.size.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .env("OMP_NUM_THREADS", args.threads.to_string())
            .current_dir(root),
    )?;
    let per_frame = |s: &[f64; 4]| s.iter().sum::<f64>();
    Ok(format!(
        "yolo-cli run clip.mp4, darknet53 at {} (synthetic weights), {frames} frames of 768x576          H.264 High, batch 1, {} threads:
  video:  decode {:.1} ms/frame (on its own thread) =          {:.1} % of inference {:.1} ms; stages {:.1} ms/frame; process wall {:.2} s = {:.2}          frames/s (model load included)
  PNGs:   load {:.1} ms/image, inference {:.1} ms;          stages {:.1} ms/image; process wall {:.2} s = {:.2} images/s
  OpenCV VideoCapture +          ONNX Runtime: decode {} ms/frame, preprocess {} ms, inference {} ms; {} frames/s          (loop only); video fps ours/theirs (wall) {:.2}x",
        args.size,
        args.threads,
        video[0],
        100.0 * video[0] / video[2],
        video[2],
        per_frame(&video),
        video_wall,
        frames as f64 / video_wall,
        images[0],
        images[2],
        per_frame(&images),
        images_wall,
        frames as f64 / images_wall,
        cell(f(&peer, "decode_ms_per_frame"), 1),
        cell(f(&peer, "preprocess_ms_per_frame"), 1),
        cell(f(&peer, "inference_ms_per_frame"), 1),
        cell(f(&peer, "fps"), 2),
        (frames as f64 / video_wall) / f(&peer, "fps").unwrap_or(f64::NAN),
    ))
}

/// Runs the benchmark and prints the table.
pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    let models = args
        .models
        .iter()
        .map(|m| model(m))
        .collect::<Result<Vec<_>>>()?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "yolov3-head",
            "--example",
            "bench_speed",
        ])
        .current_dir(root))?;
    let ours_bin = root.join("target/release/examples/bench_speed");
    let py = if args.no_python {
        None
    } else {
        Some(python_env(root, &args.python)?)
    };
    let threads = args.threads.to_string();
    let rounds = args.rounds as usize;
    let per_round = args.iters.div_ceil(rounds);
    let common = |cmd: &mut Command, m: &Model, batch: usize| {
        cmd.args(["--backbone", m.backbone])
            .args(["--num-classes", &m.num_classes.to_string()])
            .args(["--size", &args.size.to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--iters", &per_round.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .env("RAYON_NUM_THREADS", &threads)
            .env("OMP_NUM_THREADS", &threads)
            .current_dir(root);
    };
    let started = machine();
    let mut records = Vec::new();
    let mut rows = Vec::new();
    for m in &models {
        let onnx = dir.join(format!(
            "yolo_{}_{}_{}.onnx",
            m.backbone, m.num_classes, args.size
        ));
        if let Some(py) = &py {
            if !onnx.exists() {
                let mut cmd = Command::new(py);
                cmd.arg(root.join("tools/bench/bench_py.py")).arg("export");
                common(&mut cmd, m, 1);
                run_json(cmd.arg("--onnx").arg(&onnx))?;
            }
        }
        for &batch in &args.batches {
            // Each round: ours, then PyTorch and ONNX Runtime, each in its own process.
            let (mut ours, mut torch, mut ort) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let mut cmd = Command::new(&ours_bin);
                common(&mut cmd, m, batch);
                ours.push(run_json(&mut cmd)?);
                if let Some(py) = &py {
                    let mut cmd = Command::new(py);
                    cmd.arg(root.join("tools/bench/bench_py.py")).arg("torch");
                    common(&mut cmd, m, batch);
                    torch.push(run_json(cmd.args(["--threads", &threads]))?);
                    let mut cmd = Command::new(py);
                    cmd.arg(root.join("tools/bench/bench_py.py")).arg("ort");
                    common(&mut cmd, m, batch);
                    ort.push(run_json(
                        cmd.args(["--threads", &threads]).arg("--onnx").arg(&onnx),
                    )?);
                }
            }
            let candle = if args.candle_baseline && batch == 1 {
                let mut cmd = Command::new(&ours_bin);
                common(&mut cmd, m, batch);
                Some(run_json(cmd.env("NN_BLOCKS_FAST_CONV", "0"))?)
            } else {
                None
            };
            records.extend(ours.iter().chain(&torch).chain(&ort).cloned());
            let (ours, torch, ort) = (
                pooled(&ours, batch)?,
                pooled(&torch, batch)?,
                pooled(&ort, batch)?,
            );
            let ms = |v: &Option<Value>| v.as_ref().and_then(|v| f(v, "ms_per_image"));
            let rss = |v: &Option<Value>| v.as_ref().and_then(|v| f(v, "peak_rss_mib"));
            rows.push(format!(
                "| {} | {batch} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
                m.label,
                cell(ms(&ours), 1),
                cell(ours.as_ref().and_then(|v| f(v, "images_per_s")), 2),
                cell(rss(&ours), 0),
                cell(ms(&torch), 1),
                cell(rss(&torch), 0),
                cell(ms(&ort), 1),
                cell(rss(&ort), 0),
                ratio(ms(&ours), ms(&torch)),
                ratio(ms(&ours), ms(&ort)),
                match &candle {
                    Some(c) => format!(" (candle conv2d: {} ms)", cell(f(c, "ms_per_image"), 1)),
                    None => String::new(),
                },
            ));
            records.extend([ours, torch, ort, candle].into_iter().flatten());
        }
    }
    let cli = if args.no_cli {
        None
    } else {
        match &py {
            Some(py) => Some(
                bench_cli(root, py, &args, &dir)
                    .unwrap_or_else(|e| format!("yolo-cli run: not measured ({e:#})")),
            ),
            None => Some("yolo-cli run: not measured (needs Python for the weights)".into()),
        }
    };
    let video = if args.no_video {
        None
    } else {
        match &py {
            Some(py) => Some(
                bench_video(root, py, &args, &dir)
                    .unwrap_or_else(|e| format!("yolo-cli run clip.mp4: not measured ({e:#})")),
            ),
            None => Some(
                "yolo-cli run clip.mp4: not measured (needs Python for the weights and the peer)"
                    .into(),
            ),
        }
    };
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&Value::Array(records))?,
    )?;

    println!();
    println!(
        "{} x {} f32, {} threads, median of {} runs ({} alternating rounds of {} after {} warm-up runs each); ms per image",
        args.size,
        args.size,
        args.threads,
        per_round * rounds,
        rounds,
        per_round,
        args.warmup
    );
    println!("machine at start: {started}");
    println!("machine at end:   {}", machine());
    println!();
    println!(
        "| model | batch | ours ms | ours img/s | ours RSS MiB | PyTorch eager ms | PyTorch RSS MiB | ONNX Runtime ms | ORT RSS MiB | ours/PyTorch | ours/ORT |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    if let Some(cli) = cli {
        println!();
        println!("{cli}");
    }
    if let Some(video) = video {
        println!();
        println!("{video}");
    }
    println!();
    println!("raw records: {}", dir.join("results.json").display());
    Ok(())
}
