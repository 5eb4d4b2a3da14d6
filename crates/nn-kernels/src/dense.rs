//! Dense 2-D convolution with a fused bias and activation, for inference on the CPU.
//!
//! candle runs a dense convolution as a full im2col copy followed by a batched matmul,
//! then the bias and the activation as separate passes over the output. This op
//! computes `act(conv(x, w) + b)` in one go on NCHW `f32` tensors:
//!
//! - a 1x1, stride-1, unpadded convolution is one GEMM per image straight on the input,
//!   `out (C_out x HW) = W (C_out x C_in) * X (C_in x HW)`, without any copy;
//! - any other kernel (3x3, stride 2, padding) copies a tile of output columns into an
//!   im2col buffer (`(C_in * KH * KW) x tile`, kept per thread and reused from layer to
//!   layer) and runs one GEMM per tile;
//! - the bias and the activation are applied to each output tile while it is still in
//!   cache.
//!
//! Large images are split into column tiles run in parallel, each with a single-threaded
//! GEMM; small images (13x13 and 26x26 maps, where the weights dominate) split the
//! output channels over the threads instead. The threads are candle's own CPU worker
//! pool ([`crate::pool_threads`]).
//!
//! 3x3 stride-1 convolutions with at least [`WINOGRAD_MIN_POSITIONS`] outputs and
//! [`WINOGRAD_MIN_CHANNELS`] input channels take Winograd's algorithm instead when the
//! [`KernelPolicy`] allows it (`crate::winograd`).
//!
//! There is no backward pass: this path serves folded (inference) blocks only. Other
//! devices and dtypes, and a policy with `fast_conv` off, fall back to candle's
//! `conv2d` plus a broadcast bias and the activation.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::elementwise::bias_act;
use crate::epilogue::Epilogue;
use crate::gemm::matmul_into;
use crate::im2col::Geom;
use crate::policy::KernelPolicy;
use crate::pool::{for_each_chunk_mut, parallel_for, pool_threads, SharedPtr};
use crate::storage::{bias_f32, contiguous_f32};
use crate::winograd;

/// Floats of im2col buffer per tile we aim for (1 MiB: about one core's L2 here).
const COL_BUDGET: usize = 256 * 1024;
/// Floats of output per tile we aim for in the 1x1 path.
const DST_BUDGET: usize = 256 * 1024;
/// Floats of im2col buffer per tile in the channel-split path (4 MiB: the buffer stays
/// allocated, and with larger tiles `yolo-cli run` with Darknet53 went over 1.5x the
/// weights in peak RSS once Winograd buffers came in).
const SPLIT_COL_BUDGET: usize = 1024 * 1024;
/// Narrowest column tile: below this the GEMM repacks the weights too often.
const MIN_TILE: usize = 256;
/// Tiles are multiples of this many columns.
const TILE_ALIGN: usize = 16;

/// Smallest output (H * W) that takes the Winograd path: 13x13, YOLOv3's smallest map
/// at 416, where Winograd still pays. Smaller maps keep the direct path: there the GEMMs
/// get narrower still while the filter transform, done at every call, costs the same.
pub const WINOGRAD_MIN_POSITIONS: usize = 13 * 13;
/// Fewest input channels that take the Winograd path: with fewer, the GEMMs are too
/// shallow and the input transform dominates (the 3-channel first layer).
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

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

/// Output columns `p0..p0 + nt` of image `img`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    img: usize,
    p0: usize,
    nt: usize,
}

/// The GEMM's right-hand side of a tile: (C_in * KH * KW, nt) with row stride `rs`.
#[derive(Clone, Copy)]
struct Rhs {
    ptr: SharedPtr<f32>,
    rs: usize,
}

