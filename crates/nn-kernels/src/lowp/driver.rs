//! The tiling and threading shared by the bf16 and int8 dense convolutions.
//!
//! The convolution is the GEMM `out (C_out x OH*OW) = W (C_out x K) * X (K x OH*OW)`
//! per image, `K = C_in * KH * KW`, computed in micro-tiles of [`MR`] output channels by
//! [`NR`] output positions whose accumulators stay in registers over the whole depth.
//! Both operands are packed as 32-bit words, each holding one depth *group* of a
//! column: four u8 codes, or two bf16 values, of consecutive input channels at one
//! kernel tap ([`depth_groups`]):
//!
//! - weights, at load: panels of `MR` channels, `(C_out / MR, groups, MR)` words
//!   (channels past the ends padded with zeros), [`pack_weights`];
//! - activations, at each call: the input is first rounded or quantised once, element
//!   by element, into a copy of one or two bytes per value (a quarter or half of the
//!   `f32` input; stride-2 rows split into their even and odd columns), then packed in
//!   panels of `NR` positions, `(OH*OW / NR, groups, NR)` words, straight from that
//!   copy ([`pack_taps_generic`]: padding taps get the format's zero, columns past the
//!   end are padded). Pointwise convolutions quantise while they pack, from the `f32`
//!   input.
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

/// Largest buffer a thread keeps for its next call (bytes): beyond it (large batches),
/// each call allocates its own, so an idle model does not hold tens of megabytes.
const KEEP_BYTES: usize = 16 << 20;

thread_local! {
    /// This thread's packed activation block, reused from call to call.
    static PACKED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
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
    /// An activation after rounding or quantisation (u8 code, bf16 bits).
    type Elem: Lane;

    /// `dst[i]` = `x[i]` rounded or quantised.
    fn convert(&self, x: &[f32], dst: &mut [Self::Elem]);

    /// [`Format::convert`] of rows `w` long, each row written as its even columns, then
    /// its odd ones (the input layout of stride-2 convolutions, see [`pack_taps_generic`]).
    fn convert_split(&self, x: &[f32], w: usize, dst: &mut [Self::Elem]);

    /// Rounds or quantises the first [`Lane::PER_WORD`] of `rows` (`f32` activations
    /// at consecutive depths, one length `cols <= NR` each) and packs them into `dst`
    /// (`NR` words), padding columns `cols..` (for pointwise convolutions, which read
    /// each input value once).
    fn pack_f32(&self, rows: [&[f32]; 4], dst: &mut [u32]);

    /// `out = epilogue(W x X)` for one micro-tile: `x` is an activation panel
    /// (`groups * NR` words), `w` a weight panel (`groups * MR` words).
    ///
    /// # Safety
    /// `out.ptr` must be valid for writes of `out.rows` rows of `out.cols` floats,
    /// `out.stride` apart, that no other thread touches meanwhile; `out.rows <= MR`,
    /// `out.cols <= NR`, and `x.len() / NR == w.len() / MR`.
    unsafe fn tile(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue);

    /// [`Format::tile`] along a row of tiles: `x` holds `out.cols.div_ceil(NR)`
    /// consecutive activation panels (`groups * NR` words each), whose output columns
    /// follow each other from `out.ptr` (`out.cols` of them in all, any number). A
    /// format may override this to set up its epilogue and pick its kernel once per row
    /// rather than once per tile.
    ///
    /// # Safety
    /// As [`Format::tile`], for the whole row: `out.ptr` valid for `out.rows` rows of
    /// `out.cols` floats.
    unsafe fn tiles(&self, x: &[u32], w: &[u32], out: OutTile, act: Epilogue) {
        // SAFETY: the caller's contract, passed on.
        unsafe { tile_by_tile(self, x, w, out, act) }
    }
}

/// [`Format::tiles`] as one [`Format::tile`] call per tile.
///
/// # Safety
/// As [`Format::tiles`].
pub(crate) unsafe fn tile_by_tile<F: Format + ?Sized>(
    fmt: &F,
    x: &[u32],
    w: &[u32],
    out: OutTile,
    act: Epilogue,
) {
    let words = w.len() / MR * NR;
    for (pi, x) in x
        .chunks_exact(words)
        .take(out.cols.div_ceil(NR))
        .enumerate()
    {
        let tile = OutTile {
            // SAFETY: column pi * NR < out.cols of the row (the caller's contract).
            ptr: unsafe { out.ptr.add(pi * NR) },
            cols: NR.min(out.cols - pi * NR),
            ..out
        };
        // SAFETY: the tile is inside the caller's row.
        unsafe { fmt.tile(x, w, tile, act) };
    }
}

