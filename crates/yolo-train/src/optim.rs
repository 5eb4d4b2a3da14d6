//! The reference's optimisers (`train.py`): SGD with momentum 0.937 and Nesterov, or Adam
//! with betas `(0.937, 0.999)`, over three parameter groups — BatchNorm weights, conv
//! weights (with weight decay 5e-4) and biases — as PyTorch's `torch.optim.SGD`/`Adam`
//! update them. The state (momentum buffers, Adam moments, step count) is saved and loaded
//! by variable name, so `--resume` continues exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::{Error, Result};

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// SGD, momentum, Nesterov.
    Sgd,
    /// Adam (L2 weight decay on the conv weights, as `torch.optim.Adam`).
    Adam,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            _ => Err(format!("unknown optimizer `{s}` (sgd or adam)")),
        }
    }
}

/// One trainable tensor and whether weight decay applies to it.
#[derive(Debug, Clone)]
pub struct Param {
    /// The PyTorch name.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Conv weights (rank 4) decay; BatchNorm weights and biases do not.
    pub decay: bool,
}

/// The trainable parameters of a VarMap: everything but BatchNorm running statistics,
/// sorted by name; conv weights (rank 4) get weight decay.
pub fn params_from_varmap(varmap: &candle_nn::VarMap) -> Vec<Param> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<Param> = data
        .iter()
        .filter(|(n, _)| {
            !n.ends_with("running_mean")
                && !n.ends_with("running_var")
                && !n.ends_with("num_batches_tracked")
        })
        .map(|(n, var)| Param {
            name: n.clone(),
            var: var.clone(),
            decay: var.as_tensor().rank() == 4,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// SGD or Adam with the reference's hyper-parameters.
#[derive(Debug)]
pub struct Optimizer {
    /// Which update.
    pub kind: OptimizerKind,
    /// Momentum (SGD) or beta1 (Adam): 0.937.
    pub momentum: f64,
    /// Adam's beta2: 0.999.
    pub beta2: f64,
    /// Adam's epsilon: 1e-8.
    pub eps: f64,
    /// Weight decay of the conv weights: 5e-4.
    pub weight_decay: f64,
    /// Current learning rate.
    pub lr: f64,
    /// Steps taken (Adam's bias correction).
    pub step: u64,
    buf1: HashMap<String, Tensor>,
    buf2: HashMap<String, Tensor>,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(kind: OptimizerKind, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            kind,
            momentum,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            lr,
            step: 0,
            buf1: HashMap::new(),
            buf2: HashMap::new(),
        }
    }

    /// One update of the `params` that have a gradient (frozen ones are left out by the caller).
    pub fn step(
        &mut self,
        params: &[&Param],
        grads: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        self.step += 1;
        for p in params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // detached: the buffers must not carry a graph from step to step
            let w = &p.var.as_tensor().detach();
            let g = g.detach();
            let g = if p.decay && self.weight_decay != 0.0 {
                (g + w.affine(self.weight_decay, 0.0)?)?
            } else {
                g
            };
            match self.kind {
                OptimizerKind::Sgd => {
                    // torch: buf = g (first step) else momentum * buf + g; nesterov: g + momentum * buf
                    let buf = match self.buf1.get(&p.name) {
                        None => g.clone(),
                        Some(b) => (b.affine(self.momentum, 0.0)? + &g)?,
                    };
                    let upd = (&g + buf.affine(self.momentum, 0.0)?)?;
                    p.var.set(&(w - upd.affine(self.lr, 0.0)?)?)?;
                    self.buf1.insert(p.name.clone(), buf);
                }
                OptimizerKind::Adam => {
                    let (b1, b2) = (self.momentum, self.beta2);
                    let m = match self.buf1.get(&p.name) {
                        None => g.affine(1.0 - b1, 0.0)?,
                        Some(m) => (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?,
                    };
                    let g2 = g.sqr()?;
                    let v = match self.buf2.get(&p.name) {
                        None => g2.affine(1.0 - b2, 0.0)?,
                        Some(v) => (v.affine(b2, 0.0)? + g2.affine(1.0 - b2, 0.0)?)?,
                    };
                    let bc1 = 1.0 - b1.powi(self.step as i32);
                    let bc2 = 1.0 - b2.powi(self.step as i32);
                    let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.eps)?;
                    let upd = (m.affine(self.lr / bc1, 0.0)? / denom)?;
                    p.var.set(&(w - upd)?)?;
                    self.buf1.insert(p.name.clone(), m);
                    self.buf2.insert(p.name.clone(), v);
                }
            }
        }
        Ok(())
    }

    /// Writes the state as safetensors (`m.NAME`, `v.NAME`) beside a step count tensor,
    /// atomically (complete or not at all).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in &self.buf1 {
            t.insert(format!("m.{k}"), v.clone());
        }
        for (k, v) in &self.buf2 {
            t.insert(format!("v.{k}"), v.clone());
        }
        t.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &Device::Cpu)?,
        );
        crate::tensor_file::save_tensors_atomic(path, &t)
    }

    /// Reads a state written by [`Optimizer::save`].
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        // read on the CPU (the f64 step count has no Metal kernel), moments moved to `device`
        let t = candle_core::safetensors::load(path, &Device::Cpu)?;
        self.buf1.clear();
        self.buf2.clear();
        for (k, v) in t {
            if let Some(n) = k.strip_prefix("m.") {
                self.buf1.insert(n.to_string(), v.to_device(device)?);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.buf2.insert(n.to_string(), v.to_device(device)?);
            } else if k == "step" {
                self.step = v.to_vec1::<f64>()?[0] as u64;
            } else {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!("unexpected tensor {k}"),
                });
            }
        }
        Ok(())
    }
}

