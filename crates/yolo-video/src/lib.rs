#![doc = include_str!("../README.md")]
//!
//! ## Contents
//!
//! - [`sniff`] tells video files from images by their first bytes, naming the container;
//! - [`VideoReader`] demuxes an MP4/MOV file's H.264 track and decodes it frame by frame
//!   into [`YuvFrame`]s (the decoder's planes, in display order, with timestamps);
//! - [`FrameSource`] runs a reader on its own thread and hands out RGB [`Frame`]s through
//!   a bounded channel, with a stride and a frame limit;
//! - [`VideoWriter`] encodes RGB frames to H.264 and muxes them into an MP4 written
//!   atomically (`yolo_io::AtomicFile`).
//!
//! Every error is an [`Error`] naming the file.

mod boxes;
mod demux;
mod error;
mod frame;
mod reader;
mod sniff;
mod source;
mod writer;

pub use error::{convert_command, Error};
pub use frame::{Frame, YuvFrame};
pub use reader::{VideoInfo, VideoReader};
pub use sniff::{sniff, sniff_file, Container, SNIFF_LEN};
pub use source::{FrameSource, Frames, SourceOptions, DEFAULT_MAX_PIXELS};
pub use writer::VideoWriter;
