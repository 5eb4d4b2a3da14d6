//! Fast dense 2-D convolution with a fused bias and activation, for inference on the CPU.
//!
//! candle 0.11 runs a dense convolution as a full im2col copy followed by a batched
//! matmul, then the bias and the activation as separate passes over the output. This
//! op computes `act(conv(x, w) + b)` in one go on NCHW `f32` tensors:
//!
//! - a 1x1, stride-1, unpadded convolution is one GEMM per image straight on the input,
//!   `out (C_out x HW) = W (C_out x C_in) * X (C_in x HW)`, without any copy;
//! - any other kernel (3x3, stride 2, padding) copies a tile of output columns into an
//!   im2col buffer (`(C_in * KH * KW) x tile`, kept per thread and reused from layer to
//!   layer) and runs one GEMM per tile;
//! - the bias and the activation are applied to each output tile while it is still in
//!   cache.
//!
//! Large images are split into column tiles run in parallel on the rayon pool, each with
//! a single-threaded GEMM; small images (the 13x13 and 26x26 layers, where the weights
//! dominate) run one multi-threaded GEMM instead. GEMMs come from the `gemm` crate, the
//! one candle itself uses.
//!
//! There is no backward pass: this path serves folded (inference) blocks only. Other
//! devices and dtypes fall back to candle's `conv2d` plus a broadcast bias and the
//! activation. Setting `NN_BLOCKS_FAST_CONV=0` turns the fast CPU path off (for
//! benchmarks and bisecting).

// The GEMM entry point of the `gemm` crate is an `unsafe fn` taking raw pointers and
// strides, and the parallel tiles write disjoint columns of one output buffer.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv_bn::Activation;

/// Floats of im2col buffer per tile we aim for (1 MiB: about one core's L2 here).
const COL_BUDGET: usize = 256 * 1024;
/// Floats of output per tile we aim for in the 1x1 path.
const DST_BUDGET: usize = 256 * 1024;
/// Narrowest column tile: below this the GEMM repacks the weights too often.
const MIN_TILE: usize = 256;
/// Tiles are multiples of this many columns.
const TILE_ALIGN: usize = 16;

/// Whether the fast CPU convolution is used (`NN_BLOCKS_FAST_CONV=0` turns it off;
/// read once per process).
pub fn fast_conv_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("NN_BLOCKS_FAST_CONV")
            .map(|v| v.trim() != "0")
            .unwrap_or(true)
    })
}

/// The activation as the output pass applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Epilogue {
    Identity,
    Relu6,
    Leaky(f32),
}

impl From<Activation> for Epilogue {
    fn from(a: Activation) -> Self {
        match a {
            Activation::Identity => Epilogue::Identity,
            Activation::Relu6 => Epilogue::Relu6,
            Activation::LeakyRelu(s) => Epilogue::Leaky(s as f32),
        }
    }
}

impl Epilogue {
    /// `row[i] = act(row[i] + bias)`, written so that it vectorises.
    #[inline]
    fn apply(self, row: &mut [f32], bias: f32) {
        match self {
            Epilogue::Identity => row.iter_mut().for_each(|v| *v += bias),
            Epilogue::Relu6 => row
                .iter_mut()
                .for_each(|v| *v = (*v + bias).max(0.0).min(6.0)),
            // max(x, s * x) is the reference's LeakyReLU for 0 <= s <= 1.
            Epilogue::Leaky(s) => row.iter_mut().for_each(|v| {
                let t = *v + bias;
                *v = t.max(t * s)
            }),
        }
    }
}