/// The reference's learning-rate fit to the batch size: `Init_lr * batch / 64` and
/// `Min_lr * batch / 64`, clamped to `[5e-4, 5e-2]` (SGD) or `[3e-4, 1e-3]` (Adam), the
/// minimum to 1% of those limits.
pub fn fit_lr(kind: OptimizerKind, init_lr: f64, min_lr: f64, batch: usize) -> (f64, f64) {
    let nbs = 64.0;
    let (max, min) = match kind {
        OptimizerKind::Adam => (1e-3, 3e-4),
        OptimizerKind::Sgd => (5e-2, 5e-4),
    };
    let b = batch as f64 / nbs;
    (
        (b * init_lr).clamp(min, max),
        (b * min_lr).clamp(min * 1e-2, max * 1e-2),
    )
}

/// The reference's `yolox_warm_cos_lr` for `total` epochs (epoch index `iters`, from 0):
/// a quadratic warm-up from 10% over `min(max(0.05 total, 1), 3)` epochs, cosine decay to
/// `min_lr`, and `min_lr` for the last `min(max(0.05 total, 1), 15)` epochs.
pub fn warm_cos_lr(lr: f64, min_lr: f64, total: usize, iters: usize) -> f64 {
    let total_f = total as f64;
    let warm = (0.05 * total_f).clamp(1.0, 3.0);
    let start = (0.1 * lr).max(1e-6);
    let no_aug = (0.05 * total_f).clamp(1.0, 15.0);
    let it = iters as f64;
    if it <= warm {
        (lr - start) * (it / warm).powi(2) + start
    } else if it >= total_f - no_aug {
        min_lr
    } else {
        min_lr
            + 0.5
                * (lr - min_lr)
                * (1.0 + (std::f64::consts::PI * (it - warm) / (total_f - warm - no_aug)).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::backprop::GradStore;

    fn quad_grads(p: &Param) -> GradStore {
        // loss = sum(w^2) / 2 -> grad = w
        let l = (p.var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        l.backward().unwrap()
    }

    #[test]
    fn sgd_nesterov_matches_torch_by_hand() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let p = Param {
            name: "w".into(),
            var,
            decay: true,
        };
        let mut o = Optimizer::new(OptimizerKind::Sgd, 0.1, 0.9, 0.01);
        // step 1: g = w + 0.01 w = 1.01 w; buf = g; upd = g + 0.9 g = 1.9 g
        o.step(&[&p], &quad_grads(&p)).unwrap();
        let w1 = p.var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((w1[0] - (1.0 - 0.1 * 1.9 * 1.01)).abs() < 1e-6, "{w1:?}");
        // step 2: g2 = 1.01 w1; buf = 0.9 * 1.01 + g2; w2 = w1 - 0.1 (g2 + 0.9 buf)
        o.step(&[&p], &quad_grads(&p)).unwrap();
        let g2 = 1.01 * w1[0];
        let buf = 0.9 * 1.01 + g2;
        let want = w1[0] - 0.1 * (g2 + 0.9 * buf);
        let w2 = p.var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((w2[0] - want).abs() < 1e-6, "{w2:?} vs {want}");
    }

    #[test]
    fn adam_first_step_moves_by_lr_and_state_round_trips() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let p = Param {
            name: "w".into(),
            var,
            decay: false,
        };
        let mut o = Optimizer::new(OptimizerKind::Adam, 0.01, 0.9, 0.0);
        o.step(&[&p], &quad_grads(&p)).unwrap();
        let w = p.var.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (w[0] - 0.99).abs() < 1e-5 && (w[1] + 1.99).abs() < 1e-5,
            "{w:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("o.safetensors");
        o.save(&f).unwrap();
        let mut o2 = Optimizer::new(OptimizerKind::Adam, 0.01, 0.9, 0.0);
        o2.load(&f, &Device::Cpu).unwrap();
        assert_eq!(o2.step, 1);
        let (p1, p2) = (
            p.clone(),
            Param {
                var: Var::new(&[0.99f32, -1.99], &Device::Cpu).unwrap(),
                ..p.clone()
            },
        );
        p1.var
            .set(&Tensor::new(&[0.99f32, -1.99], &Device::Cpu).unwrap())
            .unwrap();
        o.step(&[&p1], &quad_grads(&p1)).unwrap();
        o2.step(&[&p2], &quad_grads(&p2)).unwrap();
        assert_eq!(
            p1.var.as_tensor().to_vec1::<f32>().unwrap(),
            p2.var.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn lr_schedule_as_the_reference() {
        let (lr, min) = fit_lr(OptimizerKind::Sgd, 1e-2, 1e-4, 16);
        assert!((lr - 2.5e-3).abs() < 1e-12 && (min - 2.5e-5).abs() < 1e-12);
        // 100 epochs: warm-up 3 epochs from 10%, last 5 at min
        assert!((warm_cos_lr(lr, min, 100, 0) - 2.5e-4).abs() < 1e-12);
        assert!((warm_cos_lr(lr, min, 100, 3) - lr).abs() < 1e-12);
        assert_eq!(warm_cos_lr(lr, min, 100, 95), min);
        let mid = warm_cos_lr(lr, min, 100, 49);
        assert!(
            (mid - (min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * 46.0 / 92.0).cos())))
                .abs()
                < 1e-12
        );
        assert!(warm_cos_lr(lr, min, 100, 60) < mid);
    }
}
