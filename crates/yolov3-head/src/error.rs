//! Typed errors of the YOLOv3 crate.

use std::path::PathBuf;

/// Errors from building or running the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A network error (weights, shapes, input size, class count).
    #[error(transparent)]
    Network(#[from] nn_blocks::Error),

    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// An image could not be decoded (corrupt, truncated, empty or not an image).
    #[error("cannot decode image {}: {source}", path.display())]
    Decode {
        /// The image file (`<memory>` for in-memory images).
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },

    /// An image whose header claims more pixels than the limit (a decompression bomb).
    #[error("image {} is {width}x{height} = {} pixels, over the limit of {max_pixels} pixels; refused before decoding", path.display(), (*width as u64) * (*height as u64))]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// Width claimed by the header.
        width: u32,
        /// Height claimed by the header.
        height: u32,
        /// The limit in pixels.
        max_pixels: u64,
    },

    /// An anchors file that does not parse.
    #[error("malformed anchors in {source_name}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Anchors {
        /// The file name (or `<string>`).
        source_name: String,
        /// The 1-based line at fault, when one is.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// A classes file that does not parse (e.g. no class names at all).
    #[error("malformed classes in {source_name}: {message}")]
    Classes {
        /// The file name (or `<string>`).
        source_name: String,
        /// What is wrong.
        message: String,
    },

    /// The class names do not match the model's class count.
    #[error("{names} class names were given but the model has {model_classes} classes")]
    ClassNamesMismatch {
        /// Number of names given.
        names: usize,
        /// Classes of the model's head.
        model_classes: usize,
    },

    /// An invalid detector setting (threshold out of range, bad input size, …).
    #[error("invalid detector configuration: {0}")]
    Config(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Network(nn_blocks::Error::Candle(e))
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
