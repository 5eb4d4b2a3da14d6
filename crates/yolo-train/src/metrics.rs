//! Detection metrics: VOC mAP@0.5 with all-point interpolation as the reference's
//! `get_map.py` / `utils/utils_map.py` (IoU with the `+1` pixel convention, `>=` the
//! threshold, a ground truth matched once, later matches false positives), and COCO-style
//! mAP@[0.5:0.95] as the reference's `get_coco_map` gets it from pycocotools (IoU without
//! `+1`, the best still unmatched ground truth `>=` each of 0.50, 0.55 … 0.95, 101-point
//! interpolated precision, averaged over classes and thresholds). Both are checked
//! against numbers of the reference's own code in `tests/map_golden.rs`.
//! Classes without ground truth are left out of the means, as both references do.

use serde::Serialize;

/// A ground-truth box of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtBox {
    /// Image index.
    pub image: usize,
    /// Class id.
    pub class_id: usize,
    /// `[x1, y1, x2, y2]` pixels.
    pub bbox: [f32; 4],
}

/// A detection of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetBox {
    /// Image index.
    pub image: usize,
    /// Class id.
    pub class_id: usize,
    /// Score.
    pub score: f32,
    /// `[x1, y1, x2, y2]` pixels.
    pub bbox: [f32; 4],
}

/// Per-class results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassResult {
    /// Class id.
    pub class_id: usize,
    /// Class name.
    pub name: String,
    /// Ground-truth boxes.
    pub num_gt: usize,
    /// Detections.
    pub num_det: usize,
    /// VOC AP at IoU 0.5.
    pub ap50: f64,
    /// COCO-style AP averaged over IoU 0.5:0.95.
    pub ap50_95: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Per class (all classes; those without ground truth have `num_gt == 0`).
    pub classes: Vec<ClassResult>,
    /// Mean VOC AP@0.5 over classes with ground truth.
    pub map50: f64,
    /// Mean COCO-style AP@[0.5:0.95] over classes with ground truth.
    pub map50_95: f64,
}

/// `voc_ap` of utils_map.py: all-point interpolated area under precision/recall.
pub fn voc_ap(rec: &[f64], prec: &[f64]) -> f64 {
    let mut mrec = vec![0.0];
    mrec.extend_from_slice(rec);
    mrec.push(1.0);
    let mut mpre = vec![0.0];
    mpre.extend_from_slice(prec);
    mpre.push(0.0);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (1..mrec.len())
        .filter(|&i| mrec[i] != mrec[i - 1])
        .map(|i| (mrec[i] - mrec[i - 1]) * mpre[i])
        .sum()
}

/// pycocotools' 101-point interpolated precision.
pub fn coco_ap(rec: &[f64], prec: &[f64]) -> f64 {
    let mut q = prec.to_vec();
    for i in (0..q.len().saturating_sub(1)).rev() {
        q[i] = q[i].max(q[i + 1]);
    }
    let mut sum = 0.0;
    for k in 0..101 {
        // np.linspace(0, 1, 101) to the bit: k * 0.01, not k / 100 (7 * 0.01 > 0.07)
        let r = if k == 100 { 1.0 } else { k as f64 * 0.01 };
        // first index with recall >= r
        let idx = rec.partition_point(|&x| x < r);
        if idx < q.len() {
            sum += q[idx];
        }
    }
    sum / 101.0
}

/// IoU of two `[x1, y1, x2, y2]` boxes, `plus_one` (1 or 0) pixel added to each side as
/// the VOC or the COCO convention.
pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4], plus_one: f64) -> f64 {
    let (a, b) = (a.map(f64::from), b.map(f64::from));
    let iw = a[2].min(b[2]) - a[0].max(b[0]) + plus_one;
    let ih = a[3].min(b[3]) - a[1].max(b[1]) + plus_one;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let ua = (a[2] - a[0] + plus_one) * (a[3] - a[1] + plus_one)
        + (b[2] - b[0] + plus_one) * (b[3] - b[1] + plus_one)
        - iw * ih;
    iw * ih / ua
}

/// How a detection is matched to the ground truth of its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matching {
    /// `get_map`: the ground truth of highest IoU (`+1` pixel convention, the first on
    /// ties); if it is taken already, the detection is a false positive.
    Voc,
    /// pycocotools: the not-yet-matched ground truth of highest IoU (no `+1`, the last on
    /// ties) at or above the threshold.
    Coco,
}

