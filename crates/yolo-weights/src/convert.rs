//! Conversion of any supported checkpoint into the canonical tensors: detect the
//! format and naming, rename, and check the result against the model itself (every
//! tensor it reads present once with its shape, nothing left over).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use nn_blocks::weights::RecordingBackend;
use nn_blocks::{make_divisible, BnMode, DEFAULT_BN_EPS};
use sha2::{Digest, Sha256};
use yolo_io::Overwrite;
use yolov3_head::{BackboneKind, YoloBody, YoloConfig};

use crate::darknet::{read_darknet, DARKNET_BN_EPS};
use crate::load::{canonical_bytes, guess_meta, ModelKind, WeightsMeta, MAX_CLASSES};
use crate::maps::{
    candle_yolo_v3_name, looks_like_candle_yolo_v3, looks_like_timm_mobilenetv2, rename_all,
    timm_mobilenetv2_name, yolov3_convs,
};
use crate::pth::{is_legacy_pickle, read_pth, ZIP_MAGIC};
use crate::{Error, Result, ShapeMismatch};

/// File formats the converter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Darknet `.weights` (YOLOv3-Darknet53).
    Darknet,
    /// PyTorch zip `.pth`.
    Pth,
    /// safetensors.
    Safetensors,
}

/// Tensor naming conventions the converter maps from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The reference PyTorch names (bubbliiiing / torchvision); kept as they are.
    Reference,
    /// Darknet cfg order (names assigned by [`crate::maps::yolov3_convs`]).
    Darknet,
    /// candle's yolo-v3 example: `{i}.conv_{i}.*`, `{i}.batch_norm_{i}.*`.
    CandleYoloV3,
    /// timm `mobilenetv2_100`.
    Timm,
}

/// Overrides of what the converter would infer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertOptions {
    /// The backbone (inferred from the names otherwise).
    pub backbone: Option<BackboneKind>,
    /// Number of classes (inferred from the head or classifier; 80 for darknet files).
    pub num_classes: Option<usize>,
    /// MobileNetV2 width multiplier of a classifier (inferred from channels).
    pub width_mult: Option<f64>,
    /// BatchNorm epsilon to record (1e-6 for darknet-trained weights, else 1e-5).
    pub bn_eps: Option<f64>,
    /// The file format (detected otherwise).
    pub format: Option<SourceFormat>,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The format read.
    pub format: SourceFormat,
    /// The naming mapped from.
    pub naming: Naming,
    /// Tensors that matched the model by name and shape.
    pub matched: usize,
    /// `num_batches_tracked` counters dropped.
    pub dropped_counters: usize,
    /// Tensors of the reference state dict the model never reads, dropped (MobileNetV2
    /// YOLO checkpoints hold `features.18` and `classifier` of the ImageNet model).
    pub dropped_unused: Vec<String>,
    /// Whether a `module.` prefix was stripped.
    pub stripped_module_prefix: bool,
}

/// Canonical tensors, their metadata and the report.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Reference name -> f32 tensor.
    pub tensors: BTreeMap<String, Tensor>,
    /// What they are.
    pub meta: WeightsMeta,
    /// What happened.
    pub report: ConvertReport,
}

impl Converted {
    /// The canonical safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        canonical_bytes(&self.tensors, &self.meta)
    }

    /// Writes the canonical file atomically ([`yolo_io`]: complete or not at all, with
    /// the umask's permissions when new); returns its sha256 (hex). Without `overwrite`,
    /// an existing `path` is refused with [`Error::Exists`].
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<String> {
        let bytes = self.to_bytes()?;
        let overwrite = if overwrite {
            Overwrite::Allow
        } else {
            Overwrite::Refuse
        };
        yolo_io::write_bytes_atomic(path, overwrite, &bytes)?;
        Ok(sha256_hex(&bytes))
    }

    /// Number of parameters (elements) in the canonical tensors.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Guesses the format from the first bytes and the extension.
