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
//! | `precision`   | `int8` for a quantised file (absent: `f32`)        |
//! | `calibration_method` | int8: `minmax` or `percentile(P)`           |
//! | `calibration_images` | int8: how many images calibrated it         |
//!
//! An int8 file (written by `yolo-cli quantize`, see `docs/precision.md`) holds the
//! folded convolutions: per quantised block `{conv}.weight_q` (`U8`: the s8 codes'
//! bytes, two's complement, since candle has no `i8`), `{conv}.weight_scale`,
//! `{conv}.bias` and `{conv}.input_scale` (`F32`), and the folded `weight` and `bias`
//! of the blocks kept in `f32`. [`load_canonical`] hands the `U8` codes over as `f32`
//! values 0..=255, which the int8 blocks turn back into bytes.
//!
//! Files without metadata (any safetensors with reference names) load too: the model
//! and class count come from the tensors, and `bn_eps` is 1e-5.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::{Precision, DEFAULT_BN_EPS};
use yolo_io::Overwrite;
use yolov3_head::{BackboneKind, YoloConfig};

use crate::safetensors_file::SafetensorsFile;
pub use crate::safetensors_file::{
    read_safetensors, read_safetensors_from_bytes, SafetensorsContents,
};
use crate::{Error, Result};

/// The value of the `format` metadata key.
pub const FORMAT: &str = "yolo-rs/1";

/// The most classes a checkpoint may have (ImageNet-21k has 21,841): more is a corrupt
/// head or metadata, and the model such a count describes would not fit in memory.
pub const MAX_CLASSES: usize = 1_000_000;

/// The widest MobileNetV2 a file's `width_mult` may ask for (the published ones go from
/// 0.35 to 1.4): a larger or infinite multiplier is corrupt metadata, and the channel
/// counts it implies would overflow.
pub const MAX_WIDTH_MULT: f64 = 16.0;

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
    /// The arithmetic the file is for: `f32`, or `int8` for a quantised file (whose
    /// tensors only an int8 model reads).
    pub precision: Precision,
    /// How an int8 file's activation scales were calibrated (`minmax`,
    /// `percentile(99.99)`), and on how many images.
    pub calibration: Option<(String, usize)>,
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
        // f32 files keep exactly the keys (and bytes) they had before int8 existed
        if self.precision != Precision::F32 {
            m.insert("precision".into(), self.precision.to_string());
        }
        if let Some((method, images)) = &self.calibration {
            m.insert("calibration_method".into(), method.clone());
            m.insert("calibration_images".into(), images.to_string());
        }
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
            Some(n) => match n.parse() {
                Ok(c) if c <= MAX_CLASSES => c,
                _ => {
                    return Err(bad(
                        "num_classes",
                        format!("`{n}` is not a count up to {MAX_CLASSES}"),
                    ))
                }
            },
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
                Ok(v) if v > 0.0 && v <= MAX_WIDTH_MULT => v,
                _ => {
                    return Err(bad(
                        "width_mult",
                        format!("`{w}` is not a number in (0, {MAX_WIDTH_MULT}]"),
                    ))
                }
            },
            None => 1.0,
        };
        let precision = match meta.get("precision") {
            Some(p) => match p.parse::<Precision>() {
                Ok(Precision::Bf16) => {
                    return Err(bad(
                        "precision",
                        "`bf16`: bf16 models are converted from f32 files at load, not stored"
                            .into(),
                    ))
                }
                Ok(p) => p,
                Err(e) => return Err(bad("precision", e.to_string())),
            },
            None => Precision::F32,
        };
        let calibration = match (
            meta.get("calibration_method"),
            meta.get("calibration_images"),
        ) {
            (Some(m), Some(n)) => Some((
                m.clone(),
                n.parse()
                    .map_err(|_| bad("calibration_images", format!("`{n}` is not a count")))?,
            )),
            _ => None,
        };
        Ok(Self {
            model,
            backbone,
            num_classes,
            bn_eps,
            width_mult,
            source: meta.get("source").cloned().unwrap_or_default(),
            precision,
            calibration,
        })
    }

    /// The `YoloConfig` to build the body with (`None` for a classifier).
    pub fn yolo_config(&self) -> Option<YoloConfig> {
        (self.model == ModelKind::Yolo).then(|| YoloConfig {
            bn_eps: self.bn_eps,
            precision: self.precision,
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
            precision: Precision::F32,
            calibration: None,
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
            precision: Precision::F32,
            calibration: None,
        });
    }
    None
}

