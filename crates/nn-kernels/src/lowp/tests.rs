//! The low-precision kernels against candle's `f32` convolution, within bounds derived
//! from the rounding and quantisation steps (see `docs/lowp-kernels.md`), and the SIMD
//! micro-kernels against the portable ones.

use candle_core::{Device, Tensor};

use super::bf16::conv_bf16_threads;
use super::driver::{self, Lane, NR};
use super::int8::{conv_int8_threads, Kernel};
use super::*;
use crate::elementwise::bias_act;
use crate::epilogue::Epilogue;
use crate::im2col::Geom;

/// (batch, c_in, h, w, c_out, k, stride, padding): 1x1 and 3x3 (one 5x5), stride 1 and
/// 2 (one 3), padding, batch > 1, channel counts off the vector widths, odd sides.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
const CASES: &[Case] = &[
    (1, 3, 7, 9, 5, 3, 1, 1),
    (2, 5, 7, 9, 17, 3, 2, 1),
    (1, 17, 7, 9, 33, 1, 1, 0),
    (3, 33, 9, 7, 3, 1, 1, 0),
    (1, 6, 11, 9, 7, 1, 2, 0),
    (2, 4, 10, 7, 6, 3, 1, 0),
    (1, 5, 12, 11, 9, 5, 2, 2),
    (1, 1, 1, 1, 1, 1, 1, 0),
    (1, 2, 1, 1, 3, 3, 1, 1),
    (1, 4, 10, 11, 5, 3, 3, 1),
    // Several panels and blocks, both scheduling modes on the pool.
    (2, 40, 30, 31, 70, 3, 1, 1),
    (1, 64, 13, 13, 130, 1, 1, 0),
    (1, 48, 26, 26, 24, 3, 2, 1),
];

const ACTS: [Epilogue; 3] = [Epilogue::Identity, Epilogue::Relu6, Epilogue::Leaky(0.1)];

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `act(conv2d(x, w) + bias)` with candle's `f32` operations.
fn reference(x: &Tensor, w: &Tensor, b: &Tensor, (s, p): (usize, usize), act: Epilogue) -> Tensor {
    let y = x.conv2d(w, p, s, 1, 1).unwrap();
    bias_act(&y, Some(b), act).unwrap()
}

/// Per output, `|got - want| <= tol`; returns the largest `|got - want| / tol`.
fn check(got: &[f32], want: &[f32], tol: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut worst = 0f32;
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= *t,
            "{what}: element {i}: got {g}, want {w}, |diff| {d} > bound {t}"
        );
        worst = worst.max(d / t);
    }
    worst
}

/// `|bias|` broadcast over (B, C_out, OH, OW) like `y`.
fn bias_like(y: &Tensor, b: &Tensor) -> Tensor {
    let c = b.elem_count();
    y.zeros_like()
        .unwrap()
        .broadcast_add(&b.abs().unwrap().reshape((1, c, 1, 1)).unwrap())
        .unwrap()
}

#[test]
fn bf16_matches_f32_within_the_rounding_bound() {
    let dev = Device::Cpu;
    let mut worst = 0f32;
    for &(b, cin, h, w, cout, k, s, p) in CASES {
        let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let weights = Bf16ConvWeights::new(&wt).unwrap();
        // Σ|x||w| per output, and the bound: each operand rounded to bf16 (relative
        // 2^-8 each: 8 significant bits), f32 sums of K terms here and in the reference (2^-24 per term),
        // the bias sum and the activation (2^-24 of the output each, doubled).
        let abs = x
            .abs()
            .unwrap()
            .conv2d(&wt.abs().unwrap(), p, s, 1, 1)
            .unwrap();
        let depth = (cin * k * k) as f32;
        let u = 2f32.powi(-8);
        let per_term = 2.0 * u + u * u + 2.0 * (depth + 2.0) * 2f32.powi(-24) * (1.0 + u).powi(2);
        let pre = x.conv2d(&wt, p, s, 1, 1).unwrap();
        let scale = (pre.abs().unwrap() + bias_like(&pre, &bias)).unwrap();
        let tol: Vec<f32> = vec(&abs)
            .iter()
            .zip(vec(&scale))
            .map(|(a, y)| a * per_term + y * 2f32.powi(-22))
            .collect();
        for act in ACTS {
            let want = vec(&reference(&x, &wt, &bias, (s, p), act));
            for isa in [Isa::Native, Isa::Bf16Dot, Isa::Portable] {
                let got = conv2d_bf16_bias_act(&x, &weights, Some(&bias), (s, p), act, isa);
                let what =
                    format!("bf16 {b}x{cin}x{h}x{w} -> {cout} k{k} s{s} p{p} {act:?} {isa:?}");
                worst = worst.max(check(&vec(&got.unwrap()), &want, &tol, &what));
            }
        }
    }
    println!("bf16: worst |err| / bound {worst}");
}

