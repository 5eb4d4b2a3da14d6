//! `cargo xtask loadtest`: `yolo-cli serve` under load on loopback, against a Python peer.
//!
//! 1. builds `yolo-cli` in release; writes the deterministic weights of both models as
//!    safetensors and exports them to ONNX (`tools/bench/bench_py.py`, `target/bench/`);
//! 2. times `yolo-cli run` on the test image (the reference for the latency at
//!    concurrency 1: decoding + preprocessing + inference + postprocessing per image);
//! 3. for each model, drives `yolo-cli serve` with dynamic batching on and off, and the
//!    Python peer (`tools/serve_py/server.py`: FastAPI/uvicorn around ONNX Runtime on the
//!    same weights), with `wrk` at each concurrency for `--duration` seconds
//!    (`--p99-duration` at concurrency 1, whose p99 needs many requests): throughput,
//!    p50/p95/p99 latency, non-2xx answers and the server's peak RSS (VmHWM, reset
//!    between runs);
//! 4. overload: concurrency `--overload-concurrency` for `--overload-secs` against our
//!    server: only 2xx and 503 may come back, and the RSS stays bounded;
//! 5. fuzzes the API from its OpenAPI document with schemathesis: no 5xx;
//! 6. prints the table and the targets, and writes `target/loadtest/results.json`.
//!
//! Every load is bounded in time and goes to 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench;

/// Arguments of `cargo xtask loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// Seconds of load per configuration (but concurrency 1: `--p99-duration`).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load at concurrency 1, whose p99 is a target: long enough for about a
    /// hundred requests or more (in 10 s, Darknet53 answers about 24, and their "p99" is
    /// the one slowest request).
    #[arg(long, default_value_t = 60)]
    p99_duration: u64,
    /// Copies of the image `yolo-cli run` is timed on, for its mean time per image.
    #[arg(long, default_value_t = 30)]
    run_images: usize,
    /// Concurrent connections to try.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Models: mobilenetv2 (20 classes) and/or darknet53 (80 classes).
    #[arg(long, value_delimiter = ',', default_value = "mobilenetv2,darknet53")]
    models: Vec<String>,
    /// CPU threads of every server (yolo-cli --threads, ORT intra-op threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Network input side.
    #[arg(long, default_value_t = 416)]
    size: usize,
    /// `--max-batch` with dynamic batching on.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// `--batch-wait-ms` with dynamic batching on.
    #[arg(long, default_value_t = 5)]
    batch_wait_ms: u64,
    /// Connections of the overload run (0: none).
    #[arg(long, default_value_t = 256)]
    overload_concurrency: usize,
    /// Seconds of the overload run.
    #[arg(long, default_value_t = 30)]
    overload_secs: u64,
    /// Skip the Python peer.
    #[arg(long)]
    no_python: bool,
    /// Skip the schemathesis run.
    #[arg(long)]
    no_schemathesis: bool,
    /// Examples per API operation for schemathesis.
    #[arg(long, default_value_t = 200)]
    schemathesis_examples: usize,
    /// The image posted (default: model_data/dog.jpg).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Python interpreter used to create the virtual environment.
    #[arg(long, default_value = "python3")]
    python: String,
}

impl LoadtestArgs {
    /// Seconds of load at `concurrency` connections.
    fn seconds_at(&self, concurrency: usize) -> u64 {
        if concurrency == 1 {
            self.p99_duration
        } else {
            self.duration
        }
    }
}

