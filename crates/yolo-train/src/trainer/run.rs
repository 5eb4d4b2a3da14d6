//! The training loop, [`train`]: a run is set up (model, optimiser, loss, and its start
//! from a checkpoint or from initial weights), then each epoch goes through named steps
//! — its plan (freeze, batch size, learning rate, step counts), the training steps, the
//! validation loss, mAP when due, the checkpoints, the JSONL log, and `results.csv` and
//! `results.png` redrawn, so that a run under way can be watched.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use yolo_io::Overwrite;
use yolov3_head::{YoloBody, YoloConfig};

use super::checkpoint::{load_initial_weights, resume, save_checkpoint, save_weights, State};
use super::config::TrainConfig;
use super::evaluate::evaluate_model;
use super::events::{EpochRecord, Event};
use super::loader::Loader;
use super::model::{build_train_model, folded_model};
use crate::dataset::Sample;
use crate::loss::YoloLoss;
use crate::optim::{fit_lr, params_from_varmap, warm_cos_lr, Optimizer, Param};
use crate::{Error, Result};

/// Trains; returns the history (including epochs of a resumed run).
pub fn train(
    cfg: &TrainConfig,
    train_set: Vec<Sample>,
    val_set: Vec<Sample>,
    device: &Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Vec<EpochRecord>> {
    cfg.check_input_size()?;
    std::fs::create_dir_all(&cfg.save_dir).map_err(|e| Error::io(&cfg.save_dir, e))?;
    let mut run = Run::new(cfg, device)?;
    run.start(on_event)?;
    for epoch in run.state.epoch..cfg.epochs {
        run.epoch(epoch, &train_set, &val_set, on_event)?;
    }
    Ok(run.state.history)
}

/// What one epoch does, fixed before it starts.
struct EpochPlan {
    /// The backbone is frozen.
    frozen: bool,
    /// Images per batch.
    batch: usize,
    /// The learning rate.
    lr: f64,
    /// Training steps.
    steps: usize,
    /// Validation steps.
    val_steps: usize,
}

impl EpochPlan {
    /// The plan of the 0-based `epoch` of `cfg` over `train_len` training and `val_len`
    /// validation images; refused when either makes no full batch.
    fn new(cfg: &TrainConfig, epoch: usize, train_len: usize, val_len: usize) -> Result<Self> {
        let frozen = epoch < cfg.freeze_epochs;
        let batch = if frozen { cfg.freeze_batch } else { cfg.batch };
        let min_lr = cfg.init_lr * cfg.min_lr_ratio;
        let (lr_fit, min_fit) = if cfg.fit_lr_to_batch {
            fit_lr(cfg.optimizer, cfg.init_lr, min_lr, batch)
        } else {
            (cfg.init_lr, min_lr)
        };
        let lr = warm_cos_lr(lr_fit, min_fit, cfg.epochs, epoch);
        let mut steps = train_len / batch.max(1);
        let mut val_steps = val_len / batch.max(1);
        if let Some(m) = cfg.max_steps {
            steps = steps.min(m);
            val_steps = val_steps.min(m);
        }
        if steps == 0 || val_steps == 0 {
            return Err(Error::Config(format!(
                "{train_len} training and {val_len} validation images make no full batch of {batch}"
            )));
        }
        Ok(Self {
            frozen,
            batch,
            lr,
            steps,
            val_steps,
        })
    }
}

/// A run under way: the model and everything that changes with it.
struct Run<'a> {
    cfg: &'a TrainConfig,
    device: &'a Device,
    /// The model's configuration (for the folded inference model).
    ycfg: YoloConfig,
    /// The model's variables.
    varmap: VarMap,
    /// The model, in training mode, over `varmap`.
    model: YoloBody,
    /// The variables as the optimiser's parameters.
    params: Vec<Param>,
    loss_fn: YoloLoss,
    opt: Optimizer,
    state: State,
    /// The `last` checkpoint directory.
    last: PathBuf,
}

