//! Speed benchmark of one YoloBody forward pass, for `cargo xtask bench`.
//!
//! ```sh
//! cargo run --release -p yolov3-head --example bench_speed -- \
//!     --backbone mobilenetv2 --num-classes 20 --size 416 --batch 1 --iters 20 --warmup 3
//! # bf16, from the same f32 weights
//! ... --precision bf16
//! # int8: quantise once (calibration inputs: raw little-endian f32, (N, 3, S, S)) ...
//! ... --quantize calib_416.f32 --out int8.safetensors --batch 4
//! # ... then time the model loaded from that file
//! ... --precision int8 --weights int8.safetensors
//! ```
//!
//! Builds the model on deterministic synthetic weights (`nn_blocks::weights::SyntheticWeights`),
//! in `--precision f32` (default) or `bf16`; `int8` loads the int8 tensors of `--weights`, a
//! file written by `--quantize`. It runs `warmup` untimed passes then `iters` timed ones, and
//! prints one JSON object on stdout: median / min / max milliseconds per batch (and every
//! timed run, `times_ms`), per image, images per second, the load time and the process's
//! peak RSS (`VmHWM`). Run one configuration per process so that the peak RSS belongs to it
//! (the int8 model is read from its file, not calibrated in the timed process, for the same
//! reason).
//!
//! `--quantize CALIB --out FILE` builds a calibrating `f32` body on the synthetic weights,
//! runs the inputs of CALIB through it `--batch` images at a time, and writes its int8
//! tensors (`CalibrationMethod::default()`, the first convolution kept in `f32`, as
//! `yolo-cli quantize` does) to FILE with `candle_core::safetensors::save`; it prints one
//! JSON line and times nothing.
//!
//! Like `yolo-cli`, this binary makes the process-wide settings itself (malloc keeps freed
//! buffers unless `NN_BLOCKS_REUSE_BUFFERS=0`; the thread count is fixed in
//! `RAYON_NUM_THREADS`) and reads the kernel choice from `NN_BLOCKS_FAST_CONV`,
//! `NN_BLOCKS_WINOGRAD` (f4, f2, off) and `NN_BLOCKS_GEMM64`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::weights::{SyntheticWeights, TakingBackend};
use nn_blocks::{CalibrationMethod, KernelPolicy, Precision};
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    backbone: String,
    num_classes: usize,
    size: usize,
    batch: usize,
    iters: usize,
    warmup: usize,
    precision: Precision,
    /// int8: the file of `--quantize` to load.
    weights: Option<PathBuf>,
    /// `--quantize CALIB`: the raw f32 calibration inputs.
    quantize: Option<PathBuf>,
    /// `--quantize`'s output file.
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        backbone: "mobilenetv2".into(),
        num_classes: 20,
        size: 416,
        batch: 1,
        iters: 20,
        warmup: 3,
        precision: Precision::F32,
        weights: None,
        quantize: None,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench; ignore it and other bare flags.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--backbone" => a.backbone = value.clone(),
            "--num-classes" => a.num_classes = num()?,
            "--size" => a.size = num()?,
            "--batch" => a.batch = num()?,
            "--iters" => a.iters = num()?.max(1),
            "--warmup" => a.warmup = num()?,
            "--precision" => {
                a.precision = value.parse().map_err(|e| format!("--precision: {e}"))?
            }
            "--weights" => a.weights = Some(value.into()),
            "--quantize" => a.quantize = Some(value.into()),
            "--out" => a.out = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Peak resident set size of this process in MiB (`VmHWM` in /proc/self/status).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// glibc's malloc keeps freed buffers for reuse, as `yolo-cli` sets it (see its