/// Output channels `rows` of one tile: `dst = W[rows] * rhs`, then bias and activation.
///
/// # Safety
/// `out` must point to the (B, C_out, OH * OW) output and `rhs` to the tile's
/// right-hand side; no other thread may touch these rows of the tile meanwhile.
unsafe fn gemm_rows(
    g: &Geom,
    ops: &Operands,
    act: Epilogue,
    out: SharedPtr<f32>,
    tile: Tile,
    rows: std::ops::Range<usize>,
    rhs: Rhs,
) {
    let (n, k) = (g.positions(), g.depth());
    // dst (rows x nt) inside the image's (C_out x OH*OW) output; row stride OH*OW.
    // SAFETY: (img, rows.start, p0) lies inside the (B, C_out, OH * OW) output `out`
    // points to (the caller's contract).
    let dst = unsafe { out.0.add(tile.img * g.cout * n + rows.start * n + tile.p0) };
    // dst = W[rows] (m x k) * rhs (k x nt).
    // SAFETY: dst spans `rows` x `nt` of the output with row stride n, owned by this
    // call; W's rows `rows` are inside the weights (rows.end <= C_out); rhs is the
    // caller's (k x nt) matrix with row stride rs.
    unsafe {
        matmul_into(
            (rows.len(), tile.nt, k),
            (dst, n, 1),
            (ops.w.as_ptr().add(rows.start * k), k, 1),
            (rhs.ptr.0, rhs.rs, 1),
            false,
        )
    };
    for (i, co) in rows.enumerate() {
        // SAFETY: row `co` of this tile, inside the output and owned by this call.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), tile.nt) };
        act.apply(row, ops.bias[co]);
    }
}

/// Runs `f` with the tile's GEMM right-hand side: the input itself for a pointwise
/// convolution, else the tile's im2col matrix in this thread's buffer.
fn with_rhs<R>(g: &Geom, ops: &Operands, tile: Tile, f: impl FnOnce(Rhs) -> R) -> R {
    let image = g.cin * g.h * g.w;
    let x = &ops.x[tile.img * image..(tile.img + 1) * image];
    if g.pointwise() {
        // X (C_in x HW), columns p0..p0 + nt, read in place.
        let ptr = SharedPtr(x[tile.p0..].as_ptr() as *mut f32);
        f(Rhs {
            ptr,
            rs: g.positions(),
        })
    } else {
        COL_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let len = g.depth() * tile.nt;
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            g.im2col(x, tile.p0, tile.nt, &mut buf[..len]);
            let ptr = SharedPtr(buf.as_mut_ptr());
            f(Rhs { ptr, rs: tile.nt })
        })
    }
}

/// Like [`with_rhs`], but the im2col copy itself is split over the pool's threads (for
/// the large tiles of the channel-split path).
fn with_rhs_parallel<R>(g: &Geom, ops: &Operands, tile: Tile, f: impl FnOnce(Rhs) -> R) -> R {
    if g.pointwise() {
        return with_rhs(g, ops, tile, f);
    }
    let image = g.cin * g.h * g.w;
    let x = &ops.x[tile.img * image..(tile.img + 1) * image];
    COL_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let len = g.depth() * tile.nt;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        // Blocks of input channels: (channels * KH * KW, nt) rows each.
        let per = g.cin.div_ceil(4 * pool_threads()).max(1);
        let rows = per * g.kh * g.kw * tile.nt;
        for_each_chunk_mut(&mut buf[..len], rows, |i, piece| {
            let c0 = i * per;
            g.im2col_channels(x, tile.p0, tile.nt, piece, c0..(c0 + per).min(g.cin));
        });
        let ptr = SharedPtr(buf.as_mut_ptr());
        f(Rhs { ptr, rs: tile.nt })
    })
}

