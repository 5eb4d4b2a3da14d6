//! The tiling and threading shared by the bf16 and int8 dense convolutions.
//!
//! The convolution is the GEMM `out (C_out x OH*OW) = W (C_out x K) * X (K x OH*OW)`
//! per image, `K = C_in * KH * KW`, computed in micro-tiles of [`MR`] output channels by
//! [`NR`] output positions whose accumulators stay in registers over the whole depth.
//! Both operands are packed as 32-bit words, each holding one depth *group* of a
//! column (four u8 codes, or two bf16 values):
//!
//! - weights, at load: panels of `MR` channels, `(C_out / MR, K / G, MR)` words
//!   (channels and depth past the ends padded with zeros);
//! - activations, at each call: the input is first rounded or quantised once, element
//!   by element, into a copy of one or two bytes per value (a quarter or half of the
//!   `f32` input), then packed in panels of `NR` positions,
//!   `(OH*OW / NR, K / G, NR)` words, through a small im2col buffer of those bytes
//!   (padding taps get the format's zero, columns past the end are padded).
//!
//! Images are cut into blocks of panels, each packed by the task that consumes it (half
//! a megabyte at most, so it stays in L2 while every channel panel runs over it), at
//! least one per thread: one parallel pass per call (plus the conversion of large
//! inputs), since on a busy machine every rendezvous of the pool costs. Images with
//! fewer panels than threads are packed whole, then their output channels are split
//! over the threads.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::thread::LocalKey;

use crate::epilogue::Epilogue;
use crate::im2col::Geom;
use crate::pool::{parallel_for, SharedPtr};

/// Output channels per micro-tile.
pub(crate) const MR: usize = 8;
/// Output positions per micro-tile: three 16-lane vectors.
pub(crate) const NR: usize = 48;
/// Bytes of packed activations per block (stays in L2 while the channels run over it).
const BLOCK_BYTES: usize = 512 * 1024;
/// Below this many elements, converting or packing runs on the calling thread.
const SERIAL_ELEMS: usize = 1 << 18;
/// Elements of im2col rows per packing step.
const SCRATCH_ELEMS: usize = 32 * 1024;

/// Largest buffer a thread keeps for its next call (bytes): beyond it (large batches),
/// each call allocates its own, so an idle model does not hold tens of megabytes.
const KEEP_BYTES: usize = 16 << 20;

thread_local! {
    /// This thread's packed activation block, reused from call to call.
    static PACKED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// This thread's im2col rows ([`pack_cols`]).
    static ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's converted input ([`run`]).
    static CONVERTED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's whole packed images (the narrow-image path of [`run`]).
    static WHOLE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's buffer `slot`, grown as needed and kept
/// for the next call: neither allocated nor zero-filled per call (the profile of int8
/// Darknet53 had 3% of its time in those fills). Its contents are whatever an earlier
/// call left, so `f` must write every element before it reads it.
fn with_reused<T: bytemuck::Pod, R>(
    slot: &'static LocalKey<RefCell<Vec<u32>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let words = (len * size_of::<T>()).div_ceil(4);
    if 4 * words > KEEP_BYTES {
        return f(&mut vec![T::zeroed(); len]);
    }
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < words {
                let more = words - buf.len();
                buf.reserve_exact(more);
                buf.resize(words, 0);
            }
            f(&mut bytemuck::cast_slice_mut(&mut buf[..words])[..len])
        }
        // Re-entered on this thread: a buffer of its own.
        Err(_) => f(&mut vec![T::zeroed(); len]),
    })
}

/// Where a micro-tile's results go: rows `co0..co0 + rows` (output channels) and
/// `cols` columns starting at `ptr`, rows `stride` floats apart.
#[derive(Clone, Copy)]
pub(crate) struct OutTile {
    pub(crate) ptr: *mut f32,
    pub(crate) stride: usize,
    pub(crate) co0: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// One number format of the dense kernels: how activations are packed, and the
/// micro-kernel with its epilogue.
pub(crate) trait Format: Sync {
    /// Depth values per 32-bit word.
    const GROUP: usize;

