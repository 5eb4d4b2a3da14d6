//! The canonical weights file: safetensors with the reference PyTorch names, f32, and
//! metadata that says what the tensors are for and how to run them.
//!
//! | key           | value                                              |
//! |---------------|----------------------------------------------------|
//! | `format`      | `yolo-rs/1`                                        |
//! | `model`       | `yolov3` or `mobilenetv2-classifier`               |
//! | `backbone`    | `darknet53` or `mobilenetv2`                       |
//! | `num_classes` | classes of the head or classifier                  |
//! | `bn_eps`      | BatchNorm epsilon (1e-5 PyTorch, 1e-6 darknet)     |
//! | `width_mult`  | MobileNetV2 width multiplier (classifier only)     |
//! | `source`      | where the tensors came from                        |
//!
//! Files without metadata (any safetensors with reference names) load too: the model
//! and class count come from the tensors, and `bn_eps` is 1e-5.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::DEFAULT_BN_EPS;
use yolo_io::Overwrite;
use yolov3_head::{BackboneKind, YoloConfig};

use crate::{Error, Result};

/// The value of the `format` metadata key.
pub const FORMAT: &str = "yolo-rs/1";

/// What a canonical file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A whole `YoloBody` (backbone and heads).
    Yolo,
    /// The torchvision-style MobileNetV2 ImageNet classifier (`features.*`, `classifier.1`).
    Classifier,
}

impl ModelKind {
    /// The metadata name.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Yolo => "yolov3",
            ModelKind::Classifier => "mobilenetv2-classifier",
        }
    }
}

/// The metadata of a canonical file.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsMeta {
    /// What the tensors are.
    pub model: ModelKind,
    /// The backbone (`mobilenetv2` for the classifier).
    pub backbone: BackboneKind,
    /// Classes of the YOLO head or the classifier.
    pub num_classes: usize,
    /// BatchNorm epsilon to run the model with.
    pub bn_eps: f64,
    /// MobileNetV2 width multiplier (1.0 unless a classifier says otherwise).
    pub width_mult: f64,
    /// Where the tensors came from (free text).
    pub source: String,
}

impl WeightsMeta {
    /// The safetensors metadata map.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("model".into(), self.model.name().into());
        m.insert("backbone".into(), self.backbone.name().into());
        m.insert("num_classes".into(), self.num_classes.to_string());
        m.insert("bn_eps".into(), format!("{:e}", self.bn_eps));
        if self.model == ModelKind::Classifier {
            m.insert("width_mult".into(), self.width_mult.to_string());
        }
        m.insert("source".into(), self.source.clone());
        m
    }

    /// Reads the metadata, filling what is absent from `tensors` (names and shapes).
    pub fn from_metadata(
        meta: &HashMap<String, String>,
        tensors: &HashMap<String, Vec<usize>>,
        path: &Path,
    ) -> Result<Self> {
        let bad = |key: &str, reason: String| Error::Metadata {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let guessed = guess_meta(tensors);
        let model = match meta.get("model").map(String::as_str) {
            Some("yolov3") => ModelKind::Yolo,
            Some("mobilenetv2-classifier") => ModelKind::Classifier,
            Some(other) => return Err(bad("model", format!("unknown model `{other}`"))),
            None => guessed.as_ref().map(|g| g.model).ok_or_else(|| {
                bad(
                    "model",
                    "absent, and the tensor names are not those of a known model".into(),
                )
            })?,
        };
        let backbone = match meta.get("backbone") {
            Some(b) => b.parse().map_err(|e: String| bad("backbone", e))?,
            None => guessed
                .as_ref()
                .map(|g| g.backbone)
                .ok_or_else(|| bad("backbone", "absent".into()))?,
        };
        let num_classes = match meta.get("num_classes") {
            Some(n) => n
                .parse()
                .map_err(|_| bad("num_classes", format!("`{n}` is not a count")))?,
            None => guessed
                .as_ref()
                .map(|g| g.num_classes)
                .ok_or_else(|| bad("num_classes", "absent".into()))?,
        };
        let bn_eps = match meta.get("bn_eps") {
            Some(e) => match e.parse::<f64>() {
                Ok(v) if v > 0.0 && v < 1.0 => v,
                _ => {
                    return Err(bad(
                        "bn_eps",
                        format!("`{e}` is not a small positive number"),
                    ))
                }
            },
            None => DEFAULT_BN_EPS,
        };
        let width_mult = match meta.get("width_mult") {
            Some(w) => match w.parse::<f64>() {
                Ok(v) if v > 0.0 => v,
                _ => return Err(bad("width_mult", format!("`{w}` is not positive"))),
            },
            None => 1.0,
        };
        Ok(Self {
            model,
            backbone,
            num_classes,
            bn_eps,
            width_mult,
            source: meta.get("source").cloned().unwrap_or_default(),
        })
    }

    /// The `YoloConfig` to build the body with (`None` for a classifier).
    pub fn yolo_config(&self) -> Option<YoloConfig> {
        (self.model == ModelKind::Yolo).then(|| YoloConfig {
            bn_eps: self.bn_eps,
            ..YoloConfig::new(self.backbone, self.num_classes)
        })
    }

    /// The MobileNetV2 classifier config (`None` for YOLO weights).
    pub fn classifier_config(&self) -> Option<mobilenet_v2::Config> {
        (self.model == ModelKind::Classifier).then(|| mobilenet_v2::Config {
            num_classes: self.num_classes,
            bn_eps: self.bn_eps,
            ..mobilenet_v2::Config::with_width(self.width_mult)
        })
    }
}