/// Fills `out` (B, C_out, OH, OW) with `act(conv(x, w) + bias)` on `threads` threads.
fn conv_into(
    g: &Geom,
    ops: &Operands,
    act: Epilogue,
    out: &mut [MaybeUninit<f32>],
    threads: usize,
) {
    // Every element of `out` is written: the tiles cover all the columns of every image
    // and each tile all the output channels (GEMM with alpha = 0 never reads dst).
    assert_eq!(out.len(), g.b * g.cout * g.positions());
    assert_eq!(ops.x.len(), g.b * g.cin * g.h * g.w);
    assert_eq!(ops.w.len(), g.cout * g.depth());
    assert_eq!(ops.bias.len(), g.cout);
    let threads = threads.max(1);
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
    if threads > 1 && !total.is_multiple_of(threads) && total < 8 * threads {
        tiles_per_img = (total.div_ceil(threads) * threads).div_ceil(g.b);
    }
    let nt = n
        .div_ceil(tiles_per_img)
        .next_multiple_of(TILE_ALIGN)
        .min(n);
    let tiles_per_img = n.div_ceil(nt);
    let total = g.b * tiles_per_img;
    let out = SharedPtr(out.as_mut_ptr().cast::<f32>());
    let tile = |t: usize| {
        let (img, i) = (t / tiles_per_img, t % tiles_per_img);
        let p0 = i * nt;
        Tile {
            img,
            p0,
            nt: nt.min(n - p0),
        }
    };
    if threads == 1 || (total >= threads && nt >= MIN_TILE.min(n)) {
        // Many wide tiles: one per task, each with a single-threaded GEMM.
        parallel_for(threads, total, |t| {
            let tile = tile(t);
            with_rhs(g, ops, tile, |rhs| {
                // SAFETY: task t alone owns the columns of tile t.
                unsafe { gemm_rows(g, ops, act, out, tile, 0..g.cout, rhs) }
            })
        });
    } else {
        // Few narrow tiles (small images, big weights): split the output channels of
        // each tile over the threads, so that each packs only its share of W.
        // Whole images as tiles where the im2col matrix stays under SPLIT_COL_BUDGET.
        let nt = n.min((SPLIT_COL_BUDGET / g.depth().max(1)).max(MIN_TILE));
        let tiles_per_img = n.div_ceil(nt);
        let chunk = g.cout.div_ceil(threads).next_multiple_of(TILE_ALIGN);
        let chunks = g.cout.div_ceil(chunk);
        for t in 0..g.b * tiles_per_img {
            let (img, i) = (t / tiles_per_img, t % tiles_per_img);
            let p0 = i * nt;
            let tile = Tile {
                img,
                p0,
                nt: nt.min(n - p0),
            };
            with_rhs_parallel(g, ops, tile, |rhs| {
                parallel_for(threads, chunks, |c| {
                    let rows = c * chunk..((c + 1) * chunk).min(g.cout);
                    // SAFETY: chunk c alone owns these rows; rhs is only read.
                    unsafe { gemm_rows(g, ops, act, out, tile, rows, rhs) }
                })
            });
        }
    }
}

