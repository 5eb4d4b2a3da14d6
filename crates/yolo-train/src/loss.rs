//! `YOLOLoss` of bubbliiiing/yolo3-pytorch `nets/yolo_training.py` (the GIoU version).
//!
//! Per head `l` (13x13, 26x26, 52x52 at 416):
//! - targets: each ground-truth box is assigned to the best of the 9 anchors by IoU of the
//!   sizes; it is a positive on head `l` only when that anchor belongs to `l`, at the cell
//!   holding its centre;
//! - ignore: a prediction whose decoded box has IoU > 0.5 with any ground truth of its image
//!   is not a negative;
//! - `loss = 0.05 * mean(1 - GIoU) + C/80 * mean(BCE(cls))` over the positives (when there are
//!   any) `+ balance[l] * 5 * (H * W) / 416² * mean(BCE(obj))` over positives and negatives,
//!   with `balance = [0.4, 1.0, 4]`; BCE on probabilities clipped to `[1e-7, 1 - 1e-7]`.
//!
//! The total of a batch is the sum over the three heads (the reference's `fit_one_epoch`).
//! The bookkeeping (targets, ignore mask) runs on the host; the loss itself is built from
//! candle ops so that it backpropagates into the raw heads.

use candle_core::{DType, Device, Tensor, D};

use crate::{Error, Result};

/// One ground-truth box as the reference's dataloader yields it: centre and size as
/// fractions of the network input, and the class id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetBox {
    /// Centre x, fraction of the input width.
    pub cx: f32,
    /// Centre y, fraction of the input height.
    pub cy: f32,
    /// Width, fraction of the input width.
    pub w: f32,
    /// Height, fraction of the input height.
    pub h: f32,
    /// Class id.
    pub class_id: usize,
}

/// The loss terms of one head or of a batch (the sum over heads).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The weighted total, differentiable (a scalar tensor).
    pub total: Tensor,
    /// `box_ratio * mean(1 - GIoU)` (0 without positives).
    pub loc: f32,
    /// `balance[l] * obj_ratio * mean(BCE(obj))`.
    pub conf: f32,
    /// `cls_ratio * mean(BCE(cls))` (0 without positives).
    pub cls: f32,
    /// Positives (cells with a target).
    pub num_pos: usize,
    /// Predictions in the objectness term (positives and negatives).
    pub num_conf: usize,
}

impl LossTerms {
    /// The total as a number.
    pub fn total_value(&self) -> Result<f32> {
        Ok(self.total.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }
}

/// The reference's `YOLOLoss` with its constants as public fields.
#[derive(Debug, Clone)]
pub struct YoloLoss {
    /// The anchors in input pixels `(w, h)`.
    pub anchors: Vec<(f32, f32)>,
    /// Anchor indices per head.
    pub anchors_mask: [[usize; 3]; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Network input `(height, width)`.
    pub input_hw: (usize, usize),
    /// Objectness weight per head: `[0.4, 1.0, 4]`.
    pub balance: [f64; 3],
    /// Location weight: 0.05.
    pub box_ratio: f64,
    /// `5 * (H * W) / 416²`.
    pub obj_ratio: f64,
    /// `C / 80`.
    pub cls_ratio: f64,
    /// Predictions with IoU above this with a ground truth are not negatives: 0.5.
    pub ignore_threshold: f32,
}

const EPS: f64 = 1e-7;

impl YoloLoss {
    /// The reference's constants for `num_classes` classes at input `(height, width)`.
    pub fn new(
        anchors: &[(f32, f32)],
        anchors_mask: [[usize; 3]; 3],
        num_classes: usize,
        input_hw: (usize, usize),
    ) -> Self {
        Self {
            anchors: anchors.to_vec(),
            anchors_mask,
            num_classes,
            input_hw,
            balance: [0.4, 1.0, 4.0],
            box_ratio: 0.05,
            obj_ratio: 5.0 * (input_hw.0 * input_hw.1) as f64 / (416.0 * 416.0),
            cls_ratio: num_classes as f64 / 80.0,
            ignore_threshold: 0.5,
        }
    }