/// Shapes of one convolution: input (B, C_in, H, W), weight (C_out, C_in, KH, KW),
/// output (B, C_out, OH, OW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// GEMM depth: `C_in * KH * KW`.
    fn depth(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image: `OH * OW`.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1, stride-1, unpadded convolution reads its input as the GEMM's right side.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns `lo..hi` whose input column `ox * s + kx - p` lies in `0..w`.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        let hi = if self.w + p > kx {
            ((self.w + p - kx - 1) / s + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(self.ow), hi.max(lo.min(self.ow)))
    }

    /// Copies output columns `p0..p0 + nt` of the im2col matrix of one image
    /// `x` (C_in, H, W) into `buf` (C_in * KH * KW, nt), zeros for the padding.
    fn im2col(&self, x: &[f32], p0: usize, nt: usize, buf: &mut [f32]) {
        let (h, w, s, p) = (self.h, self.w, self.stride, self.pad);
        for ci in 0..self.cin {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let r = (ci * self.kh + ky) * self.kw + kx;
                    let dst = &mut buf[r * nt..(r + 1) * nt];
                    let (lo, hi) = self.valid_cols(kx);
                    let (mut j, mut pos) = (0, p0);
                    while j < nt {
                        // One output row's run of columns ox0..ox0 + run.
                        let (oy, ox0) = (pos / self.ow, pos % self.ow);
                        let run = (self.ow - ox0).min(nt - j);
                        let seg = &mut dst[j..j + run];
                        match (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) {
                            None => seg.fill(0.0),
                            Some(iy) => {
                                let row = &plane[iy * w..(iy + 1) * w];
                                let a = lo.clamp(ox0, ox0 + run);
                                let b = hi.clamp(a, ox0 + run);
                                seg[..a - ox0].fill(0.0);
                                seg[b - ox0..].fill(0.0);
                                let valid = &mut seg[a - ox0..b - ox0];
                                let first = a * s + kx - p;
                                if s == 1 {
                                    valid.copy_from_slice(&row[first..first + (b - a)]);
                                } else {
                                    for (i, v) in valid.iter_mut().enumerate() {
                                        *v = row[first + i * s];
                                    }
                                }
                            }
                        }
                        j += run;
                        pos += run;
                    }
                }
            }
        }
    }
}

/// A raw output pointer shared by tiles that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tiles that share it write disjoint elements (see `run_tile`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// The im2col buffer of this thread, reused from call to call.
    static COL_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The conv inputs as plain slices.
struct Operands<'a> {
    /// (B, C_in, H, W), contiguous.
    x: &'a [f32],
    /// (C_out, C_in * KH * KW), contiguous.
    w: &'a [f32],
    /// (C_out,)
    bias: &'a [f32],
}

/// Computes output columns `p0..p0 + nt` of image `img`: GEMM, bias, activation.
///
/// # Safety
/// `out` must point to the (B, C_out, OH * OW) output, and no other thread may touch
/// the columns `p0..p0 + nt` of image `img` meanwhile.
unsafe fn run_tile(
    g: &Geom,
    ops: &Operands,
    act: Epilogue,
    out: OutPtr,
    img: usize,
    p0: usize,
    nt: usize,
    par: Parallelism,
) {
    let (n, k, m) = (g.positions(), g.depth(), g.cout);
    let x = &ops.x[img * g.cin * g.h * g.w..(img + 1) * g.cin * g.h * g.w];
    // dst (C_out x nt) inside the image's (C_out x OH*OW) output; row stride OH*OW.
    let dst = out.0.add(img * m * n + p0);
    let gemm_on = |rhs: *const f32, rhs_rs: usize| {
        // dst = W (m x k) * rhs (k x nt); alpha = 0 ignores dst's previous contents.
        gemm::gemm(
            m,
            nt,
            k,
            dst,
            1,
            n as isize,
            false,
            ops.w.as_ptr(),
            1,
            k as isize,
            rhs,
            1,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    };
    if g.pointwise() {
        // rhs = X (C_in x HW) columns p0..p0 + nt, read in place.
        gemm_on(x.as_ptr().add(p0), n);
    } else {
        COL_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < k * nt {
                buf.resize(k * nt, 0.0);
            }
            g.im2col(x, p0, nt, &mut buf[..k * nt]);
            gemm_on(buf.as_ptr(), nt);
        });
    }
    for co in 0..m {
        // SAFETY: row `co` of this tile, inside the output and owned by this tile.
        let row = std::slice::from_raw_parts_mut(dst.add(co * n), nt);
        act.apply(row, ops.bias[co]);
    }
}

/// Fills `out` (B, C_out, OH, OW) with `act(conv(x, w) + bias)`.
fn conv_into(g: &Geom, ops: &Operands, act: Epilogue, out: &mut [f32]) {
    assert_eq!(out.len(), g.b * g.cout * g.positions());
    let threads = rayon::current_num_threads().max(1);
    let n = g.positions();
    // Tile width: keep the im2col buffer (or the output tile) near COL_BUDGET floats,
    // but never narrower than MIN_TILE columns.
    let budget = if g.pointwise() {
        DST_BUDGET / g.cout.max(1)
    } else {
        COL_BUDGET / g.depth().max(1)
    };
    let mut tiles_per_img = n.div_ceil(budget.max(MIN_TILE)).max(1);
    // Balance the tiles over the threads.
    let total = g.b * tiles_per_img;
    if threads > 1 && total % threads != 0 && total < 8 * threads {
        tiles_per_img = (total.div_ceil(threads) * threads).div_ceil(g.b);
    }
    let nt = n
        .div_ceil(tiles_per_img)
        .next_multiple_of(TILE_ALIGN)
        .min(n);
    let tiles_per_img = n.div_ceil(nt);
    let total = g.b * tiles_per_img;
    let ptr = OutPtr(out.as_mut_ptr());
    let tile = |t: usize, par: Parallelism| {
        let (img, i) = (t / tiles_per_img, t % tiles_per_img);
        let p0 = i * nt;
        // SAFETY: tile t owns columns p0..p0 + len of image img.
        unsafe { run_tile(g, ops, act, ptr, img, p0, nt.min(n - p0), par) }
    };
    if threads == 1 {
        (0..total).for_each(|t| tile(t, Parallelism::None));
    } else if total >= threads && nt >= MIN_TILE.min(n) {
        (0..total)
            .into_par_iter()
            .for_each(|t| tile(t, Parallelism::None));
    } else {
        // Few narrow tiles (small images, big weights): one threaded GEMM each.
        (0..total).for_each(|t| tile(t, Parallelism::Rayon(threads)));
    }
}

