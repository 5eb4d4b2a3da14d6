//! The training loop: the reference's `train.py` + `fit_one_epoch` with a freeze phase,
//! warm-up/cosine LR per epoch, a loader thread feeding batches through a channel,
//! validation loss, optional mAP, atomic checkpoints (`last/`, `best/`), resume, a JSONL
//! log and a PNG plot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use yolov3_head::{
    Anchors, BackboneKind, ClassNames, Detector, DetectorConfig, YoloBody, YoloConfig,
};

use crate::augment::{letterbox, random_augment, to_targets, AugmentConfig};
use crate::dataset::Sample;
use crate::loss::{TargetBox, YoloLoss};
use crate::metrics::{evaluate, round_as_get_map_txt, DetBox, EvalReport, GtBox};
use crate::optim::{fit_lr, params_from_varmap, warm_cos_lr, Optimizer, OptimizerKind, Param};
use crate::{Error, Result};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Backbone.
    pub backbone: BackboneKind,
    /// Class names (their count fixes the head).
    pub class_names: Vec<String>,
    /// Network input `(width, height)`, multiples of 32.
    pub input_wh: (u32, u32),
    /// Anchor boxes in input pixels (the YOLOv3 ones, or `yolo-cli anchors` output for
    /// data whose boxes are far from them); written to each checkpoint as `anchors.txt`.
    pub anchors: Anchors,
    /// Total epochs (the reference's `UnFreeze_Epoch`).
    pub epochs: usize,
    /// Epochs with the backbone frozen (`Freeze_Epoch`; 0: no freeze phase).
    pub freeze_epochs: usize,
    /// Batch size while frozen.
    pub freeze_batch: usize,
    /// Batch size after.
    pub batch: usize,
    /// SGD or Adam.
    pub optimizer: OptimizerKind,
    /// `Init_lr` (1e-2 for SGD, 1e-3 for Adam), scaled by batch / 64.
    pub init_lr: f64,
    /// `Min_lr` as a fraction of `init_lr`: 0.01.
    pub min_lr_ratio: f64,
    /// Momentum: 0.937.
    pub momentum: f64,
    /// Weight decay on conv weights: 5e-4 (the reference uses 0 for Adam).
    pub weight_decay: f64,
    /// Where checkpoints, the log and the plot go.
    pub save_dir: PathBuf,
    /// Also keep `epoch_NNN.safetensors` every this many epochs (0: never).
    pub save_period: usize,
    /// mAP on the validation set every this many epochs and at the end (0: never).
    pub eval_period: usize,
    /// Makes a run repeatable.
    pub seed: u64,
    /// Augmentation of the training images (None: plain letterbox).
    pub augment: Option<AugmentConfig>,
    /// Start from these weights (safetensors with the reference names; missing or
    /// mismatched tensors keep their initialisation, as the reference's partial load).
    pub weights: Option<PathBuf>,
    /// ImageNet weights for the backbone alone, with the names of the bare network
    /// (`features.*` of torchvision's MobileNetV2 as `cargo xtask download-weights
    /// mobilenetv2-imagenet` installs it, or Darknet53's `conv1`, `layer1.*`...).
    pub pretrained_backbone: Option<PathBuf>,
    /// Continue from `save_dir/last`.
    pub resume: bool,
    /// Cap on steps per epoch (None: the whole set).
    pub max_steps: Option<usize>,
    /// Scale and clamp the learning rate to the batch size as the reference (`Init_lr *
    /// batch / 64` within `[5e-4, 5e-2]` for SGD, `[3e-4, 1e-3]` for Adam); when false,
    /// `init_lr` is used as it is.
    pub fit_lr_to_batch: bool,
    /// Raised from elsewhere (the CLI's Ctrl-C handler) to stop before the next step; the
    /// run then ends with [`Error::Interrupted`] and the finished epochs stay saved.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainConfig {
    /// The reference's `train.py` settings for `backbone` and `class_names`, saving to
    /// `save_dir`: 416x416 input, the YOLOv3 anchors, 300 epochs of which the first 50
    /// with the backbone frozen (batch 16 frozen, 8 after), SGD ([`Self::with_optimizer`]
    /// switches), a checkpoint and an evaluation every 10 epochs, augmentation on, seed
    /// 11, the learning rate fitted to the batch size.
    pub fn new(
        backbone: BackboneKind,
        class_names: Vec<String>,
        save_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            backbone,
            class_names,
            input_wh: (416, 416),
            anchors: Anchors::yolov3(),
            epochs: 300,
            freeze_epochs: 50,
            freeze_batch: 16,
            batch: 8,
            optimizer: OptimizerKind::Sgd,
            init_lr: 1e-2,
            min_lr_ratio: 0.01,
            momentum: 0.937,
            weight_decay: 5e-4,
            save_dir: save_dir.into(),
            save_period: 10,
            eval_period: 10,
            seed: 11,
            augment: Some(AugmentConfig::default()),
            weights: None,
            pretrained_backbone: None,
            resume: false,
            max_steps: None,
            fit_lr_to_batch: true,
            stop: None,
        }
    }

    /// Uses `optimizer` with the reference's learning rate and weight decay for it:
    /// `Init_lr` 1e-2 and weight decay 5e-4 for SGD, 1e-3 and 0 for Adam.
    pub fn with_optimizer(mut self, optimizer: OptimizerKind) -> Self {
        self.optimizer = optimizer;
        (self.init_lr, self.weight_decay) = match optimizer {
            OptimizerKind::Sgd => (1e-2, 5e-4),
            OptimizerKind::Adam => (1e-3, 0.0),
        };
        self
    }
}

