//! Convolution geometry and the im2col copy: the input patches of a tile of output
//! positions laid out as the columns of a GEMM's right-hand side.

/// Shapes of one convolution: input (B, C_in, H, W), weight (C_out, C_in, KH, KW),
/// output (B, C_out, OH, OW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    pub(crate) b: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Geom {
    /// GEMM depth: `C_in * KH * KW`.
    pub(crate) fn depth(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image: `OH * OW`.
    pub(crate) fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1, stride-1, unpadded convolution reads its input as the GEMM's right side.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns `lo..hi` whose input column `ox * s + kx - p` lies in `0..w`.
    #[inline]
    pub(crate) fn valid_cols(&self, kx: usize) -> (usize, usize) {
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
    #[inline]
    pub(crate) fn valid_span(&self, kx: usize, ox0: usize, run: usize) -> (usize, usize) {
        let (lo, hi) = self.valid_cols(kx);
        let a = lo.clamp(ox0, ox0 + run);
        (a, hi.clamp(a, ox0 + run))
    }

    /// The output positions `p0..p0 + nt` of one image cut at the ends of output rows:
    /// `(j, oy, ox0, run)` for positions `p0 + j..p0 + j + run`, columns
    /// `ox0..ox0 + run` of output row `oy`.
    pub(crate) fn row_runs(
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
    pub(crate) fn im2col(&self, x: &[f32], p0: usize, nt: usize, buf: &mut [f32]) {
        self.im2col_channels(x, p0, nt, buf, 0..self.cin);
    }

    /// Like [`Geom::im2col`] for the input channels `channels` only: `buf` holds their
    /// rows, (channels.len() * KH * KW, nt).
    pub(crate) fn im2col_channels(
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
    pub(crate) fn im2col_channels_stride2(
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