pub fn detect_format(path: &Path) -> Result<SourceFormat> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; SNIFF_BYTES];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    detect_format_of(&head[..n], len, path)
}

/// How many leading bytes [`detect_format_of`] looks at.
pub const SNIFF_BYTES: usize = 16;

/// [`detect_format`] on the first bytes of a file (`head`, up to [`SNIFF_BYTES`]; more
/// are ignored), its length `len`, and its `path` (for the extension and messages).
pub fn detect_format_of(head: &[u8], len: u64, path: &Path) -> Result<SourceFormat> {
    let n = head.len().min(SNIFF_BYTES);
    let head = &head[..n];
    if head.starts_with(ZIP_MAGIC) {
        return Ok(SourceFormat::Pth);
    }
    if is_legacy_pickle(head) {
        return Err(Error::LegacyPth {
            path: path.to_path_buf(),
        });
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("weights"))
    {
        return Ok(SourceFormat::Darknet);
    }
    if n >= 9 {
        let hlen = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && hlen.checked_add(8).is_some_and(|e| e <= len) {
            return Ok(SourceFormat::Safetensors);
        }
    }
    if n >= 16 {
        let i = |at: usize| i32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        if matches!((i(0), i(4)), (0, 0..=2) | (1, 0)) && len > 1_000_000 {
            return Ok(SourceFormat::Darknet);
        }
    }
    Err(Error::NotACheckpoint {
        path: path.to_path_buf(),
        detail: String::new(),
    })
}

/// Reads and converts one checkpoint file.
pub fn convert_file(path: &Path, opts: &ConvertOptions) -> Result<Converted> {
    let format = match opts.format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match format {
        SourceFormat::Darknet => {
            if opts.backbone == Some(BackboneKind::MobileNetV2) {
                return Err(Error::Unrecognized(
                    "darknet .weights hold YOLOv3-Darknet53, not a MobileNetV2 model".into(),
                ));
            }
            let nc = opts.num_classes.unwrap_or(80);
            let dw = read_darknet(path, nc)?;
            let h = dw.header;
            let source = format!(
                "darknet {file} (v{}.{} rev {}, seen {})",
                h.major, h.minor, h.revision, h.seen
            );
            convert_tensors(dw.tensors, Naming::Darknet, format, opts, &source)
        }
        SourceFormat::Pth => {
            let tensors = read_pth(path)?;
            let naming = detect_naming(&tensors);
            convert_tensors(tensors, naming, format, opts, &format!("pth {file}"))
        }
        SourceFormat::Safetensors => {
            let (meta, mut tensors) = crate::load::read_safetensors(path, &Device::Cpu)?;
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let naming = detect_naming(&tensors);
            let mut opts = opts.clone();
            if opts.bn_eps.is_none() && naming == Naming::Reference {
                opts.bn_eps = meta.get("bn_eps").and_then(|e| e.parse().ok());
            }
            let source = match meta.get("source") {
                Some(s) if naming == Naming::Reference && !s.is_empty() => s.clone(),
                _ => format!("safetensors {file}"),
            };
            convert_tensors(tensors, naming, format, &opts, &source)
        }
    }
}

/// Which naming convention a tensor list follows.
pub fn detect_naming(tensors: &[(String, Tensor)]) -> Naming {
    let names = || tensors.iter().map(|(n, _)| n.as_str());
    if looks_like_candle_yolo_v3(names()) {
        Naming::CandleYoloV3
    } else if looks_like_timm_mobilenetv2(names()) {
        Naming::Timm
    } else {
        Naming::Reference
    }
}