/// Step-size bounds of the int8 path, per output: with `e_x = sx (1/2 + 2^-15)` and
/// `e_w = sw[co] (1/2 + 2^-17)` (a half step each, plus the rounding of `x * (1/sx)`
/// and of `w / sw`), `|x̂ ŵ - x w| <= (|x| + e_x) e_w + |w| e_x` per tap, summed over
/// the taps inside the image; plus the reference's own `f32` sums and the epilogue's
/// roundings.
fn int8_bound(
    x: &Tensor,
    wt: &Tensor,
    bias: &Tensor,
    w_scales: &[f32],
    sx: f32,
    (s, p, groups): (usize, usize, usize),
) -> Vec<f32> {
    let (cout, cin_g, kh, kw) = wt.dims4().unwrap();
    let dev = x.device();
    let ex = sx * (0.5 + 2f32.powi(-15));
    let ew = Tensor::new(w_scales, dev)
        .unwrap()
        .affine(f64::from(0.5 + 2f32.powi(-17)), 0.)
        .unwrap()
        .reshape((1, cout, 1, 1))
        .unwrap();
    let conv = |a: &Tensor, b: &Tensor| a.conv2d(b, p, s, 1, groups).unwrap();
    let xa = x.abs().unwrap();
    let ones_w = Tensor::ones((cout, cin_g, kh, kw), candle_core::DType::F32, dev).unwrap();
    // Σ_taps (|x| + e_x) * e_w[co]  +  Σ_taps |w| * e_x
    let t1 = conv(&(xa.clone() + f64::from(ex)).unwrap(), &ones_w)
        .broadcast_mul(&ew)
        .unwrap();
    let t2 = (conv(&x.ones_like().unwrap(), &wt.abs().unwrap()) * f64::from(ex)).unwrap();
    let depth = (cin_g * kh * kw) as f64;
    let t3 = (conv(&xa, &wt.abs().unwrap()) * ((depth + 2.0) * 2f64.powi(-24))).unwrap();
    let pre = conv(x, wt);
    let t4 = ((pre.abs().unwrap() + bias_like(&pre, bias)).unwrap() * 2f64.powi(-21)).unwrap();
    vec(&(((t1 + t2).unwrap() + t3).unwrap() + t4).unwrap())
}

#[test]
fn int8_matches_f32_within_the_quantisation_bound() {
    let dev = Device::Cpu;
    let mut worst = 0f32;
    for &(b, cin, h, w, cout, k, s, p) in CASES {
        // Inputs inside the calibrated range [-3, 3]: nothing is clamped.
        let x = Tensor::rand(-3f32, 3., (b, cin, h, w), &dev).unwrap();
        let xq = ActQuant::from_max_abs(3.0).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let weights = Int8ConvWeights::quantize(&wt).unwrap();
        let tol = int8_bound(&x, &wt, &bias, weights.scales(), xq.scale(), (s, p, 1));
        for act in ACTS {
            let want = vec(&reference(&x, &wt, &bias, (s, p), act));
            let mut outs = vec![];
            for isa in [Isa::Native, Isa::Portable] {
                let got = conv2d_int8_bias_act(&x, &weights, xq, Some(&bias), (s, p), act, isa);
                let got = vec(&got.unwrap());
                let what =
                    format!("int8 {b}x{cin}x{h}x{w} -> {cout} k{k} s{s} p{p} {act:?} {isa:?}");
                worst = worst.max(check(&got, &want, &tol, &what));
                outs.push(got);
            }
            // The integer sums are exact and the epilogues do the same float
            // operations: the two kernels agree exactly.
            assert!(
                outs[0] == outs[1],
                "int8 native != portable: {b}x{cin}x{h}x{w} k{k} s{s}"
            );
        }
    }
    println!("int8: worst |err| / bound {worst}");
}