/// Precision/recall of one class at one threshold, detections sorted by score.
fn pr_curve(
    dets: &[&DetBox],
    gts: &[&GtBox],
    thr: f64,
    matching: Matching,
) -> (Vec<f64>, Vec<f64>) {
    let mut used = vec![false; gts.len()];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut rec = Vec::with_capacity(dets.len());
    let mut prec = Vec::with_capacity(dets.len());
    for d in dets {
        let same_image = gts.iter().enumerate().filter(|(_, g)| g.image == d.image);
        let matched = match matching {
            Matching::Voc => {
                let mut best = (-1.0f64, None);
                for (gi, g) in same_image {
                    let o = iou(&d.bbox, &g.bbox, 1.0);
                    if o > best.0 {
                        best = (o, Some(gi));
                    }
                }
                match best {
                    (o, Some(gi)) if o >= thr && !used[gi] => Some(gi),
                    _ => None,
                }
            }
            Matching::Coco => {
                // pycocotools starts from min(thr, 1 - 1e-10) and keeps a ground truth
                // whose IoU is not below the best so far
                let mut best = (thr.min(1.0 - 1e-10), None);
                for (gi, g) in same_image {
                    if used[gi] {
                        continue;
                    }
                    let o = iou(&d.bbox, &g.bbox, 0.0);
                    if o >= best.0 {
                        best = (o, Some(gi));
                    }
                }
                best.1
            }
        };
        match matched {
            Some(gi) => {
                used[gi] = true;
                tp += 1;
            }
            None => fp += 1,
        }
        rec.push(tp as f64 / gts.len() as f64);
        prec.push(tp as f64 / (tp + fp) as f64);
    }
    (rec, prec)
}

/// A detection as the reference's `YOLO.get_map_txt` writes it for `get_map.py`: the
/// score cut to the first 6 characters of its decimal text (`str(score)[:6]`, 4 decimals
/// below 1) and the corners truncated toward zero (`int()`). Evaluating rounded
/// detections gives the reference's numbers for the same network outputs.
pub fn round_as_get_map_txt(d: &DetBox) -> DetBox {
    let text = format!("{}", d.score);
    let cut: String = text.chars().take(6).collect();
    DetBox {
        score: cut.parse().unwrap_or(d.score),
        bbox: d.bbox.map(f32::trunc),
        ..*d
    }
}

/// The ground truth of class `c` and its detections by decreasing score (a stable sort:
/// ties keep their order, as `sorted(..., reverse=True)` and pycocotools' mergesort).
fn class_boxes<'a>(
    dets: &'a [DetBox],
    gts: &'a [GtBox],
    c: usize,
) -> (Vec<&'a GtBox>, Vec<&'a DetBox>) {
    let g = gts.iter().filter(|g| g.class_id == c).collect();
    let mut d: Vec<&DetBox> = dets.iter().filter(|d| d.class_id == c).collect();
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
    (g, d)
}

/// pycocotools' IoU thresholds, `np.linspace(.5, .95, 10)` to the last bit (`k * step +
/// .5`, the last one exactly .95): an IoU equal to a threshold counts as a match.
pub fn coco_iou_thresholds() -> [f64; 10] {
    let step = (0.95 - 0.5) / 9.0;
    let mut t = [0.0; 10];
    for (k, v) in t.iter_mut().enumerate() {
        *v = k as f64 * step + 0.5;
    }
    t[9] = 0.95;
    t
}

/// COCO-style AP of each class at one IoU threshold (None for classes without ground
/// truth), as pycocotools' precision table at that threshold.
pub fn coco_ap_at(
    dets: &[DetBox],
    gts: &[GtBox],
    num_classes: usize,
    thr: f64,
) -> Vec<Option<f64>> {
    (0..num_classes)
        .map(|c| {
            let (g, d) = class_boxes(dets, gts, c);
            (!g.is_empty()).then(|| {
                let (r, p) = pr_curve(&d, &g, thr, Matching::Coco);
                coco_ap(&r, &p)
            })
        })
        .collect()
}