/// The fused op: `(x, weight, bias) -> act(conv(x, weight) + bias)`.
struct DenseConv {
    stride: usize,
    pad: usize,
    act: Epilogue,
    policy: KernelPolicy,
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
        // (B, C_out, OH, OW), left uninitialised: conv_into writes every element.
        let len = b * cout * g.positions();
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let winograd = (kw, self.pad) == (kh, 1)
            && self.policy.winograd_applies(kh, self.stride)
            && g.positions() >= WINOGRAD_MIN_POSITIONS
            && cin >= WINOGRAD_MIN_CHANNELS;
        if winograd {
            let tile = winograd::Tile::for_image(h, w, self.policy.winograd);
            let conv = winograd::Conv3x3 {
                b,
                cin,
                cout,
                h,
                w,
                tile,
                gemm64: self.policy.gemm64,
            };
            conv.run(
                ops.x,
                ops.w,
                ops.bias,
                self.act,
                &mut out.spare_capacity_mut()[..len],
                pool_threads(),
            );
        } else {
            conv_into(
                &g,
                &ops,
                self.act,
                &mut out.spare_capacity_mut()[..len],
                pool_threads(),
            );
        }
        // SAFETY: conv_into initialised all `len` elements.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((b, cout, g.oh, g.ow))))
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
    epilogue: Epilogue,
    policy: KernelPolicy,
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
    if cpu_f32 && policy.fast_conv {
        let bias = bias_f32(bias, cout, x.device())?;
        let op = DenseConv {
            stride,
            pad: padding,
            act: epilogue,
            policy,
        };
        x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias, &op)
    } else {
        let y = x.conv2d(weight, padding, stride, 1, 1)?;
        bias_act(&y, bias, epilogue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use test_support::{max_abs, max_abs_diff};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs(b).max(1e-6)
    }

    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        pad: usize,
        act: Epilogue,
    ) -> Tensor {
        let y = x.conv2d(w, pad, stride, 1, 1).unwrap();
        bias_act(&y, Some(b), act).unwrap()
    }

    /// (batch, c_in, h, w, c_out, k, stride, padding)
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const CASES: &[Case] = &[
        (1, 3, 17, 13, 5, 3, 1, 1),
        (2, 7, 19, 23, 9, 3, 2, 1),
        (3, 16, 9, 11, 33, 1, 1, 0),
        (1, 5, 8, 8, 4, 1, 2, 0),
        (2, 4, 10, 7, 6, 3, 1, 0),
        (1, 6, 11, 9, 3, 5, 2, 2),
        (1, 32, 52, 52, 64, 3, 1, 1),
        (2, 64, 40, 40, 17, 1, 1, 0),
        (1, 8, 5, 5, 8, 3, 2, 1),
        // Narrow tiles: the output channels are split over the threads instead.
        (1, 256, 26, 26, 40, 3, 1, 1),
        (2, 100, 13, 13, 70, 3, 1, 1),
        // Winograd (3x3, stride 1, at least 13x13 outputs, 16 channels): odd sides,
        // batch 2; several bands of patch rows.
        (2, 17, 53, 61, 7, 3, 1, 1),
        (1, 64, 64, 100, 200, 3, 1, 1),
    ];

    #[test]
    fn matches_candle_conv() {
        let dev = Device::Cpu;
        for &(b, cin, h, w, cout, k, s, p) in CASES {
            let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap();
            let pre_activation = reference(&x, &wt, &bias, s, p, Epilogue::Identity);
            for act in [Epilogue::Identity, Epilogue::Relu6, Epilogue::Leaky(0.1)] {
                let got = conv2d_bias_act(&x, &wt, Some(&bias), s, p, act, KernelPolicy::default())
                    .unwrap();
                let want = reference(&x, &wt, &bias, s, p, act);
                // Relative to the scale before the activation (Relu6 caps the output).
                let d = max_abs_diff(&got, &want) / max_abs(&pre_activation);
                // Winograd's F(4x4, 3x3) costs about a decimal digit (see crate::winograd).
                let winograd = (k, s, p) == (3, 1, 1)
                    && h * w >= WINOGRAD_MIN_POSITIONS
                    && cin >= WINOGRAD_MIN_CHANNELS;
                let tolerance = if winograd { 5e-5 } else { 1e-5 };
                assert!(
                    d < tolerance,
                    "{b}x{cin}x{h}x{w} -> {cout} k{k} s{s} p{p} {act:?}: {d}"
                );
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
            let got = conv2d_bias_act(
                &x,
                &wt,
                None,
                s,
                p,
                Epilogue::Identity,
                KernelPolicy::default(),
            )
            .unwrap();
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
        let act = Epilogue::Leaky(0.1);
        let want = reference(&x, &wt, &bias, 1, 1, act);
        let got =
            conv2d_bias_act(&x, &wt, Some(&bias), 1, 1, act, KernelPolicy::default()).unwrap();
        assert!(max_rel_diff(&got, &want) < 1e-5);
        // The same convolution on one thread and on three.
        let (b, cin, h, w) = x.dims4().unwrap();
        let g = Geom {
            b,
            cin,
            h,
            w,
            cout: 24,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            oh: h,
            ow: w,
        };
        let (xv, wv, bv) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            bias.to_vec1::<f32>().unwrap(),
        );
        let ops = Operands {
            x: &xv,
            w: &wv,
            bias: &bv,
        };
        for threads in [1, 3] {
            // NaN everywhere first: an element left unwritten would show.
            let mut out = vec![MaybeUninit::new(f32::NAN); 24 * h * w];
            conv_into(&g, &ops, act, &mut out, threads);
            let out: Vec<f32> = out
                .into_iter()
                // SAFETY: NaN-initialised above (the test then checks none is left).
                .map(|v| unsafe { v.assume_init() })
                .collect();
            let got = Tensor::from_vec(out, (1, 24, h, w), &dev).unwrap();
            assert!(max_rel_diff(&got, &want) < 1e-5, "{threads} threads");
        }
    }
}