/// One element type of the packed activations (u8 codes, bf16 bits): how
/// [`Lane::PER_WORD`] of them, at consecutive depths, make one 32-bit word.
pub(crate) trait Lane: bytemuck::Pod + Send + Sync {
    /// Elements per word: the depth group of the micro-kernels.
    const PER_WORD: usize;
    /// The element of a padding tap (the zero point; bf16 zero).
    const PAD: Self;

    /// The word of `e[..PER_WORD]` (element `j` in bits `32 / PER_WORD * j..`).
    fn word(e: [Self; 4]) -> u32;

    /// [`Lane::word`] of sixteen columns: word `c` of `rows[..][c]`.
    fn words16(rows: [&[Self; 16]; 4]) -> [u32; 16];

    /// [`pack_taps_generic`] on this element type, with the CPU's vector extensions.
    fn pack_taps(g: &Geom, x: &[Self], cols: (usize, usize), dst: &mut [u32]);
}

/// Depth groups of the packed operands of a convolution: group `q * KH * KW + tap`
/// holds input channels `q * G..(q + 1) * G` (padding past C_in) at tap
/// `tap = ky * KW + kx`, with `G` elements per word, for `q` in `0..ceil(C_in / G)`.
/// Grouping channels of one tap, rather than consecutive depths of PyTorch's
/// (C_in, KH, KW) order, lets every word be packed from its channels' input planes
/// directly ([`pack_taps_generic`]); the taps of a channel group follow each other so
/// that the packing reads those planes' rows while they are in L1 and writes the panel
/// in order. A pointwise convolution has one tap: its groups are consecutive depths.
pub(crate) fn depth_groups(g: &Geom, per_word: usize) -> usize {
    g.kh * g.kw * g.cin.div_ceil(per_word)
}

/// Packs convolution weights (C_out, C_in, KH, KW) for the micro-kernels: panels of
/// [`MR`] output channels, `(C_out / MR, groups, MR)` words in the groups of
/// [`depth_groups`]; element `j` of word `(panel, q * KH * KW + tap, r)` is `bits(i)`
/// of the weight at flat index `i` of channel `panel * MR + r`, input channel
/// `q * per_word + j`, tap `tap` (zero past C_out and C_in).
pub(crate) fn pack_weights(
    (cout, cin, kh, kw): (usize, usize, usize, usize),
    per_word: usize,
    bits: impl Fn(usize) -> u32,
) -> Vec<u32> {
    let taps = kh * kw;
    let groups = taps * cin.div_ceil(per_word);
    let width = 32 / per_word;
    let mut packed = vec![0u32; cout.div_ceil(MR) * groups * MR];
    for co in 0..cout {
        let (panel, r) = (co / MR, co % MR);
        for ci in 0..cin {
            let (q, j) = (ci / per_word, ci % per_word);
            for tap in 0..taps {
                let word = (panel * groups + q * taps + tap) * MR + r;
                packed[word] |= bits((co * cin + ci) * taps + tap) << (width * j);
            }
        }
    }
    packed
}

/// One run of a panel's columns at one tap, as [`pack_taps_generic`] packs it.
#[derive(Clone, Copy, Default)]
struct Piece {
    /// The run's words `start..end` in the panel's group; of them `valid_start..
    /// valid_end` read the input, the others are padding.
    start: usize,
    valid_start: usize,
    valid_end: usize,
    end: usize,
    /// Offset in a channel plane of the input of the first valid word.
    src: usize,
}

