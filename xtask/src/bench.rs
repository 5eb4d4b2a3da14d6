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
//!
//! `--precision` times, instead, ours in f32, bf16 and int8 against ONNX Runtime in f32 and
//! int8, in the same alternating rounds (five processes per round), and prints one table
//! with their ratios and the batch-1 targets. Both int8 models are quantised once, cached in
//! `target/bench/`, on the same calibration inputs: `make_synthetic`'s images at the input
//! size, written as raw f32 by `bench_py.py calib`; ours by `bench_speed --quantize`, ONNX
//! Runtime's by `bench_py.py quantize` (`quantize_static`: QDQ, per-channel, U8S8, MinMax).
//! The timed int8 processes load the quantised files.

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
    /// The precision table instead: ours f32, bf16 and int8 against ONNX Runtime f32 and
    /// int8 (`quantize_static`, QDQ, per-channel), both quantised on the same calibration
    /// images, with the batch-1 targets; PyTorch and the `yolo-cli` lines are skipped.
    #[arg(long)]
    precision: bool,
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

/// Runs `cmd` to the end and returns its stdout; fails with its stderr if it fails.
pub(crate) fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and parses the last stdout line that is a JSON object.
pub(crate) fn run_json(cmd: &mut Command) -> Result<Value> {
    eprintln!("$ {cmd:?}");
    let stdout = stdout_of(cmd)?;
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

/// Runs a `yolo-cli run` command to the end and returns its per-stage summary (ms per
/// image: load, preprocess, inference, postprocess), failing with its stderr.
pub(crate) fn run_cli_split(cmd: &mut Command) -> Result<[f64; 4]> {
    let out = cmd.output().context("starting yolo-cli run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("yolo-cli run failed with {}:\n{stderr}", out.status);
    }
    cli_split(&stderr)
        .with_context(|| format!("no per-stage summary in yolo-cli's output:\n{stderr}"))
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
    let split = run_cli_split(&mut cmd)?;
    let rss: Value = serde_json::from_str(std::fs::read_to_string(&rss_file)?.trim())?;
    let weights_mib = std::fs::metadata(&weights)?.len() as f64 / (1024.0 * 1024.0);
    let peak = f(&rss, "peak_rss_mib").unwrap_or(f64::NAN);
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
    let split = run_cli_split(&mut cmd)?;
    Ok((split, start.elapsed().as_secs_f64()))
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

/// What every timed configuration shares: the binaries, the thread count, the iterations.
struct Bench<'a> {
    root: &'a Path,
    args: &'a BenchArgs,
    /// `target/bench`: ONNX files, calibration inputs, int8 files, results.
    dir: PathBuf,
    ours_bin: PathBuf,
    py: Option<PathBuf>,
    /// Timed runs per round: ceil(iters / rounds).
    per_round: usize,
}

impl<'a> Bench<'a> {
    /// Builds `bench_speed` in release and, unless `--no-python`, sets up the Python peers.
    fn new(root: &'a Path, args: &'a BenchArgs) -> Result<Self> {
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
        let py = if args.no_python {
            None
        } else {
            Some(python_env(root, &args.python)?)
        };
        Ok(Self {
            root,
            args,
            dir,
            ours_bin: root.join("target/release/examples/bench_speed"),
            py,
            per_round: args.iters.div_ceil(args.rounds as usize),
        })
    }

    /// The model, size, batch, iterations and thread count of one timed configuration.
    fn common(&self, cmd: &mut Command, m: &Model, batch: usize) {
        let threads = self.args.threads.to_string();
        cmd.args(["--backbone", m.backbone])
            .args(["--num-classes", &m.num_classes.to_string()])
            .args(["--size", &self.args.size.to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--iters", &self.per_round.to_string()])
            .args(["--warmup", &self.args.warmup.to_string()])
            .env("RAYON_NUM_THREADS", &threads)
            .env("OMP_NUM_THREADS", &threads)
            .current_dir(self.root);
    }

    /// `bench_speed` on `m` at `batch`.
    fn ours(&self, m: &Model, batch: usize) -> Command {
        let mut cmd = Command::new(&self.ours_bin);
        self.common(&mut cmd, m, batch);
        cmd
    }

    /// `bench_py.py MODE` on `m` at `batch`, with the thread count.
    fn peer(&self, py: &Path, mode: &str, m: &Model, batch: usize) -> Command {
        let mut cmd = Command::new(py);
        cmd.arg(self.root.join("tools/bench/bench_py.py")).arg(mode);
        self.common(&mut cmd, m, batch);
        cmd.args(["--threads", &self.args.threads.to_string()]);
        cmd
    }

    /// The f32 ONNX file of `m` (exported once).
    fn onnx(&self, py: &Path, m: &Model) -> Result<PathBuf> {
        let onnx = self.dir.join(format!(
            "yolo_{}_{}_{}.onnx",
            m.backbone, m.num_classes, self.args.size
        ));
        if !onnx.exists() {
            run_json(self.peer(py, "export", m, 1).arg("--onnx").arg(&onnx))?;
        }
        Ok(onnx)
    }

    /// Runs the commands `cmds` make one after the other, `--rounds` times, and returns
    /// each one's records (one per round), in the order of `cmds`.
    fn alternate(&self, cmds: &[&dyn Fn() -> Command]) -> Result<Vec<Vec<Value>>> {
        let mut out = vec![Vec::new(); cmds.len()];
        for _ in 0..self.args.rounds {
            for (make, records) in cmds.iter().zip(&mut out) {
                records.push(run_json(&mut make())?);
            }
        }
        Ok(out)
    }

    /// The first line of a table: what was timed, and how.
    fn header(&self, precisions: &str) -> String {
        format!(
            "{} x {} {precisions}, {} threads, median of {} runs ({} alternating rounds of {} after {} warm-up runs each); ms per image",
            self.args.size,
            self.args.size,
            self.args.threads,
            self.per_round * self.args.rounds as usize,
            self.args.rounds,
            self.per_round,
            self.args.warmup
        )
    }

    /// Writes every record to `target/bench/results.json`.
    fn save(&self, records: Vec<Value>) -> Result<PathBuf> {
        let path = self.dir.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&Value::Array(records))?)?;
        Ok(path)
    }
}

/// Pools each implementation's rounds (`pooled`), in order; `None` where there were none.
fn pool_all(runs: &[Vec<Value>], batch: usize) -> Result<Vec<Option<Value>>> {
    runs.iter().map(|r| pooled(r, batch)).collect()
}

fn ms(v: &Option<Value>) -> Option<f64> {
    v.as_ref().and_then(|v| f(v, "ms_per_image"))
}

fn rss(v: &Option<Value>) -> Option<f64> {
    v.as_ref().and_then(|v| f(v, "peak_rss_mib"))
}

/// Runs the benchmark and prints the table.
pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    let models = args
        .models
        .iter()
        .map(|m| model(m))
        .collect::<Result<Vec<_>>>()?;
    let b = Bench::new(root, &args)?;
    if args.precision {
        return bench_precision(&b, &models);
    }
    let started = machine();
    let mut records = Vec::new();
    let mut rows = Vec::new();
    for m in &models {
        let onnx = b.py.as_deref().map(|py| b.onnx(py, m)).transpose()?;
        for &batch in &args.batches {
            // Each round: ours, then PyTorch and ONNX Runtime, each in its own process.
            let ours = || b.ours(m, batch);
            let runs = match (&b.py, &onnx) {
                (Some(py), Some(onnx)) => {
                    b.alternate(&[&ours, &|| b.peer(py, "torch", m, batch), &|| {
                        let mut cmd = b.peer(py, "ort", m, batch);
                        cmd.arg("--onnx").arg(onnx);
                        cmd
                    }])?
                }
                _ => b.alternate(&[&ours])?,
            };
            let candle = if args.candle_baseline && batch == 1 {
                Some(run_json(b.ours(m, batch).env("NN_BLOCKS_FAST_CONV", "0"))?)
            } else {
                None
            };
            records.extend(runs.iter().flatten().cloned());
            let mut pooled = pool_all(&runs, batch)?.into_iter();
            let ours = pooled.next().flatten();
            let torch = pooled.next().flatten();
            let ort = pooled.next().flatten();
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
        match &b.py {
            Some(py) => Some(
                bench_cli(root, py, &args, &b.dir)
                    .unwrap_or_else(|e| format!("yolo-cli run: not measured ({e:#})")),
            ),
            None => Some("yolo-cli run: not measured (needs Python for the weights)".into()),
        }
    };
    let video = if args.no_video {
        None
    } else {
        match &b.py {
            Some(py) => Some(
                bench_video(root, py, &args, &b.dir)
                    .unwrap_or_else(|e| format!("yolo-cli run clip.mp4: not measured ({e:#})")),
            ),
            None => Some(
                "yolo-cli run clip.mp4: not measured (needs Python for the weights and the peer)"
                    .into(),
            ),
        }
    };
    let results = b.save(records)?;

    println!();
    println!("{}", b.header("f32"));
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
    println!("raw records: {}", results.display());
    Ok(())
}

/// Calibration images of `--precision`, made by `make_synthetic` (seed 0, at the input size).
const CALIB_IMAGES: usize = 16;
/// Images per calibration batch of our `--quantize`.
const CALIB_BATCH: usize = 4;

/// The targets of `--precision`, at batch 1: (what, numerator, denominator, at most).
const PRECISION_TARGETS: [(&str, usize, usize, f64); 3] = [
    ("int8 / ORT f32", INT8, ORT_F32, 0.5),
    ("int8 / ORT int8", INT8, ORT_INT8, 1.0),
    ("bf16 / ours f32", BF16, F32, 0.7),
];
// The columns of `--precision`, in the order they run in each round.
const F32: usize = 0;
const BF16: usize = 1;
const INT8: usize = 2;
const ORT_F32: usize = 3;
const ORT_INT8: usize = 4;

/// The raw f32 calibration inputs, `(CALIB_IMAGES, 3, S, S)`, both sides quantise with:
/// `make_synthetic`'s images (made once), turned into RGB / 255, CHW by `bench_py.py calib`.
fn calibration_inputs(b: &Bench, py: &Path) -> Result<PathBuf> {
    let size = b.args.size;
    let raw = b.dir.join(format!("calib_{size}_{CALIB_IMAGES}.f32"));
    if raw.exists() {
        return Ok(raw);
    }
    let set = b.dir.join(format!("calib_set_{size}_{CALIB_IMAGES}"));
    if !set.exists() {
        run(cargo()
            .args([
                "build",
                "--release",
                "-p",
                "yolo-train",
                "--example",
                "make_synthetic",
            ])
            .current_dir(b.root))?;
        let tmp = set.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        run(
            Command::new(b.root.join("target/release/examples/make_synthetic"))
                .arg(&tmp)
                .args([&CALIB_IMAGES.to_string(), "0", &size.to_string(), "0"]),
        )?;
        std::fs::rename(&tmp, &set)?;
    }
    run_json(
        Command::new(py)
            .arg(b.root.join("tools/bench/bench_py.py"))
            .arg("calib")
            .arg("--images")
            .arg(set.join("images"))
            .args(["--size", &size.to_string()])
            .arg("--out")
            .arg(&raw)
            .current_dir(b.root),
    )?;
    Ok(raw)
}

/// `cargo xtask bench --precision`: ours f32, bf16 and int8 against ONNX Runtime f32 and
/// int8 (`quantize_static`), both quantised on the same calibration inputs.
fn bench_precision(b: &Bench, models: &[Model]) -> Result<()> {
    let py = b.py.as_deref().context(
        "--precision needs Python (ONNX Runtime and the calibration inputs): drop --no-python",
    )?;
    let started = machine();
    let calib = calibration_inputs(b, py)?;
    let mut records = Vec::new();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for m in models {
        let stem = format!("yolo_{}_{}_{}", m.backbone, m.num_classes, b.args.size);
        let onnx = b.onnx(py, m)?;
        let ours_int8 = b.dir.join(format!("{stem}_int8.safetensors"));
        if !ours_int8.exists() {
            let mut cmd = b.ours(m, CALIB_BATCH);
            run_json(
                cmd.arg("--quantize")
                    .arg(&calib)
                    .arg("--out")
                    .arg(&ours_int8),
            )?;
        }
        let ort_int8 = b.dir.join(format!("{stem}_int8.onnx"));
        if !ort_int8.exists() {
            let mut cmd = b.peer(py, "quantize", m, 1);
            run_json(
                cmd.arg("--onnx")
                    .arg(&onnx)
                    .arg("--calib")
                    .arg(&calib)
                    .arg("--out")
                    .arg(&ort_int8),
            )?;
        }
        for &batch in &b.args.batches {
            let ours = |precision: &str| {
                let mut cmd = b.ours(m, batch);
                cmd.args(["--precision", precision]);
                if precision == "int8" {
                    cmd.arg("--weights").arg(&ours_int8);
                }
                cmd
            };
            let ort = |precision: &str, onnx: &Path| {
                let mut cmd = b.peer(py, "ort", m, batch);
                cmd.args(["--precision", precision]).arg("--onnx").arg(onnx);
                cmd
            };
            // in the order of the columns F32 .. ORT_INT8
            let runs = b.alternate(&[
                &|| ours("f32"),
                &|| ours("bf16"),
                &|| ours("int8"),
                &|| ort("f32", &onnx),
                &|| ort("int8", &ort_int8),
            ])?;
            records.extend(runs.iter().flatten().cloned());
            let p = pool_all(&runs, batch)?;
            let r = |num: usize, den: usize| ratio(ms(&p[num]), ms(&p[den]));
            let mut row = format!("| {} | {batch} |", m.label);
            for v in &p {
                row += &format!(" {} | {} |", cell(ms(v), 1), cell(rss(v), 0));
            }
            for (_, num, den, _) in PRECISION_TARGETS {
                row += &format!(" {} |", r(num, den));
            }
            rows.push(row);
            if batch == 1 {
                let verdicts: Vec<String> = PRECISION_TARGETS
                    .iter()
                    .map(|&(what, num, den, most)| {
                        let verdict = match (ms(&p[num]), ms(&p[den])) {
                            (Some(a), Some(b)) if a / b <= most => "met",
                            (Some(_), Some(_)) => "NOT met",
                            _ => "not measured",
                        };
                        format!("{what} {} (<= {most:.1}x: {verdict})", r(num, den))
                    })
                    .collect();
                targets.push(format!("  {}: {}", m.label, verdicts.join("; ")));
            }
            records.extend(p.into_iter().flatten());
        }
    }
    let results = b.save(records)?;

    println!();
    println!("{}", b.header("f32 / bf16 / int8"));
    println!(
        "int8: calibrated on the same {CALIB_IMAGES} synthetic images ({}); ours: percentile(99.99), \
         per-channel s8 weights, u8 activations, first conv f32; ONNX Runtime: quantize_static, \
         QDQ, per-channel, QUInt8 activations / QInt8 weights, MinMax",
        calib.display()
    );
    println!("machine at start: {started}");
    println!("machine at end:   {}", machine());
    println!();
    println!(
        "| model | batch | ours f32 ms | RSS MiB | ours bf16 ms | RSS MiB | ours int8 ms | RSS MiB | ORT f32 ms | RSS MiB | ORT int8 ms | RSS MiB | int8/ORT-f32 | int8/ORT-int8 | bf16/ours-f32 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "targets at batch 1: int8 <= 0.5x ORT f32 and <= 1.0x ORT int8; bf16 <= 0.7x ours f32"
    );
    for t in &targets {
        println!("{t}");
    }
    println!();
    println!("raw records: {}", results.display());
    Ok(())
}