/// Evaluates `dets` against `gts` for `names.len()` classes.
pub fn evaluate(dets: &[DetBox], gts: &[GtBox], names: &[String]) -> EvalReport {
    let mut classes = Vec::new();
    let (mut s50, mut s5095, mut n) = (0.0, 0.0, 0usize);
    for (c, name) in names.iter().enumerate() {
        let (g, d) = class_boxes(dets, gts, c);
        let (ap50, ap5095) = if g.is_empty() {
            (0.0, 0.0)
        } else {
            let (r, p) = pr_curve(&d, &g, 0.5, Matching::Voc);
            let ap50 = voc_ap(&r, &p);
            let acc: f64 = coco_iou_thresholds()
                .iter()
                .map(|&t| {
                    let (r, p) = pr_curve(&d, &g, t, Matching::Coco);
                    coco_ap(&r, &p)
                })
                .sum();
            s50 += ap50;
            s5095 += acc / 10.0;
            n += 1;
            (ap50, acc / 10.0)
        };
        classes.push(ClassResult {
            class_id: c,
            name: name.clone(),
            num_gt: g.len(),
            num_det: d.len(),
            ap50,
            ap50_95: ap5095,
        });
    }
    let div = |s: f64| if n == 0 { 0.0 } else { s / n as f64 };
    EvalReport {
        classes,
        map50: div(s50),
        map50_95: div(s5095),
    }
}

/// The precision/recall curve of one class at IoU 0.5 as `get_map.py` draws it: the
/// class's detections by decreasing score, and after each of them the true positives,
/// recall and precision so far.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// Class id.
    pub class_id: usize,
    /// Class name.
    pub name: String,
    /// Ground-truth boxes of the class.
    pub num_gt: usize,
    /// Scores of the detections, decreasing.
    pub scores: Vec<f32>,
    /// True positives among the detections so far.
    pub tp: Vec<usize>,
    /// Recall after each detection (0 without ground truth).
    pub recall: Vec<f64>,
    /// Precision after each detection.
    pub precision: Vec<f64>,
    /// VOC AP@0.5: the area under the curve made monotone (0 without ground truth).
    pub ap: f64,
}

/// A class's detections at or above a score: counts and rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtScore {
    /// Detections matching a ground truth (IoU >= 0.5, each ground truth once).
    pub tp: usize,
    /// The other detections.
    pub fp: usize,
    /// `tp / (tp + fp)` (0 without detections).
    pub precision: f64,
    /// `tp / ground truth` (0 without ground truth).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are).
    pub f1: f64,
}

impl PrCurve {
    /// Counts and rates of the detections scoring at least `score`.
    pub fn at_score(&self, score: f32) -> AtScore {
        let k = self.scores.partition_point(|&s| s >= score);
        let tp = if k == 0 { 0 } else { self.tp[k - 1] };
        let precision = if k == 0 { 0.0 } else { tp as f64 / k as f64 };
        let recall = if self.num_gt == 0 {
            0.0
        } else {
            tp as f64 / self.num_gt as f64
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        AtScore {
            tp,
            fp: k - tp,
            precision,
            recall,
            f1,
        }
    }

    /// The precision made monotone from the right, as `voc_ap` integrates it: at each
    /// detection, the best precision at this recall or beyond.
    pub fn interpolated_precision(&self) -> Vec<f64> {
        let mut q = self.precision.clone();
        for i in (0..q.len().saturating_sub(1)).rev() {
            q[i] = q[i].max(q[i + 1]);
        }
        q
    }
}

/// The precision/recall curve of each of the `names.len()` classes at IoU 0.5 (matching
/// as `get_map.py`, the AP the same as [`evaluate`]'s).
pub fn pr_curves(dets: &[DetBox], gts: &[GtBox], names: &[String]) -> Vec<PrCurve> {
    names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let (g, d) = class_boxes(dets, gts, c);
            let scores: Vec<f32> = d.iter().map(|d| d.score).collect();
            let (recall, precision, ap) = if g.is_empty() {
                (vec![0.0; d.len()], vec![0.0; d.len()], 0.0)
            } else {
                let (r, p) = pr_curve(&d, &g, 0.5, Matching::Voc);
                let ap = voc_ap(&r, &p);
                (r, p, ap)
            };
            // precision = tp / (k + 1) exactly as a ratio of small integers
            let tp = precision
                .iter()
                .enumerate()
                .map(|(k, p)| (p * (k + 1) as f64).round() as usize)
                .collect();
            PrCurve {
                class_id: c,
                name: name.clone(),
                num_gt: g.len(),
                scores,
                tp,
                recall,
                precision,
                ap,
            }
        })
        .collect()
}

