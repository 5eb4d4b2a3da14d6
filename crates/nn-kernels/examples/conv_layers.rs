//! Per-layer timing of the fast dense convolution against candle's `conv2d`.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p nn-kernels --example conv_layers
//! ```
//!
//! Prints, for typical YOLOv3 layer shapes at 416x416, the median milliseconds and
//! GFLOP/s of `conv2d_bias_act` and of candle's `conv2d` (plus bias and activation).

use std::time::Instant;

use candle_core::{Device, Tensor};
use nn_kernels::{bias_act, conv2d_bias_act, Epilogue, KernelPolicy};

/// Median milliseconds of `f` over `n` runs after one warm-up.
fn median_ms(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let with_candle = std::env::args().any(|a| a == "--candle");
    // `--only N`: time layer N alone (for profiling).
    let only: Option<usize> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .and_then(|v| v.parse().ok());
    // (c_in, side, c_out, k, stride)
    let layers = [
        (3, 416, 32, 3, 1),
        (32, 416, 64, 3, 2),
        (64, 208, 128, 3, 2),
        (128, 104, 256, 3, 2),
        (256, 52, 512, 3, 2),
        (512, 26, 1024, 3, 2),
        (64, 208, 32, 1, 1),
        (32, 208, 64, 3, 1),
        (128, 104, 64, 1, 1),
        (64, 104, 128, 3, 1),
        (128, 52, 256, 3, 1),
        (256, 52, 128, 1, 1),
        (256, 26, 512, 3, 1),
        (512, 26, 256, 1, 1),
        (512, 13, 1024, 3, 1),
        (1024, 13, 512, 1, 1),
        (1024, 13, 255, 1, 1),
        (384, 52, 128, 1, 1),
        // MobileNetV2's pointwise convolutions: few channels, large images.
        (16, 208, 96, 1, 1),
        (96, 104, 24, 1, 1),
        (24, 104, 144, 1, 1),
        (32, 52, 192, 1, 1),
        (192, 52, 32, 1, 1),
    ];
    println!("layer                        fast ms  GFLOP/s   candle ms  GFLOP/s");
    for (i, (cin, side, cout, k, s)) in layers.into_iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let x = Tensor::rand(0f32, 1., (1, cin, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (cout, cin, k, k), &dev)?;
        let b = Tensor::randn(0f32, 1., cout, &dev)?;
        let p = (k - 1) / 2;
        let act = Epilogue::Leaky(0.1);
        let o = (side + 2 * p - k) / s + 1;
        let gflop = 2.0 * (cout * cin * k * k * o * o) as f64 / 1e9;
        let runs = if only.is_some() { 200 } else { 9 };
        let fast = median_ms(runs, || {
            conv2d_bias_act(&x, &w, Some(&b), s, p, act, KernelPolicy::default()).unwrap();
        });
        let name = format!("{cin}x{side}x{side} -> {cout} k{k} s{s}");
        if with_candle {
            let slow = median_ms(5, || {
                let y = x.conv2d(&w, p, s, 1, 1).unwrap();
                bias_act(&y, Some(&b), act).unwrap();
            });
            println!(
                "{name:28} {fast:8.2} {:8.1}   {slow:8.2} {:8.1}",
                gflop / fast * 1e3,
                gflop / slow * 1e3
            );
        } else {
            println!("{name:28} {fast:8.2} {:8.1}", gflop / fast * 1e3);
        }
    }
    Ok(())
}