/// Serialises tensors and metadata as a safetensors file in memory: every tensor as
/// `f32`, except `U8` ones (an int8 file's codes), kept as they are.
pub fn canonical_bytes(tensors: &BTreeMap<String, Tensor>, meta: &WeightsMeta) -> Result<Vec<u8>> {
    let ts = tensors
        .iter()
        .map(|(k, t)| {
            let dtype = if t.dtype() == DType::U8 {
                DType::U8
            } else {
                DType::F32
            };
            Ok((k.clone(), t.to_dtype(dtype)?.contiguous()?))
        })
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
    let meta = WeightsMeta::from_metadata(&file.metadata(), &file.shapes(), path)?;
    let tensors = file
        .read_tensors(device, |t| t.to_dtype(DType::F32))?
        .into_iter()
        .collect();
    Ok(LoadedWeights { tensors, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(extra: &[(&str, &str)]) -> Result<WeightsMeta> {
        let mut m: HashMap<String, String> = [
            ("model", "yolov3"),
            ("backbone", "darknet53"),
            ("num_classes", "80"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.retain(|_, v| !v.is_empty());
        WeightsMeta::from_metadata(&m, &HashMap::new(), Path::new("w.safetensors"))
    }

    #[test]
    fn precision_metadata_round_trips_and_f32_files_keep_their_keys() {
        let f32_meta = meta(&[]).unwrap();
        assert_eq!(f32_meta.precision, Precision::F32);
        assert!(!f32_meta.to_metadata().contains_key("precision"));
        assert_eq!(f32_meta.yolo_config().unwrap().precision, Precision::F32);

        let int8 = meta(&[
            ("precision", "int8"),
            ("calibration_method", "minmax"),
            ("calibration_images", "12"),
        ])
        .unwrap();
        assert_eq!(int8.precision, Precision::Int8);
        assert_eq!(int8.calibration, Some(("minmax".to_string(), 12)));
        assert_eq!(int8.yolo_config().unwrap().precision, Precision::Int8);
        let back = WeightsMeta::from_metadata(
            &int8.to_metadata(),
            &HashMap::new(),
            Path::new("w.safetensors"),
        )
        .unwrap();
        assert_eq!(back, int8);
    }

    #[test]
    fn bad_precision_metadata_is_refused_naming_the_key() {
        for (value, needle) in [("bf16", "converted from f32"), ("fp4", "fp4")] {
            let err = meta(&[("precision", value)]).unwrap_err().to_string();
            assert!(
                err.contains("precision") && err.contains(needle) && err.contains("w.safetensors"),
                "{err}"
            );
        }
        let err = meta(&[
            ("precision", "int8"),
            ("calibration_method", "minmax"),
            ("calibration_images", "many"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("calibration_images"), "{err}");
    }

    #[test]
    fn width_multipliers_outside_the_bound_are_refused() {
        for bad in ["inf", "NaN", "0", "-1", "16.5", "1e300"] {
            let err = meta(&[("width_mult", bad)]).unwrap_err().to_string();
            assert!(
                err.contains("width_mult") && err.contains(bad) && err.contains("w.safetensors"),
                "{bad}: {err}"
            );
        }
        assert_eq!(meta(&[("width_mult", "1.4")]).unwrap().width_mult, 1.4);
    }
}
