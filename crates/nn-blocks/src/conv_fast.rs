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
//! Large images are split into column tiles run in parallel, each with a single-threaded
//! GEMM; small images (13x13 and 26x26 maps, where the weights dominate) split the
//! output channels over the threads instead. The threads are candle's own CPU worker
//! pool (see [`pool_threads`]). GEMMs come from the `gemm` crate, the one candle itself
//! uses, with its AVX-512 kernels (the `x86-v4` feature, picked at run time).
//!
//! 3x3 stride-1 convolutions with at least [`WINOGRAD_MIN_POSITIONS`] outputs and
//! [`WINOGRAD_MIN_CHANNELS`] input channels take Winograd's F(4x4, 3x3) instead, or
//! F(2x2, 3x3) on maps thinner than 13 (`crate::winograd`: 36 or 16 GEMMs, 4x or 2.25x
//! fewer multiply-adds; `NN_BLOCKS_WINOGRAD=0` turns it off).
//!
//! [`depthwise_conv2d_bias_act`] does the same for 3x3 depthwise convolutions (stride 1
//! or 2, padding 1): one row kernel that sums the nine taps in registers and applies the
//! bias and activation in the same pass.
//!
//! There is no backward pass: this path serves folded (inference) blocks only. Other
//! devices and dtypes fall back to candle's `conv2d` plus a broadcast bias and the
//! activation. Setting `NN_BLOCKS_FAST_CONV=0` turns the fast CPU path off (for
//! benchmarks and bisecting).

// The GEMM entry point of the `gemm` crate is an `unsafe fn` taking raw pointers and
// strides, and the parallel tiles write disjoint columns of one output buffer.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use multiversion::multiversion;

use crate::conv_bn::Activation;

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

/// Whether the fast CPU convolution is used (`NN_BLOCKS_FAST_CONV=0` turns it off;
/// read once per process).
pub fn fast_conv_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::process::switched_on("NN_BLOCKS_FAST_CONV"))
}

/// Whether 3x3 stride-1 convolutions with at least [`WINOGRAD_MIN_POSITIONS`] output
/// positions and [`WINOGRAD_MIN_CHANNELS`] input channels run Winograd's algorithm
/// (`NN_BLOCKS_WINOGRAD=0` turns it off; read once per process).
pub fn winograd_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::process::switched_on("NN_BLOCKS_WINOGRAD"))
}

/// Whether Winograd's F(4x4, 3x3) serves the images it suits (both sides 13 or more),
/// F(2x2, 3x3) the rest (`NN_BLOCKS_WINOGRAD_F4=0` keeps F(2x2, 3x3) everywhere; read
/// once per process).
pub fn winograd_f4_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::process::switched_on("NN_BLOCKS_WINOGRAD_F4"))
}

