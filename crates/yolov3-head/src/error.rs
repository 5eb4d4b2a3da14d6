//! Typed errors of the YOLOv3 crate.

/// Errors from building or running the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A network error (weights, shapes, input size, class count).
    #[error(transparent)]
    Network(#[from] nn_blocks::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Network(nn_blocks::Error::Candle(e))
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