    /// The sum over the three heads `[out0, out1, out2]` (strides 32, 16, 8).
    pub fn forward_all(
        &self,
        heads: &[&Tensor; 3],
        targets: &[Vec<TargetBox>],
    ) -> Result<LossTerms> {
        let mut acc: Option<LossTerms> = None;
        for (l, head) in heads.iter().enumerate() {
            let t = self.forward(l, head, targets)?;
            acc = Some(match acc {
                None => t,
                Some(a) => LossTerms {
                    total: (a.total + t.total)?,
                    loc: a.loc + t.loc,
                    conf: a.conf + t.conf,
                    cls: a.cls + t.cls,
                    num_pos: a.num_pos + t.num_pos,
                    num_conf: a.num_conf + t.num_conf,
                },
            });
        }
        acc.ok_or_else(|| Error::Config("no heads".into()))
    }

    /// The loss of head `l` for the raw head `(B, 3*(5+C), H, W)` and the targets of each image.
    pub fn forward(
        &self,
        l: usize,
        input: &Tensor,
        targets: &[Vec<TargetBox>],
    ) -> Result<LossTerms> {
        let (bs, ch, in_h, in_w) = input.dims4()?;
        let mask = self.anchors_mask[l];
        let na = mask.len();
        let attrs = 5 + self.num_classes;
        if ch != na * attrs {
            return Err(Error::Config(format!(
                "head {l} has {ch} channels, expected {na} x (5 + {})",
                self.num_classes
            )));
        }
        if targets.len() != bs {
            return Err(Error::Config(format!(
                "{} target lists for a batch of {bs}",
                targets.len()
            )));
        }
        let dev = input.device();
        let stride_h = self.input_hw.0 as f64 / in_h as f64;
        let stride_w = self.input_hw.1 as f64 / in_w as f64;
        // scaled anchors, feature-map units (f64 as the reference's Python floats, then f32)
        let scaled: Vec<(f32, f32)> = self
            .anchors
            .iter()
            .map(|&(aw, ah)| ((aw as f64 / stride_w) as f32, (ah as f64 / stride_h) as f32))
            .collect();

        // (B, A*attrs, H, W) -> (B, A, H, W, attrs) -> (N, attrs)
        let n = bs * na * in_h * in_w;
        let pred = input
            .to_dtype(DType::F32)?
            .reshape((bs, na, attrs, in_h, in_w))?
            .permute((0, 1, 3, 4, 2))?
            .contiguous()?
            .reshape((n, attrs))?;
        let cell = |b: usize, k: usize, j: usize, i: usize| ((b * na + k) * in_h + j) * in_w + i;

        // ---- get_target (host) ----
        let mut noobj = vec![true; n];
        let mut obj = vec![false; n];
        let mut y_box = vec![[0f32; 4]; n];
        let mut y_cls = vec![0f32; n * self.num_classes];
        for (b, tb) in targets.iter().enumerate() {
            for t in tb {
                if t.class_id >= self.num_classes {
                    return Err(Error::Config(format!(
                        "target class {} but the model has {} classes",
                        t.class_id, self.num_classes
                    )));
                }
                let (gx, gy) = (t.cx * in_w as f32, t.cy * in_h as f32);
                let (gw, gh) = (t.w * in_w as f32, t.h * in_h as f32);
                let best_n = best_anchor(gw, gh, &scaled);
                let Some(k) = mask.iter().position(|&m| m == best_n) else {
                    continue;
                };
                // a centre exactly on the far edge would index past the grid in the reference
                let i = (gx.floor().max(0.0) as usize).min(in_w - 1);
                let j = (gy.floor().max(0.0) as usize).min(in_h - 1);
                let c = cell(b, k, j, i);
                noobj[c] = false;
                obj[c] = true;
                y_box[c] = [gx, gy, gw, gh];
                y_cls[c * self.num_classes + t.class_id] = 1.0;
            }
        }

        // ---- get_ignore (host, on the detached predictions) ----
        let raw = pred.narrow(1, 0, 4)?.to_vec2::<f32>()?;
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        for (b, tb) in targets.iter().enumerate() {
            if tb.is_empty() {
                continue;
            }
            let gts: Vec<[f32; 4]> = tb
                .iter()
                .map(|t| {
                    [
                        t.cx * in_w as f32,
                        t.cy * in_h as f32,
                        t.w * in_w as f32,
                        t.h * in_h as f32,
                    ]
                })
                .collect();
            for k in 0..na {
                let (aw, ah) = scaled[mask[k]];
                for j in 0..in_h {
                    for i in 0..in_w {
                        let c = cell(b, k, j, i);
                        let r = &raw[c];
                        let p = [
                            sig(r[0]) + i as f32,
                            sig(r[1]) + j as f32,
                            r[2].exp() * aw,
                            r[3].exp() * ah,
                        ];
                        let best = gts
                            .iter()
                            .map(|g| iou_cxcywh(g, &p))
                            .fold(f32::NEG_INFINITY, f32::max);
                        if best > self.ignore_threshold {
                            noobj[c] = false;
                        }
                    }
                }
            }
        }

        // ---- the loss (tensors) ----
        let pos: Vec<u32> = (0..n).filter(|&c| obj[c]).map(|c| c as u32).collect();
        let conf_idx: Vec<u32> = (0..n)
            .filter(|&c| obj[c] || noobj[c])
            .map(|c| c as u32)
            .collect();
        let num_pos = pos.len();
        let mut total = Tensor::zeros((), DType::F32, dev)?;
        let (mut loc_v, mut cls_v) = (0f32, 0f32);
        if num_pos > 0 {
            let pos_t = Tensor::from_vec(pos.clone(), num_pos, dev)?;
            let p = pred.index_select(&pos_t, 0)?; // (P, attrs)
                                                   // grid offsets and anchors of the positives
            let mut grid = Vec::with_capacity(num_pos * 2);
            let mut anc = Vec::with_capacity(num_pos * 2);
            for &c in &pos {
                let c = c as usize;
                let i = c % in_w;
                let j = (c / in_w) % in_h;
                let k = (c / (in_w * in_h)) % na;
                grid.extend([i as f32, j as f32]);
                let (aw, ah) = scaled[mask[k]];
                anc.extend([aw, ah]);
            }
            let grid = Tensor::from_vec(grid, (num_pos, 2), dev)?;
            let anc = Tensor::from_vec(anc, (num_pos, 2), dev)?;
            let xy = (candle_nn::ops::sigmoid(&p.narrow(1, 0, 2)?)? + grid)?;
            let wh = (p.narrow(1, 2, 2)?.exp()? * anc)?;
            let truth: Vec<f32> = pos.iter().flat_map(|&c| y_box[c as usize]).collect();
            let truth = Tensor::from_vec(truth, (num_pos, 4), dev)?;
            let giou = box_giou(&xy, &wh, &truth.narrow(1, 0, 2)?, &truth.narrow(1, 2, 2)?)?;
            let loss_loc = giou.affine(-1.0, 1.0)?.mean_all()?;

            let pcls = candle_nn::ops::sigmoid(&p.narrow(1, 5, self.num_classes)?)?;
            let tcls: Vec<f32> = pos
                .iter()
                .flat_map(|&c| {
                    let c = c as usize;
                    y_cls[c * self.num_classes..(c + 1) * self.num_classes].to_vec()
                })
                .collect();
            let tcls = Tensor::from_vec(tcls, (num_pos, self.num_classes), dev)?;
            let loss_cls = bce(&pcls, &tcls)?.mean_all()?;
            let loc_w = loss_loc.affine(self.box_ratio, 0.0)?;
            let cls_w = loss_cls.affine(self.cls_ratio, 0.0)?;
            loc_v = loc_w.to_scalar::<f32>()?;
            cls_v = cls_w.to_scalar::<f32>()?;
            total = (total + loc_w + cls_w)?;
        }
        let num_conf = conf_idx.len();
        let mut conf_v = 0f32;
        if num_conf > 0 {
            let tconf: Vec<f32> = conf_idx
                .iter()
                .map(|&c| if obj[c as usize] { 1.0 } else { 0.0 })
                .collect();
            let idx = Tensor::from_vec(conf_idx, num_conf, dev)?;
            let conf = candle_nn::ops::sigmoid(
                &pred
                    .narrow(1, 4, 1)?
                    .squeeze(1)?
                    .contiguous()?
                    .index_select(&idx, 0)?,
            )?;
            let tconf = Tensor::from_vec(tconf, num_conf, dev)?;
            let loss_conf = bce(&conf, &tconf)?.mean_all()?;
            let conf_w = loss_conf.affine(self.balance[l] * self.obj_ratio, 0.0)?;
            conf_v = conf_w.to_scalar::<f32>()?;
            total = (total + conf_w)?;
        }
        Ok(LossTerms {
            total,
            loc: loc_v,
            conf: conf_v,
            cls: cls_v,
            num_pos,
            num_conf,
        })
    }
}

/// The index of the anchor whose size best overlaps `(w, h)` (both centred), the first
/// of equals as `torch.argmax`.
pub fn best_anchor(w: f32, h: f32, anchors: &[(f32, f32)]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &(aw, ah)) in anchors.iter().enumerate() {
        let inter = w.min(aw) * h.min(ah);
        let iou = inter / (w * h + aw * ah - inter);
        if iou > best.1 {
            best = (i, iou);
        }
    }
    best.0
}

/// IoU of two `(cx, cy, w, h)` boxes, as the reference's `calculate_iou`.
pub fn iou_cxcywh(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let (ax1, ax2) = (a[0] - a[2] / 2.0, a[0] + a[2] / 2.0);
    let (ay1, ay2) = (a[1] - a[3] / 2.0, a[1] + a[3] / 2.0);
    let (bx1, bx2) = (b[0] - b[2] / 2.0, b[0] + b[2] / 2.0);
    let (by1, by2) = (b[1] - b[3] / 2.0, b[1] + b[3] / 2.0);
    let iw = (ax2.min(bx2) - ax1.max(bx1)).max(0.0);
    let ih = (ay2.min(by2) - ay1.max(by1)).max(0.0);
    let inter = iw * ih;
    let union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
    inter / union
}

/// The reference's `BCELoss`: the probabilities clipped to `[1e-7, 1 - 1e-7]`.
pub fn bce(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = pred.clamp(EPS as f32, (1.0 - EPS) as f32)?;
    // -t*log(p) - (1-t)*log(1-p)
    let a = (target * p.log()?)?;
    let b = (target.affine(-1.0, 1.0)? * p.affine(-1.0, 1.0)?.log()?)?;
    Ok((a + b)?.neg()?)
}

/// GIoU of boxes given as centres and sizes `(P, 2)` each; `(P,)`.
pub fn box_giou(xy1: &Tensor, wh1: &Tensor, xy2: &Tensor, wh2: &Tensor) -> Result<Tensor> {
    let half1 = (wh1 / 2.0)?;
    let half2 = (wh2 / 2.0)?;
    let (min1, max1) = ((xy1 - &half1)?, (xy1 + &half1)?);
    let (min2, max2) = ((xy2 - &half2)?, (xy2 + &half2)?);
    let imin = min1.maximum(&min2)?;
    let imax = max1.minimum(&max2)?;
    let iwh = (imax - imin)?.relu()?;
    let prod = |t: &Tensor| -> Result<Tensor> {
        Ok((t.narrow(D::Minus1, 0, 1)? * t.narrow(D::Minus1, 1, 1)?)?.squeeze(D::Minus1)?)
    };
    let inter = prod(&iwh)?;
    let union = ((prod(wh1)? + prod(wh2)?)? - &inter)?;
    let iou = (&inter / &union)?;
    let emin = min1.minimum(&min2)?;
    let emax = max1.maximum(&max2)?;
    let ewh = (emax - emin)?.relu()?;
    let earea = prod(&ewh)?;
    Ok((iou - ((&earea - &union)? / &earea)?)?)
}

/// The device-independent zero of a loss: handy for tests.
pub fn zero(dev: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((), DType::F32, dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_anchor_by_shape_iou() {
        let a = [(10.0, 13.0), (16.0, 30.0), (33.0, 23.0)];
        assert_eq!(best_anchor(10.0, 13.0, &a), 0);
        assert_eq!(best_anchor(15.0, 29.0, &a), 1);
        assert_eq!(best_anchor(40.0, 20.0, &a), 2);
    }

    #[test]
    fn giou_of_hand_boxes() {
        let dev = Device::Cpu;
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, 2), &dev).unwrap();
        // identical boxes -> 1
        let g = box_giou(
            &t(&[1.0, 1.0]),
            &t(&[2.0, 2.0]),
            &t(&[1.0, 1.0]),
            &t(&[2.0, 2.0]),
        )
        .unwrap();
        assert!((g.to_vec1::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        // disjoint unit boxes 1 apart: iou 0, enclose 3x1, union 2 -> -1/3
        let g = box_giou(
            &t(&[0.5, 0.5]),
            &t(&[1.0, 1.0]),
            &t(&[2.5, 0.5]),
            &t(&[1.0, 1.0]),
        )
        .unwrap();
        assert!((g.to_vec1::<f32>().unwrap()[0] + 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn bce_is_clipped() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[0.0f32, 1.0, 0.5], &dev).unwrap();
        let t = Tensor::new(&[1.0f32, 0.0, 1.0], &dev).unwrap();
        let v = bce(&p, &t).unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - 16.118).abs() < 1e-2, "{v:?}");
        assert!(v[1] > 15.0 && v[1].is_finite(), "{v:?}");
        assert!((v[2] - std::f32::consts::LN_2).abs() < 1e-6);
    }
}
