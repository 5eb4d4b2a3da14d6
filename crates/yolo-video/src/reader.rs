//! [`VideoReader`]: an MP4/MOV file's H.264 track decoded frame by frame.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openh264::decoder::{DecodeOptions, DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;

use crate::boxes;
use crate::demux::{avcc_to_annex_b, H264Track, SampleCursor};
use crate::sniff::{sniff_file, Container};
use crate::{Error, YuvFrame};

/// What a video file says about itself before any frame is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels (the sample entry's; frames are checked as they come).
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames in the track.
    pub frames: u64,
    /// Mean frame rate: frames over the track's duration (0 when it has none).
    pub fps: f64,
    /// Ticks per second of the timestamps.
    pub timescale: u32,
    /// The H.264 profile: `Baseline`, `Main`, `High`, … (or its number).
    pub profile: String,
}

/// Decodes the H.264 track of an MP4/MOV file into [`YuvFrame`]s in display order,
/// reading one sample at a time (the file is never held in memory whole).
pub struct VideoReader {
    path: PathBuf,
    file: BufReader<File>,
    file_len: u64,
    track: H264Track,
    cursor: SampleCursor,
    decoder: Decoder,
    /// Timestamps of the samples sent to the decoder and not yet given to a frame; the
    /// decoder hands frames out in display order, so each takes the smallest.
    pending: BinaryHeap<Reverse<i64>>,
    /// Frames flushed out of the decoder at the end.
    flushed: VecDeque<YuvFrame>,
    sample: Vec<u8>,
    annex_b: Vec<u8>,
    max_pixels: u64,
    next_index: u64,
    last_sample: u64,
    done: bool,
    info: VideoInfo,
}

impl std::fmt::Debug for VideoReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoReader")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

/// The name of an H.264 `profile_idc`.
fn profile_name(idc: u8) -> String {
    match idc {
        66 => "Baseline".into(),
        77 => "Main".into(),
        88 => "Extended".into(),
        100 => "High".into(),
        110 => "High 10".into(),
        122 => "High 4:2:2".into(),
        244 => "High 4:4:4".into(),
        n => format!("profile {n}"),
    }
}

