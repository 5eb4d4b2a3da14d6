//! Per-layer timing of the low-precision convolutions against the `f32` fast path.
//!
//! ```sh
//! cargo run --release -p nn-kernels --example lowp_layers
//! cargo run --release -p nn-kernels --example lowp_layers -- --portable
//! ```
//!
//! Prints, for YOLOv3 (Darknet-53) and MobileNetV2 layer shapes at 416x416, the best of
//! 15 runs in milliseconds of `conv2d_bias_act` (the default policy, Winograd included), of the
//! bf16 and of the int8 kernel, and their speed-ups over `f32`; then the depthwise 3x3
//! layers, `f32` against int8. `--portable` times the portable micro-kernels instead
//! of the SIMD ones, `--dot` the `vdpbf16ps` bf16 kernel instead of the FMA one.

use std::time::Instant;

use candle_core::{Device, Tensor};
use nn_kernels::{
    conv2d_bf16_bias_act, conv2d_bias_act, conv2d_int8_bias_act, depthwise3x3_int8_bias_act,
    depthwise_conv2d_bias_act, ActQuant, Bf16ConvWeights, Epilogue, Int8ConvWeights,
    Int8DepthwiseWeights, Isa, KernelPolicy,
};

/// Fastest milliseconds of `f` over `n` runs after one warm-up: on a machine shared
/// with other work the noise only ever adds time, so the minimum is the steadiest
/// estimate of what the kernel itself takes (the same for every column).
fn best_ms(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let isa = if std::env::args().any(|a| a == "--portable") {
        Isa::Portable
    } else if std::env::args().any(|a| a == "--dot") {
        Isa::Bf16Dot
    } else {
        Isa::Native
    };
    // `--only N`: time dense layer N alone, many times (for profiling).
    let only: Option<usize> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let runs = if only.is_some() { 101 } else { 15 };
    // (c_in, side, c_out, k, stride)
    let layers = [
        (3, 416, 32, 3, 1),
        (32, 416, 64, 3, 2),
        (64, 208, 32, 1, 1),
        (32, 208, 64, 3, 1),
        (128, 104, 64, 1, 1),
        (64, 104, 128, 3, 1),
        (256, 52, 128, 1, 1),
        (128, 52, 256, 3, 1),
        (256, 52, 512, 3, 2),
        (512, 26, 256, 1, 1),
        (256, 26, 512, 3, 1),
        (512, 26, 1024, 3, 2),
        (1024, 13, 512, 1, 1),
        (512, 13, 1024, 3, 1),
        (1024, 13, 255, 1, 1),
        // MobileNetV2's pointwise convolutions.
        (24, 104, 144, 1, 1),
        (144, 104, 24, 1, 1),
        (32, 52, 192, 1, 1),
        (192, 52, 32, 1, 1),
        (96, 26, 576, 1, 1),
        (960, 13, 320, 1, 1),
    ];
    println!(
        "isa: {isa:?} (int8 kernel: {}, bf16 kernel: {})",
        isa.int8_kernel(),
        isa.bf16_kernel()
    );
    println!(
        "layer                          f32 ms  bf16 ms  int8 ms   bf16 x  int8 x   int8 GOP/s"
    );
    let act = Epilogue::Leaky(0.1);
    // `--depthwise`: the depthwise layers only.
    let depthwise_only = std::env::args().any(|a| a == "--depthwise");
    for (i, (cin, side, cout, k, s)) in layers.into_iter().enumerate() {
        if depthwise_only || only.is_some_and(|o| o != i) {
            continue;
        }
        let x = Tensor::rand(-1f32, 1., (1, cin, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (cout, cin, k, k), &dev)?;
        let b = Tensor::randn(0f32, 1., cout, &dev)?;
        let p = (k - 1) / 2;
        let o = (side + 2 * p - k) / s + 1;
        let gop = 2.0 * (cout * cin * k * k * o * o) as f64 / 1e9;
        let w16 = Bf16ConvWeights::new(&w)?;
        let w8 = Int8ConvWeights::quantize(&w)?;
        let xq = ActQuant::from_max_abs(1.0)?;
        let f32_ms = best_ms(runs, || {
            conv2d_bias_act(&x, &w, Some(&b), s, p, act, KernelPolicy::default()).unwrap();
        });
        let bf16_ms = best_ms(runs, || {
            conv2d_bf16_bias_act(&x, &w16, Some(&b), (s, p), act, isa).unwrap();
        });
        let int8_ms = best_ms(runs, || {
            conv2d_int8_bias_act(&x, &w8, xq, Some(&b), (s, p), act, isa).unwrap();
        });
        let name = format!("{cin}x{side}x{side} -> {cout} k{k} s{s}");
        println!(
            "{name:30} {f32_ms:7.2} {bf16_ms:8.2} {int8_ms:8.2} {:8.2} {:7.2} {:10.1}",
            f32_ms / bf16_ms,
            f32_ms / int8_ms,
            gop / int8_ms * 1e3
        );
    }
    if only.is_some() {
        return Ok(());
    }
    println!();
    println!("depthwise 3x3                  f32 ms  int8 ms   int8 x");
    // (channels, side, stride)
    for (c, side, s) in [
        (32, 208, 1),
        (96, 208, 2),
        (144, 104, 1),
        (144, 104, 2),
        (192, 52, 1),
        (384, 26, 1),
        (576, 26, 2),
        (960, 13, 1),
    ] {
        let x = Tensor::rand(-1f32, 1., (1, c, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.3, (c, 1, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1., c, &dev)?;
        let w8 = Int8DepthwiseWeights::quantize(&w)?;
        let xq = ActQuant::from_max_abs(1.0)?;
        let f32_ms = best_ms(runs, || {
            depthwise_conv2d_bias_act(&x, &w, Some(&b), s, 1, act, KernelPolicy::default())
                .unwrap();
        });
        let int8_ms = best_ms(runs, || {
            depthwise3x3_int8_bias_act(&x, &w8, xq, Some(&b), s, act).unwrap();
        });
        let name = format!("{c}x{side}x{side} s{s}");
        println!(
            "{name:30} {f32_ms:7.2} {int8_ms:8.2} {:8.2}",
            f32_ms / int8_ms
        );
    }
    Ok(())
}