/// A server under test.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load test and prints the table.
pub fn loadtest(root: &Path, args: LoadtestArgs) -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install wrk");
    }
    let dir = root.join("target/loadtest");
    std::fs::create_dir_all(&dir)?;
    bench::run(
        bench::cargo()
            .args(["build", "--release", "-p", "yolo-cli"])
            .current_dir(root),
    )?;
    let cli = root.join("target/release/yolo-cli");
    let py = bench::python_env(root, &args.python)?;
    install_serve_requirements(root, &py)?;
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| root.join("model_data/dog.jpg"));
    let lua = root.join("tools/loadtest/post.lua");
    let run_dir = run_images(root, &image, args.run_images)?;
    let started = bench::machine();
    let mut records = Vec::new();
    let mut lines = Vec::new();
    let mut targets = Vec::new();
    for name in &args.models {
        let (backbone, classes) = match name.as_str() {
            "mobilenetv2" => ("mobilenetv2", 20),
            "darknet53" => ("darknet53", 80),
            other => bail!("unknown model {other} (mobilenetv2, darknet53)"),
        };
        let weights = model_files(root, &py, backbone, classes, args.size)?;
        let run_ms = run_time_per_image(&cli, backbone, &weights.0, &run_dir, &args)?;
        lines.push(format!(
            "{backbone}: `yolo-cli run` per image (load + preprocess + inference + postprocess): {run_ms:.1} ms"
        ));
        let mut by_conc: Vec<(String, usize, Value)> = Vec::new();
        for (label, max_batch) in [("ours, batching", args.max_batch), (DEFAULT_CPU, 1)] {
            let server = start_ours(&cli, backbone, &weights.0, &args, max_batch, 256)?;
            for &c in &args.concurrency {
                let r = drive(&server, c, args.seconds_at(c), &image, &lua)?;
                by_conc.push((label.to_string(), c, r));
            }
        }
        if !args.no_python {
            let server = start_python(root, &py, &weights.1, classes, &args)?;
            for &c in &args.concurrency {
                let r = drive(&server, c, args.seconds_at(c), &image, &lua)?;
                by_conc.push(("python (FastAPI + ORT)".to_string(), c, r));
            }
        }
        for (label, c, r) in &by_conc {
            lines.push(row(backbone, label, *c, r));
            records
                .push(json!({"model": backbone, "server": label, "concurrency": c, "result": r}));
        }
        targets.extend(check_targets(backbone, &by_conc, run_ms));
    }
    if args.overload_concurrency > 0 {
        let name = args
            .models
            .first()
            .map(String::as_str)
            .unwrap_or("mobilenetv2");
        let (backbone, classes) = if name == "darknet53" {
            ("darknet53", 80)
        } else {
            ("mobilenetv2", 20)
        };
        let weights = model_files(root, &py, backbone, classes, args.size)?;
        let server = start_ours(&cli, backbone, &weights.0, &args, args.max_batch, 64)?;
        let r = drive(
            &server,
            args.overload_concurrency,
            args.overload_secs,
            &image,
            &lua,
        )?;
        let statuses = r["statuses"].as_object().cloned().unwrap_or_default();
        let others: u64 = statuses
            .iter()
            .filter(|(k, _)| !k.starts_with('2') && k.as_str() != "503")
            .filter_map(|(_, v)| v.as_u64())
            .sum();
        lines.push(row(
            backbone,
            "ours, overload (--queue 64)",
            args.overload_concurrency,
            &r,
        ));
        targets.push(format!(
            "overload {} connections for {} s: answers {:?}; other than 2xx/503: {others} ({}); peak RSS {:.0} MiB",
            args.overload_concurrency,
            args.overload_secs,
            statuses,
            if others == 0 { "met" } else { "NOT met" },
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        ));
        records.push(json!({"model": backbone, "server": "ours, overload", "concurrency": args.overload_concurrency, "result": r}));
        drop(server);
        if !args.no_schemathesis {
            let server = start_ours(&cli, backbone, &weights.0, &args, args.max_batch, 64)?;
            targets.push(schemathesis(
                &py,
                &server,
                args.schemathesis_examples,
                &dir,
            )?);
        }
    }
    let table = format!(
        "yolo-cli serve load test ({}), {} s per run ({} s at concurrency 1), {} threads per server, input {}:\n\n\
         | model | server | conc | req/s | p50 ms | p95 ms | p99 ms | non-2xx | peak RSS MiB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n{}\n\n{}\n\ntargets:\n{}",
        started,
        args.duration,
        args.p99_duration,
        args.threads,
        args.size,
        lines
            .iter()
            .filter(|l| l.starts_with('|'))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        lines
            .iter()
            .filter(|l| !l.starts_with('|'))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        targets
            .iter()
            .map(|t| format!("- {t}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    println!("{table}");
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(
            &json!({"machine": started, "records": records, "targets": targets}),
        )?,
    )?;
    Ok(())
}

fn install_serve_requirements(root: &Path, py: &Path) -> Result<()> {
    let marker = py
        .parent()
        .and_then(Path::parent)
        .context("venv layout")?
        .join(".installed-serve");
    if !marker.exists() {
        bench::run(
            Command::new(py)
                .args(["-m", "pip", "install", "-r"])
                .arg(root.join("tools/serve_py/requirements.txt")),
        )?;
        std::fs::write(marker, "")?;
    }
    Ok(())
}

/// The safetensors and ONNX files of a model with the deterministic weights.
fn model_files(
    root: &Path,
    py: &Path,
    backbone: &str,
    classes: usize,
    size: usize,
) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let weights = dir.join(format!("{backbone}_{classes}.safetensors"));
    let onnx = dir.join(format!("yolo_{backbone}_{classes}_{size}.onnx"));
    let script = root.join("tools/bench/bench_py.py");
    let common = |cmd: &mut Command| {
        cmd.arg(&script)
            .args(["--backbone", backbone])
            .args(["--num-classes", &classes.to_string()])
            .args(["--size", &size.to_string()])
            .current_dir(root);
    };
    if !weights.exists() {
        let mut cmd = Command::new(py);
        cmd.arg(&script).arg("weights");
        cmd.args(["--backbone", backbone])
            .args(["--num-classes", &classes.to_string()])
            .arg("--out")
            .arg(&weights)
            .current_dir(root);
        bench::run_json(&mut cmd)?;
    }
    if !onnx.exists() {
        let mut cmd = Command::new(py);
        common(&mut cmd);
        bench::run_json(cmd.arg("export").arg("--onnx").arg(&onnx))?;
    }
    Ok((weights, onnx))
}

