//! bf16 and int8 against f32 on one YoloBody: speed (median of a few forward passes) and
//! the relative error of the raw heads, on deterministic synthetic weights (see
//! `docs/precision.md`).
//!
//! ```sh
//! cargo run --release -p yolov3-head --example precision -- \
//!     --backbone darknet53 --size 416 --calib 8 --iters 5
//! ```
//!
//! The int8 model is calibrated on `--calib` random images (values in [0, 1), like a
//! preprocessed image) and compared on another one; `int8-all` also quantises the first
//! convolution, which the int8 files of `yolo-cli quantize` keep in `f32`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::weights::{synthetic_values, RecordingBackend, SyntheticWeights};
use nn_blocks::{CalibrationMethod, ConvBnAct, Precision};
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

type Heads = (Tensor, Tensor, Tensor);

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median_ms(model: &YoloBody, x: &Tensor, iters: usize) -> Res<f64> {
    drop(model.forward(x)?);
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        drop(model.forward(x)?);
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// `(max|a - b| / max|b|, mean|a - b| / mean|b|)` per head, as strings.
fn errors(a: &Heads, b: &Heads) -> candle_core::Result<String> {
    let mut out = Vec::new();
    for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
        let d = (x - y)?.abs()?;
        let m = y.abs()?;
        let max = |t: &Tensor| t.flatten_all()?.max(0)?.to_scalar::<f32>();
        let mean = |t: &Tensor| t.mean_all()?.to_scalar::<f32>();
        out.push(format!(
            "{:.2}%/{:.2}%",
            100.0 * max(&d)? / max(&m)?,
            100.0 * mean(&d)? / mean(&m)?
        ));
    }
    Ok(out.join("  "))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut backbone, mut size, mut calib, mut iters) = ("darknet53".to_string(), 416, 8, 5);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backbone" => backbone = v,
            "--size" => size = v.parse()?,
            "--calib" => calib = v.parse()?,
            "--iters" => iters = v.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let kind: BackboneKind = backbone.parse()?;
    let cfg = YoloConfig::new(kind, 20);
    let dev = Device::Cpu;
    let (rec, log) = RecordingBackend::new(SyntheticWeights);
    YoloBody::new(
        &cfg,
        VarBuilder::from_backend(Box::new(rec), DType::F32, dev.clone()),
    )?;
    let tensors: HashMap<String, Tensor> = log
        .entries()
        .into_iter()
        .map(|(n, d)| {
            Ok((
                n.clone(),
                Tensor::from_vec(synthetic_values(&n, &d), d, &dev)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let build = |cfg: &YoloConfig, t: HashMap<String, Tensor>| {
        YoloBody::new(cfg, VarBuilder::from_tensors(t, DType::F32, &dev))
    };
    let x = Tensor::rand(0f32, 1f32, (1, 3, size, size), &dev)?;
    let f32_model = build(&cfg, tensors.clone())?;
    let reference = f32_model.forward(&x)?;
    let f32_ms = median_ms(&f32_model, &x, iters)?;
    drop(f32_model);
    println!(
        "{backbone} {size}x{size}, batch 1, {} thread(s)",
        candle_core::utils::get_num_threads()
    );
    println!("precision   median ms  x f32   error per head (max/mean, % of the f32 head's)");
    println!("f32         {f32_ms:9.1}   1.00");

    let bf16 = build(
        &cfg.clone().with_precision(Precision::Bf16),
        tensors.clone(),
    )?;
    let ms = median_ms(&bf16, &x, iters)?;
    let e = errors(&bf16.forward(&x)?, &reference)?;
    println!("bf16        {ms:9.1}   {:.2}   {e}", f32_ms / ms);
    drop(bf16);

    let t0 = Instant::now();
    let calibrating = build(&cfg.clone().with_calibration(true), tensors.clone())?;
    for _ in 0..calib {
        let c = Tensor::rand(0f32, 1f32, (1, 3, size, size), &dev)?;
        calibrating.forward(&c)?;
    }
    let calib_s = t0.elapsed().as_secs_f64();
    let method = CalibrationMethod::default();
    let first = |b: &ConvBnAct| b.config().in_channels == 3;
    for (name, keep) in [("int8", true), ("int8-all", false)] {
        let q = calibrating.int8_tensors(method, |b| keep && first(b))?;
        let int8 = build(
            &cfg.clone().with_precision(Precision::Int8),
            q.into_iter().collect(),
        )?;
        let ms = median_ms(&int8, &x, iters)?;
        let e = errors(&int8.forward(&x)?, &reference)?;
        println!("{name:<11} {ms:9.1}   {:.2}   {e}", f32_ms / ms);
    }
    println!(
        "(calibration: {calib} image(s), {calib_s:.1} s, {})",
        method.describe()
    );
    Ok(())
}