    /// An activation after rounding or quantisation (u8 code, bf16 bits).
    type Elem: bytemuck::Pod + Send + Sync;

    /// The element of a padding tap (the zero point; bf16 zero).
    const PAD: Self::Elem;

    /// `dst[i]` = `x[i]` rounded or quantised.
    fn convert(&self, x: &[f32], dst: &mut [Self::Elem]);

    /// Packs the first [`Format::GROUP`] of `rows` (converted activations at consecutive
    /// depths, one length `cols <= NR` each) into `dst` (`NR` words), padding columns
    /// `cols..`.
    fn interleave(&self, rows: [&[Self::Elem]; 4], dst: &mut [u32]);

    /// Splits `row` into its even elements (`even[i] = row[2i]`, all `ceil(len / 2)`)
    /// and its odd ones (`odd[i] = row[2i + 1]`).
    fn deinterleave(row: &[Self::Elem], even: &mut [Self::Elem], odd: &mut [Self::Elem]);

    /// [`Format::convert`] and [`Format::interleave`] in one pass, from `f32` rows (for
    /// pointwise convolutions, which read each input value once).
    fn pack_f32(&self, rows: [&[f32]; 4], dst: &mut [u32]);

    /// `out = epilogue(W x X)` for one micro-tile: `x` is an activation panel
    /// (`groups * NR` words), `w` a weight panel (`groups * MR` words).
    ///
    /// # Safety
    /// `out.ptr` must be valid for writes of `out.rows` rows of `out.cols` floats,
    /// `out.stride` apart, that no other thread touches meanwhile; `out.rows <= MR`,
    /// `out.cols <= NR`, and `x.len() / NR == w.len() / MR`.
    unsafe fn tile(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue);
}

/// Packs the columns `p0..p0 + ncols` of the im2col matrix of one converted image `x`
/// (C_in, H, W) into `dst`: `ncols.div_ceil(NR)` panels of `groups * NR` words.
fn pack_cols<F: Format>(
    fmt: &F,
    g: &Geom,
    x: Input<F::Elem>,
    (p0, ncols): (usize, usize),
    dst: &mut [u32],
) {
    let x = match x {
        Input::F32(x) => return pack_pointwise(fmt, g, x, (p0, ncols), dst),
        Input::Converted(x) => x,
    };
    // Whole multiples of 4 channels at a time, so that no depth group straddles two
    // steps (4 * KH * KW rows is a multiple of every GROUP).
    let kk = g.kh * g.kw;
    let chunk = ((SCRATCH_ELEMS / (kk * ncols)) / 4 * 4).max(4);
    with_reused(
        &ROWS,
        chunk.min(g.cin) * kk * ncols,
        |scratch: &mut [F::Elem]| {
            for ch0 in (0..g.cin).step_by(chunk) {
                let chans = ch0..(ch0 + chunk).min(g.cin);
                let (k0, nrows) = (ch0 * kk, chans.len() * kk);
                // im2col writes every element of these rows
                let buf = &mut scratch[..nrows * ncols];
                im2col::<F>(g, x, (p0, ncols), buf, chans);
                let buf = &*buf;
                let range = k0 / F::GROUP..(k0 + nrows).div_ceil(F::GROUP);
                let row = |r: usize, c0: usize, cols: usize| &buf[(r - k0) * ncols + c0..][..cols];
                pack_groups(fmt, g, range, ncols, dst, row);
            }
        },
    )
}

/// [`pack_cols`] of a pointwise convolution: the `f32` input (C_in, H*W) is itself the
/// im2col matrix, rounded or quantised as it is packed.
fn pack_pointwise<F: Format>(
    fmt: &F,
    g: &Geom,
    x: &[f32],
    (p0, ncols): (usize, usize),
    dst: &mut [u32],
) {
    static ZEROS: [f32; NR] = [0.0; NR];
    let (k, n) = (g.depth(), g.positions());
    let groups = k.div_ceil(F::GROUP);
    for grp in 0..groups {
        for pi in 0..ncols.div_ceil(NR) {
            let (c0, cols) = (pi * NR, NR.min(ncols - pi * NR));
            // Depths past K (and rows past GROUP) read zeros: their weights are zero.
            let rows: [&[f32]; 4] = std::array::from_fn(|j| {
                let r = grp * F::GROUP + j;
                if j < F::GROUP && r < k {
                    &x[r * n + p0 + c0..][..cols]
                } else {
                    &ZEROS[..cols]
                }
            });
            fmt.pack_f32(rows, &mut dst[(pi * groups + grp) * NR..][..NR]);
        }
    }
}

/// A convolution's input as the packing reads it: `f32` (pointwise convolutions) or
/// converted once beforehand (the others, whose taps read each value several times).
#[derive(Clone, Copy)]
enum Input<'a, T> {
    F32(&'a [f32]),
    Converted(&'a [T]),
}

/// The im2col rows of the input channels `channels` of one image `x` (C_in, H, W), at
/// the output columns `p0..p0 + nt`, into `buf` (channels.len() * KH * KW, nt); `pad`
/// for the taps outside the image ([`Geom::im2col_channels`] on any element type).
fn im2col<F: Format>(
    g: &Geom,
    x: &[F::Elem],
    (p0, nt): (usize, usize),
    buf: &mut [F::Elem],
    channels: std::ops::Range<usize>,
) {
    let (h, w, s, p) = (g.h, g.w, g.stride, g.pad);
    let pad = F::PAD;
    if s == 2 {
        return im2col_stride2::<F>(g, x, (p0, nt), buf, channels);
    }
    let c0 = channels.start;
    for ci in channels {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = ((ci - c0) * g.kh + ky) * g.kw + kx;
                let dst = &mut buf[r * nt..(r + 1) * nt];
                for (j, oy, ox0, run) in g.row_runs(p0, nt) {
                    let seg = &mut dst[j..j + run];
                    let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                        seg.fill(pad);
                        continue;
                    };
                    let row = &plane[iy * w..(iy + 1) * w];
                    let (a, b) = g.valid_span(kx, ox0, run);
                    seg[..a - ox0].fill(pad);
                    seg[b - ox0..].fill(pad);
                    let valid = &mut seg[a - ox0..b - ox0];
                    let first = a * s + kx - p;
                    if s == 1 {
                        valid.copy_from_slice(&row[first..first + (b - a)]);
                    } else {
                        for (v, src) in valid.iter_mut().zip(row[first..].iter().step_by(s)) {
                            *v = *src;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 2: each input row is split once into its even and odd
/// columns, from which every tap's run is one contiguous copy (as
/// [`Geom::im2col_channels_stride2`]).
fn im2col_stride2<F: Format>(
    g: &Geom,
    x: &[F::Elem],
    (p0, nt): (usize, usize),
    buf: &mut [F::Elem],
    channels: std::ops::Range<usize>,
) {
    let (h, w, p) = (g.h, g.w, g.pad);
    let pad = F::PAD;
    let c0 = channels.start;
    // phases[..half] = row[0], row[2], ...; phases[half..] = row[1], row[3], ...
    let half = w.div_ceil(2);
    let mut phases = vec![pad; 2 * half];
    for ci in channels {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for (j, oy, ox0, run) in g.row_runs(p0, nt) {
                let iy = (oy * 2 + ky).checked_sub(p).filter(|&iy| iy < h);
                if let Some(iy) = iy {
                    let row = &plane[iy * w..(iy + 1) * w];
                    let (even, odd) = phases.split_at_mut(half);
                    F::deinterleave(row, even, odd);
                }
                for kx in 0..g.kw {
                    let r = ((ci - c0) * g.kh + ky) * g.kw + kx;
                    let seg = &mut buf[r * nt + j..][..run];
                    if iy.is_none() {
                        seg.fill(pad);
                        continue;
                    }
                    let (a, b) = g.valid_span(kx, ox0, run);
                    seg[..a - ox0].fill(pad);
                    seg[b - ox0..].fill(pad);
                    // Input columns first, first + 2, ...: one phase, contiguous.
                    let first = a * 2 + kx - p;
                    let phase = &phases[(first % 2) * half + first / 2..][..b - a];
                    seg[a - ox0..b - ox0].copy_from_slice(phase);
                }
            }
        }
    }
}

/// Packs the depth groups `range` of a block of `ncols` columns into `dst` (its panels
/// of `groups * NR` words), `row(r, c0, cols)` giving the converted activations of
/// depth `r` at columns `c0..c0 + cols` of the block.
fn pack_groups<'a, F: Format>(
    fmt: &F,
    g: &Geom,
    range: std::ops::Range<usize>,
    ncols: usize,
    dst: &mut [u32],
    row: impl Fn(usize, usize, usize) -> &'a [F::Elem],
) where
    F::Elem: 'a,
{
    let pads = [F::PAD; NR];
    let k = g.depth();
    let groups = k.div_ceil(F::GROUP);
    for grp in range {
        for pi in 0..ncols.div_ceil(NR) {
            let (c0, cols) = (pi * NR, NR.min(ncols - pi * NR));
            // Depths past K (and rows past GROUP) read padding: their weights are zero.
            let rows: [&[F::Elem]; 4] = std::array::from_fn(|j| {
                let r = grp * F::GROUP + j;
                if j < F::GROUP && r < k {
                    row(r, c0, cols)
                } else {
                    &pads[..cols]
                }
            });
            fmt.interleave(rows, &mut dst[(pi * groups + grp) * NR..][..NR]);
        }
    }
}

/// Runs the micro-tiles of output channel panels `co_panels` over the packed columns
/// `xp` (the panels of columns `p0..p0 + ncols` of one image) into `out`, that image's
/// (C_out, OH*OW) output.
///
/// # Safety
/// `out` must be valid for the image's output and these rows and columns of it
/// touched by no other thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn compute_block<F: Format>(
    fmt: &F,
    g: &Geom,
    xp: &[u32],
    wp: &[u32],
    co_panels: std::ops::Range<usize>,
    (p0, ncols): (usize, usize),
    out: *mut f32,
    act: Epilogue,
) {
    let groups = g.depth().div_ceil(F::GROUP);
    let n = g.positions();
    for cp in co_panels {
        let w = &wp[cp * groups * MR..][..groups * MR];
        let co0 = cp * MR;
        for pi in 0..ncols.div_ceil(NR) {
            let x = &xp[pi * groups * NR..][..groups * NR];
            let c0 = p0 + pi * NR;
            let tile = OutTile {
                // SAFETY: (co0, c0) lies inside the image's (C_out, n) output.
                ptr: unsafe { out.add(co0 * n + c0) },
                stride: n,
                co0,
                rows: MR.min(g.cout - co0),
                cols: NR.min(p0 + ncols - c0),
            };
            // SAFETY: the tile is inside the output and this call's alone (the caller's
            // contract); x and w hold `groups` depth groups each.
            unsafe { fmt.tile(x, w, tile, act) };
        }
    }
}

/// [`run`] into a new `(B, C_out, OH, OW)` buffer on the pool's threads: the output of
/// the fused ops of `bf16.rs` and `int8.rs`.
pub(crate) fn run_to_vec<F: Format>(
    fmt: &F,
    g: &Geom,
    x: &[f32],
    wp: &[u32],
    act: Epilogue,
) -> Vec<f32> {
    // left uninitialised: `run` writes every element
    let len = g.b * g.cout * g.positions();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    run(
        fmt,
        g,
        x,
        wp,
        act,
        &mut out.spare_capacity_mut()[..len],
        crate::pool::pool_threads(),
    );
    // SAFETY: `run` initialised all `len` elements (it asserts the slice's length and
    // writes every output element of every image).
    unsafe { out.set_len(len) };
    out
}

/// Fills `out` (B, C_out, OH, OW) with `act(conv(x, W))` in format `fmt`, `x`
/// (B, C_in, H, W) contiguous `f32`, `wp` the packed weights, on `threads` threads.
pub(crate) fn run<F: Format>(
    fmt: &F,
    g: &Geom,
    x: &[f32],
    wp: &[u32],
    act: Epilogue,
    out: &mut [MaybeUninit<f32>],
    threads: usize,
) {
    assert_eq!(out.len(), g.b * g.cout * g.positions());
    assert_eq!(x.len(), g.b * g.cin * g.h * g.w);
    assert_eq!(
        wp.len(),
        g.cout.div_ceil(MR) * g.depth().div_ceil(F::GROUP) * MR
    );
    if out.is_empty() {
        return;
    }
    let threads = threads.max(1);
    let image = g.cin * g.h * g.w;
    // The input rounded or quantised once, in parallel: (B, C_in, H, W); pointwise
    // convolutions convert while they pack instead.
    let len = if g.pointwise() { 0 } else { x.len() };
    with_reused(&CONVERTED, len, |converted: &mut [F::Elem]| {
        // Small inputs on the calling thread: each parallel pass is a rendezvous of the
        // pool's threads, which costs more than the work when the machine is busy.
        let piece = len.div_ceil(4 * threads).max(SERIAL_ELEMS);
        let dst = SharedPtr(converted.as_mut_ptr());
        // Writes every element of `converted`.
        parallel_for(threads, len.div_ceil(piece), |i| {
            let range = i * piece..((i + 1) * piece).min(len);
            // SAFETY: piece i alone writes converted[range], inside the buffer.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dst.get().add(range.start), range.len()) };
            fmt.convert(&x[range], dst);
        });
        let converted = &*converted;
        let input = |img: usize| match g.pointwise() {
            true => Input::F32(&x[img * image..(img + 1) * image]),
            false => Input::Converted(&converted[img * image..(img + 1) * image]),
        };
        run_converted(fmt, g, input, wp, act, out, threads)
    })
}

/// [`run`] once its input is converted: `input(img)` is image `img` as the packing reads it.
fn run_converted<'a, F: Format>(
    fmt: &F,
    g: &Geom,
    input: impl Fn(usize) -> Input<'a, F::Elem> + Sync,
    wp: &[u32],
    act: Epilogue,
    out: &mut [MaybeUninit<f32>],
    threads: usize,
) {
    let (n, groups) = (g.positions(), g.depth().div_ceil(F::GROUP));
    let co_panels = g.cout.div_ceil(MR);
    let panels = n.div_ceil(NR);
    let panel_words = groups * NR;
    // Panels per block: BLOCK_BYTES of packed activations at most, and enough blocks
    // for every thread, in a multiple of the threads when they are few.
    let mut blocks = panels.div_ceil((BLOCK_BYTES / (4 * panel_words)).max(1));
    let total = g.b * blocks;
    if threads > 1 && total < 4 * threads && !total.is_multiple_of(threads) {
        blocks = (total.div_ceil(threads) * threads).div_ceil(g.b);
    }
    let per_block = panels.div_ceil(blocks.min(panels));
    let blocks = panels.div_ceil(per_block);
    let out = SharedPtr(out.as_mut_ptr().cast::<f32>());
    if threads == 1 || g.b * blocks >= threads {
        // Many blocks: each task packs its block and runs every channel panel over it.
        parallel_for(threads, g.b * blocks, |t| {
            let (img, blk) = (t / blocks, t % blocks);
            let p0 = blk * per_block * NR;
            let ncols = (per_block * NR).min(n - p0);
            let x = input(img);
            with_reused(
                &PACKED,
                ncols.div_ceil(NR) * panel_words,
                |xp: &mut [u32]| {
                    // writes every word of the block's panels
                    pack_cols(fmt, g, x, (p0, ncols), xp);
                    // SAFETY: task t alone writes the columns of its block.
                    unsafe {
                        let out = out.get().add(img * g.cout * n);
                        compute_block(fmt, g, xp, wp, 0..co_panels, (p0, ncols), out, act)
                    }
                },
            )
        });
        return;
    }
    // Fewer panels than threads (small images): pack each image whole into `packed`
    // (every word written before it is read), then split its output channels.
    with_reused(&WHOLE, panels * panel_words, |packed: &mut [u32]| {
        for img in 0..g.b {
            let x = input(img);
            // Small images packed on the calling thread (see SERIAL_ELEMS).
            let per_task = if g.depth() * n <= SERIAL_ELEMS {
                panels
            } else {
                panels.div_ceil(threads)
            };
            let dst = SharedPtr(packed.as_mut_ptr());
            parallel_for(threads, panels.div_ceil(per_task), |t| {
                let p0 = t * per_task * NR;
                let ncols = (per_task * NR).min(n - p0);
                // SAFETY: task t alone owns panels t * per_task.. of the buffer, and they
                // lie inside it (ncols.div_ceil(NR) panels from there).
                let xp = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.get().add(t * per_task * panel_words),
                        ncols.div_ceil(NR) * panel_words,
                    )
                };
                pack_cols(fmt, g, x, (p0, ncols), xp);
            });
            // Tasks: about four per thread over (channel chunk, column block).
            let chunks = (4 * threads).div_ceil(blocks).clamp(1, co_panels);
            let per_chunk = co_panels.div_ceil(chunks);
            let chunks = co_panels.div_ceil(per_chunk);
            let packed = &*packed;
            parallel_for(threads, chunks * blocks, |t| {
                let (c, blk) = (t / blocks, t % blocks);
                let cps = c * per_chunk..((c + 1) * per_chunk).min(co_panels);
                let p0 = blk * per_block * NR;
                let ncols = (per_block * NR).min(n - p0);
                let xp =
                    &packed[blk * per_block * panel_words..][..ncols.div_ceil(NR) * panel_words];
                // SAFETY: task t alone writes these channels of these columns.
                unsafe {
                    let out = out.get().add(img * g.cout * n);
                    compute_block(fmt, g, xp, wp, cps, (p0, ncols), out, act)
                }
            });
        }
    })
}

/// The shapes of a dense convolution as the kernels see them, checked: `x` (B, C_in,
/// H, W) against weights (C_out, C_in, KH, KW).
pub(crate) fn geometry(
    (b, cin, h, w): (usize, usize, usize, usize),
    (cout, wcin, kh, kw): (usize, usize, usize, usize),
    stride: usize,
    pad: usize,
) -> candle_core::Result<Geom> {
    if wcin != cin {
        candle_core::bail!(
            "conv: weight ({cout}, {wcin}, {kh}, {kw}) does not fit an input with {cin} channels"
        );
    }
    if cin == 0 || kh == 0 || kw == 0 {
        candle_core::bail!("conv: empty kernel ({cout}, {wcin}, {kh}, {kw})");
    }
    if stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
        candle_core::bail!(
            "conv: kernel {kh}x{kw} with padding {pad} and stride {stride} does not fit {h}x{w}"
        );
    }
    Ok(Geom {
        b,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        stride,
        pad,
        oh: (h + 2 * pad - kh) / stride + 1,
        ow: (w + 2 * pad - kw) / stride + 1,
    })
}
