//! [`FrameSource`]: a video's RGB frames decoded on their own thread, a bounded number
//! ahead of the consumer.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::{Error, Frame, VideoInfo, VideoReader};

/// The default pixel limit per frame: as `yolov3_head::DEFAULT_MAX_PIXELS` (Pillow's
/// decompression-bomb size, about 179 megapixels).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Which frames a [`FrameSource`] hands out, and how far ahead it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceOptions {
    /// Refuse frames of more pixels than this.
    pub max_pixels: u64,
    /// Hand out every `stride`-th frame (frames 0, stride, 2 stride, …); at least 1.
    pub stride: u64,
    /// Stop after this many frames handed out.
    pub max_frames: Option<u64>,
    /// Frames decoded ahead of the consumer (the channel's bound); at least 1.
    pub queue: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            stride: 1,
            max_frames: None,
            queue: 4,
        }
    }
}

impl SourceOptions {
    /// How many frames a video of `frames` frames gives with these options.
    pub fn frames_out_of(&self, frames: u64) -> u64 {
        let n = frames.div_ceil(self.stride.max(1));
        self.max_frames.map_or(n, |m| n.min(m))
    }
}

/// A video opened for its RGB frames; [`FrameSource::spawn`] starts the decoding.
#[derive(Debug)]
pub struct FrameSource {
    reader: VideoReader,
    options: SourceOptions,
}

impl FrameSource {
    /// Opens `path` (see [`VideoReader::open`]): errors about the file come here, before
    /// any frame.
    pub fn open(path: &Path, options: SourceOptions) -> Result<Self, Error> {
        Ok(Self {
            reader: VideoReader::open(path, options.max_pixels)?,
            options,
        })
    }

    /// What the file says about the video.
    pub fn info(&self) -> &VideoInfo {
        self.reader.info()
    }

    /// How many frames [`FrameSource::spawn`] will hand out (if the file holds the frames
    /// its index announces).
    pub fn expected_frames(&self) -> u64 {
        self.options.frames_out_of(self.info().frames)
    }

    /// Starts decoding on a new thread; the frames come in display order through a
    /// channel of [`SourceOptions::queue`] frames. A decoding error is the last item.
    pub fn spawn(self) -> Result<Frames, Error> {
        let (tx, rx) = sync_channel(self.options.queue.max(1));
        let Self {
            mut reader,
            options,
        } = self;
        let path = reader.path().to_path_buf();
        let handle = std::thread::Builder::new()
            .name("yolo-video-decode".into())
            .spawn(move || {
                let stride = options.stride.max(1);
                let mut sent = 0u64;
                // a frame's decoding time includes the frames the stride skipped before it
                let mut start = Instant::now();
                loop {
                    if options.max_frames.is_some_and(|m| sent >= m) {
                        return;
                    }
                    let item = match reader.next_yuv() {
                        Ok(None) => return,
                        Ok(Some(yuv)) if !yuv.index.is_multiple_of(stride) => continue,
                        Ok(Some(yuv)) => Ok(Frame {
                            index: yuv.index,
                            pts_ms: yuv.pts_ms(),
                            pts: yuv.pts,
                            timescale: yuv.timescale,
                            image: yuv.to_rgb(),
                            decode_time: start.elapsed(),
                        }),
                        Err(e) => Err(e),
                    };
                    let stop = item.is_err();
                    // the receiver gone means nobody wants more frames
                    if tx.send(item).is_err() || stop {
                        return;
                    }
                    sent += 1;
                    start = Instant::now();
                }
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(Frames {
            rx: Some(rx),
            handle: Some(handle),
            path,
        })
    }
}

/// The frames of a [`FrameSource`], as they are decoded; dropping it stops the thread.
#[derive(Debug)]
pub struct Frames {
    rx: Option<Receiver<Result<Frame, Error>>>,
    handle: Option<JoinHandle<()>>,
    path: std::path::PathBuf,
}

impl Iterator for Frames {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.as_ref()?.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // the thread is done: it ended the video, or it panicked (said so, once)
                self.rx = None;
                let panicked = self.handle.take().is_some_and(|h| h.join().is_err());
                panicked.then(|| {
                    Err(Error::Decode {
                        path: self.path.clone(),
                        sample: 0,
                        message: "the decoding thread panicked".into(),
                    })
                })
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // the receiver first, so that a thread blocked on a full channel returns
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_out_of_a_stride_and_a_limit() {
        let o = SourceOptions {
            stride: 3,
            ..SourceOptions::default()
        };
        assert_eq!(o.frames_out_of(16), 6);
        assert_eq!(o.frames_out_of(15), 5);
        let o = SourceOptions {
            max_frames: Some(4),
            ..o
        };
        assert_eq!(o.frames_out_of(16), 4);
        assert_eq!(o.frames_out_of(0), 0);
    }
}