#[test]
fn simd_and_portable_kernels_agree_on_every_schedule() {
    let dev = Device::Cpu;
    // (batch, c_in, side, c_out, k, stride, padding): blocks of panels per task at
    // every thread count (10 to 12 blocks of at most 512 KiB; 2 to 4 blocks of one
    // panel), and fewer panels than threads at 3 threads (the channel split).
    for (b, cin, side, cout, k, s, p) in [
        (1, 64, 90, 21, 3, 1, 1),
        (2, 19, 13, 40, 3, 2, 1),
        (1, 100, 9, 77, 1, 1, 0),
    ] {
        let dims = (b, cin, side, side);
        let x = Tensor::rand(-1f32, 1., dims, &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev).unwrap();
        let bias = vec(&Tensor::randn(0f32, 1., cout, &dev).unwrap());
        let xv = vec(&x);
        let act = Epilogue::Leaky(0.1);
        let xq = ActQuant::from_max_abs(1.0).unwrap();
        let w8 = Int8ConvWeights::quantize(&wt).unwrap();
        let w16 = Bf16ConvWeights::new(&wt).unwrap();
        let int8 = |kernel, threads| {
            conv_int8_threads(&xv, dims, &w8, xq, &bias, (s, p), act, (kernel, threads))
        };
        let bf16 =
            |isa, threads| conv_bf16_threads(&xv, dims, &w16, &bias, (s, p), act, (isa, threads));
        let want8 = int8(Kernel::Portable, 1);
        let want16 = bf16(Isa::Portable, 1);
        assert!(want8.iter().chain(&want16).all(|v| v.is_finite()));
        // Σ|x̂||ŵ| bounds the accumulation-order difference of the bf16 kernels.
        let abs = vec(&x
            .abs()
            .unwrap()
            .conv2d(&wt.abs().unwrap(), p, s, 1, 1)
            .unwrap());
        let depth = (cin * k * k) as f32;
        // Every int8 kernel this CPU runs.
        let kernels: Vec<Kernel> = [
            (Kernel::Portable, true),
            (Kernel::Avx512Vnni, has_vnni()),
            (Kernel::AvxVnni, has_avx_vnni()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        for threads in [1, 2, 3] {
            for &kernel in &kernels {
                let got = int8(kernel, threads);
                assert!(got == want8, "int8 {kernel:?} {threads} threads");
            }
            for isa in [Isa::Native, Isa::Bf16Dot, Isa::Portable] {
                let got = bf16(isa, threads);
                let mut exact = 0;
                for ((g, w), a) in got.iter().zip(&want16).zip(&abs) {
                    let tol = 2.0 * depth * 2f32.powi(-24) * a * (1.0 + 2f32.powi(-8));
                    assert!((g - w).abs() <= tol, "bf16 {isa:?} {threads}: {g} vs {w}");
                    exact += usize::from(g == w);
                }
                println!(
                    "bf16 {isa:?} {threads} threads: {exact}/{} bit-equal",
                    got.len()
                );
            }
        }
    }
}

/// The packed activation panels of columns `p0..p0 + ncols` of one image `x`
/// (C_in, H, W), word by word from the definition (driver.rs, `depth_groups`): group
/// `q * KH * KW + tap`, element `j` from channel `q * G + j` at that tap's input
/// position, `pad` outside the image, past C_in and past `ncols`.
fn packed_reference<T: Lane>(g: &Geom, x: &[T], (p0, ncols): (usize, usize)) -> Vec<u32> {
    let (taps, cq) = (g.kh * g.kw, g.cin.div_ceil(T::PER_WORD));
    let groups = taps * cq;
    let mut out = Vec::new();
    for pi in 0..ncols.div_ceil(NR) {
        for grp in 0..groups {
            let (q, tap) = (grp / taps, grp % taps);
            let (ky, kx) = (tap / g.kw, tap % g.kw);
            for c in 0..NR {
                let col = pi * NR + c;
                let e: [T; 4] = std::array::from_fn(|j| {
                    let ch = q * T::PER_WORD + j;
                    if col >= ncols || j >= T::PER_WORD || ch >= g.cin {
                        return T::PAD;
                    }
                    let (oy, ox) = ((p0 + col) / g.ow, (p0 + col) % g.ow);
                    let iy = (oy * g.stride + ky).checked_sub(g.pad).filter(|&v| v < g.h);
                    let ix = (ox * g.stride + kx).checked_sub(g.pad).filter(|&v| v < g.w);
                    match (iy, ix) {
                        (Some(iy), Some(ix)) => x[(ch * g.h + iy) * g.w + ix],
                        _ => T::PAD,
                    }
                });
                out.push(T::word(e));
            }
        }
    }
    out
}

/// `x` (C, H, W) with each row split into its even columns, then its odd ones (the
/// layout stride-2 packing reads).
fn split_rows<T: Copy>(x: &[T], w: usize) -> Vec<T> {
    x.chunks(w)
        .flat_map(|r| r.iter().step_by(2).chain(r.iter().skip(1).step_by(2)))
        .copied()
        .collect()
}

/// Checks both packings of element type `T` (the CPU's and the plain-Rust one) against
/// [`packed_reference`] on odd geometries: strides 1, 2 and 3, padding, channels off
/// the word, runs cut by row ends, short last panels.
/// A packing function under test.
type Packer<T> = fn(&Geom, &[T], (usize, usize), &mut [u32]);

fn check_packing<T: Lane + std::fmt::Debug>(element: impl Fn(u32) -> T, portable: Packer<T>) {
    // (c_in, h, w, k, stride, padding, first column, columns)
    let cases = [
        (3, 7, 9, 3, 1, 1, 0, 63),
        (5, 13, 13, 3, 1, 1, 0, 169),
        (8, 13, 13, 3, 1, 1, 50, 100),
        (6, 26, 27, 3, 2, 1, 0, 182),
        (4, 9, 11, 3, 2, 0, 7, 20),
        (9, 10, 7, 5, 2, 2, 0, 20),
        (7, 11, 12, 3, 3, 1, 0, 16),
        (2, 4, 60, 3, 1, 1, 60, 120),
        (4, 5, 5, 1, 2, 0, 0, 9),
    ];
    for (cin, h, w, k, s, p, p0, ncols) in cases {
        let g = driver::geometry((1, cin, h, w), (1, cin, k, k), s, p).unwrap();
        let ncols = ncols.min(g.positions() - p0);
        let x: Vec<T> = (0..cin * h * w)
            .map(|i| element((i as u32).wrapping_mul(2654435761) >> 7))
            .collect();
        let want = packed_reference(&g, &x, (p0, ncols));
        let input = if s == 2 { split_rows(&x, w) } else { x };
        let native: Packer<T> = T::pack_taps;
        for (name, pack) in [("native", native), ("portable", portable)] {
            // Pre-filled with a word no packing writes, so that a skipped word shows.
            let mut got = vec![0x1234_5678; want.len()];
            pack(&g, &input, (p0, ncols), &mut got);
            let case = (cin, h, w, k, s, p, p0, ncols);
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "{name} {case:?}: word {i} is {:#x}, want {:#x}",
                    got[i], want[i]
                );
            }
        }
    }
}

