//! Score filtering and per-class non-maximum suppression: the reference's
//! `DecodeBox.non_max_suppression` (with `torchvision.ops.nms`).

use candle_core::{Tensor, D};

use crate::Result;

/// A box that passed the score threshold, before NMS: corners as fractions of the
/// network input (the reference's `(x1, y1, x2, y2, obj_conf, class_conf, class_pred)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Left edge, fraction of the input width.
    pub x1: f32,
    /// Top edge, fraction of the input height.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
    /// Objectness (sigmoid).
    pub obj: f32,
    /// The best class's score (sigmoid).
    pub class_conf: f32,
    /// The best class (the lowest id among equal scores, as `torch.max`).
    pub class_id: usize,
}

impl Candidate {
    /// A decoded row `[x, y, w, h, obj, cls_0 … cls_{C-1}]` -> corners and best class.
    pub fn from_row(row: &[f32]) -> Self {
        let (x, y, w, h) = (row[0], row[1], row[2], row[3]);
        let (mut class_id, mut class_conf) = (0, f32::NEG_INFINITY);
        for (i, &s) in row[5..].iter().enumerate() {
            // strictly greater: ties keep the first (lowest) class
            if s > class_conf {
                class_conf = s;
                class_id = i;
            }
        }
        Self {
            x1: x - w / 2.0,
            y1: y - h / 2.0,
            x2: x + w / 2.0,
            y2: y + h / 2.0,
            obj: row[4],
            class_conf,
            class_id,
        }
    }

    /// The detection score `obj * class_conf`.
    pub fn score(&self) -> f32 {
        self.obj * self.class_conf
    }

    /// Intersection over union, computed as `torchvision.ops.nms` does (f32, no +1).
    pub fn iou(&self, other: &Candidate) -> f32 {
        let area = |c: &Candidate| (c.x2 - c.x1) * (c.y2 - c.y1);
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        inter / (area(self) + area(other) - inter)
    }
}

/// Keeps, per image, the rows of `decoded` `(B, N, 5+C)` whose `obj * max(cls)` is at
/// least `conf`, in row order. The scores are computed on the tensor's device; only the
/// rows that pass are copied to the host.
pub fn select_candidates(decoded: &Tensor, conf: f32) -> Result<Vec<Vec<Candidate>>> {
    let (b, _n, attrs) = decoded.dims3()?;
    let num_classes = attrs.saturating_sub(5);
    if num_classes == 0 {
        return Err(crate::Error::Config(format!(
            "decoded rows have {attrs} values, expected 5 + classes"
        )));
    }
    // (B, N, 1) -> (B, N) objectness; (B, N, C) -> (B, N) best class score
    let obj = decoded.narrow(D::Minus1, 4, 1)?.squeeze(D::Minus1)?;
    let best = decoded.narrow(D::Minus1, 5, num_classes)?.max(D::Minus1)?;
    let scores = (obj * best)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(b);
    for (bi, s) in scores.iter().enumerate() {
        let keep: Vec<u32> = s
            .iter()
            .enumerate()
            .filter(|(_, &v)| v >= conf)
            .map(|(i, _)| i as u32)
            .collect();
        if keep.is_empty() {
            out.push(Vec::new());
            continue;
        }
        let idx = Tensor::new(keep.as_slice(), decoded.device())?;
        // (N, 5+C) -> (K, 5+C)
        let rows = decoded.get(bi)?.index_select(&idx, 0)?.to_vec2::<f32>()?;
        out.push(rows.iter().map(|r| Candidate::from_row(r)).collect());
    }
    Ok(out)
}

