//! Checkpoints: the run's [`State`], saving a checkpoint directory (`last/`, `best/`:
//! weights, optimiser state, `state.json`, `anchors.txt`) and the periodic weights
//! files atomically through [`yolo_io`], resuming from `last/`, and loading weights into
//! the model (a whole model's, partially as the reference; or a bare backbone's).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use yolo_io::Overwrite;
use yolov3_head::{Anchors, BackboneKind};

use super::config::TrainConfig;
use super::events::{EpochRecord, Event};
use crate::optim::Optimizer;
use crate::tensor_file::save_tensors_atomic;
use crate::{Error, Result};

/// Where a run stands: written to each checkpoint as `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    /// Epochs finished.
    pub(super) epoch: usize,
    /// The lowest validation loss so far (that of `best/`).
    pub(super) best_val: Option<f32>,
    /// One record per finished epoch.
    pub(super) history: Vec<EpochRecord>,
    /// The backbone's name.
    pub(super) backbone: String,
    /// Classes of the head.
    pub(super) num_classes: usize,
    /// The run's anchors (absent in checkpoints of older versions: the YOLOv3 ones).
    #[serde(default = "default_anchor_pairs")]
    pub(super) anchors: Vec<(f32, f32)>,
}

fn default_anchor_pairs() -> Vec<(f32, f32)> {
    Anchors::yolov3().pairs().to_vec()
}

impl State {
    /// The state of a run of `cfg` before its first epoch.
    pub(super) fn new(cfg: &TrainConfig) -> Self {
        Self {
            epoch: 0,
            best_val: None,
            history: Vec::new(),
            backbone: cfg.backbone.to_string(),
            num_classes: cfg.class_names.len(),
            anchors: cfg.anchors.pairs().to_vec(),
        }
    }

    /// Reads `state.json`.
    fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&bytes, path)
    }

    /// Parses the bytes of a `state.json`; `path` names them in errors.
    fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Refuses to continue a run of another model or with other anchors than `cfg`'s,
    /// naming the state file at `path`.
    fn check_fits(&self, cfg: &TrainConfig, path: &Path) -> Result<()> {
        let nc = cfg.class_names.len();
        if self.num_classes != nc || self.backbone != cfg.backbone.to_string() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "it is a {} model with {} classes, not {} with {nc}",
                    self.backbone, self.num_classes, cfg.backbone
                ),
            });
        }
        if self.anchors != cfg.anchors.pairs() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "it was trained with the anchors {}, not {}; pass the same --anchors to resume",
                    anchors_file_text(&self.anchors).trim_end(),
                    anchors_file_text(cfg.anchors.pairs()).trim_end()
                ),
            });
        }
        Ok(())
    }
}

/// The training history in the bytes of a checkpoint's `state.json`, parsed as resuming
/// parses them (`path` names them in errors): what a resumed run goes on to extend,
/// write to `log.jsonl` and `results.csv`, and plot.
pub fn state_json_history(bytes: &[u8], path: &Path) -> Result<Vec<EpochRecord>> {
    Ok(State::from_json(bytes, path)?.history)
}

/// Writes the checkpoint directory `dir` (weights, optimiser state, `state.json`,
/// `anchors.txt`) as a whole: it is its old self or the complete new one.
pub(super) fn save_checkpoint(
    dir: &Path,
    varmap: &VarMap,
    opt: &Optimizer,
    state: &State,
) -> Result<()> {
    yolo_io::replace_dir(dir, |d| -> Result<()> {
        save_weights(&d.join("weights.safetensors"), varmap)?;
        opt.save(&d.join("optimizer.safetensors"))?;
        let sp = d.join("state.json");
        let js = serde_json::to_string_pretty(state).map_err(|e| Error::Json {
            path: sp.clone(),
            source: e,
        })?;
        yolo_io::write_bytes_atomic(&sp, Overwrite::Allow, js.as_bytes())?;
        let ap = d.join("anchors.txt");
        let anchors = anchors_file_text(&state.anchors);
        Ok(yolo_io::write_bytes_atomic(
            &ap,
            Overwrite::Allow,
            anchors.as_bytes(),
        )?)
    })
}

/// Writes the model's weights alone to `path` atomically (safetensors with the
/// reference names).
pub(super) fn save_weights(path: &Path, varmap: &VarMap) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let tensors: std::collections::HashMap<&str, Tensor> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_tensor().clone()))
        .collect();
    save_tensors_atomic(path, &tensors)
}

