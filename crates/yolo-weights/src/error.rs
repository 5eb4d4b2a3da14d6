//! Typed errors of weight import, conversion and download.

use std::path::PathBuf;

/// A shape that was expected and the one found, for one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Tensor name (reference PyTorch name).
    pub name: String,
    /// The shape the model needs.
    pub expected: Vec<usize>,
    /// The shape in the checkpoint.
    pub found: Vec<usize>,
}

/// Everything that can go wrong with weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is none of the checkpoint formats this crate reads.
    #[error("{path}: not a checkpoint (expected a zip .pth, a safetensors file or a darknet .weights file){detail}")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// Extra detail (starts with `: ` when present).
        detail: String,
    },
    /// A PyTorch checkpoint in the legacy (pre-1.6) non-zip format.
    #[error("{path}: legacy non-zip PyTorch checkpoint; re-save it with torch >= 1.6 (`torch.save(torch.load(p), p2)`, zip format) and convert that")]
    LegacyPth {
        /// The file.
        path: PathBuf,
    },
    /// A darknet header with a version this reader does not know.
    #[error("{path}: unknown darknet .weights version {major}.{minor} (revision {revision}); expected 0.1, 0.2 or 1.0")]
    DarknetVersion {
        /// The file.
        path: PathBuf,
        /// Header major.
        major: i32,
        /// Header minor.
        minor: i32,
        /// Header revision.
        revision: i32,
    },
    /// A darknet file shorter than the network needs.
    #[error("{path}: truncated darknet .weights: expected {expected} floats after the header for YOLOv3-Darknet53 with {num_classes} classes, found {found}{hint}")]
    DarknetTruncated {
        /// The file.
        path: PathBuf,
        /// Floats the network needs.
        expected: usize,
        /// Floats present.
        found: usize,
        /// Classes assumed.
        num_classes: usize,
        /// A hint on the class count the size would fit (may be empty).
        hint: String,
    },
    /// A darknet file longer than the network needs.
    #[error("{path}: trailing data in darknet .weights: expected {expected} floats after the header for YOLOv3-Darknet53 with {num_classes} classes, found {found} ({extra_bytes} extra bytes){hint}")]
    DarknetTrailing {
        /// The file.
        path: PathBuf,
        /// Floats the network needs.
        expected: usize,
        /// Floats present (rounded down).
        found: usize,
        /// Bytes past the last expected float.
        extra_bytes: usize,
        /// Classes assumed.
        num_classes: usize,
        /// A hint on the class count the size would fit (may be empty).
        hint: String,
    },
    /// The checkpoint's tensors do not match the model.
    #[error("{}", mismatch_message(.target, .matched, .missing, .unexpected, .shapes))]
    Mismatch {
        /// What was being converted to (e.g. `yolov3-darknet53 (80 classes)`).
        target: String,
        /// Tensors that matched by name and shape.
        matched: usize,
        /// Tensors the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Tensors in the checkpoint the model does not use.
        unexpected: Vec<String>,
        /// Tensors present with the wrong shape.
        shapes: Vec<ShapeMismatch>,
    },
    /// The checkpoint's names follow no known convention, or options contradict it.
    #[error("{0}")]
    Unrecognized(String),
    /// A tensor name that a map does not know.
    #[error("{map}: no mapping for tensor `{name}`")]
    Unmapped {
        /// Which map.
        map: &'static str,
        /// The source name.
        name: String,
    },
    /// Two source tensors map onto the same name.
    #[error("{map}: `{first}` and `{second}` both map to `{target}`")]
    Duplicate {
        /// Which map.
        map: &'static str,
        /// First source name.
        first: String,
        /// Second source name.
        second: String,
        /// The common target.
        target: String,
    },
    /// The output exists and overwriting was not asked for.
    #[error("{0}: already exists (use --force to overwrite)")]
    Exists(PathBuf),
    /// A canonical file with missing or malformed metadata.
    #[error("{path}: bad metadata `{key}`: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A name not in the weight registry.
    #[error("unknown weights `{name}` (known: {known})")]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The registry's names.
        known: String,
    },
    /// Offline, and the file is not in the Hugging Face cache.
    #[error("`{file}` of {repo} is not in the Hugging Face cache at {cache} and --offline forbids downloading it")]
    NotCached {
        /// Hub repository.
        repo: String,
        /// File in the repository.
        file: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// The downloaded file's sha256 is not the expected one.
    #[error("checksum mismatch for `{file}` of {repo}: expected sha256 {expected}, got {found}; the file was removed from the cache and nothing was installed")]
    Checksum {
        /// Hub repository.
        repo: String,
        /// File in the repository.
        file: String,
        /// Expected digest (hex).
        expected: String,
        /// Digest of what arrived (hex).
        found: String,
    },
    /// The downloaded file has the wrong size.
    #[error("incomplete download of `{file}` of {repo}: expected {expected} bytes, got {found}; nothing was installed")]
    Incomplete {
        /// Hub repository.
        repo: String,
        /// File in the repository.
        file: String,
        /// Size announced by the server or the registry.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// The Hub client failed.
    #[error("downloading `{file}` of {repo}: {message}")]
    Hub {
        /// Hub repository.
        repo: String,
        /// File in the repository.
        file: String,
        /// hf-hub's message.
        message: String,
    },
    /// candle failed (reading a .pth or safetensors file, building a model).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model refused the weights (e.g. a class-count mismatch).
    #[error(transparent)]
    Model(#[from] yolov3_head::Error),
    /// Writing the safetensors file failed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A manifest that does not parse.
    #[error("{path}: bad manifest: {source}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The file helpers' errors onto this crate's: an existing target is [`Error::Exists`],
/// an I/O failure [`Error::Io`] naming the file.
impl From<yolo_io::Error> for Error {
    fn from(e: yolo_io::Error) -> Self {
        match e {
            yolo_io::Error::Exists { path } => Error::Exists(path),
            yolo_io::Error::Io { path, source } => Error::Io { path, source },
        }
    }
}

const LIST_MAX: usize = 12;

fn list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LIST_MAX)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_MAX {
        s.push_str(&format!(", … ({} more)", names.len() - LIST_MAX));
    }
    s
}

fn mismatch_message(
    target: &str,
    matched: &usize,
    missing: &[String],
    unexpected: &[String],
    shapes: &[ShapeMismatch],
) -> String {
    let mut parts = vec![format!(
        "the checkpoint does not fit {target}: {matched} tensors matched"
    )];
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), list(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected (left over): {}",
            unexpected.len(),
            list(unexpected)
        ));
    }
    if !shapes.is_empty() {
        let s: Vec<String> = shapes
            .iter()
            .take(LIST_MAX)
            .map(|m| format!("`{}` expected {:?} found {:?}", m.name, m.expected, m.found))
            .collect();
        let more = if shapes.len() > LIST_MAX {
            format!(", … ({} more)", shapes.len() - LIST_MAX)
        } else {
            String::new()
        };
        parts.push(format!(
            "{} with the wrong shape: {}{more}",
            shapes.len(),
            s.join(", ")
        ));
    }
    parts.join("; ")
}
