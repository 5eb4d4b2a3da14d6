//! Typed errors of the network crates.

/// Errors raised while building or running the networks.
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

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias of the network crates.
pub type Result<T> = std::result::Result<T, Error>;