impl<'a> Run<'a> {
    /// A fresh model (initialised from `cfg.seed`), optimiser and state.
    fn new(cfg: &'a TrainConfig, device: &'a Device) -> Result<Self> {
        let (w, h) = cfg.input_wh;
        let nc = cfg.class_names.len();
        let ycfg = YoloConfig::new(cfg.backbone, nc);
        let (varmap, model) = build_train_model(&ycfg, device, cfg.seed)?;
        let params = params_from_varmap(&varmap);
        let loss_fn = YoloLoss::new(
            cfg.anchors.pairs(),
            ycfg.anchors_mask,
            nc,
            (h as usize, w as usize),
        );
        let opt = Optimizer::new(cfg.optimizer, cfg.init_lr, cfg.momentum, cfg.weight_decay);
        Ok(Self {
            cfg,
            device,
            ycfg,
            varmap,
            model,
            params,
            loss_fn,
            opt,
            state: State::new(cfg),
            last: cfg.save_dir.join("last"),
        })
    }

    /// Resumes from the `last` checkpoint, or loads the initial weights of a fresh run.
    fn start(&mut self, on_event: &mut dyn FnMut(&Event)) -> Result<()> {
        if self.cfg.resume {
            let (varmap, opt) = (&self.varmap, &mut self.opt);
            self.state = resume(&self.last, self.cfg, varmap, opt, self.device, on_event)?;
            Ok(())
        } else {
            load_initial_weights(self.cfg, &self.varmap, self.device, on_event)
        }
    }

