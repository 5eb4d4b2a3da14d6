//! The registry of downloadable weights and the manifest written beside each file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::convert::SourceFormat;
use crate::{Error, Result};

/// The model `yolo-cli run` uses when no `--weights` is given.
pub const DEFAULT_MODEL: &str = "darknet53-coco";

/// Where `cargo xtask download-weights` installs, relative to the repository root.
pub const WEIGHTS_DIR: &str = "model_data/weights";

/// One downloadable weight file.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSpec {
    /// The name on the command line and of the installed file.
    pub name: String,
    /// Hugging Face Hub repository (`owner/name`).
    pub repo: String,
    /// Revision (branch, tag or commit).
    pub revision: String,
    /// File in the repository.
    pub file: String,
    /// Its format.
    pub format: SourceFormat,
    /// Expected sha256 of the source file (hex), verified when known.
    pub sha256: Option<String>,
    /// Expected size of the source file in bytes, verified when known.
    pub size: Option<u64>,
    /// Licence of the weights.
    pub licence: String,
    /// One line for humans.
    pub description: String,
    /// Whether `--all` installs it (alternative sources of the same weights do not).
    pub in_all: bool,
}

/// Every name `download-weights` knows.
pub fn registry() -> Vec<WeightSpec> {
    vec![
        WeightSpec {
            name: "darknet53-coco".into(),
            repo: "lmz/candle-yolo-v3".into(),
            revision: "main".into(),
            file: "yolo-v3.safetensors".into(),
            format: SourceFormat::Safetensors,
            sha256: None,
            size: None,
            licence: "YOLOv3 darknet weights (J. Redmon), public domain / darknet licence".into(),
            description: "YOLOv3-Darknet53 trained on COCO (80 classes); the default model".into(),
            in_all: true,
        },
        WeightSpec {
            name: "darknet53-coco-darknet".into(),
            repo: "homohapiens/darknet-yolov4".into(),
            revision: "main".into(),
            file: "yolov3.weights".into(),
            format: SourceFormat::Darknet,
            sha256: None,
            size: Some(248_007_048),
            licence: "YOLOv3 darknet weights (J. Redmon), public domain / darknet licence".into(),
            description: "the same COCO weights from darknet's original yolov3.weights".into(),
            in_all: false,
        },
        WeightSpec {
            name: "mobilenetv2-imagenet".into(),
            repo: "timm/mobilenetv2_100.ra_in1k".into(),
            revision: "main".into(),
            file: "model.safetensors".into(),
            format: SourceFormat::Safetensors,
            sha256: None,
            size: None,
            licence: "Apache-2.0 (timm)".into(),
            description: "MobileNetV2-1.0 ImageNet classifier (torchvision names), the backbone's pretraining".into(),
            in_all: true,
        },
    ]
}

/// The registry entry called `name`.
pub fn lookup(name: &str) -> Result<WeightSpec> {
    let reg = registry();
    reg.iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| Error::UnknownName {
            name: name.to_string(),
            known: reg
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `{dir}/{name}.safetensors`.
pub fn weights_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.safetensors"))
}

/// `{dir}/{name}.json`.
pub fn manifest_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// What is recorded beside an installed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Registry name.
    pub name: String,
    /// Hub repository.
    pub repo: String,
    /// Revision asked for.
    pub revision: String,
    /// Commit the revision resolved to, when known.
    pub commit: Option<String>,
    /// File in the repository.
    pub file: String,
    /// sha256 of the source file as downloaded (hex).
    pub source_sha256: String,
    /// Whether `source_sha256` was checked against a known digest (else only recorded).
    pub source_sha256_verified: bool,
    /// Size of the source file.
    pub source_size: u64,
    /// sha256 of the installed canonical file (hex).
    pub converted_sha256: String,
    /// Size of the installed canonical file.
    pub converted_size: u64,
    /// `yolov3` or `mobilenetv2-classifier`.
    pub model: String,
    /// Backbone.
    pub backbone: String,
    /// Number of classes.
    pub num_classes: usize,
    /// BatchNorm epsilon recorded in the file.
    pub bn_eps: f64,
    /// Tensors in the canonical file.
    pub tensors: usize,
    /// Parameters (elements) in the canonical file.
    pub parameters: usize,
    /// Licence of the weights.
    pub licence: String,
}

impl Manifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Manifest {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(|source| Error::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
        text.push('\n');
        Ok(yolo_io::write_bytes_atomic(
            path,
            yolo_io::Overwrite::Allow,
            text.as_bytes(),
        )?)
    }
}