/// Reads a contiguous f32 slice out of a CPU storage.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fast conv: {what} must be contiguous"),
    }
}

/// The fused op: `(x, weight, bias) -> act(conv(x, weight) + bias)`.
struct DenseConv {
    stride: usize,
    pad: usize,
    act: Epilogue,
}

impl CustomOp3 for DenseConv {
    fn name(&self) -> &'static str {
        "dense-conv2d-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cin, h, w) = l1.shape().dims4()?;
        let (cout, _, kh, kw) = l2.shape().dims4()?;
        let g = Geom {
            b,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride: self.stride,
            pad: self.pad,
            oh: (h + 2 * self.pad - kh) / self.stride + 1,
            ow: (w + 2 * self.pad - kw) / self.stride + 1,
        };
        let ops = Operands {
            x: contiguous_f32(s1, l1, "input")?,
            w: contiguous_f32(s2, l2, "weight")?,
            bias: contiguous_f32(s3, l3, "bias")?,
        };
        let mut out = vec![0f32; b * cout * g.positions()];
        conv_into(&g, &ops, self.act, &mut out);
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, cout, g.oh, g.ow)),
        ))
    }
}

/// `act(conv2d(x, weight) + bias)` for inference (no gradient).
///
/// `x` is (B, C_in, H, W), `weight` (C_out, C_in, KH, KW), `bias` (C_out,); the result is
/// (B, C_out, (H + 2p - KH) / s + 1, (W + 2p - KW) / s + 1). On the CPU with `f32`
/// tensors this runs the fused GEMM kernel of this module (any input layout; it is
/// made contiguous first); elsewhere candle's `conv2d`, a broadcast add and the
/// activation.
pub fn conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    activation: Activation,
) -> Result<Tensor> {
    let (_, cin, h, w) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if wcin != cin {
        candle_core::bail!(
            "conv: weight {:?} does not fit an input with {cin} channels",
            weight.dims()
        );
    }
    if stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!("conv: kernel {kh}x{kw} with padding {padding} does not fit {h}x{w}");
    }
    if let Some(b) = bias {
        if b.elem_count() != cout {
            candle_core::bail!("conv: bias {:?} for {cout} output channels", b.dims());
        }
    }
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if cpu_f32 && fast_conv_enabled() {
        let bias = match bias {
            Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.contiguous()?,
            None => Tensor::zeros(cout, DType::F32, x.device())?,
        };
        let op = DenseConv {
            stride,
            pad: padding,
            act: activation.into(),
        };
        x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias, &op)
    } else {
        let y = x.conv2d(weight, padding, stride, 1, 1)?;
        bias_act(&y, bias, activation)
    }
}

/// The in-place `y = act(y + bias[c])` over (B, C, H, W).
struct BiasActInPlace(Epilogue);

impl InplaceOp2 for BiasActInPlace {
    fn name(&self) -> &'static str {
        "bias-act-inplace"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias_s: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<()> {
        let (_, c, h, w) = dst_l.shape().dims4()?;
        let Some((start, end)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("bias-act: output must be contiguous")
        };
        let bias = contiguous_f32(bias_s, bias_l, "bias")?;
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("bias-act: f32 only")
        };
        let act = self.0;
        data[start..end]
            .par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, row)| act.apply(row, bias[plane % c]));
        Ok(())
    }
}

/// `act(y + bias)` with the bias broadcast over (B, C, H, W) as (1, C, 1, 1).
///
/// On the CPU with `f32` it runs as one pass over a fresh copy of `y` (or in place when
/// `y` is a contiguous tensor this call may overwrite: see [`bias_act_owned`]).
pub fn bias_act(y: &Tensor, bias: Option<&Tensor>, activation: Activation) -> Result<Tensor> {
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y.clone(),
    };
    activation.apply(&y)
}

