//! [`VideoWriter`]: RGB frames encoded to H.264 (OpenH264's encoder, Constrained
//! Baseline) and muxed into an MP4 that appears at its path only once complete.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::RgbImage;
use mp4::{
    AvcConfig, Bytes, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType,
};
use openh264::encoder::{Encoder, EncoderConfig, FrameRate, RateControlMode};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::OpenH264API;
use yolo_io::{AtomicFile, Overwrite};

use crate::demux::annex_b_units;
use crate::Error;

/// The MP4 track id of the video.
const TRACK: u32 = 1;

/// An encoded frame waiting for the next one's timestamp (its duration).
struct Pending {
    bytes: Vec<u8>,
    is_sync: bool,
    pts: i64,
}

/// Writes an H.264 MP4 frame by frame. The file is written beside its path under a
/// temporary name and renamed at [`VideoWriter::finish`]; a writer dropped before (an
/// error, an interrupted run) leaves the path untouched.
pub struct VideoWriter {
    path: PathBuf,
    file: Option<AtomicFile>,
    mp4: Option<Mp4Writer<BufWriter<AtomicFile>>>,
    encoder: Encoder,
    width: u32,
    height: u32,
    timescale: u32,
    /// Default frame duration in ticks (for the last frame).
    frame_ticks: i64,
    first_pts: Option<i64>,
    pending: Option<Pending>,
    frames: u64,
}

impl std::fmt::Debug for VideoWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoWriter")
            .field("path", &self.path)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl VideoWriter {
    /// A writer of `width` x `height` frames (both even) at about `fps` frames per
    /// second, whose timestamps are in ticks of `timescale` per second.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: f64,
        timescale: u32,
    ) -> Result<Self, Error> {
        let fail = |message: String| Error::Encode {
            path: path.to_path_buf(),
            message,
        };
        if width == 0
            || height == 0
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || width > 4096 * 4
            || height > 4096 * 4
        {
            return Err(fail(format!(
                "{width}x{height} frames cannot be encoded (width and height must be even, at most 16384)"
            )));
        }
        let fps = if fps.is_finite() && fps > 0.0 {
            fps
        } else {
            25.0
        };
        // Every frame is kept (no frame skipping), at a constant quality: rate control off
        // (OpenH264's rate control wants to skip frames to hold a bit rate).
        let config = EncoderConfig::new()
            .skip_frames(false)
            .rate_control_mode(RateControlMode::Off)
            .max_frame_rate(FrameRate::from_hz(fps as f32));
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| fail(e.to_string()))?;
        let timescale = timescale.max(1);
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(AtomicFile::create(path, Overwrite::Allow)?),
            mp4: None,
            encoder,
            width,
            height,
            timescale,
            frame_ticks: ((f64::from(timescale) / fps).round() as i64).max(1),
            first_pts: None,
            pending: None,
            frames: 0,
        })
    }

    /// The output's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::Encode {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Encodes `image` (of the writer's size), shown at `pts` ticks; timestamps must
    /// increase. The first frame's timestamp becomes the file's 0.
    pub fn write(&mut self, image: &RgbImage, pts: i64) -> Result<(), Error> {
        if image.dimensions() != (self.width, self.height) {
            return Err(self.fail(format!(
                "a {}x{} frame in a {}x{} video",
                image.width(),
                image.height(),
                self.width,
                self.height
            )));
        }
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(
            image.as_raw(),
            (self.width as usize, self.height as usize),
        ));
        let stream = self
            .encoder
            .encode(&yuv)
            .map_err(|e| Error::Encode {
                path: self.path.clone(),
                message: e.to_string(),
            })?
            .to_vec();
        let (mut sps, mut pps, mut sample, mut is_sync) = (None, None, Vec::new(), false);
        for unit in annex_b_units(&stream) {
            match unit.first().map(|b| b & 0x1f) {
                Some(7) => sps = Some(unit.to_vec()),
                Some(8) => pps = Some(unit.to_vec()),
                Some(t) => {
                    is_sync |= t == 5;
                    sample.extend_from_slice(&(unit.len() as u32).to_be_bytes());
                    sample.extend_from_slice(unit);
                }
                None => {}
            }
        }
        if sample.is_empty() {
            // a skipped frame: the previous one lasts longer
            return Ok(());
        }
        if self.mp4.is_none() {
            let (Some(sps), Some(pps)) = (sps, pps) else {
                return Err(self.fail("the encoder's first frame has no SPS/PPS"));
            };
            self.start(sps, pps)?;
        }
        let first = *self.first_pts.get_or_insert(pts);
        let pts = pts - first;
        if let Some(prev) = &self.pending {
            if pts <= prev.pts {
                return Err(self.fail(format!(
                    "timestamps must increase ({pts} after {})",
                    prev.pts
                )));
            }
        }
        let next = Pending {
            bytes: sample,
            is_sync,
            pts,
        };
        if let Some(prev) = self.pending.replace(next) {
            let duration = pts - prev.pts;
            self.put(prev, duration)?;
        }
        self.frames += 1;
        Ok(())
    }

    /// Starts the MP4 with the parameter sets of the first frame.
    fn start(&mut self, sps: Vec<u8>, pps: Vec<u8>) -> Result<(), Error> {
        let file = self
            .file
            .take()
            .ok_or_else(|| self.fail("the writer has no file"))?;
        let config = Mp4Config {
            major_brand: FourCC::from(*b"isom"),
            minor_version: 512,
            compatible_brands: [b"isom", b"iso2", b"avc1", b"mp41"]
                .into_iter()
                .map(|b| FourCC::from(*b))
                .collect(),
            timescale: 1000,
        };
        let mut mp4 = Mp4Writer::write_start(BufWriter::new(file), &config)
            .map_err(|e| self.fail(e.to_string()))?;
        mp4.add_track(&TrackConfig {
            track_type: TrackType::Video,
            timescale: self.timescale,
            language: "und".into(),
            media_conf: MediaConfig::AvcConfig(AvcConfig {
                width: self.width as u16,
                height: self.height as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(|e| self.fail(e.to_string()))?;
        self.mp4 = Some(mp4);
        Ok(())
    }

    /// Writes one sample lasting `duration` ticks.
    fn put(&mut self, p: Pending, duration: i64) -> Result<(), Error> {
        let duration = u32::try_from(duration).map_err(|_| self.fail("a frame lasts too long"))?;
        let sample = Mp4Sample {
            start_time: p.pts as u64,
            duration,
            rendering_offset: 0,
            is_sync: p.is_sync,
            bytes: Bytes::from(p.bytes),
        };
        let Some(mp4) = self.mp4.as_mut() else {
            return Err(self.fail("no MP4 started"));
        };
        mp4.write_sample(TRACK, &sample).map_err(|e| Error::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the last frame and the index, and puts the file at its path. A writer
    /// that got no frame writes nothing and fails.
    pub fn finish(mut self) -> Result<(), Error> {
        let Some(last) = self.pending.take() else {
            return Err(self.fail("no frame to write"));
        };
        let duration = self.frame_ticks;
        self.put(last, duration)?;
        let mut mp4 = self.mp4.take().ok_or_else(|| self.fail("no MP4 started"))?;
        mp4.write_end().map_err(|e| self.fail(e.to_string()))?;
        let file = mp4.into_writer().into_inner().map_err(|e| Error::Encode {
            path: self.path.clone(),
            message: e.error().to_string(),
        })?;
        file.commit()?;
        Ok(())
    }
}