/// Renames `tensors` from `naming`, infers or applies the target, and checks the
/// result against the model.
pub fn convert_tensors(
    tensors: Vec<(String, Tensor)>,
    naming: Naming,
    format: SourceFormat,
    opts: &ConvertOptions,
    source: &str,
) -> Result<Converted> {
    let dropped_counters = tensors
        .iter()
        .filter(|(n, _)| n.ends_with("num_batches_tracked"))
        .count();
    let mut stripped_module_prefix = false;
    let renamed: BTreeMap<String, Tensor> = match naming {
        Naming::Reference | Naming::Darknet => {
            let all_module =
                !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with("module."));
            stripped_module_prefix = all_module;
            let strip = |n: &str| {
                if all_module {
                    n["module.".len()..].to_string()
                } else {
                    n.to_string()
                }
            };
            rename_all("reference names", tensors, |n| Some(strip(n)))?
                .into_iter()
                .map(|(k, (_, t))| (k, t))
                .collect()
        }
        Naming::CandleYoloV3 => {
            let nc = match opts.num_classes {
                Some(n) => n,
                None => tensors
                    .iter()
                    .find(|(n, _)| n == "81.conv_81.weight")
                    .and_then(|(_, t)| t.dims().first().copied())
                    .map(|c| (c / 3).saturating_sub(5))
                    .unwrap_or(80),
            };
            let table = yolov3_convs(nc);
            rename_all("candle-yolo-v3 map", tensors, |n| {
                candle_yolo_v3_name(n, &table)
            })?
            .into_iter()
            .map(|(k, (_, t))| (k, t))
            .collect()
        }
        Naming::Timm => rename_all("timm mobilenetv2 map", tensors, timm_mobilenetv2_name)?
            .into_iter()
            .map(|(k, (_, t))| (k, t))
            .collect(),
    };
    let shapes: HashMap<String, Vec<usize>> = renamed
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let mut meta = guess_meta(&shapes).ok_or_else(|| {
        let some: Vec<&str> = renamed.keys().take(5).map(String::as_str).collect();
        Error::Unrecognized(format!(
            "no YOLOv3 head (`last_layer0.6.weight`) nor MobileNetV2 classifier (`classifier.1.weight`) among {} tensors (first: {some:?})",
            renamed.len()
        ))
    })?;
    if let Some(b) = opts.backbone {
        meta.backbone = b;
    }
    if let Some(n) = opts.num_classes {
        meta.num_classes = n;
    }
    if meta.model == ModelKind::Classifier {
        if meta.backbone != BackboneKind::MobileNetV2 {
            return Err(Error::Unrecognized(
                "the checkpoint is a MobileNetV2 classifier; --backbone darknet53 does not fit"
                    .into(),
            ));
        }
        meta.width_mult = match opts.width_mult {
            Some(w) => w,
            None => guess_width(&shapes).unwrap_or(1.0),
        };
    }
    let darknet_trained = matches!(naming, Naming::Darknet | Naming::CandleYoloV3);
    meta.bn_eps = opts.bn_eps.unwrap_or(if darknet_trained {
        DARKNET_BN_EPS
    } else {
        DEFAULT_BN_EPS
    });
    meta.source = source.to_string();

    let (tensors, matched, dropped_unused) = check_against_model(renamed, &meta)?;
    Ok(Converted {
        tensors,
        meta,
        report: ConvertReport {
            format,
            naming,
            matched,
            dropped_counters,
            dropped_unused,
            stripped_module_prefix,
        },
    })
}

/// The width multiplier whose channel plan gives the stem and last block channels.
fn guess_width(shapes: &HashMap<String, Vec<usize>>) -> Option<f64> {
    let stem = shapes.get("features.0.0.weight")?.first().copied()?;
    let last = shapes
        .get("features.17.conv.2.weight")
        .and_then(|s| s.first().copied());
    [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4, 0.1]
        .into_iter()
        .find(|&w: &f64| {
            make_divisible(32.0 * w, 8, None) == stem
                && last.is_none_or(|l| make_divisible(320.0 * w, 8, None) == l)
        })
}