#[test]
fn activations_are_packed_straight_from_the_input_planes() {
    check_packing::<u8>(|v| v as u8, super::int8::pack_taps_u8);
    check_packing::<u16>(|v| v as u16, super::bf16::pack_taps_u16);
}

/// (batch, c_in, side, c_out, k, stride, padding) of one square int8 convolution.
type Square = (usize, usize, usize, usize, usize, usize, usize);

/// `leaky(conv(x, w) + 0.5)` in int8 on `threads` threads, `w` (C_out, C_in, k, k),
/// inputs calibrated to [-1, 1].
fn int8_square(case: Square, w: &Int8ConvWeights, x: &[f32], threads: usize) -> Vec<f32> {
    let (b, cin, side, cout, _, s, p) = case;
    let xq = ActQuant::from_max_abs(1.0).unwrap();
    let (dims, bias) = ((b, cin, side, side), vec![0.5; cout]);
    let how = (Kernel::Portable, threads);
    conv_int8_threads(x, dims, w, xq, &bias, (s, p), Epilogue::Leaky(0.1), how)
}

#[test]
fn reused_buffers_never_leak_into_the_next_call() {
    // The conversion and packing buffers are kept per thread from call to call
    // (driver.rs): a call after one that filled them with other codes must give what a
    // fresh thread gives, bit for bit, on both schedules (wide images, and narrow ones
    // whose channels are split) and with padding taps at every border.
    let dev = Device::Cpu;
    let weights = |(_, cin, _, cout, k, ..): Square| {
        let w = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev).unwrap();
        Int8ConvWeights::quantize(&w).unwrap()
    };
    // Fills every buffer with code 255 (inputs at the top of the range).
    let dirty = (2, 24, 40, 16, 3, 1, 1);
    let (dirty_w, ones) = (weights(dirty), vec![1.0; 2 * 24 * 40 * 40]);
    for case in [
        (1, 5, 23, 7, 3, 1, 1),
        (1, 6, 21, 9, 3, 2, 1),
        (1, 8, 9, 40, 3, 1, 1),
    ] {
        let (b, cin, side, ..) = case;
        let w = std::sync::Arc::new(weights(case));
        let x = vec(&Tensor::rand(-1f32, 1., (b, cin, side, side), &dev).unwrap());
        let fresh = {
            let (w, x) = (w.clone(), x.clone());
            std::thread::spawn(move || int8_square(case, &w, &x, 1))
                .join()
                .unwrap()
        };
        for threads in [1, 2, 3] {
            int8_square(dirty, &dirty_w, &ones, threads);
            let again = int8_square(case, &w, &x, threads);
            assert!(again == fresh, "{case:?} on {threads} threads");
        }
    }
}