impl VideoReader {
    /// Opens `path`: checks the container, finds the H.264 track and its parameters, and
    /// refuses frames of more than `max_pixels` pixels.
    pub fn open(path: &Path, max_pixels: u64) -> Result<Self, Error> {
        match sniff_file(path)? {
            Some(Container::Mp4) => {}
            Some(Container::Other(container)) => {
                return Err(Error::UnsupportedContainer {
                    path: path.to_path_buf(),
                    container,
                })
            }
            None => return Err(Error::malformed(path, "not an MP4/MOV file (no ftyp box)")),
        }
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let moov = boxes::read_moov(path, &mut file, file_len)?;
        boxes::check_nested(path, &moov)?;
        let kinds = boxes::tracks(&moov);
        drop(moov);
        let video: Vec<_> = kinds.iter().filter(|k| &k.handler == b"vide").collect();
        let Some(first) = video.first() else {
            return Err(Error::NoVideoTrack {
                path: path.to_path_buf(),
            });
        };
        if !video.iter().any(|k| k.codec == Some(*b"avc1")) {
            return Err(Error::UnsupportedCodec {
                path: path.to_path_buf(),
                codec: first.codec.map_or_else(
                    || "a track without a sample entry".into(),
                    |c| boxes::codec_name(&c),
                ),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let mp4 = mp4::Mp4Reader::read_header(BufReader::new(&mut file), file_len)
            .map_err(|e| Error::malformed(path, e.to_string()))?;
        if mp4.is_fragmented() {
            return Err(Error::UnsupportedContainer {
                path: path.to_path_buf(),
                container: "fragmented MP4",
            });
        }
        let h264 = mp4
            .tracks()
            .values()
            .filter(|t| {
                &t.trak.mdia.hdlr.handler_type.value == b"vide"
                    && t.trak.mdia.minf.stbl.stsd.avc1.is_some()
            })
            .min_by_key(|t| t.track_id())
            .ok_or_else(|| Error::malformed(path, "the H.264 track could not be parsed"))?;
        let track = H264Track::from_track(path, h264)?;
        drop(mp4);
        let file = BufReader::new(file);
        let (width, height) = (u32::from(track.width), u32::from(track.height));
        check_pixels(path, width, height, max_pixels)?;
        let frames = u64::from(track.table.count);
        if frames == 0 {
            return Err(Error::NoFrames {
                path: path.to_path_buf(),
            });
        }
        let fps = if track.duration > 0 {
            frames as f64 * track.timescale as f64 / track.duration as f64
        } else {
            0.0
        };
        let decoder = Decoder::with_api_config(
            OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .map_err(|e| Error::Decode {
            path: path.to_path_buf(),
            sample: 0,
            message: e.to_string(),
        })?;
        let info = VideoInfo {
            width,
            height,
            frames,
            fps,
            timescale: track.timescale,
            profile: profile_name(track.profile),
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            file_len,
            track,
            cursor: SampleCursor::default(),
            decoder,
            pending: BinaryHeap::new(),
            flushed: VecDeque::new(),
            sample: Vec::new(),
            annex_b: Vec::new(),
            max_pixels,
            next_index: 0,
            last_sample: 0,
            done: false,
            info,
        })
    }

    /// What the file says about the video.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next frame in display order, `Ok(None)` after the last.
    pub fn next_yuv(&mut self) -> Result<Option<YuvFrame>, Error> {
        loop {
            if let Some(f) = self.flushed.pop_front() {
                return Ok(Some(f));
            }
            if self.done {
                return Ok(None);
            }
            let sample = self
                .cursor
                .next(&self.track.table)
                .map_err(|d| Error::malformed(&self.path, d))?;
            let Some(sample) = sample else {
                return self.flush();
            };
            self.last_sample = u64::from(sample.index);
            let end = sample.offset.checked_add(u64::from(sample.size));
            if end.is_none_or(|e| e > self.file_len) {
                return Err(Error::malformed(
                    &self.path,
                    format!(
                        "sample {} of {} lies past the end of the file (truncated?)",
                        sample.index + 1,
                        self.track.table.count
                    ),
                ));
            }
            self.sample.resize(sample.size as usize, 0);
            self.file
                .seek(SeekFrom::Start(sample.offset))
                .and_then(|_| self.file.read_exact(&mut self.sample))
                .map_err(|e| Error::io(&self.path, e))?;
            self.annex_b.clear();
            if sample.index == 0 {
                self.annex_b.extend_from_slice(&self.track.parameter_sets);
            }
            avcc_to_annex_b(&self.sample, self.track.nal_length_size, &mut self.annex_b).map_err(
                |d| Error::malformed(&self.path, format!("sample {}: {d}", sample.index + 1)),
            )?;
            self.pending
                .push(Reverse(sample.pts - self.track.start_pts));
            let decoded = self
                .decoder
                .decode_with_options(&self.annex_b, DecodeOptions::new())
                .map_err(|e| Error::Decode {
                    path: self.path.clone(),
                    sample: u64::from(sample.index),
                    message: e.to_string(),
                })?;
            if let Some(yuv) = decoded {
                let pts = self.pending.pop().map_or(0, |Reverse(p)| p);
                let frame = to_frame(&yuv, self.next_index, pts, self.track.timescale);
                self.next_index += 1;
                check_pixels(&self.path, frame.width, frame.height, self.max_pixels)?;
                return Ok(Some(frame));
            }
        }
    }

    /// The frames left in the decoder once every sample was sent.
    fn flush(&mut self) -> Result<Option<YuvFrame>, Error> {
        self.done = true;
        let remaining = self.decoder.flush_remaining().map_err(|e| Error::Decode {
            path: self.path.clone(),
            sample: self.last_sample,
            message: e.to_string(),
        })?;
        for yuv in &remaining {
            let pts = self.pending.pop().map_or(0, |Reverse(p)| p);
            self.flushed
                .push_back(to_frame(yuv, self.next_index, pts, self.track.timescale));
            self.next_index += 1;
        }
        drop(remaining);
        if self.next_index == 0 {
            return Err(Error::NoFrames {
                path: self.path.clone(),
            });
        }
        for f in &self.flushed {
            check_pixels(&self.path, f.width, f.height, self.max_pixels)?;
        }
        Ok(self.flushed.pop_front())
    }
}

/// Refuses frames over `max` pixels.
fn check_pixels(path: &Path, width: u32, height: u32, max: u64) -> Result<(), Error> {
    if u64::from(width) * u64::from(height) > max {
        return Err(Error::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            max,
        });
    }
    Ok(())
}

/// Copies the decoder's planes (rows of `stride` bytes) into a [`YuvFrame`].
fn to_frame(yuv: &DecodedYUV<'_>, index: u64, pts: i64, timescale: u32) -> YuvFrame {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let copy = |plane: &[u8], stride: usize, width: usize, rows: usize| {
        let mut out = Vec::with_capacity(width * rows);
        for r in 0..rows {
            out.extend_from_slice(&plane[r * stride..r * stride + width]);
        }
        out
    };
    YuvFrame {
        index,
        pts,
        timescale,
        width: w as u32,
        height: h as u32,
        y: copy(yuv.y(), sy, w, h),
        u: copy(yuv.u(), su, cw, ch),
        v: copy(yuv.v(), sv, cw, ch),
    }
}