/// The anchors in the reference's `yolo_anchors.txt` format (`w,h, w,h, ...`), readable
/// by `yolo-cli run --anchors` and `eval --anchors`.
pub fn anchors_file_text(pairs: &[(f32, f32)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(w, h)| format!("{w},{h}")).collect();
    items.join(", ") + "\n"
}

/// Continues the run of `cfg` from its `last` checkpoint (or `last.old`, when a crash
/// came between the moves of a checkpoint swap): reads and checks the state, loads the
/// weights (all of which must fit) and the optimiser state; returns the state.
pub(super) fn resume(
    last: &Path,
    cfg: &TrainConfig,
    varmap: &VarMap,
    opt: &mut Optimizer,
    device: &Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<State> {
    let dir = resume_dir(last);
    let sp = dir.join("state.json");
    let state = State::read(&sp)?;
    state.check_fits(cfg, &sp)?;
    let (ok, skip) = load_matching(varmap, &dir.join("weights.safetensors"), device)?;
    if skip > 0 {
        return Err(Error::Checkpoint {
            path: dir.join("weights.safetensors"),
            message: format!("{skip} tensors do not fit the model"),
        });
    }
    opt.load(&dir.join("optimizer.safetensors"), device)?;
    on_event(&Event::Info(format!(
        "resumed from {} after epoch {} ({ok} tensors)",
        dir.display(),
        state.epoch
    )));
    Ok(state)
}

/// The checkpoint to resume from: `last`, or `last.old` when `last` has no state.
fn resume_dir(last: &Path) -> PathBuf {
    if last.join("state.json").is_file() {
        last.to_path_buf()
    } else {
        last.with_extension("old")
    }
}

/// Loads the starting weights of a fresh run of `cfg`: the pretrained backbone, then
/// the whole model's weights, each when given.
pub(super) fn load_initial_weights(
    cfg: &TrainConfig,
    varmap: &VarMap,
    device: &Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    if let Some(bp) = &cfg.pretrained_backbone {
        let (ok, skip) = load_pretrained_backbone(varmap, bp, cfg.backbone, device)?;
        on_event(&Event::Info(format!(
            "loaded {ok} backbone tensors from {} ({skip} skipped: classifier or not fitting)",
            bp.display()
        )));
    }
    if let Some(wp) = &cfg.weights {
        let (ok, skip) = load_matching(varmap, wp, device)?;
        on_event(&Event::Info(format!(
            "loaded {ok} tensors from {} ({skip} did not fit and keep their initialisation)",
            wp.display()
        )));
    }
    Ok(())
}

/// Loads the tensors of `path` whose names and shapes match into `varmap`; returns
/// (loaded, skipped) counts, as the reference's partial `load_state_dict`.
pub fn load_matching(varmap: &VarMap, path: &Path, device: &Device) -> Result<(usize, usize)> {
    load_renamed(varmap, path, device, |k| k.to_string())
}

/// Where a bare backbone's tensors live inside `YoloBody`: the seed's MobileNetV2 wrapper
/// holds torchvision's network as `backbone.model`, Darknet53 sits at `backbone`.
pub fn backbone_prefix(backbone: BackboneKind) -> &'static str {
    match backbone {
        BackboneKind::MobileNetV2 => "backbone.model.",
        BackboneKind::Darknet53 => "backbone.",
    }
}

/// Loads ImageNet weights of the bare backbone (`features.*`, or `conv1`/`layer*`) into the
/// backbone of `varmap`; the classifier and whatever does not fit are skipped. Fails when
/// nothing fits (a wrong file or the other backbone).
pub fn load_pretrained_backbone(
    varmap: &VarMap,
    path: &Path,
    backbone: BackboneKind,
    device: &Device,
) -> Result<(usize, usize)> {
    let prefix = backbone_prefix(backbone);
    let (ok, skip) = load_renamed(varmap, path, device, |k| format!("{prefix}{k}"))?;
    if ok == 0 {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("no tensor fits the {backbone} backbone ({skip} tensors read)"),
        });
    }
    Ok((ok, skip))
}