impl EvalReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:>6} {:>6} {:>8} {:>10}\n",
            "class", "gt", "dets", "AP@0.5", "AP@.5:.95"
        );
        for c in &self.classes {
            s.push_str(&format!(
                "{:<20} {:>6} {:>6} {:>8.4} {:>10.4}\n",
                c.name, c.num_gt, c.num_det, c.ap50, c.ap50_95
            ));
        }
        s.push_str(&format!(
            "{:<20} {:>6} {:>6} {:>8.4} {:>10.4}\n",
            "mAP", "", "", self.map50, self.map50_95
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn voc_ap_by_hand() {
        // TP, FP, TP over 2 gts: rec [.5, .5, 1], prec [1, .5, 2/3]
        // envelope: [1, 2/3, 2/3] -> 0.5 * 1 + 0.5 * 2/3
        let ap = voc_ap(&[0.5, 0.5, 1.0], &[1.0, 0.5, 2.0 / 3.0]);
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
        assert_eq!(voc_ap(&[], &[]), 0.0);
    }

    #[test]
    fn evaluation_by_hand() {
        let gts = vec![
            GtBox {
                image: 0,
                class_id: 0,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
            GtBox {
                image: 1,
                class_id: 0,
                bbox: [10.0, 10.0, 29.0, 29.0],
            },
            GtBox {
                image: 1,
                class_id: 1,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
        ];
        let dets = vec![
            // perfect on image 0
            DetBox {
                image: 0,
                class_id: 0,
                score: 0.9,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
            // a duplicate of it: false positive
            DetBox {
                image: 0,
                class_id: 0,
                score: 0.8,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
            // image 1, IoU (+1) with the 20x20 gt: 20x15 / 400 = 0.75 (>= .5, < .8)
            DetBox {
                image: 1,
                class_id: 0,
                score: 0.7,
                bbox: [10.0, 15.0, 29.0, 29.0],
            },
            // class 1 missed; a class-2 detection without gt is ignored
            DetBox {
                image: 1,
                class_id: 2,
                score: 0.9,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
        ];
        let r = evaluate(&dets, &gts, &names(3));
        // class 0: TP, FP, TP -> AP = 0.5 + 0.5 * 2/3
        assert!(
            (r.classes[0].ap50 - (0.5 + 1.0 / 3.0)).abs() < 1e-12,
            "{:?}",
            r.classes[0]
        );
        assert_eq!(r.classes[1].ap50, 0.0);
        assert_eq!(r.classes[2].num_gt, 0);
        assert!((r.map50 - (0.5 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        // COCO: image-0 match holds at every threshold (IoU 1); image-1 IoU without +1 is
        // 19x14 / (19x19) = 0.737: a TP at 0.50 .. 0.70 (5 of 10 thresholds).
        // thresholds with the TP: rec [.5,.5,1], prec [1,.5,2/3] -> envelope [1, 2/3, 2/3]:
        // recall points 0..=50 -> 1, 51..=100 -> 2/3: (51 + 50 * 2/3) / 101
        // thresholds without: rec [.5,.5,.5] prec [1,.5,1/3] -> 51 points at 1: 51 / 101
        let with = (51.0 + 50.0 * 2.0 / 3.0) / 101.0;
        let without = 51.0 / 101.0;
        let want = (5.0 * with + 5.0 * without) / 10.0;
        assert!(
            (r.classes[0].ap50_95 - want).abs() < 1e-9,
            "{} vs {want}",
            r.classes[0].ap50_95
        );
        assert!(r.table().contains("mAP"));
        // the curves: the same AP, and counts at a score
        let curves = pr_curves(&dets, &gts, &names(3));
        assert_eq!(curves.len(), 3);
        assert_eq!(curves[0].ap, r.classes[0].ap50);
        assert_eq!(curves[0].tp, vec![1, 1, 2]);
        assert_eq!(curves[0].scores, vec![0.9, 0.8, 0.7]);
        assert_eq!(
            curves[0].interpolated_precision(),
            vec![1.0, 2.0 / 3.0, 2.0 / 3.0]
        );
        let at = curves[0].at_score(0.75);
        assert_eq!((at.tp, at.fp, at.precision, at.recall), (1, 1, 0.5, 0.5));
        assert!((at.f1 - 0.5).abs() < 1e-12);
        assert_eq!(curves[0].at_score(0.95).tp, 0);
        assert_eq!(curves[0].at_score(0.95).f1, 0.0);
        // class 1: ground truth, no detection; class 2: a detection, no ground truth
        assert_eq!((curves[1].num_gt, curves[1].scores.len()), (1, 0));
        let at = curves[2].at_score(0.5);
        assert_eq!((at.tp, at.fp, at.recall), (0, 1, 0.0));
    }
}
