//! The errors of reading and writing videos; each names the file.

use std::path::{Path, PathBuf};

/// An error reading or writing a video file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The video file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A container other than MP4/MOV.
    #[error("{}: {container} files are not supported (H.264 in MP4 or MOV only); convert it with `{}`", path.display(), convert_command(path))]
    UnsupportedContainer {
        /// The video file.
        path: PathBuf,
        /// The container's name, e.g. `Matroska/WebM`.
        container: &'static str,
    },
    /// A video track in another codec than H.264 (or H.264 stored as `avc3`).
    #[error("{}: the video track is {codec}, only H.264 (avc1) is supported; convert it with `{}`", path.display(), convert_command(path))]
    UnsupportedCodec {
        /// The video file.
        path: PathBuf,
        /// The codec's name and sample-entry code, e.g. `H.265/HEVC (hev1)`.
        codec: String,
    },
    /// The file has no video track (e.g. audio only).
    #[error("{}: no video track", path.display())]
    NoVideoTrack {
        /// The video file.
        path: PathBuf,
    },
    /// The file is cut short or its boxes do not add up.
    #[error("{}: damaged or truncated MP4: {detail}", path.display())]
    Malformed {
        /// The video file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The video track holds no frame.
    #[error("{}: the video has no frames", path.display())]
    NoFrames {
        /// The video file.
        path: PathBuf,
    },
    /// Frames larger than the pixel limit.
    #[error("{}: {width}x{height} frames are over the limit of {max} pixels (see --max-pixels)", path.display())]
    TooManyPixels {
        /// The video file.
        path: PathBuf,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// The limit.
        max: u64,
    },
    /// The H.264 decoder refused the stream.
    #[error("{}: H.264 decoding failed at sample {sample}: {message}", path.display())]
    Decode {
        /// The video file.
        path: PathBuf,
        /// The sample (in decoding order, from 0) the decoder failed on.
        sample: u64,
        /// What the decoder said.
        message: String,
    },
    /// Encoding or muxing the output failed.
    #[error("cannot write {}: {message}", path.display())]
    Encode {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing the output file failed.
    #[error(transparent)]
    Write(#[from] yolo_io::Error),
}

/// The `ffmpeg` command line converting `path` into H.264 in MP4 (next to it, named
/// `NAME.mp4`, or `NAME-h264.mp4` when the input already is `NAME.mp4`).
pub fn convert_command(path: &Path) -> String {
    let mut out = path.with_extension("mp4");
    if out == path {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        out = path.with_file_name(format!("{stem}-h264.mp4"));
    }
    format!(
        "ffmpeg -i {} -c:v libx264 -pix_fmt yuv420p {}",
        quote(path),
        quote(&out)
    )
}

/// `path` as one shell word (single-quoted when it holds anything but plain characters).
fn quote(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, detail: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_command_names_a_new_file() {
        assert_eq!(
            convert_command(Path::new("a/clip.mkv")),
            "ffmpeg -i a/clip.mkv -c:v libx264 -pix_fmt yuv420p a/clip.mp4"
        );
        assert_eq!(
            convert_command(Path::new("my clip.mp4")),
            "ffmpeg -i 'my clip.mp4' -c:v libx264 -pix_fmt yuv420p 'my clip-h264.mp4'"
        );
    }
}