#[test]
fn int8_weights_round_trip_and_clamp() {
    let dev = Device::Cpu;
    let wt = Tensor::randn(0f32, 0.3, (7, 5, 3, 3), &dev).unwrap();
    let q = Int8ConvWeights::quantize(&wt).unwrap();
    let again = Int8ConvWeights::from_quantized(q.values().to_vec(), q.scales().to_vec(), q.dims())
        .unwrap();
    let x = Tensor::randn(0f32, 1., (2, 5, 6, 8), &dev).unwrap();
    let xq = ActQuant::from_max_abs(4.0).unwrap();
    let run = |w: &Int8ConvWeights| {
        let y = conv2d_int8_bias_act(&x, w, xq, None, (2, 1), Epilogue::Identity, Isa::Native);
        vec(&y.unwrap())
    };
    assert!(run(&q) == run(&again));
    // The dequantised weights lie within half a step of the originals.
    let dq = vec(&q.dequantize(&dev).unwrap());
    for (i, (a, b)) in dq.iter().zip(vec(&wt)).enumerate() {
        assert!((a - b).abs() <= q.scales()[i / 45] * 0.5001);
    }
    assert!(Int8ConvWeights::from_quantized(vec![0; 3], vec![1.0], (1, 1, 2, 2)).is_err());
    assert!(Int8ConvWeights::from_quantized(vec![0; 4], vec![0.0], (1, 1, 2, 2)).is_err());
    // A 1x1 identity: inputs beyond the calibrated range [-1, 1] clamp to its ends
    // (127 and -128 steps).
    let one = Tensor::ones((1, 1, 1, 1), candle_core::DType::F32, &dev).unwrap();
    let w = Int8ConvWeights::quantize(&one).unwrap();
    let xq = ActQuant::from_max_abs(1.0).unwrap();
    let x = Tensor::new(&[5f32, -5.0, 0.25], &dev)
        .unwrap()
        .reshape((1, 1, 1, 3))
        .unwrap();
    let y = conv2d_int8_bias_act(&x, &w, xq, None, (1, 0), Epilogue::Identity, Isa::Native);
    let y = vec(&y.unwrap());
    let step = 1.0 / 127.0;
    assert!((y[0] - 1.0).abs() < 1e-6, "{y:?}");
    assert!((y[1] + 128.0 * step).abs() < 1e-6, "{y:?}");
    assert!((y[2] - 32.0 * step).abs() < 1e-6, "{y:?}"); // 31.75 steps
                                                         // Empty batches and layers without outputs; no input channels is an error.
    let xq = ActQuant::from_max_abs(1.0).unwrap();
    let w0 = Int8ConvWeights::quantize(
        &Tensor::zeros((0, 5, 3, 3), candle_core::DType::F32, &dev).unwrap(),
    )
    .unwrap();
    for (x, w, dims) in [
        (
            Tensor::zeros((0, 5, 6, 6), candle_core::DType::F32, &dev).unwrap(),
            &q,
            [0, 7, 6, 6],
        ),
        (
            Tensor::zeros((2, 5, 6, 6), candle_core::DType::F32, &dev).unwrap(),
            &w0,
            [2, 0, 6, 6],
        ),
    ] {
        let y = conv2d_int8_bias_act(&x, w, xq, None, (1, 1), Epilogue::Identity, Isa::Native);
        assert_eq!(y.unwrap().dims(), dims);
    }
    let wz = Tensor::zeros((4, 0, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 0, 6, 6), candle_core::DType::F32, &dev).unwrap();
    let w16 = Bf16ConvWeights::new(&wz).unwrap();
    let r = conv2d_bf16_bias_act(&x, &w16, None, (1, 1), Epilogue::Identity, Isa::Native);
    assert!(r.is_err());
    // Shape errors.
    let x = Tensor::zeros((1, 4, 6, 6), candle_core::DType::F32, &dev).unwrap();
    let r = conv2d_int8_bias_act(&x, &q, xq, None, (1, 1), Epilogue::Identity, Isa::Native);
    assert!(r.is_err());
    let w16 = Bf16ConvWeights::new(&wt).unwrap();
    let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 5, 6, 6), candle_core::DType::F32, &dev).unwrap();
    let r = conv2d_bf16_bias_act(&x, &w16, Some(&b), (1, 1), Epilogue::Identity, Isa::Native);
    assert!(r.is_err());
}