/// Whether the model never reads this tensor although the reference state dict has it.
fn known_unused(meta: &WeightsMeta, name: &str) -> bool {
    meta.model == ModelKind::Yolo
        && meta.backbone == BackboneKind::MobileNetV2
        && (name.starts_with("backbone.model.features.18.")
            || name.starts_with("backbone.model.classifier."))
}

/// Answers with the checkpoint's tensor when name and shape fit, zeros of the requested
/// shape otherwise (a broadcast zero: nothing allocated), so that the model builds
/// whatever is missing; wrapped in nn-blocks' `RecordingBackend`, one pass then lists
/// every requested name and shape. The model is built with [`BnMode::Train`], which
/// keeps the tensors as they are (folding would compute on them).
struct ZerosWhereMissing {
    tensors: HashMap<String, Tensor>,
}

impl SimpleBackend for ZerosWhereMissing {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) if t.dims() == s.dims() => t.to_dtype(dtype)?.to_device(dev),
            // One zero seen through the requested shape: the model is built only to list
            // what it reads, so a missing tensor costs nothing, whatever its size.
            _ => Tensor::zeros((), dtype, dev)?.broadcast_as(s),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn target_name(meta: &WeightsMeta) -> String {
    match meta.model {
        ModelKind::Yolo => format!("yolov3-{} ({} classes)", meta.backbone, meta.num_classes),
        ModelKind::Classifier => format!(
            "mobilenetv2 classifier (width {}, {} classes)",
            meta.width_mult, meta.num_classes
        ),
    }
}

/// Builds the model over `tensors` and compares what it reads with what is there.
///
/// Returns the tensors the model reads (f32), how many matched, and the known-unused
/// reference tensors that were dropped; fails naming every missing, left-over or
/// misshapen tensor.
pub fn check_against_model(
    mut tensors: BTreeMap<String, Tensor>,
    meta: &WeightsMeta,
) -> Result<(BTreeMap<String, Tensor>, usize, Vec<String>)> {
    let dropped_unused: Vec<String> = tensors
        .keys()
        .filter(|k| known_unused(meta, k))
        .cloned()
        .collect();
    for k in &dropped_unused {
        tensors.remove(k);
    }
    let (backend, log) = RecordingBackend::new(ZerosWhereMissing {
        tensors: tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect(),
    });
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    if meta.num_classes > MAX_CLASSES {
        return Err(Error::Unrecognized(format!(
            "{}: more than {MAX_CLASSES} classes (a corrupt head?)",
            target_name(meta)
        )));
    }
    match meta.model {
        ModelKind::Yolo => {
            let cfg = YoloConfig {
                bn_mode: BnMode::Train,
                ..meta.yolo_config().expect("yolo")
            };
            YoloBody::new(&cfg, vb)?;
        }
        ModelKind::Classifier => {
            let cfg = mobilenet_v2::Config {
                bn_mode: BnMode::Train,
                ..meta.classifier_config().expect("classifier")
            };
            mobilenet_v2::MobileNetV2::new(&cfg, vb)?;
        }
    }
    let requested = log.entries();
    let mut missing = Vec::new();
    let mut shapes = Vec::new();
    let mut matched = 0;
    let mut out = BTreeMap::new();
    for (name, expected) in &requested {
        if out.contains_key(name) {
            continue;
        }
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != expected.as_slice() => shapes.push(ShapeMismatch {
                name: name.clone(),
                expected: expected.clone(),
                found: t.dims().to_vec(),
            }),
            Some(t) => {
                matched += 1;
                out.insert(name.clone(), t.to_dtype(DType::F32)?);
            }
        }
    }
    let read: std::collections::HashSet<&str> = requested.iter().map(|(n, _)| n.as_str()).collect();
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !read.contains(k.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !shapes.is_empty() {
        return Err(Error::Mismatch {
            target: target_name(meta),
            matched,
            missing,
            unexpected,
            shapes,
        });
    }
    Ok((out, matched, dropped_unused))
}