/// What the reference names and shapes say about a state dict, if it is a known model.
pub fn guess_meta(shapes: &HashMap<String, Vec<usize>>) -> Option<WeightsMeta> {
    let first = |n: &str| shapes.get(n).and_then(|s| s.first().copied());
    if let Some(c) = first("last_layer0.6.weight") {
        let backbone = if shapes.contains_key("backbone.conv1.weight") {
            BackboneKind::Darknet53
        } else {
            BackboneKind::MobileNetV2
        };
        return Some(WeightsMeta {
            model: ModelKind::Yolo,
            backbone,
            num_classes: (c / 3).saturating_sub(5),
            bn_eps: DEFAULT_BN_EPS,
            width_mult: 1.0,
            source: String::new(),
        });
    }
    if let Some(c) = first("classifier.1.weight") {
        return Some(WeightsMeta {
            model: ModelKind::Classifier,
            backbone: BackboneKind::MobileNetV2,
            num_classes: c,
            bn_eps: DEFAULT_BN_EPS,
            width_mult: 1.0,
            source: String::new(),
        });
    }
    None
}

/// Serialises f32 tensors and metadata as a safetensors file in memory.
pub fn canonical_bytes(tensors: &BTreeMap<String, Tensor>, meta: &WeightsMeta) -> Result<Vec<u8>> {
    let ts = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(ts, Some(meta.to_metadata()))?)
}

/// Writes `bytes` to `path` atomically (see [`yolo_io`]): `path` is either its old
/// self or the complete new file, never half, with the umask's permissions when new.
/// Without `overwrite`, an existing `path` is refused with [`Error::Exists`].
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let overwrite = if overwrite {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    Ok(yolo_io::write_bytes_atomic(path, overwrite, bytes)?)
}

/// A canonical file in memory.
#[derive(Debug, Clone)]
pub struct LoadedWeights {
    /// The tensors, by reference name (f32, on the requested device).
    pub tensors: HashMap<String, Tensor>,
    /// What they are.
    pub meta: WeightsMeta,
}

impl LoadedWeights {
    /// A `VarBuilder` over the tensors.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), dtype, device)
    }
}

/// Opens a canonical safetensors file: tensors (as f32 on `device`) and metadata,
/// `bn_eps` 1e-5 when absent.
///
/// The file is read one tensor at a time, so that loading needs the weights' size in
/// memory once (plus one tensor), not twice as reading the whole file first would.
pub fn load_canonical(path: &Path, device: &Device) -> Result<LoadedWeights> {
    let file = SafetensorsFile::open(path)?;
    // The metadata is checked before any tensor is read.
    let meta = WeightsMeta::from_metadata(&file.header.metadata, &file.shapes(), path)?;
    let tensors = file
        .read_tensors(device, |t| t.to_dtype(DType::F32))?
        .into_iter()
        .collect();
    Ok(LoadedWeights { tensors, meta })
}

/// A safetensors file's `__metadata__` map and its named tensors.
pub type SafetensorsContents = (HashMap<String, String>, Vec<(String, Tensor)>);

/// Reads any safetensors file one tensor at a time: its `__metadata__` map and its
/// tensors (in their stored dtypes, on `device`), in the order they are stored. The
/// header is checked first: a truncated or corrupt file is refused, naming the tensor.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<SafetensorsContents> {
    let mut file = SafetensorsFile::open(path)?;
    let metadata = std::mem::take(&mut file.header.metadata);
    Ok((metadata, file.read_tensors(device, Ok)?))
}