/// Packs the columns `p0..p0 + ncols` of the im2col matrix of one converted image `x`
/// (C_in, H, W) into `dst`: `ncols.div_ceil(NR)` panels of `groups * NR` words, in the
/// groups of [`depth_groups`]. Each word is built from its channels' input planes
/// directly, run by run along output rows: no im2col copy in between (that copy and
/// its many short `memcpy`/`memset` calls took 12% of int8 Darknet53's time). Taps
/// outside the image, channels past C_in and columns past `ncols` get the padding
/// element. For stride 2, `x` holds each row as its even columns, then its odd ones
/// ([`Format::convert_split`]), so that every run reads contiguous elements.
///
/// `interleave(rows, words)` packs one run at stride 1: `words[c]` is the word of
/// `rows[..][c]` (each row exactly `words.len()` long).
#[inline(always)]
pub(crate) fn pack_taps_generic<T: Lane>(
    g: &Geom,
    x: &[T],
    (p0, ncols): (usize, usize),
    dst: &mut [u32],
    interleave: impl Fn([&[T]; 4], &mut [u32]),
) {
    let pads = [T::PAD; 2 * NR];
    let pad_word = T::word([T::PAD; 4]);
    let (h, w, s, p) = (g.h, g.w, g.stride, g.pad);
    let (taps, cq) = (g.kh * g.kw, g.cin.div_ceil(T::PER_WORD));
    let groups = depth_groups(g, T::PER_WORD);
    // Input elements between consecutive columns of a run (stride-2 rows are split).
    let step = if s == 2 { 1 } else { s };
    // Each tap's pieces of the current panel: `counts[tap]` of them from `tap * NR`.
    let mut pieces = vec![Piece::default(); taps * NR];
    let mut counts = vec![0usize; taps];
    for pi in 0..ncols.div_ceil(NR) {
        let (c0, cols) = (pi * NR, NR.min(ncols - pi * NR));
        for (tap, count) in counts.iter_mut().enumerate() {
            let (ky, kx) = (tap / g.kw, tap % g.kw);
            *count = 0;
            for (j, oy, ox0, run) in g.row_runs(p0 + c0, cols) {
                let iy = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h);
                let (a, b) = match iy {
                    Some(_) => g.valid_span(kx, ox0, run),
                    None => (ox0, ox0),
                };
                // Input column of the first valid output column; stride 2 reads the
                // row split into its even columns, then its odd ones.
                let first = (a * s + kx).saturating_sub(p);
                let src = iy.map_or(0, |iy| match s {
                    2 => iy * w + (first % 2) * w.div_ceil(2) + first / 2,
                    _ => iy * w + first,
                });
                pieces[tap * NR + *count] = Piece {
                    start: j,
                    valid_start: j + a - ox0,
                    valid_end: j + b - ox0,
                    end: j + run,
                    src,
                };
                *count += 1;
            }
        }
        let panel = &mut dst[pi * groups * NR..][..groups * NR];
        for (q, chunk) in panel.chunks_exact_mut(taps * NR).enumerate() {
            for (tap, words) in chunk.chunks_exact_mut(NR).enumerate() {
                for pc in &pieces[tap * NR..][..counts[tap]] {
                    // (short fills: a call to `memset` each, even when empty)
                    if pc.valid_start > pc.start {
                        words[pc.start..pc.valid_start].fill(pad_word);
                    }
                    if pc.end > pc.valid_end {
                        words[pc.valid_end..pc.end].fill(pad_word);
                    }
                    if pc.valid_end == pc.valid_start {
                        continue;
                    }
                    let len = (pc.valid_end - pc.valid_start - 1) * step + 1;
                    // (not `array::from_fn`, which the compiler left a call here)
                    let row = |e: usize| {
                        let ch = q * T::PER_WORD + e;
                        match e < T::PER_WORD && ch < g.cin {
                            true => &x[ch * h * w + pc.src..][..len],
                            false => &pads[..len],
                        }
                    };
                    let rows = [row(0), row(1), row(2), row(3)];
                    let words = &mut words[pc.valid_start..pc.valid_end];
                    match step {
                        1 => interleave(rows, words),
                        _ => interleave_strided(rows, step, words),
                    }
                }
                if cols < NR {
                    words[cols..].fill(pad_word);
                }
            }
        }
        debug_assert_eq!(panel.len(), cq * taps * NR);
    }
}