/// `act(y + bias)` like [`bias_act`], but overwriting `y` in place on the CPU with `f32`
/// when the fast path is on. `y` (B, C, H, W) must not be shared with anyone who still
/// needs its old values (e.g. a convolution output just created).
pub fn bias_act_owned(y: Tensor, bias: Option<&Tensor>, activation: Activation) -> Result<Tensor> {
    let fast = y.device().is_cpu()
        && y.dtype() == DType::F32
        && y.rank() == 4
        && y.is_contiguous()
        && !y.track_op()
        && fast_conv_enabled();
    if !fast {
        return bias_act(&y, bias, activation);
    }
    let c = y.dim(1)?;
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.contiguous()?,
        None => Tensor::zeros(c, DType::F32, y.device())?,
    };
    y.inplace_op2(&bias, &BiasActInPlace(activation.into()))?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        let m: f32 = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        d / m.max(1e-6)
    }

    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        pad: usize,
        act: Activation,
    ) -> Tensor {
        let y = x.conv2d(w, pad, stride, 1, 1).unwrap();
        bias_act(&y, Some(b), act).unwrap()
    }

    /// (batch, c_in, h, w, c_out, k, stride, padding)
    const CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
        (1, 3, 17, 13, 5, 3, 1, 1),
        (2, 7, 19, 23, 9, 3, 2, 1),
        (3, 16, 9, 11, 33, 1, 1, 0),
        (1, 5, 8, 8, 4, 1, 2, 0),
        (2, 4, 10, 7, 6, 3, 1, 0),
        (1, 6, 11, 9, 3, 5, 2, 2),
        (1, 32, 52, 52, 64, 3, 1, 1),
        (2, 64, 40, 40, 17, 1, 1, 0),
        (1, 8, 5, 5, 8, 3, 2, 1),
    ];

    #[test]
    fn matches_candle_conv() {
        let dev = Device::Cpu;
        for &(b, cin, h, w, cout, k, s, p) in CASES {
            let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
            for act in [
                Activation::Identity,
                Activation::Relu6,
                Activation::LeakyRelu(0.1),
            ] {
                let got = conv2d_bias_act(&x, &wt, Some(&bias), s, p, act).unwrap();
                let want = reference(&x, &wt, &bias, s, p, act);
                let d = max_rel_diff(&got, &want);
                assert!(d < 1e-5, "{b}x{cin}x{h}x{w} -> {cout} k{k} s{s} p{p} {act:?}: {d}");
            }
        }
    }

    #[test]
    fn non_contiguous_input_and_no_bias() {
        let dev = Device::Cpu;
        // (B, H, C, W) transposed to (B, C, H, W): not contiguous.
        let x = Tensor::randn(0f32, 1., (2, 12, 5, 10), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        assert!(!x.is_contiguous());
        for (k, s, p) in [(1, 1, 0), (3, 1, 1), (3, 2, 1)] {
            let wt = Tensor::randn(0f32, 0.3, (7, 5, k, k), &dev).unwrap();
            let got = conv2d_bias_act(&x, &wt, None, s, p, Activation::Identity).unwrap();
            let want = x.conv2d(&wt, p, s, 1, 1).unwrap();
            assert!(max_rel_diff(&got, &want) < 1e-5, "k{k} s{s}");
        }
    }

    #[test]
    fn many_tiles_and_one_thread() {
        // Wide images split into many tiles; also run the single-threaded path.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 40, 70, 90), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.2, (24, 40, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 24, &dev).unwrap();
        let act = Activation::LeakyRelu(0.1);
        let want = reference(&x, &wt, &bias, 1, 1, act);
        let got = conv2d_bias_act(&x, &wt, Some(&bias), 1, 1, act).unwrap();
        assert!(max_rel_diff(&got, &want) < 1e-5);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let got1 = pool
            .install(|| conv2d_bias_act(&x, &wt, Some(&bias), 1, 1, act))
            .unwrap();
        assert!(max_rel_diff(&got1, &want) < 1e-5);
    }

    #[test]
    fn bias_act_in_place_matches() {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 4., (2, 3, 4, 5), &dev).unwrap();
        let bias = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        for act in [
            Activation::Identity,
            Activation::Relu6,
            Activation::LeakyRelu(0.1),
        ] {
            let want = bias_act(&y, Some(&bias), act).unwrap();
            let got = bias_act_owned(y.copy().unwrap(), Some(&bias), act).unwrap();
            assert!(max_rel_diff(&got, &want) < 1e-6, "{act:?}");
        }
    }
}