/// An open safetensors file whose header has been read and checked.
struct SafetensorsFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    header: Header,
}

impl SafetensorsFile {
    /// Opens `path` and reads its header.
    fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let header = read_header(&mut file, file_len).map_err(|e| match e {
            HeaderError::Io(e) => Error::io(path, e),
            HeaderError::Bad(m) => Error::NotACheckpoint {
                path: path.to_path_buf(),
                detail: format!(": bad safetensors ({m})"),
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    /// Tensor shapes by name.
    fn shapes(&self) -> HashMap<String, Vec<usize>> {
        let entries = self.header.entries.iter();
        entries.map(|e| (e.name.clone(), e.shape.clone())).collect()
    }

    /// Reads every tensor, in file order, passing each through `convert` as soon as it
    /// is read.
    fn read_tensors(
        self,
        device: &Device,
        convert: impl Fn(Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<(String, Tensor)>> {
        use std::io::{Read, Seek, SeekFrom};
        let Self {
            path,
            mut file,
            header,
        } = self;
        let mut entries = header.entries;
        entries.sort_by_key(|e| e.start);
        let mut tensors = Vec::with_capacity(entries.len());
        for e in entries {
            file.seek(SeekFrom::Start(header.data_start + e.start))
                .map_err(|err| Error::io(&path, err))?;
            // one tensor's bytes at a time: the whole file is never in memory twice
            let mut bytes = vec![0u8; (e.end - e.start) as usize];
            file.read_exact(&mut bytes)
                .map_err(|err| Error::io(&path, err))?;
            let tensor = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)?;
            tensors.push((e.name, convert(tensor)?));
        }
        Ok(tensors)
    }
}

/// One tensor of a safetensors header.
struct HeaderEntry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the data section.
    start: u64,
    end: u64,
}

struct Header {
    metadata: HashMap<String, String>,
    entries: Vec<HeaderEntry>,
    /// Offset of the data section in the file.
    data_start: u64,
}

enum HeaderError {
    Io(std::io::Error),
    Bad(String),
}

/// Reads and checks the header of a safetensors file (an 8-byte little-endian length,
/// then JSON): every tensor's dtype, shape and byte range, which must lie in the file
/// and have the size its shape says.
fn read_header(
    file: &mut std::fs::File,
    file_len: u64,
) -> std::result::Result<Header, HeaderError> {
    use std::io::Read;
    let bad = |m: String| HeaderError::Bad(m);
    if file_len < 8 {
        return Err(bad(format!(
            "{file_len} bytes, shorter than the header length"
        )));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(HeaderError::Io)?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > file_len {
        return Err(bad(format!("header of {n} bytes in a file of {file_len}")));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(HeaderError::Io)?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut metadata = HashMap::new();
    let mut entries = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            for (k, v) in v.as_object().into_iter().flatten() {
                if let Some(s) = v.as_str() {
                    metadata.insert(k.clone(), s.to_string());
                }
            }
            continue;
        }
        let field = |f: &str| v.get(f).ok_or_else(|| bad(format!("{name}: no {f}")));
        let dtype = match field("dtype")?.as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            // integer buffers such as num_batches_tracked
            Some("I64") => DType::I64,
            Some("I32") => DType::I32,
            Some("I16") => DType::I16,
            Some("U32") => DType::U32,
            Some("U8") => DType::U8,
            other => return Err(bad(format!("{name}: dtype {other:?} is not supported"))),
        };
        let usizes = |f: &str| -> std::result::Result<Vec<u64>, HeaderError> {
            field(f)?
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad(format!("{name}: {f} is not a list of sizes")))
        };
        let shape: Vec<usize> = usizes("shape")?.into_iter().map(|d| d as usize).collect();
        let offsets = usizes("data_offsets")?;
        let [start, end] = offsets[..] else {
            return Err(bad(format!("{name}: data_offsets {offsets:?}")));
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("{name}: shape {shape:?} overflows")))?;
        let want = numel.checked_mul(dtype.size_in_bytes() as u64);
        if start > end || end > data_len || want != Some(end - start) {
            return Err(bad(format!(
                "{name}: bytes {start}..{end} for shape {shape:?} {dtype:?} in a data section \
                 of {data_len} bytes (truncated or corrupt)"
            )));
        }
        entries.push(HeaderEntry {
            name: name.clone(),
            dtype,
            shape,
            start,
            end,
        });
    }
    Ok(Header {
        metadata,
        entries,
        data_start,
    })
}