/// Smallest output (H * W) that takes the Winograd path: 13x13, YOLOv3's smallest map
/// at 416, where Winograd takes the 512 -> 1024 layer from about 8.0 ms to 5.7 ms (2
/// threads, F4). Smaller maps keep the direct path: there the GEMMs get narrower still
/// while the filter transform, done at every call, costs the same.
pub const WINOGRAD_MIN_POSITIONS: usize = 13 * 13;
/// Fewest input channels that take the Winograd path: with fewer, the GEMMs are too
/// shallow and the input transform dominates (the 3-channel first layer).
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The activation as the output pass applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Epilogue {
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
    #[inline(always)]
    pub(crate) fn apply(self, row: &mut [f32], bias: f32) {
        match self {
            Epilogue::Identity => row.iter_mut().for_each(|v| *v += bias),
            Epilogue::Relu6 => row
                .iter_mut()
                .for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
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

    /// [`Geom::valid_cols`] of tap `kx` within the output columns `ox0..ox0 + run`.
    fn valid_span(&self, kx: usize, ox0: usize, run: usize) -> (usize, usize) {
        let (lo, hi) = self.valid_cols(kx);
        let a = lo.clamp(ox0, ox0 + run);
        (a, hi.clamp(a, ox0 + run))
    }

    /// The output positions `p0..p0 + nt` of one image cut at the ends of output rows:
    /// `(j, oy, ox0, run)` for positions `p0 + j..p0 + j + run`, columns
    /// `ox0..ox0 + run` of output row `oy`.
    fn row_runs(
        &self,
        p0: usize,
        nt: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let mut j = 0;
        std::iter::from_fn(move || {
            (j < nt).then(|| {
                let pos = p0 + j;
                let (oy, ox0) = (pos / self.ow, pos % self.ow);
                let run = (self.ow - ox0).min(nt - j);
                j += run;
                (j - run, oy, ox0, run)
            })
        })
    }

    /// Copies output columns `p0..p0 + nt` of the im2col matrix of one image
    /// `x` (C_in, H, W) into `buf` (C_in * KH * KW, nt), zeros for the padding.
    fn im2col(&self, x: &[f32], p0: usize, nt: usize, buf: &mut [f32]) {
        self.im2col_channels(x, p0, nt, buf, 0..self.cin);
    }

    /// Like [`Geom::im2col`] for the input channels `channels` only: `buf` holds their
    /// rows, (channels.len() * KH * KW, nt).
    fn im2col_channels(
        &self,
        x: &[f32],
        p0: usize,
        nt: usize,
        buf: &mut [f32],
        channels: std::ops::Range<usize>,
    ) {
        let (h, w, s, p) = (self.h, self.w, self.stride, self.pad);
        let c0 = channels.start;
        if s == 2 {
            return self.im2col_channels_stride2(x, p0, nt, buf, channels);
        }
        for ci in channels {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let r = ((ci - c0) * self.kh + ky) * self.kw + kx;
                    let dst = &mut buf[r * nt..(r + 1) * nt];
                    for (j, oy, ox0, run) in self.row_runs(p0, nt) {
                        let seg = &mut dst[j..j + run];
                        match (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) {
                            None => seg.fill(0.0),
                            Some(iy) => {
                                let row = &plane[iy * w..(iy + 1) * w];
                                let (a, b) = self.valid_span(kx, ox0, run);
                                seg[..a - ox0].fill(0.0);
                                seg[b - ox0..].fill(0.0);
                                let valid = &mut seg[a - ox0..b - ox0];
                                let first = a * s + kx - p;
                                if s == 1 {
                                    valid.copy_from_slice(&row[first..first + (b - a)]);
                                } else if let Some((last, head)) = valid.split_last_mut() {
                                    // Every s-th input: chunks_exact lets this vectorise.
                                    let src = row[first..].chunks_exact(s);
                                    for (v, c) in head.iter_mut().zip(src) {
                                        *v = c[0];
                                    }
                                    *last = row[first + head.len() * s];
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Geom::im2col_channels`] for stride 2: each input row is split once into its
    /// even and odd columns, from which every tap's run is one contiguous copy (a
    /// stride-2 gather per tap took a third of the 416 -> 208 layer's time).
    fn im2col_channels_stride2(
        &self,
        x: &[f32],
        p0: usize,
        nt: usize,
        buf: &mut [f32],
        channels: std::ops::Range<usize>,
    ) {
        let (h, w, p) = (self.h, self.w, self.pad);
        let c0 = channels.start;
        // even[i] = row[2i], then odd[i] = row[2i + 1].
        let half = w.div_ceil(2);
        let mut phases = vec![0f32; 2 * half];
        for ci in channels {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..self.kh {
                for (j, oy, ox0, run) in self.row_runs(p0, nt) {
                    let iy = (oy * 2 + ky).checked_sub(p).filter(|&iy| iy < h);
                    if let Some(iy) = iy {
                        let row = &plane[iy * w..(iy + 1) * w];
                        let (even, odd) = phases.split_at_mut(half);
                        let pairs = row.chunks_exact(2);
                        if let [last] = pairs.remainder() {
                            even[half - 1] = *last;
                        }
                        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                            *e = pair[0];
                            *o = pair[1];
                        }
                    }
                    for kx in 0..self.kw {
                        let r = ((ci - c0) * self.kh + ky) * self.kw + kx;
                        let seg = &mut buf[r * nt + j..][..run];
                        if iy.is_none() {
                            seg.fill(0.0);
                            continue;
                        }
                        let (a, b) = self.valid_span(kx, ox0, run);
                        seg[..a - ox0].fill(0.0);
                        seg[b - ox0..].fill(0.0);
                        // Input columns first, first + 2, ...: one phase, contiguous.
                        let first = a * 2 + kx - p;
                        let phase = &phases[(first % 2) * half + first / 2..][..b - a];
                        seg[a - ox0..b - ox0].copy_from_slice(phase);
                    }
                }
            }
        }
    }
}

/// A raw pointer shared by the workers of one convolution (see the SAFETY notes where
/// it is dereferenced).
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr<T>(pub(crate) *mut T);
// SAFETY: the workers that share one write disjoint elements and only read the rest.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// The im2col buffer of this thread, reused from call to call.
    static COL_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Threads of candle's CPU worker pool (the calling thread included).
///
/// The fast paths run on the same persistent pool as candle's own element-wise ops
/// (`candle_core::utils::barrier_pool`, sized by `CANDLE_NUM_THREADS` or
/// `RAYON_NUM_THREADS`) rather than on a second set of rayon threads: with two pools,
/// each one's spinning idle workers steal the cores the other one is computing on.
pub fn pool_threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `f(i)` for `i in 0..n` on candle's worker pool, or inline with one thread.
pub(crate) fn parallel_for(threads: usize, n: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 || n <= 1 {
        (0..n).for_each(f);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
    }
}

/// Runs `f(i, chunk)` over the `chunk`-long pieces of `data` on candle's worker pool
/// (like rayon's `par_chunks_mut(chunk).enumerate().for_each(f)`).
pub(crate) fn for_each_chunk_mut(
    data: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let chunk = chunk.max(1);
    let (len, pieces) = (data.len(), data.len().div_ceil(chunk));
    let ptr = SharedPtr(data.as_mut_ptr());
    parallel_for(pool_threads(), pieces, |i| {
        let start = i * chunk;
        // SAFETY: piece i alone owns data[start..start + chunk].
        let piece =
            unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), chunk.min(len - start)) };
        f(i, piece)
    });
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

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, for matrices of sizes
/// `(m, n, k)`, each given as (pointer, row stride, column stride), on the calling
/// thread (without `accumulate`, dst's old contents are ignored: the `gemm` crate's
/// alpha = 0).
///
/// # Safety
/// The pointers must be valid for the matrices they describe, and `dst` must not
/// overlap the others nor be touched by another thread meanwhile.
pub(crate) unsafe fn matmul_into(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (*mut f32, usize, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { 1.0f32 } else { 0.0f32 },
        1.0f32,
        false,
        false,
        false,
        Parallelism::None,
    );
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
    let dst = out.0.add(tile.img * g.cout * n + rows.start * n + tile.p0);
    // dst = W[rows] (m x k) * rhs (k x nt).
    matmul_into(
        (rows.len(), tile.nt, k),
        (dst, n, 1),
        (ops.w.as_ptr().add(rows.start * k), k, 1),
        (rhs.ptr.0, rhs.rs, 1),
        false,
    );
    for (i, co) in rows.enumerate() {
        // SAFETY: row `co` of this tile, inside the output and owned by this call.
        let row = std::slice::from_raw_parts_mut(dst.add(i * n), tile.nt);
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
        // (B, C_out, OH, OW), left uninitialised: conv_into writes every element.
        let len = b * cout * g.positions();
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let winograd = (kh, kw, self.stride, self.pad) == (3, 3, 1, 1)
            && g.positions() >= WINOGRAD_MIN_POSITIONS
            && cin >= WINOGRAD_MIN_CHANNELS
            && winograd_enabled();
        if winograd {
            let tile = crate::winograd::Tile::for_image(h, w);
            let conv = crate::winograd::Conv3x3 {
                b,
                cin,
                cout,
                h,
                w,
                tile,
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

/// One channel of a 3x3 depthwise convolution: `x` (H, W) into `out` (OH, OW), row by
/// row. Also compiled for AVX-512 and picked at run time (16 lanes where the baseline
/// x86-64 build has SSE2's 4): a third fewer CPU samples in MobileNetV2's depthwise
/// layers.
#[multiversion(targets("x86_64+avx512f"))]
fn depthwise3x3_plane(
    x: &[f32],
    (h, w): (usize, usize),
    wk: &[f32; 9],
    bias: f32,
    s: usize,
    act: Epilogue,
    out: &mut [f32],
) {
    let ow = (w - 1) / s + 1;
    let mut scratch = vec![0f32; if s == 2 { 2 * (w / 2 + 1) } else { 0 }];
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
        let row = |ky: usize| {
            (oy * s + ky)
                .checked_sub(1)
                .filter(|&iy| iy < h)
                .map(|iy| &x[iy * w..(iy + 1) * w])
        };
        let rows = [row(0), row(1), row(2)];
        depthwise3x3_row(rows, wk, bias, s, act, orow, &mut scratch);
    }
}

/// Output row `orow` (OW) of a 3x3 depthwise convolution with padding 1 and stride
/// `s` (1 or 2) from the input rows `rows[ky]` (W each; `None` above or below the
/// image), `bias` and the activation applied. `scratch` holds 2 * (W / 2 + 1) floats
/// for the stride-2 deinterleave.
#[inline(always)]
fn depthwise3x3_row(
    rows: [Option<&[f32]>; 3],
    wk: &[f32; 9],
    bias: f32,
    s: usize,
    act: Epilogue,
    orow: &mut [f32],
    scratch: &mut [f32],
) {
    let ow = orow.len();
    orow.fill(bias);
    // Border outputs (any tap may fall outside): the general formula with checks.
    let tap = |r: &[f32], ix: isize| {
        if ix >= 0 && (ix as usize) < r.len() {
            r[ix as usize]
        } else {
            0.0
        }
    };
    let edge = |ox: usize, o: &mut f32| {
        for (ky, r) in rows.iter().enumerate() {
            if let Some(r) = r {
                for kx in 0..3 {
                    *o += wk[ky * 3 + kx] * tap(r, (ox * s + kx) as isize - 1);
                }
            }
        }
    };
    let w = rows.iter().flatten().next().map_or(0, |r| r.len());
    // Interior: 1 <= ox and ox * s + 1 < w.
    let hi = if w >= 2 { ((w - 2) / s + 1).min(ow) } else { 0 };
    let lo = 1.min(hi);
    for ox in (0..lo).chain(hi.max(lo)..ow) {
        edge(ox, &mut orow[ox]);
    }
    if hi > lo {
        let n = hi - lo;
        let o = &mut orow[lo..hi];
        for (ky, r) in rows.iter().enumerate() {
            let Some(r) = r else { continue };
            let (w0, w1, w2) = (wk[ky * 3], wk[ky * 3 + 1], wk[ky * 3 + 2]);
            if s == 1 {
                // in[ox - 1], in[ox], in[ox + 1] for ox in lo..hi.
                let (a, b, c) = (
                    &r[lo - 1..lo - 1 + n],
                    &r[lo..lo + n],
                    &r[lo + 1..lo + 1 + n],
                );
                for i in 0..n {
                    o[i] += w0 * a[i] + w1 * b[i] + w2 * c[i];
                }
            } else {
                // in[2ox - 1] = odd[ox - 1], in[2ox] = even[ox], in[2ox + 1] = odd[ox].
                let (even, odd) = scratch.split_at_mut(scratch.len() / 2);
                let pairs = r.chunks_exact(2);
                for ((e, d), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = p[0];
                    *d = p[1];
                }
                let (a, b, c) = (
                    &odd[lo - 1..lo - 1 + n],
                    &even[lo..lo + n],
                    &odd[lo..lo + n],
                );
                for i in 0..n {
                    o[i] += w0 * a[i] + w1 * b[i] + w2 * c[i];
                }
            }
        }
    }
    act.apply(orow, 0.0);
}

/// `act(depthwise_conv2d(x, weight) + bias)` for inference: `x` (B, C, H, W), `weight`
/// (C, 1, K, K), `bias` (C,).
///
/// 3x3 kernels with padding 1 and stride 1 or 2 (all of MobileNetV2's) run a fused
/// row kernel on the CPU with `f32` (the nine taps summed in registers, bias and
/// activation in the same pass); anything else runs [`crate::depthwise_conv2d`] and
/// then the bias and activation.
pub fn depthwise_conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    activation: Activation,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.dims() == [c, 1, 3, 3]
        && padding == 1
        && (stride == 1 || stride == 2)
        && h > 0
        && w > 0
        && fast_conv_enabled();
    if !fused {
        let y = crate::depthwise_conv2d(x, weight, stride, padding)?;
        return bias_act_owned(y, bias, activation);
    }
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.contiguous()?,
        None => Tensor::zeros(c, DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias,
        &Depthwise3x3 {
            stride,
            act: activation.into(),
        },
    )
}

/// The fused depthwise op: `(x, weight, bias) -> act(dwconv3x3(x, weight) + bias)`.
struct Depthwise3x3 {
    stride: usize,
    act: Epilogue,
}

impl CustomOp3 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        "depthwise3x3-bias-act"
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
        let (b, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32(s1, l1, "input")?;
        let weight = contiguous_f32(s2, l2, "weight")?;
        let bias = contiguous_f32(s3, l3, "bias")?;
        let s = self.stride;
        // (B, C, OH, OW) with padding 1: OH = (H + 2 - 3) / s + 1.
        let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
        let mut out = vec![0f32; b * c * oh * ow];
        let act = self.act;
        for_each_chunk_mut(&mut out, oh * ow, |plane, out| {
            let ch = plane % c;
            let x = &x[plane * h * w..(plane + 1) * h * w];
            let mut wk = [0f32; 9];
            wk.copy_from_slice(&weight[ch * 9..ch * 9 + 9]);
            depthwise3x3_plane(x, (h, w), &wk, bias[ch], s, act, out);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
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
        for_each_chunk_mut(&mut data[start..end], h * w, |plane, row| {
            act.apply(row, bias[plane % c])
        });
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

/// `y + x`, adding `x` into `y`'s own buffer on the CPU with `f32` when the fast path is
/// on and neither takes part in autograd: a residual connection without a fourth
/// activation-sized tensor (Darknet53's blocks). `y` must not be shared with anyone who
/// still needs its old values (e.g. a convolution output just created); otherwise, and
/// for shapes that differ, this is candle's `y + x`.
pub fn add_owned(y: Tensor, x: &Tensor) -> Result<Tensor> {
    let fast = y.device().is_cpu()
        && x.device().is_cpu()
        && y.dtype() == DType::F32
        && x.dtype() == DType::F32
        && y.shape() == x.shape()
        && y.is_contiguous()
        && x.is_contiguous()
        && !y.track_op()
        && !x.track_op()
        && fast_conv_enabled();
    if !fast {
        return y + x;
    }
    y.inplace_op2(x, &AddInPlace)?;
    Ok(y)
}

/// The in-place `y += x` of [`add_owned`].
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-inplace"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src_s: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let Some((start, end)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("add-inplace: output must be contiguous")
        };
        let src = contiguous_f32(src_s, src_l, "addend")?;
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("add-inplace: f32 only")
        };
        // Pieces of 64 Ki floats, over the threads.
        const PIECE: usize = 64 * 1024;
        for_each_chunk_mut(&mut data[start..end], PIECE, |i, piece| {
            let src = &src[i * PIECE..][..piece.len()];
            piece.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        });
        Ok(())
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
        act: Activation,
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
            let pre_activation = reference(&x, &wt, &bias, s, p, Activation::Identity);
            for act in [
                Activation::Identity,
                Activation::Relu6,
                Activation::LeakyRelu(0.1),
            ] {
                let got = conv2d_bias_act(&x, &wt, Some(&bias), s, p, act).unwrap();
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
            conv_into(&g, &ops, act.into(), &mut out, threads);
            let out: Vec<f32> = out
                .into_iter()
                .map(|v| unsafe { v.assume_init() })
                .collect();
            let got = Tensor::from_vec(out, (1, 24, h, w), &dev).unwrap();
            assert!(max_rel_diff(&got, &want) < 1e-5, "{threads} threads");
        }
    }

    #[test]
    fn depthwise_3x3_matches_candle() {
        let dev = Device::Cpu;
        // (batch, channels, h, w, stride)
        for (b, c, h, w, s) in [
            (1, 3, 7, 9, 1),
            (2, 5, 8, 8, 2),
            (1, 4, 9, 11, 2),
            (1, 2, 1, 1, 1),
            (1, 2, 2, 3, 2),
            (1, 2, 1, 5, 2),
            (3, 6, 26, 26, 1),
            (1, 8, 52, 52, 2),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.5, (c, 1, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
            for act in [
                Activation::Identity,
                Activation::Relu6,
                Activation::LeakyRelu(0.1),
            ] {
                let got = depthwise_conv2d_bias_act(&x, &wt, Some(&bias), s, 1, act).unwrap();
                let y = x.conv2d(&wt, 1, s, 1, c).unwrap();
                let want = bias_act(&y, Some(&bias), act).unwrap();
                let d = max_rel_diff(&got, &want);
                assert!(d < 1e-5, "{b}x{c}x{h}x{w} s{s} {act:?}: {d}");
            }
        }
        // Non-contiguous input.
        let x = Tensor::randn(0f32, 1., (1, 9, 4, 10), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let wt = Tensor::randn(0f32, 0.5, (4, 1, 3, 3), &dev).unwrap();
        let got = depthwise_conv2d_bias_act(&x, &wt, None, 2, 1, Activation::Identity).unwrap();
        let want = x.conv2d(&wt, 1, 2, 1, 4).unwrap();
        assert!(max_rel_diff(&got, &want) < 1e-5);
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

    /// The in-place residual add against candle's, and its fallbacks: a non-contiguous
    /// addend, different shapes (broadcast refused like candle's), a tracked tensor.
    #[test]
    fn add_owned_matches_candle() {
        let dev = Device::Cpu;
        // More than one piece of 64 Ki floats, the last one short.
        let y = Tensor::randn(0f32, 1., (2, 3, 150, 170), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 150, 170), &dev).unwrap();
        let want = (&y + &x).unwrap();
        let got = add_owned(y.copy().unwrap(), &x).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        // A transposed (non-contiguous) addend.
        let xt = Tensor::randn(0f32, 1., (2, 3, 170, 150), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let want = (&y + &xt).unwrap();
        let got = add_owned(y.copy().unwrap(), &xt).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        // Shapes that differ: candle's error, not a wrong sum.
        let small = Tensor::randn(0f32, 1., (1, 3, 150, 170), &dev).unwrap();
        assert!(add_owned(y.copy().unwrap(), &small).is_err());
        // A tracked tensor keeps candle's op (and its gradient).
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let sum = add_owned(y.copy().unwrap(), v.as_tensor()).unwrap();
        let grads = sum.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(v.as_tensor()).is_some());
    }
}