    /// Runs the 0-based `epoch`: training, validation, mAP when due, checkpoints, log.
    fn epoch(
        &mut self,
        epoch: usize,
        train_set: &[Sample],
        val_set: &[Sample],
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<()> {
        let t0 = Instant::now();
        let plan = EpochPlan::new(self.cfg, epoch, train_set.len(), val_set.len())?;
        self.opt.lr = plan.lr;
        on_event(&Event::EpochStart {
            epoch: epoch + 1,
            epochs: self.cfg.epochs,
            steps: plan.steps,
        });
        let sums = self.train_steps(epoch, &plan, train_set, t0, on_event)?;
        let val = self.validation_loss(epoch, &plan, val_set)?;
        let map = self.map_if_due(epoch, val_set)?;
        let sn = plan.steps as f64;
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: (sums[0] / sn) as f32,
            loc: (sums[1] / sn) as f32,
            conf: (sums[2] / sn) as f32,
            cls: (sums[3] / sn) as f32,
            val_loss: val[0],
            val_loc: Some(val[1]),
            val_conf: Some(val[2]),
            val_cls: Some(val[3]),
            map50: map.map(|m| m.0),
            map50_95: map.map(|m| m.1),
            lr: self.opt.lr,
            frozen: plan.frozen,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.finish_epoch(rec.clone())?;
        on_event(&Event::EpochEnd(rec));
        Ok(())
    }

    /// The training steps of `epoch` (augmented batches in a seeded order, the backbone's
    /// parameters left alone while frozen); returns the sums of the loss terms (total,
    /// loc, conf, cls) over the steps. Stops at the stop flag or a non-finite loss.
    fn train_steps(
        &mut self,
        epoch: usize,
        plan: &EpochPlan,
        train_set: &[Sample],
        t0: Instant,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<[f64; 4]> {
        let cfg = self.cfg;
        let epoch_seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        let loader = Loader::spawn(
            train_set.to_vec(),
            plan.batch,
            plan.steps,
            cfg.input_wh,
            cfg.augment,
            Some(epoch_seed),
        );
        let active: Vec<&Param> = self
            .params
            .iter()
            .filter(|p| !(plan.frozen && p.name.starts_with("backbone.")))
            .collect();
        let mut sums = [0f64; 4];
        for step in 0..plan.steps {
            self.check_stop(epoch)?;
            let (x, targets) = loader.next_batch(self.device)?;
            let (o0, o1, o2) = self.model.forward_t(&x, true)?;
            let terms = self.loss_fn.forward_all(&[&o0, &o1, &o2], &targets)?;
            let total = terms.total_value()?;
            if !total.is_finite() {
                return Err(Error::NonFiniteLoss {
                    epoch: epoch + 1,
                    step,
                    value: total,
                });
            }
            let grads = terms.total.backward()?;
            self.opt.step(&active, &grads)?;
            let values = [total, terms.loc, terms.conf, terms.cls];
            for (s, v) in sums.iter_mut().zip(values) {
                *s += v as f64;
            }
            let n = (step + 1) as f64;
            on_event(&Event::Step {
                step,
                means: sums.map(|s| (s / n) as f32),
                lr: self.opt.lr,
                images_per_s: n * plan.batch as f64 / t0.elapsed().as_secs_f64(),
            });
        }
        Ok(sums)
    }

    /// Ends the run with [`Error::Interrupted`] when the stop flag is raised.
    fn check_stop(&self, epoch: usize) -> Result<()> {
        if self
            .cfg
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            return Err(Error::Interrupted {
                epoch: epoch + 1,
                saved_epoch: (self.state.epoch > 0).then_some(self.state.epoch),
                last: self.last.clone(),
            });
        }
        Ok(())
    }

    /// The mean validation loss of `epoch` and its terms (total, loc, conf, cls): plain
    /// letterbox, running BatchNorm statistics.
    fn validation_loss(
        &self,
        epoch: usize,
        plan: &EpochPlan,
        val_set: &[Sample],
    ) -> Result<[f32; 4]> {
        let loader = Loader::spawn(
            val_set.to_vec(),
            plan.batch,
            plan.val_steps,
            self.cfg.input_wh,
            None,
            None,
        );
        let mut sums = [0f64; 4];
        for _ in 0..plan.val_steps {
            let (x, targets) = loader.next_batch(self.device)?;
            let (o0, o1, o2) = self.model.forward_t(&x, false)?;
            let terms = self.loss_fn.forward_all(&[&o0, &o1, &o2], &targets)?;
            let values = [terms.total_value()?, terms.loc, terms.conf, terms.cls];
            for (s, v) in sums.iter_mut().zip(values) {
                *s += v as f64;
            }
        }
        let means = sums.map(|s| (s / plan.val_steps as f64) as f32);
        if !means[0].is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch: epoch + 1,
                step: plan.steps,
                value: means[0],
            });
        }
        Ok(means)
    }

    /// mAP@0.5 and mAP@[.5:.95] on the validation set every `eval_period` epochs and
    /// after the last one.
    fn map_if_due(&self, epoch: usize, val_set: &[Sample]) -> Result<Option<(f64, f64)>> {
        let cfg = self.cfg;
        let done = epoch + 1;
        let due =
            cfg.eval_period > 0 && (done.is_multiple_of(cfg.eval_period) || done == cfg.epochs);
        if !due {
            return Ok(None);
        }
        let model = folded_model(&self.varmap, &self.ycfg, self.device)?;
        let report = evaluate_model(
            model,
            &cfg.class_names,
            &cfg.anchors,
            cfg.input_wh,
            val_set,
            self.device,
        )?;
        Ok(Some((report.map50, report.map50_95)))
    }

    /// Records a finished epoch: the state, the `last` checkpoint (and `best` when its
    /// validation loss is the lowest so far), the periodic weights file, the log, and
    /// `results.csv` and `results.png` of all epochs so far.
    fn finish_epoch(&mut self, rec: EpochRecord) -> Result<()> {
        let cfg = self.cfg;
        let (epoch, val_loss) = (rec.epoch, rec.val_loss);
        self.state.epoch = epoch;
        self.state.history.push(rec);
        let is_best = self.state.best_val.is_none_or(|b| val_loss <= b);
        if is_best {
            self.state.best_val = Some(val_loss);
        }
        save_checkpoint(&self.last, &self.varmap, &self.opt, &self.state)?;
        if is_best {
            let best = cfg.save_dir.join("best");
            save_checkpoint(&best, &self.varmap, &self.opt, &self.state)?;
        }
        if cfg.save_period > 0 && epoch % cfg.save_period == 0 {
            let p = cfg.save_dir.join(format!("epoch_{epoch:03}.safetensors"));
            save_weights(&p, &self.varmap)?;
        }
        let history = &self.state.history;
        write_log(&cfg.save_dir.join("log.jsonl"), history)?;
        crate::tables::write_results_csv(&cfg.save_dir.join("results.csv"), history)?;
        crate::plot::plot_results(history, &cfg.save_dir.join("results.png"))
    }
}

/// Writes the JSONL log (one [`EpochRecord`] a line) atomically.
fn write_log(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut lines = String::new();
    for r in history {
        let line = serde_json::to_string(r).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        lines.push_str(&line);
        lines.push('\n');
    }
    Ok(yolo_io::write_bytes_atomic(
        path,
        Overwrite::Allow,
        lines.as_bytes(),
    )?)
}
