//! Typed errors of the YOLOv3 crate.

use std::path::PathBuf;

/// Errors from building or running the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle (missing tensor, shape mismatch, device problem...).
    /// Candle's messages already name the tensor and both shapes.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The input image tensor has sides that are not multiples of the network stride.
    #[error("input size {height}x{width} (HxW) is not supported: both sides must be multiples of {stride} (e.g. 416x416 or 320x480)")]
    InputSize {
        /// Input height in pixels.
        height: usize,
        /// Input width in pixels.
        width: usize,
        /// Required divisor (32 for YOLOv3).
        stride: usize,
    },

    /// The input tensor does not have the expected `(B, 3, H, W)` layout.
    #[error("expected an input tensor of shape (B, 3, H, W), got {0:?}")]
    InputLayout(Vec<usize>),

    /// The weights hold a head for another number of classes.
    #[error("the weights were trained for {weights_classes} classes but the model was configured for {configured_classes}: tensor `{tensor}` has {found_channels} output channels, expected {expected_channels} = {anchors} anchors x (5 + {configured_classes}). Pass the matching class count (or classes file).")]
    ClassCountMismatch {
        /// The head tensor that revealed the mismatch.
        tensor: String,
        /// Channels the configuration expects.
        expected_channels: usize,
        /// Channels found in the weights.
        found_channels: usize,
        /// Anchors per head.
        anchors: usize,
        /// Classes the configuration asks for.
        configured_classes: usize,
        /// Classes the weights were trained for (rounded down when not exact).
        weights_classes: usize,
    },

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

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