/// What the loop reports to its caller (the CLI draws the progress bar from these).
#[derive(Debug, Clone)]
pub enum Event {
    /// A message (loaded weights, resumed, frozen...).
    Info(String),
    /// An epoch begins.
    EpochStart {
        /// 1-based.
        epoch: usize,
        /// Of.
        epochs: usize,
        /// Training steps in it.
        steps: usize,
    },
    /// A training step ended.
    Step {
        /// Step index in the epoch, from 0.
        step: usize,
        /// Running means over the epoch so far: total, loc, conf, cls.
        means: [f32; 4],
        /// Learning rate.
        lr: f64,
        /// Training images per second so far in the epoch.
        images_per_s: f64,
    },
    /// Validation and saving done.
    EpochEnd(EpochRecord),
}

/// One line of the JSONL log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f32,
    /// Mean location term.
    pub loc: f32,
    /// Mean objectness term.
    pub conf: f32,
    /// Mean class term.
    pub cls: f32,
    /// Mean validation loss.
    pub val_loss: f32,
    /// mAP@0.5 on the validation set, when computed.
    pub map50: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Backbone frozen.
    pub frozen: bool,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    epoch: usize,
    best_val: Option<f32>,
    history: Vec<EpochRecord>,
    backbone: String,
    num_classes: usize,
    /// The run's anchors (absent in checkpoints of older versions: the YOLOv3 ones).
    #[serde(default = "default_anchor_pairs")]
    anchors: Vec<(f32, f32)>,
}

fn default_anchor_pairs() -> Vec<(f32, f32)> {
    Anchors::yolov3().pairs().to_vec()
}

struct Batch {
    images: Vec<f32>,
    targets: Vec<Vec<TargetBox>>,
}

fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .to_rgb8())
}

fn make_batch(
    samples: &[&Sample],
    input_wh: (u32, u32),
    augment: Option<&AugmentConfig>,
    rng: &mut ChaCha8Rng,
) -> Result<Batch> {
    let (w, h) = input_wh;
    let mut images = Vec::with_capacity(samples.len() * 3 * (w * h) as usize);
    let mut targets = Vec::with_capacity(samples.len());
    for s in samples {
        let img = load_rgb(&s.path)?;
        let (out, boxes) = match augment {
            Some(cfg) => random_augment(&img, &s.boxes, input_wh, cfg, rng)?,
            None => letterbox(&img, &s.boxes, input_wh)?,
        };
        images.extend(yolov3_head::preprocess::to_chw_f32(&out));
        targets.push(to_targets(&boxes, input_wh));
    }
    Ok(Batch { images, targets })
}