#[test]
fn int8_depthwise_matches_f32_within_the_quantisation_bound() {
    let dev = Device::Cpu;
    let mut worst = 0f32;
    // (batch, channels, h, w, stride)
    for (b, c, h, w, s) in [
        (1, 3, 7, 9, 1),
        (2, 5, 8, 8, 2),
        (1, 17, 9, 11, 2),
        (1, 2, 1, 1, 1),
        (1, 2, 2, 3, 2),
        (1, 2, 1, 5, 2),
        (2, 33, 26, 26, 1),
        (1, 8, 52, 51, 2),
    ] {
        let x = Tensor::rand(-2f32, 2., (b, c, h, w), &dev).unwrap();
        let xq = ActQuant::from_max_abs(2.0).unwrap();
        let wt = Tensor::randn(0f32, 0.5, (c, 1, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
        let weights = Int8DepthwiseWeights::quantize(&wt).unwrap();
        let tol = int8_bound(&x, &wt, &bias, weights.scales(), xq.scale(), (s, 1, c));
        for act in ACTS {
            let y = x.conv2d(&wt, 1, s, 1, c).unwrap();
            let want = vec(&bias_act(&y, Some(&bias), act).unwrap());
            let got = depthwise3x3_int8_bias_act(&x, &weights, xq, Some(&bias), s, act);
            let what = format!("int8 depthwise {b}x{c}x{h}x{w} s{s} {act:?}");
            worst = worst.max(check(&vec(&got.unwrap()), &want, &tol, &what));
        }
    }
    println!("int8 depthwise: worst |err| / bound {worst}");
    let wt = Tensor::randn(0f32, 0.5, (4, 1, 3, 3), &dev).unwrap();
    let q = Int8DepthwiseWeights::quantize(&wt).unwrap();
    let again = Int8DepthwiseWeights::from_quantized(q.values().to_vec(), q.scales().to_vec());
    assert_eq!(again.unwrap().values(), q.values());
    let x = Tensor::zeros((1, 5, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let xq = ActQuant::from_max_abs(1.0).unwrap();
    assert!(depthwise3x3_int8_bias_act(&x, &q, xq, None, 1, Epilogue::Identity).is_err());
}

/// The int8 depthwise scheme with `i32` sums, written out: u8 codes of `x` (B, C, H, W)
/// minus the zero point, padding 1 at code 0, s8 taps, then `act(sx sw acc + bias)`.
fn depthwise_i32(
    x: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    weights: &Int8DepthwiseWeights,
    (xq, bias): (ActQuant, &[f32]),
    s: usize,
    act: Epilogue,
) -> Vec<f32> {
    let inv = 1.0 / xq.scale();
    let code = |v: f32| quant::quantize_u8(v, inv) as i32 - 128;
    let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
    let mut out = Vec::with_capacity(b * c * oh * ow);
    for p in 0..b * c {
        let (plane, ch) = (&x[p * h * w..][..h * w], p % c);
        let scale = xq.scale() * weights.scales()[ch];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                for (t, &tap) in weights.values()[ch].iter().enumerate() {
                    let (iy, ix) = ((oy * s + t / 3) as isize - 1, (ox * s + t % 3) as isize - 1);
                    if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                        acc += i32::from(tap) * code(plane[iy as usize * w + ix as usize]);
                    }
                }
                out.push(activate_scalar(acc as f32 * scale + bias[ch], act));
            }
        }
    }
    out
}

#[test]
fn int8_depthwise_gives_the_i32_sums_exactly() {
    // The kernel sums in f32, which is exact for these integers (depthwise.rs): its
    // output must be the i32 scheme's bit for bit, with codes at both ends of the range.
    let dev = Device::Cpu;
    for (b, c, h, w, s) in [
        (1, 3, 7, 9, 1),
        (2, 5, 8, 8, 2),
        (1, 17, 9, 11, 2),
        (1, 4, 30, 29, 1),
        (1, 3, 5, 1, 1),
        (1, 3, 4, 16, 1),
        (1, 3, 6, 33, 2),
        (1, 2, 3, 34, 2),
    ] {
        let x = Tensor::rand(-3f32, 3., (b, c, h, w), &dev).unwrap();
        let xq = ActQuant::from_max_abs(2.0).unwrap();
        let weights =
            Int8DepthwiseWeights::quantize(&Tensor::randn(0f32, 0.5, (c, 1, 3, 3), &dev).unwrap())
                .unwrap();
        let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
        for act in ACTS {
            let want = depthwise_i32(&vec(&x), (b, c, h, w), &weights, (xq, &vec(&bias)), s, act);
            // The rows in plain Rust, and on AVX-512 where the CPU has it.
            for simd in [false, has_avx512f()] {
                let got =
                    depthwise::depthwise_int8_rows(&x, &weights, xq, Some(&bias), s, act, simd);
                assert!(
                    vec(&got.unwrap()) == want,
                    "{b}x{c}x{h}x{w} s{s} {act:?} simd {simd}"
                );
            }
        }
    }
}

#[test]
fn simulated_int8_matches_the_kernels() {
    let dev = Device::Cpu;
    // fake_quantize gives the kernels' codes, exactly, ties and clamping included.
    let xq = ActQuant::new(0.25).unwrap();
    let x = Tensor::new(
        &[0.125f32, 0.375, -0.125, 40.0, -40.0, 1.3, f32::MIN_POSITIVE],
        &dev,
    )
    .unwrap();
    let want: Vec<f32> = vec(&x)
        .iter()
        .map(|&v| xq.dequantize(xq.quantize(v)))
        .collect();
    assert_eq!(vec(&xq.fake_quantize(&x).unwrap()), want);
    let x = Tensor::randn(0f32, 2., 5000, &dev).unwrap();
    let want: Vec<f32> = vec(&x)
        .iter()
        .map(|&v| xq.dequantize(xq.quantize(v)))
        .collect();
    assert_eq!(vec(&xq.fake_quantize(&x).unwrap()), want);
    // The same codes summed in f32 (candle) and in i32 (the kernels): within the f32
    // sums' rounding, (K + 2) 2^-23 Σ|x̂||ŵ|, and the epilogue's.
    let xq = ActQuant::from_max_abs(2.0).unwrap();
    for &(b, cin, h, w, cout, k, s, p) in &CASES[..8] {
        let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let q = Int8ConvWeights::quantize(&wt).unwrap();
        let act = Epilogue::Leaky(0.1);
        let want = conv2d_int8_simulated(&x, &q, xq, Some(&bias), (s, p), act).unwrap();
        let got = conv2d_int8_bias_act(&x, &q, xq, Some(&bias), (s, p), act, Isa::Native);
        let (xh, wh) = (xq.fake_quantize(&x).unwrap(), q.dequantize(&dev).unwrap());
        let abs = xh
            .abs()
            .unwrap()
            .conv2d(&wh.abs().unwrap(), p, s, 1, 1)
            .unwrap();
        let depth = (cin * k * k) as f32;
        let pre = vec(&(want.abs().unwrap() + bias_like(&want, &bias)).unwrap());
        let tol: Vec<f32> = vec(&abs)
            .iter()
            .zip(pre)
            .map(|(a, y)| a * (depth + 2.0) * 2f32.powi(-23) + y * 2f32.powi(-21))
            .collect();
        let what = format!("simulated int8 {b}x{cin}x{h}x{w} k{k} s{s}");
        check(&vec(&got.unwrap()), &vec(&want), &tol, &what);
    }
    let x = Tensor::randn(0f32, 1., (2, 7, 9, 11), &dev).unwrap();
    let wt = Tensor::randn(0f32, 0.5, (7, 1, 3, 3), &dev).unwrap();
    let q = Int8DepthwiseWeights::quantize(&wt).unwrap();
    for s in [1, 2] {
        let act = Epilogue::Relu6;
        let want = depthwise3x3_int8_simulated(&x, &q, xq, None, s, act).unwrap();
        let got = depthwise3x3_int8_bias_act(&x, &q, xq, None, s, act).unwrap();
        let (xh, wh) = (xq.fake_quantize(&x).unwrap(), q.dequantize(&dev).unwrap());
        let abs = xh
            .abs()
            .unwrap()
            .conv2d(&wh.abs().unwrap(), 1, s, 1, 7)
            .unwrap();
        let tol: Vec<f32> = vec(&abs)
            .iter()
            .zip(vec(&want))
            .map(|(a, y)| a * 11.0 * 2f32.powi(-23) + y.abs() * 2f32.powi(-21))
            .collect();
        check(
            &vec(&got),
            &vec(&want),
            &tol,
            &format!("simulated depthwise s{s}"),
        );
    }
}

#[test]
fn non_contiguous_inputs_give_the_same_maps() {
    let dev = Device::Cpu;
    // (B, H, C, W) transposed to (B, C, H, W): not contiguous.
    let x = Tensor::randn(0f32, 1., (2, 9, 6, 11), &dev)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    assert!(!x.is_contiguous());
    let xc = x.contiguous().unwrap();
    let wt = Tensor::randn(0f32, 0.3, (5, 6, 3, 3), &dev).unwrap();
    let xq = ActQuant::from_max_abs(3.0).unwrap();
    let (w8, w16) = (
        Int8ConvWeights::quantize(&wt).unwrap(),
        Bf16ConvWeights::new(&wt).unwrap(),
    );
    let act = Epilogue::Relu6;
    let int8 = |x: &Tensor| {
        vec(&conv2d_int8_bias_act(x, &w8, xq, None, (2, 1), act, Isa::Native).unwrap())
    };
    let bf16 =
        |x: &Tensor| vec(&conv2d_bf16_bias_act(x, &w16, None, (1, 1), act, Isa::Native).unwrap());
    assert!(int8(&x) == int8(&xc));
    assert!(bf16(&x) == bf16(&xc));
    let dw = Int8DepthwiseWeights::quantize(&Tensor::randn(0f32, 0.5, (6, 1, 3, 3), &dev).unwrap())
        .unwrap();
    let depthwise =
        |x: &Tensor| vec(&depthwise3x3_int8_bias_act(x, &dw, xq, None, 2, act).unwrap());
    assert!(depthwise(&x) == depthwise(&xc));
}

#[test]
fn native_bf16_takes_vdpbf16ps_only_where_the_cpu_has_it() {
    let native = Isa::Native.bf16_kernel();
    assert!(
        ["vdpbf16ps", "fma", "portable"].contains(&native),
        "{native}"
    );
    // the probe answers once per process: the same kernel every time
    assert_eq!(Isa::Native.bf16_kernel(), native);
    assert_eq!(
        native == "vdpbf16ps",
        has_avx512_bf16() && bf16::dot_outruns_fma()
    );
    if !has_avx512_bf16() {
        assert!(!bf16::dot_outruns_fma());
        assert_ne!(Isa::Bf16Dot.bf16_kernel(), "vdpbf16ps");
    }
    assert_eq!(Isa::Portable.bf16_kernel(), "portable");
}
