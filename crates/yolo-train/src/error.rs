//! Errors of the training crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading data, training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model or pipeline refused something.
    #[error(transparent)]
    Head(#[from] yolov3_head::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// A picture (plot) could not be drawn or encoded.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot {
        /// The picture's file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// A bad line in an annotation file (with `--on-bad-line refuse`).
    #[error("{path}:{line}: {message}")]
    Annotation {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A VOC XML annotation file that cannot be used.
    #[error("{path}: {message}")]
    Voc {
        /// The XML file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting or an input that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("the loss is not finite ({value}) at epoch {epoch}, step {step}: training stopped; the last good checkpoint is left as it was")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based step within the epoch.
        step: usize,
        /// The value seen.
        value: f32,
    },
    /// The stop flag was raised (Ctrl-C): the epoch under way is dropped, the finished
    /// ones are in the `last` checkpoint.
    #[error("interrupted during epoch {epoch}: {}", match .saved_epoch {
        Some(e) => format!("epochs up to {e} are saved in {}; continue with --resume", .last.display()),
        None => "no epoch had finished, nothing was saved".to_string(),
    })]
    Interrupted {
        /// 1-based epoch that was running.
        epoch: usize,
        /// Last finished epoch, saved in `last` (None: none finished).
        saved_epoch: Option<usize>,
        /// The `last` checkpoint folder.
        last: PathBuf,
    },
    /// A checkpoint file is inconsistent.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// JSON (de)serialisation failed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: serde_json::Error,
    },
}

/// The file helpers' errors onto this crate's [`Error::Io`], naming the file (an
/// existing target that was not to be replaced as [`std::io::ErrorKind::AlreadyExists`]).
impl From<yolo_io::Error> for Error {
    fn from(e: yolo_io::Error) -> Self {
        match e {
            yolo_io::Error::Io { path, source } => Error::Io { path, source },
            yolo_io::Error::Exists { path } => {
                Error::io(path, std::io::ErrorKind::AlreadyExists.into())
            }
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