/// `torchvision.ops.nms`: indices of `boxes` kept, by decreasing score (a stable sort:
/// equal scores keep their order), dropping every box whose IoU with a kept one is
/// above `iou_threshold`.
pub fn nms(boxes: &[Candidate], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[oi + 1..] {
            if !suppressed[j] && boxes[i].iou(&boxes[j]) as f64 > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// The reference's per-class NMS: classes in increasing id, each class's survivors by
/// decreasing score — the order of the reference's output.
pub fn non_max_suppression(candidates: &[Candidate], iou_threshold: f64) -> Vec<Candidate> {
    let mut classes: Vec<usize> = candidates.iter().map(|c| c.class_id).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut out = Vec::new();
    for c in classes {
        let of_class: Vec<Candidate> = candidates
            .iter()
            .filter(|d| d.class_id == c)
            .copied()
            .collect();
        let scores: Vec<f32> = of_class.iter().map(Candidate::score).collect();
        out.extend(
            nms(&of_class, &scores, iou_threshold)
                .into_iter()
                .map(|i| of_class[i]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cand(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class_id: usize) -> Candidate {
        Candidate {
            x1,
            y1,
            x2,
            y2,
            obj: score,
            class_conf: 1.0,
            class_id,
        }
    }

    #[test]
    fn iou_by_hand() {
        let a = cand(0.0, 0.0, 2.0, 2.0, 1.0, 0);
        let b = cand(1.0, 0.0, 3.0, 2.0, 1.0, 0);
        assert!((a.iou(&b) - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(a.iou(&cand(2.0, 2.0, 3.0, 3.0, 1.0, 0)), 0.0); // touching corners
    }

    #[test]
    fn nms_keeps_best_and_disjoint_and_stable_ties() {
        let boxes = [
            cand(0.0, 0.0, 1.0, 1.0, 0.6, 0),
            cand(0.05, 0.0, 1.05, 1.0, 0.9, 0), // overlaps 0 heavily, higher score
            cand(5.0, 5.0, 6.0, 6.0, 0.6, 0),   // disjoint, equal score to 0
        ];
        let scores: Vec<f32> = boxes.iter().map(Candidate::score).collect();
        assert_eq!(nms(&boxes, &scores, 0.3), vec![1, 2]);
        // equal scores, overlapping: the earlier one wins
        let eq = [
            cand(0.0, 0.0, 1.0, 1.0, 0.5, 0),
            cand(0.0, 0.0, 1.0, 1.0, 0.5, 0),
        ];
        assert_eq!(nms(&eq, &[0.5, 0.5], 0.3), vec![0]);
        // IoU exactly at the threshold is kept (strictly greater suppresses)
        let half = [
            cand(0.0, 0.0, 2.0, 1.0, 0.9, 0),
            cand(1.0, 0.0, 3.0, 1.0, 0.8, 0),
        ];
        let iou = half[0].iou(&half[1]) as f64;
        assert_eq!(nms(&half, &[0.9, 0.8], iou), vec![0, 1]);
        assert_eq!(nms(&half, &[0.9, 0.8], iou - 1e-6), vec![0]);
    }

    #[test]
    fn per_class_order_is_class_then_score() {
        let c = [
            cand(0.0, 0.0, 1.0, 1.0, 0.7, 3),
            cand(0.0, 0.0, 1.0, 1.0, 0.9, 1), // same box, other class: not suppressed
            cand(2.0, 2.0, 3.0, 3.0, 0.8, 3),
        ];
        let out = non_max_suppression(&c, 0.3);
        let got: Vec<(usize, f32)> = out.iter().map(|d| (d.class_id, d.score())).collect();
        assert_eq!(got, vec![(1, 0.9), (3, 0.8), (3, 0.7)]);
    }

    #[test]
    fn selects_by_obj_times_best_class_with_first_class_on_ties() {
        // rows [x, y, w, h, obj, c0, c1, c2]
        let rows: Vec<f32> = vec![
            0.5, 0.5, 0.2, 0.2, 0.9, 0.1, 0.8, 0.8, // 0.72, class 1 (tie with 2)
            0.5, 0.5, 0.2, 0.2, 0.5, 0.9, 0.1, 0.1, // 0.45 < 0.5
            0.1, 0.2, 0.2, 0.4, 1.0, 0.5, 0.0, 0.0, // exactly 0.5: kept
        ];
        let t = Tensor::from_vec(rows, (1, 3, 8), &Device::Cpu).unwrap();
        let got = select_candidates(&t, 0.5).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 2);
        assert_eq!(got[0][0].class_id, 1);
        assert!((got[0][0].score() - 0.72).abs() < 1e-6);
        let c = got[0][1];
        assert_eq!(
            (c.x1, c.y1, c.x2, c.y2, c.class_id),
            (0.0, 0.0, 0.2, 0.4, 0)
        );
        assert!(select_candidates(&t, 0.95).unwrap()[0].is_empty());
    }
}