/// `dst[c]` = the word of `rows[..][c * s]`: one run of output columns whose inputs
/// are `s` apart in each row (strides other than 1 and 2, which read split rows).
#[inline(always)]
fn interleave_strided<T: Lane>(rows: [&[T]; 4], s: usize, dst: &mut [u32]) {
    for (c, d) in dst.iter_mut().enumerate() {
        *d = T::word([
            rows[0][c * s],
            rows[1][c * s],
            rows[2][c * s],
            rows[3][c * s],
        ]);
    }
}

/// `dst[c]` = the word of `rows[..][c]` (each row exactly `dst.len()` long), in plain
/// Rust: sixteen words (one 512-bit vector) at a time, each row widened to 32-bit
/// lanes first (the form the compiler vectorises), the tail word by word.
#[inline(always)]
pub(crate) fn interleave_portable<T: Lane>(rows: [&[T]; 4], dst: &mut [u32]) {
    let n = dst.len();
    let full = n / 16 * 16;
    let (head, tail) = dst.split_at_mut(full);
    for (k, d) in head.chunks_exact_mut(16).enumerate() {
        let row = |j: usize| -> &[T; 16] { rows[j][16 * k..16 * k + 16].try_into().unwrap() };
        let d: &mut [u32; 16] = d.try_into().unwrap();
        *d = T::words16([row(0), row(1), row(2), row(3)]);
    }
    // (element by element: a copy into a padded vector would call `memcpy` for a few
    // bytes, which costs more here)
    for (c, d) in tail.iter_mut().enumerate() {
        let c = full + c;
        *d = T::word([rows[0][c], rows[1][c], rows[2][c], rows[3][c]]);
    }
}

/// Packs the columns `p0..p0 + ncols` of the im2col matrix of one image (C_in, H, W)
/// into `dst`: `ncols.div_ceil(NR)` panels of `groups * NR` words.
fn pack_cols<F: Format>(
    fmt: &F,
    g: &Geom,
    x: Input<F::Elem>,
    cols: (usize, usize),
    dst: &mut [u32],
) {
    match x {
        Input::F32(x) => pack_pointwise(fmt, g, x, cols, dst),
        Input::Converted(x) => F::Elem::pack_taps(g, x, cols, dst),
    }
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
    let groups = k.div_ceil(F::Elem::PER_WORD);
    for grp in 0..groups {
        for pi in 0..ncols.div_ceil(NR) {
            let (c0, cols) = (pi * NR, NR.min(ncols - pi * NR));
            // Depths past K (and rows past GROUP) read zeros: their weights are zero.
            let rows: [&[f32]; 4] = std::array::from_fn(|j| {
                let r = grp * F::Elem::PER_WORD + j;
                if j < F::Elem::PER_WORD && r < k {
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
    let groups = depth_groups(g, F::Elem::PER_WORD);
    let n = g.positions();
    for cp in co_panels {
        let w = &wp[cp * groups * MR..][..groups * MR];
        let co0 = cp * MR;
        let row = OutTile {
            // SAFETY: (co0, p0) lies inside the image's (C_out, n) output.
            ptr: unsafe { out.add(co0 * n + p0) },
            stride: n,
            co0,
            rows: MR.min(g.cout - co0),
            cols: ncols,
        };
        // SAFETY: the row of tiles is inside the output and this call's alone (the
        // caller's contract); xp holds its panels, w `groups` depth groups.
        unsafe { fmt.tiles(xp, w, row, act) };
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
        g.cout.div_ceil(MR) * depth_groups(g, F::Elem::PER_WORD) * MR
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
        // Stride 2 splits rows into their even and odd columns: pieces of whole rows.
        let split = g.stride == 2;
        let row = if split { g.w } else { 1 };
        let piece = len
            .div_ceil(4 * threads)
            .max(SERIAL_ELEMS)
            .next_multiple_of(row);
        let dst = SharedPtr(converted.as_mut_ptr());
        // Writes every element of `converted`.
        parallel_for(threads, len.div_ceil(piece), |i| {
            let range = i * piece..((i + 1) * piece).min(len);
            // SAFETY: piece i alone writes converted[range], inside the buffer.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dst.get().add(range.start), range.len()) };
            match split {
                true => fmt.convert_split(&x[range], g.w, dst),
                false => fmt.convert(&x[range], dst),
            }
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
    let (n, groups) = (g.positions(), depth_groups(g, F::Elem::PER_WORD));
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