/// Spawns the loader: batches of `batch` (the last partial one dropped, as the reference)
/// in a seeded shuffled order, built on another thread while the step runs.
fn spawn_loader(
    samples: Vec<Sample>,
    batch: usize,
    steps: usize,
    input_wh: (u32, u32),
    augment: Option<AugmentConfig>,
    shuffle_seed: Option<u64>,
) -> Receiver<Result<Batch>> {
    let (tx, rx) = sync_channel(2);
    std::thread::spawn(move || {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(shuffle_seed.unwrap_or(0));
        if shuffle_seed.is_some() {
            order.shuffle(&mut rng);
        }
        for s in 0..steps {
            let chunk: Vec<&Sample> = order[s * batch..(s + 1) * batch]
                .iter()
                .map(|&i| &samples[i])
                .collect();
            let b = make_batch(&chunk, input_wh, augment.as_ref(), &mut rng);
            if tx.send(b).is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes `files` (name, writer) into `dir` atomically: a fresh `dir.tmp` is filled, the
/// old `dir` moved aside to `dir.old`, `dir.tmp` renamed to `dir`, `dir.old` removed.
fn atomic_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Writes a file atomically (temporary name, then rename).
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn save_checkpoint(dir: &Path, varmap: &VarMap, opt: &Optimizer, state: &State) -> Result<()> {
    atomic_dir(dir, |d| {
        varmap.save(d.join("weights.safetensors"))?;
        opt.save(&d.join("optimizer.safetensors"))?;
        let js = serde_json::to_string_pretty(state).map_err(|e| Error::Json {
            path: d.join("state.json"),
            source: e,
        })?;
        std::fs::write(d.join("state.json"), js).map_err(|e| Error::io(d.join("state.json"), e))?;
        let ap = d.join("anchors.txt");
        std::fs::write(&ap, anchors_file_text(&state.anchors)).map_err(|e| Error::io(&ap, e))
    })
}

/// The anchors in the reference's `yolo_anchors.txt` format (`w,h, w,h, ...`), readable
/// by `yolo-cli run --anchors` and `eval --anchors`.
pub fn anchors_file_text(pairs: &[(f32, f32)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(w, h)| format!("{w},{h}")).collect();
    items.join(", ") + "\n"
}

/// Builds a YOLOv3 in training mode over a VarMap, initialised as the reference's
/// `weights_init` (conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0,
/// conv biases PyTorch's default U(±1/sqrt(fan_in)), running statistics 0 and 1), every
/// value drawn from a generator seeded with `seed`: the same seed gives the same model.
pub fn build_train_model(
    cfg: &YoloConfig,
    device: &Device,
    seed: u64,
) -> Result<(VarMap, YoloBody)> {
    let varmap = VarMap::new();
    let mut tc = cfg.clone();
    tc.bn_mode = nn_blocks::BnMode::Train;
    let model = YoloBody::new(&tc, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in names {
        let var = &data[n];
        let t = var.as_tensor();
        let shape = t.shape().clone();
        let normal = |std: f32, mean: f32, rng: &mut ChaCha8Rng| -> Result<Tensor> {
            use rand_distr::{Distribution, Normal};
            let d = Normal::new(mean, std).expect("normal");
            let v: Vec<f32> = (0..shape.elem_count()).map(|_| d.sample(rng)).collect();
            Ok(Tensor::from_vec(v, shape.clone(), device)?)
        };
        if t.rank() == 4 {
            var.set(&normal(0.02, 0.0, &mut rng)?)?;
        } else if n.ends_with(".weight") {
            var.set(&normal(0.02, 1.0, &mut rng)?)?;
        } else if let Some(w) = n
            .strip_suffix(".bias")
            .and_then(|p| data.get(&format!("{p}.weight")))
            .filter(|w| w.as_tensor().rank() == 4)
        {
            // a conv bias keeps PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
            // as the reference's weights_init leaves it; drawn here from the seeded generator
            // (candle's own init draws from an unseeded one, which made runs differ)
            use rand::Rng;
            let d = w.as_tensor().dims();
            let bound = 1.0 / ((d[1] * d[2] * d[3]) as f32).sqrt();
            let v: Vec<f32> = (0..shape.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            var.set(&Tensor::from_vec(v, shape.clone(), device)?)?;
        } else if n.ends_with(".running_var") {
            var.set(&Tensor::ones(shape.clone(), DType::F32, device)?)?;
        } else {
            // BatchNorm biases and running means
            var.set(&Tensor::zeros(shape.clone(), DType::F32, device)?)?;
        }
    }
    drop(data);
    Ok((varmap, model))
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

/// The inference model (BatchNorm folded) from the training VarMap.
pub fn folded_model(varmap: &VarMap, cfg: &YoloConfig, device: &Device) -> Result<YoloBody> {
    let data = varmap.data().lock().expect("varmap lock");
    let tensors = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    drop(data);
    let mut c = cfg.clone();
    c.bn_mode = nn_blocks::BnMode::Folded;
    Ok(YoloBody::new(
        &c,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )?)
}

/// Runs the detector over `samples` and evaluates (conf 0.001, NMS 0.5, letterbox) as
/// the reference's `get_map.py`, detections rounded as it writes them.
pub fn evaluate_model(
    model: YoloBody,
    names: &[String],
    anchors: &Anchors,
    input_wh: (u32, u32),
    samples: &[Sample],
    device: &Device,
) -> Result<EvalReport> {
    let cfg = DetectorConfig::new(ClassNames::new(names.to_vec())?)
        .with_anchors(anchors.clone())
        .with_input_size(input_wh.0 as usize, input_wh.1 as usize)
        .with_conf_threshold(0.001)
        .with_nms_iou(0.5)
        .with_device(device.clone());
    let det = Detector::new(model, cfg)?;
    let (mut dets, mut gts) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        let img = load_rgb(&s.path)?;
        for d in det.detect(&img)? {
            // as the reference writes them to map_out/detection-results for get_map.py
            dets.push(round_as_get_map_txt(&DetBox {
                image: i,
                class_id: d.class_id,
                score: d.score,
                bbox: [d.x1, d.y1, d.x2, d.y2],
            }));
        }
        for b in &s.boxes {
            gts.push(GtBox {
                image: i,
                class_id: b.class_id,
                bbox: [b.x1, b.y1, b.x2, b.y2],
            });
        }
    }
    Ok(evaluate(&dets, &gts, names))
}

/// Trains; returns the history (including epochs of a resumed run).
pub fn train(
    cfg: &TrainConfig,
    train_set: Vec<Sample>,
    val_set: Vec<Sample>,
    device: &Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Vec<EpochRecord>> {
    let (w, h) = cfg.input_wh;
    if w == 0 || h == 0 || w % 32 != 0 || h % 32 != 0 {
        return Err(Error::Config(format!(
            "input size {w}x{h}: sides must be positive multiples of 32"
        )));
    }
    let nc = cfg.class_names.len();
    let ycfg = YoloConfig::new(cfg.backbone, nc);
    std::fs::create_dir_all(&cfg.save_dir).map_err(|e| Error::io(&cfg.save_dir, e))?;
    let (varmap, model) = build_train_model(&ycfg, device, cfg.seed)?;
    let params = params_from_varmap(&varmap);
    let loss_fn = YoloLoss::new(
        cfg.anchors.pairs(),
        ycfg.anchors_mask,
        nc,
        (h as usize, w as usize),
    );
    let mut opt = Optimizer::new(cfg.optimizer, cfg.init_lr, cfg.momentum, cfg.weight_decay);
    let mut state = State {
        epoch: 0,
        best_val: None,
        history: Vec::new(),
        backbone: cfg.backbone.to_string(),
        num_classes: nc,
        anchors: cfg.anchors.pairs().to_vec(),
    };
    let last = cfg.save_dir.join("last");
    if cfg.resume {
        let dir = if last.join("state.json").is_file() {
            last.clone()
        } else {
            last.with_extension("old")
        };
        let sp = dir.join("state.json");
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        state = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: sp.clone(),
            source: e,
        })?;
        if state.num_classes != nc || state.backbone != cfg.backbone.to_string() {
            return Err(Error::Checkpoint {
                path: sp,
                message: format!(
                    "it is a {} model with {} classes, not {} with {nc}",
                    state.backbone, state.num_classes, cfg.backbone
                ),
            });
        }
        if state.anchors != cfg.anchors.pairs() {
            return Err(Error::Checkpoint {
                path: sp,
                message: format!(
                    "it was trained with the anchors {}, not {}; pass the same --anchors to resume",
                    anchors_file_text(&state.anchors).trim_end(),
                    anchors_file_text(cfg.anchors.pairs()).trim_end()
                ),
            });
        }
        let (ok, skip) = load_matching(&varmap, &dir.join("weights.safetensors"), device)?;
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
    } else {
        if let Some(bp) = &cfg.pretrained_backbone {
            let (ok, skip) = load_pretrained_backbone(&varmap, bp, cfg.backbone, device)?;
            on_event(&Event::Info(format!(
                "loaded {ok} backbone tensors from {} ({skip} skipped: classifier or not fitting)",
                bp.display()
            )));
        }
        if let Some(wp) = &cfg.weights {
            let (ok, skip) = load_matching(&varmap, wp, device)?;
            on_event(&Event::Info(format!(
                "loaded {ok} tensors from {} ({skip} did not fit and keep their initialisation)",
                wp.display()
            )));
        }
    }
    let min_lr = cfg.init_lr * cfg.min_lr_ratio;
    let log_path = cfg.save_dir.join("log.jsonl");
    for epoch in state.epoch..cfg.epochs {
        let t0 = Instant::now();
        let frozen = epoch < cfg.freeze_epochs;
        let batch = if frozen { cfg.freeze_batch } else { cfg.batch };
        let (lr_fit, min_fit) = if cfg.fit_lr_to_batch {
            fit_lr(cfg.optimizer, cfg.init_lr, min_lr, batch)
        } else {
            (cfg.init_lr, min_lr)
        };
        opt.lr = warm_cos_lr(lr_fit, min_fit, cfg.epochs, epoch);
        let mut steps = train_set.len() / batch.max(1);
        let mut val_steps = val_set.len() / batch.max(1);
        if let Some(m) = cfg.max_steps {
            steps = steps.min(m);
            val_steps = val_steps.min(m);
        }
        if steps == 0 || val_steps == 0 {
            return Err(Error::Config(format!(
                "{} training and {} validation images make no full batch of {batch}",
                train_set.len(),
                val_set.len()
            )));
        }
        let active: Vec<&Param> = params
            .iter()
            .filter(|p| !(frozen && p.name.starts_with("backbone.")))
            .collect();
        on_event(&Event::EpochStart {
            epoch: epoch + 1,
            epochs: cfg.epochs,
            steps,
        });
        let epoch_seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        let rx = spawn_loader(
            train_set.clone(),
            batch,
            steps,
            cfg.input_wh,
            cfg.augment,
            Some(epoch_seed),
        );
        let mut sums = [0f64; 4];
        for step in 0..steps {
            if cfg.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Err(Error::Interrupted {
                    epoch: epoch + 1,
                    saved_epoch: (state.epoch > 0).then_some(state.epoch),
                    last: last.clone(),
                });
            }
            let b = rx
                .recv()
                .map_err(|_| Error::Config("the loader stopped".into()))??;
            let x = Tensor::from_vec(b.images, (batch, 3, h as usize, w as usize), device)?;
            let (o0, o1, o2) = model.forward_t(&x, true)?;
            let terms = loss_fn.forward_all(&[&o0, &o1, &o2], &b.targets)?;
            let total = terms.total_value()?;
            if !total.is_finite() {
                return Err(Error::NonFiniteLoss {
                    epoch: epoch + 1,
                    step,
                    value: total,
                });
            }
            let grads = terms.total.backward()?;
            opt.step(&active, &grads)?;
            for (s, v) in sums
                .iter_mut()
                .zip([total, terms.loc, terms.conf, terms.cls])
            {
                *s += v as f64;
            }
            let n = (step + 1) as f64;
            on_event(&Event::Step {
                step,
                means: sums.map(|s| (s / n) as f32),
                lr: opt.lr,
                images_per_s: n * batch as f64 / t0.elapsed().as_secs_f64(),
            });
        }
        // validation: plain letterbox, running BatchNorm statistics
        let rx = spawn_loader(val_set.clone(), batch, val_steps, cfg.input_wh, None, None);
        let mut val = 0f64;
        for _ in 0..val_steps {
            let b = rx
                .recv()
                .map_err(|_| Error::Config("the loader stopped".into()))??;
            let x = Tensor::from_vec(b.images, (batch, 3, h as usize, w as usize), device)?;
            let (o0, o1, o2) = model.forward_t(&x, false)?;
            val += loss_fn
                .forward_all(&[&o0, &o1, &o2], &b.targets)?
                .total_value()? as f64;
        }
        let val_loss = (val / val_steps as f64) as f32;
        if !val_loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch: epoch + 1,
                step: steps,
                value: val_loss,
            });
        }
        let do_map =
            cfg.eval_period > 0 && ((epoch + 1) % cfg.eval_period == 0 || epoch + 1 == cfg.epochs);
        let map50 = if do_map {
            let m = folded_model(&varmap, &ycfg, device)?;
            Some(
                evaluate_model(
                    m,
                    &cfg.class_names,
                    &cfg.anchors,
                    cfg.input_wh,
                    &val_set,
                    device,
                )?
                .map50,
            )
        } else {
            None
        };
        let sn = steps as f64;
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: (sums[0] / sn) as f32,
            loc: (sums[1] / sn) as f32,
            conf: (sums[2] / sn) as f32,
            cls: (sums[3] / sn) as f32,
            val_loss,
            map50,
            lr: opt.lr,
            frozen,
            seconds: t0.elapsed().as_secs_f64(),
        };
        state.epoch = epoch + 1;
        state.history.push(rec.clone());
        let is_best = state.best_val.is_none_or(|b| val_loss <= b);
        if is_best {
            state.best_val = Some(val_loss);
        }
        save_checkpoint(&last, &varmap, &opt, &state)?;
        if is_best {
            save_checkpoint(&cfg.save_dir.join("best"), &varmap, &opt, &state)?;
        }
        if cfg.save_period > 0 && (epoch + 1) % cfg.save_period == 0 {
            let p = cfg
                .save_dir
                .join(format!("epoch_{:03}.safetensors", epoch + 1));
            atomic_write(&p, |t| Ok(varmap.save(t)?))?;
        }
        let lines: String = state
            .history
            .iter()
            .map(|r| serde_json::to_string(r).expect("record") + "\n")
            .collect();
        atomic_write(&log_path, |t| {
            std::fs::write(t, &lines).map_err(|e| Error::io(t, e))
        })?;
        on_event(&Event::EpochEnd(rec));
    }
    let plot = cfg.save_dir.join("loss.png");
    crate::plot::plot_history(&state.history, &plot)?;
    Ok(state.history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