/// A directory of exactly `copies` copies of `image` for `yolo-cli run` to time
/// (`target/loadtest/images`, ours: emptied first).
fn run_images(root: &Path, image: &Path, copies: usize) -> Result<PathBuf> {
    let dir = root.join("target/loadtest/images");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for i in 0..copies.max(1) {
        std::fs::copy(image, dir.join(format!("img_{i:03}.jpg")))?;
    }
    Ok(dir)
}

/// `yolo-cli run`'s mean time per image on the images of `dir`, from its per-stage
/// summary.
fn run_time_per_image(
    cli: &Path,
    backbone: &str,
    weights: &Path,
    dir: &Path,
    args: &LoadtestArgs,
) -> Result<f64> {
    let split = bench::run_cli_split(
        Command::new(cli)
            .args([
                "run",
                "--backbone",
                backbone,
                "--no-draw",
                "--format",
                "jsonl",
            ])
            .arg("--weights")
            .arg(weights)
            .args(["--input-size", &args.size.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .arg(dir),
    )?;
    Ok(split.iter().sum())
}

fn start_ours(
    cli: &Path,
    backbone: &str,
    weights: &Path,
    args: &LoadtestArgs,
    max_batch: usize,
    queue: usize,
) -> Result<Served> {
    let mut cmd = Command::new(cli);
    cmd.args(["serve", "--port", "0", "--backbone", backbone])
        .arg("--weights")
        .arg(weights)
        .args(["--input-size", &args.size.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--max-batch", &max_batch.to_string()])
        .args(["--batch-wait-ms", &args.batch_wait_ms.to_string()])
        .args(["--queue", &queue.to_string()])
        .args(["--max-images", &queue.min(16).to_string()])
        .args(["--timeout-ms", "120000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    eprintln!("$ {cmd:?}");
    let mut child = cmd.spawn().context("starting yolo-cli serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .with_context(|| format!("yolo-cli serve said {line:?}"))?
        .parse()?;
    let served = Served { child, addr };
    wait_for(&served, "/readyz")?;
    Ok(served)
}

fn start_python(
    root: &Path,
    py: &Path,
    onnx: &Path,
    classes: usize,
    args: &LoadtestArgs,
) -> Result<Served> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(py);
    cmd.args(["-m", "uvicorn", "--app-dir"])
        .arg(root.join("tools/serve_py"))
        .args([
            "server:app",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--log-level", "warning", "--no-access-log"])
        .env("YOLO_ONNX", onnx)
        .env("YOLO_CLASSES", classes.to_string())
        .env("YOLO_SIZE", args.size.to_string())
        .env("ORT_THREADS", args.threads.to_string())
        .env("OMP_NUM_THREADS", args.threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!("$ {cmd:?}");
    let child = cmd.spawn().context("starting uvicorn")?;
    let served = Served {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    wait_for(&served, "/healthz")?;
    Ok(served)
}

/// Polls `GET path` until it answers 200 (60 s at most).
fn wait_for(server: &Served, path: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        if get_status(server.addr, path) == Some(200) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{} never answered 200 on {path}", server.addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of a plain `GET path` over HTTP/1.0, or `None`.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The peak RSS of `pid` in MiB (VmHWM); `reset` clears it first.
fn peak_rss_mib(pid: u32, reset: bool) -> Option<f64> {
    if reset {
        // "5" resets the peak RSS to the current RSS (Linux >= 4.0)
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").ok()?;
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `wrk` with `connections` for `secs` seconds; its JSON line plus throughput and the
/// server's peak RSS over the run.
fn drive(
    server: &Served,
    connections: usize,
    secs: u64,
    image: &Path,
    lua: &Path,
) -> Result<Value> {
    let pid = server.child.id();
    peak_rss_mib(pid, true);
    let threads = connections.clamp(1, 2);
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &threads.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{secs}s")])
        .args(["--timeout", "120s"])
        .arg("-s")
        .arg(lua)
        .arg(format!("http://{}", server.addr))
        .env("LOADTEST_IMAGE", image);
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("starting wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON line from wrk:\n{stdout}"))?;
    let mut v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    let duration = v["duration_s"].as_f64().unwrap_or(f64::NAN);
    let ok: u64 = v["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with('2'))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    v["ok_per_s"] = json!(ok as f64 / duration);
    v["non_2xx"] = json!(requests as u64 - ok);
    v["peak_rss_mib"] = json!(peak_rss_mib(pid, false));
    eprintln!("  {v}");
    Ok(v)
}

fn row(model: &str, server: &str, conc: usize, r: &Value) -> String {
    let g = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "| {model} | {server} | {conc} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
        g("ok_per_s"),
        g("p50_ms"),
        g("p95_ms"),
        g("p99_ms"),
        r["non_2xx"].as_u64().unwrap_or(0),
        g("peak_rss_mib"),
    )
}

/// The rows of `yolo-cli serve` as it runs by default on the CPU (`--max-batch 1`).
const DEFAULT_CPU: &str = "ours, no batching";

/// The issue's targets for one model: throughput at 16 against the Python server, p99 at
/// 1 against `run`'s time per image, both for the server as it runs by default on the CPU
/// (the "no batching" rows).
fn check_targets(model: &str, runs: &[(String, usize, Value)], run_ms: f64) -> Vec<String> {
    let find = |label: &str, c: usize| {
        runs.iter()
            .find(|(l, cc, _)| l == label && *cc == c)
            .map(|(_, _, r)| r)
    };
    let mut out = Vec::new();
    let ours16 = find(DEFAULT_CPU, 16).and_then(|r| r["ok_per_s"].as_f64());
    let py16 = find("python (FastAPI + ORT)", 16).and_then(|r| r["ok_per_s"].as_f64());
    if let (Some(a), Some(b)) = (ours16, py16) {
        let x = a / b;
        let ratio = if b > 0.0 {
            format!("{x:.2}x the Python server's")
        } else {
            "above the Python server's, which completed no request in the run,".to_string()
        };
        out.push(format!(
            "{model}: throughput at concurrency 16 ({DEFAULT_CPU}) is {ratio} ({a:.1} vs {b:.1} req/s; target >= 1.5x: {})",
            if x >= 1.5 { "met" } else { "NOT met" }
        ));
    }
    if let Some(r) = find(DEFAULT_CPU, 1) {
        let p99 = r["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let n = r["requests"].as_u64().unwrap_or(0);
        let x = p99 / run_ms;
        out.push(format!(
            "{model}: p99 of {n} requests at concurrency 1 ({DEFAULT_CPU}) is {p99:.1} ms = {x:.2}x `run`'s {run_ms:.1} ms per image (target <= 1.2x: {})",
            if x <= 1.2 { "met" } else { "NOT met" }
        ));
    }
    out
}

/// schemathesis against the server's own OpenAPI document: every check but
/// `positive_data_acceptance`, which expects every schema-valid body to be accepted: any
/// bytes are a valid `format: binary` body, but only decodable images get `200` (the rest
/// rightly get `400`), and no schema can say "a decodable image".
fn schemathesis(py: &Path, server: &Served, examples: usize, dir: &Path) -> Result<String> {
    let st = py.with_file_name("schemathesis");
    let report = dir.join("schemathesis.txt");
    let mut cmd = Command::new(&st);
    cmd.arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--request-timeout", "60"])
        .arg("--no-color");
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("starting schemathesis")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&report, &text)?;
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("passed") || l.contains("failed") || l.contains("error"))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(format!(
        "schemathesis ({examples} examples per operation, all checks but positive_data_acceptance): {} — {summary} (report: {})",
        if out.status.success() {
            "passed"
        } else {
            "FAILED"
        },
        report.display()
    ))
}