/// [`load_matching`] with the file's names mapped by `rename` first.
fn load_renamed(
    varmap: &VarMap,
    path: &Path,
    device: &Device,
    rename: impl Fn(&str) -> String,
) -> Result<(usize, usize)> {
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot read it as safetensors: {e}"),
    })?;
    let data = varmap.data().lock().expect("varmap lock");
    let (mut ok, mut skip) = (0, 0);
    for (k, v) in tensors {
        match data.get(&rename(&k)) {
            Some(var) if var.as_tensor().dims() == v.dims() => {
                var.set(&v.to_dtype(DType::F32)?)?;
                ok += 1;
            }
            _ => skip += 1,
        }
    }
    Ok((ok, skip))
}

#[cfg(test)]
mod tests {
    use super::super::model::build_train_model;
    use super::*;
    use std::collections::HashMap;
    use yolov3_head::YoloConfig;

    #[test]
    fn state_json_bytes_give_the_history_or_a_json_error() {
        let state = State {
            epoch: 2,
            best_val: Some(1.5),
            history: crate::trainer::synthetic_history(2),
            backbone: "mobilenetv2".into(),
            num_classes: 20,
            anchors: default_anchor_pairs(),
        };
        let bytes = serde_json::to_vec(&state).unwrap();
        let p = Path::new("run/last/state.json");
        let history = state_json_history(&bytes, p).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].epoch, 2);
        let e = state_json_history(&bytes[..bytes.len() / 2], p).unwrap_err();
        assert!(matches!(&e, Error::Json { path, .. } if path == p), "{e}");
    }

    #[test]
    fn pretrained_backbone_goes_under_the_wrapper_prefix() {
        let dev = Device::Cpu;
        let cfg = YoloConfig::new(BackboneKind::MobileNetV2, 3);
        let (varmap, _) = build_train_model(&cfg, &dev, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagenet.safetensors");
        let stem = (Tensor::ones((32, 3, 3, 3), DType::F32, &dev).unwrap() * 0.5).unwrap();
        let mut tensors = HashMap::new();
        tensors.insert("features.0.0.weight".to_string(), stem);
        // The ImageNet classifier and a misshapen tensor are skipped.
        tensors.insert(
            "classifier.1.bias".to_string(),
            Tensor::zeros(1000, DType::F32, &dev).unwrap(),
        );
        tensors.insert(
            "features.0.1.weight".to_string(),
            Tensor::zeros(7, DType::F32, &dev).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &path).unwrap();

        let (ok, skip) =
            load_pretrained_backbone(&varmap, &path, BackboneKind::MobileNetV2, &dev).unwrap();
        assert_eq!((ok, skip), (1, 2));
        let data = varmap.data().lock().unwrap();
        let loaded = data["backbone.model.features.0.0.weight"].as_tensor();
        let values: Vec<f32> = loaded.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|&v| v == 0.5));
        drop(data);

        // Nothing of it fits Darknet53: refused, naming the file.
        let cfg = YoloConfig::new(BackboneKind::Darknet53, 3);
        let (varmap, _) = build_train_model(&cfg, &dev, 0).unwrap();
        let err = load_pretrained_backbone(&varmap, &path, BackboneKind::Darknet53, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("imagenet.safetensors") && err.contains("darknet53"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_checkpoint_is_replaced_whole_with_umask_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let varmap = VarMap::new();
        varmap
            .get(3, "w", candle_nn::Init::Const(1.0), DType::F32, &dev)
            .unwrap();
        let opt = Optimizer::new(crate::optim::OptimizerKind::Adam, 1e-3, 0.9, 0.0);
        let cfg = TrainConfig::new(BackboneKind::MobileNetV2, vec!["a".into()], dir.path());
        let mut state = State::new(&cfg);
        let last = dir.path().join("last");
        std::fs::create_dir_all(&last).unwrap();
        std::fs::write(last.join("stale.txt"), b"from before").unwrap();
        state.epoch = 1;
        save_checkpoint(&last, &varmap, &opt, &state).unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(&last).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), mode(&probe), "{}", p.display());
            names.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        let want = [
            "anchors.txt",
            "optimizer.safetensors",
            "state.json",
            "weights.safetensors",
        ];
        assert_eq!(names, want);
        assert!(!dir.path().join("last.tmp").exists() && !dir.path().join("last.old").exists());
        let back = State::read(&last.join("state.json")).unwrap();
        assert_eq!(back.epoch, 1);
        let (ok, skip) = load_matching(&varmap, &last.join("weights.safetensors"), &dev).unwrap();
        assert_eq!((ok, skip), (1, 0));
    }
}