/// `process.rs`); false where it does not apply.
fn reuse_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes malloc's tuning parameters; both are documented
        // options and the values are in range (it returns 0 on a refused value). It touches
        // no memory of ours. This binary's one unsafe block: the process tuning its own
        // allocator, which no library of the workspace may do.
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB) == 1
        };
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The on/off switch in environment variable `var`, if set.
fn switch(var: &str) -> Result<Option<bool>, Box<dyn std::error::Error>> {
    match std::env::var(var) {
        Ok(v) => Ok(Some(
            nn_kernels::parse_switch(&v).map_err(|e| format!("{var}: {e}"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// The kernel policy the `NN_BLOCKS_*` variables ask for (the fastest by default).
fn kernel_policy() -> Result<KernelPolicy, Box<dyn std::error::Error>> {
    let mut p = KernelPolicy::default();
    if let Some(on) = switch("NN_BLOCKS_FAST_CONV")? {
        p.fast_conv = on;
    }
    if let Ok(v) = std::env::var("NN_BLOCKS_WINOGRAD") {
        p.winograd = v.parse().map_err(|e| format!("NN_BLOCKS_WINOGRAD: {e}"))?;
    }
    if let Some(on) = switch("NN_BLOCKS_GEMM64")? {
        p.gemm64 = on;
    }
    Ok(p)
}

/// `--quantize CALIB --out FILE`: calibrates an `f32` body on the synthetic weights with the
/// inputs of `calib` (raw little-endian f32, `(N, 3, S, S)`, N from the file's size),
/// `--batch` images at a time, and writes its int8 tensors to FILE (through a temporary
/// file, so that an interrupted run leaves no partial file for `cargo xtask bench` to reuse).
fn quantize(cfg: &YoloConfig, args: &Args, calib: &Path, device: &Device) -> Res<()> {
    let out = args.out.as_ref().ok_or("--quantize needs --out FILE")?;
    let t0 = Instant::now();
    let bytes = std::fs::read(calib).map_err(|e| format!("{}: {e}", calib.display()))?;
    let s = args.size;
    let image_bytes = 3 * s * s * std::mem::size_of::<f32>();
    if bytes.is_empty() || bytes.len() % image_bytes != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of (3, {s}, {s}) f32 images",
            calib.display(),
            bytes.len()
        )
        .into());
    }
    let n = bytes.len() / image_bytes;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    drop(bytes);
    let images = Tensor::from_vec(values, (n, 3, s, s), device)?;
    let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, device.clone());
    let body = YoloBody::new(&cfg.clone().with_calibration(true), vb)?;
    let batch = args.batch.max(1);
    for start in (0..n).step_by(batch) {
        drop(body.forward(&images.narrow(0, start, batch.min(n - start))?)?);
    }
    let method = CalibrationMethod::default();
    // The first convolution (3 input channels) stays f32, as in `yolo-cli quantize`.
    let tensors: HashMap<String, Tensor> = body
        .int8_tensors(method, |b| b.config().in_channels == 3)?
        .into_iter()
        .collect();
    let tmp = out.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out)?;
    println!(
        "{}",
        serde_json::json!({
            "quantized": out.to_string_lossy(),
            "backbone": args.backbone,
            "num_classes": args.num_classes,
            "size": s,
            "calibration_images": n,
            "calibration_batch": batch,
            "calibration": method.describe(),
            "bytes": std::fs::metadata(out)?.len(),
            "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

fn main() -> Res<()> {
    let args = parse_args()?;
    // as yolo-cli does (NN_BLOCKS_REUSE_BUFFERS=0 leaves glibc's defaults, for comparison)
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        // Before any other thread starts; candle otherwise re-reads /proc/cpuinfo per op.
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if switch("NN_BLOCKS_REUSE_BUFFERS")?.unwrap_or(true) {
        reuse_freed_buffers();
    }
    let kernels = kernel_policy()?;
    let kind = match args.backbone.as_str() {
        "mobilenetv2" => BackboneKind::MobileNetV2,
        "darknet53" => BackboneKind::Darknet53,
        other => return Err(format!("unknown backbone {other}").into()),
    };
    let device = Device::Cpu;
    let cfg = YoloConfig::new(kind, args.num_classes).with_kernels(kernels);
    if let Some(calib) = &args.quantize {
        return quantize(&cfg, &args, calib, &device);
    }
    let t0 = Instant::now();
    let model = match args.precision {
        Precision::Int8 => {
            let path = args
                .weights
                .as_ref()
                .ok_or("--precision int8 needs --weights FILE (written by --quantize)")?;
            let tensors = candle_core::safetensors::load(path, &device)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // As yolo-cli loads: each tensor leaves the map when the model takes it.
            let vb = TakingBackend::var_builder(tensors, DType::F32, &device);
            YoloBody::new(&cfg.with_precision(Precision::Int8), vb)?
        }
        p => {
            if args.weights.is_some() {
                return Err(
                    "--weights is for --precision int8 (f32 and bf16 use the synthetic weights)"
                        .into(),
                );
            }
            let vb =
                VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, device.clone());
            YoloBody::new(&cfg.with_precision(p), vb)?
        }
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    // (B, 3, S, S) in [0, 1), like a preprocessed image.
    let x = Tensor::rand(0f32, 1f32, (args.batch, 3, args.size, args.size), &device)?;

    for _ in 0..args.warmup {
        model.forward(&x)?;
    }
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        let (a, b, c) = model.forward(&x)?;
        // Outputs are computed eagerly on the CPU; drop them inside the timing.
        drop((a, b, c));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    // The backbone alone, to split the time (median of the same number of runs).
    let mut bb = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        drop(model.backbone().forward(&x)?);
        bb.push(t.elapsed().as_secs_f64() * 1e3);
    }
    bb.sort_by(f64::total_cmp);
    let backbone_ms = bb[bb.len() / 2];
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let per_image = median / args.batch as f64;
    let threads = candle_core::utils::get_num_threads();
    println!(
        "{{\"impl\":\"yolo-rs\",\"precision\":\"{}\",\"backbone\":\"{}\",\"num_classes\":{},\"size\":{},\"batch\":{},\
         \"threads\":{},\"fast_conv\":{},\"iters\":{},\"warmup\":{},\"median_ms\":{:.3},\
         \"min_ms\":{:.3},\"max_ms\":{:.3},\"ms_per_image\":{:.3},\"images_per_s\":{:.3},\
         \"backbone_ms\":{:.3},\"load_ms\":{:.1},\"peak_rss_mib\":{:.1},\"times_ms\":[{}]}}",
        args.precision.as_str(),
        args.backbone,
        args.num_classes,
        args.size,
        args.batch,
        threads,
        kernels.fast_conv,
        args.iters,
        args.warmup,
        median,
        times[0],
        times[times.len() - 1],
        per_image,
        1e3 / per_image,
        backbone_ms,
        load_ms,
        peak_rss_mib().unwrap_or(f64::NAN),
        times
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    Ok(())
}
