//! Speed benchmark of one YoloBody forward pass, for `cargo xtask bench`.
//!
//! ```sh
//! cargo run --release -p yolov3-head --example bench_speed -- \
//!     --backbone mobilenetv2 --num-classes 20 --size 416 --batch 1 --iters 20 --warmup 3
//! ```
//!
//! Builds the model on deterministic synthetic weights (`nn_blocks::weights::SyntheticWeights`),
//! runs `warmup` untimed passes then `iters` timed ones, and prints one JSON object on
//! stdout: median / min / max milliseconds per batch (and every timed run, `times_ms`),
//! per image, images per second, the
//! load time and the process's peak RSS (`VmHWM`). Run one configuration per process so
//! that the peak RSS belongs to it.
//!
//! Like `yolo-cli`, this binary makes the process-wide settings itself (malloc keeps freed
//! buffers unless `NN_BLOCKS_REUSE_BUFFERS=0`; the thread count is fixed in
//! `RAYON_NUM_THREADS`) and reads the kernel choice from `NN_BLOCKS_FAST_CONV`,
//! `NN_BLOCKS_WINOGRAD` (f4, f2, off) and `NN_BLOCKS_GEMM64`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::weights::SyntheticWeights;
use nn_blocks::KernelPolicy;
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

struct Args {
    backbone: String,
    num_classes: usize,
    size: usize,
    batch: usize,
    iters: usize,
    warmup: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        backbone: "mobilenetv2".into(),
        num_classes: 20,
        size: 416,
        batch: 1,
        iters: 20,
        warmup: 3,
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let t0 = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, device.clone());
    let model = YoloBody::new(
        &YoloConfig::new(kind, args.num_classes).with_kernels(kernels),
        vb,
    )?;
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
        "{{\"impl\":\"yolo-rs\",\"backbone\":\"{}\",\"num_classes\":{},\"size\":{},\"batch\":{},\
         \"threads\":{},\"fast_conv\":{},\"iters\":{},\"warmup\":{},\"median_ms\":{:.3},\
         \"min_ms\":{:.3},\"max_ms\":{:.3},\"ms_per_image\":{:.3},\"images_per_s\":{:.3},\
         \"backbone_ms\":{:.3},\"load_ms\":{:.1},\"peak_rss_mib\":{:.1},\"times_ms\":[{}]}}",
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
