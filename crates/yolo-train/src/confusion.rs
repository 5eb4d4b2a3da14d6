//! The confusion matrix of a detector: which class was predicted for which ground truth,
//! with a "background" row for ground truth nothing found and a "background" column for
//! detections of nothing, at one IoU threshold and one confidence threshold.
//!
//! On each image, the detections scoring at least the confidence threshold are paired
//! with the ground truth of any class whose IoU (`get_map`'s `+1` pixel convention) is at
//! least the IoU threshold, best IoU first, each box in one pair at most (as Ultralytics'
//! `ConfusionMatrix` does). A pair counts at (its detection's class, its ground truth's
//! class); a ground truth left alone counts at (background, its class) — missed; a
//! detection left alone at (its class, background) — a false alarm.

use std::collections::BTreeMap;

use crate::metrics::{iou, DetBox, GtBox};

/// Counts of (predicted, true) classes; index `num_classes` is the background.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    /// Number of classes (the matrix is one larger each way).
    pub num_classes: usize,
    /// `counts[predicted][true]`.
    pub counts: Vec<Vec<usize>>,
    /// The IoU a detection needs to be paired with a ground truth.
    pub iou_threshold: f64,
    /// The score a detection needs to count at all.
    pub conf_threshold: f32,
}

impl ConfusionMatrix {
    /// The matrix of `dets` against `gts` for `num_classes` classes; boxes of a class id
    /// out of range are left out.
    pub fn new(
        dets: &[DetBox],
        gts: &[GtBox],
        num_classes: usize,
        iou_threshold: f64,
        conf_threshold: f32,
    ) -> Self {
        let bg = num_classes;
        let mut counts = vec![vec![0usize; num_classes + 1]; num_classes + 1];
        let mut images: BTreeMap<usize, (Vec<&GtBox>, Vec<&DetBox>)> = BTreeMap::new();
        for g in gts.iter().filter(|g| g.class_id < num_classes) {
            images.entry(g.image).or_default().0.push(g);
        }
        let kept = dets
            .iter()
            .filter(|d| d.class_id < num_classes && d.score >= conf_threshold);
        for d in kept {
            images.entry(d.image).or_default().1.push(d);
        }
        for (g, d) in images.values() {
            let mut pairs = Vec::new();
            for (gi, gb) in g.iter().enumerate() {
                for (di, db) in d.iter().enumerate() {
                    let o = iou(&db.bbox, &gb.bbox, 1.0);
                    if o >= iou_threshold {
                        pairs.push((o, gi, di));
                    }
                }
            }
            // best IoU first; ties in box order
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (mut g_used, mut d_used) = (vec![false; g.len()], vec![false; d.len()]);
            for (_, gi, di) in pairs {
                if !g_used[gi] && !d_used[di] {
                    g_used[gi] = true;
                    d_used[di] = true;
                    counts[d[di].class_id][g[gi].class_id] += 1;
                }
            }
            for (gb, _) in g.iter().zip(&g_used).filter(|(_, used)| !**used) {
                counts[bg][gb.class_id] += 1;
            }
            for (db, _) in d.iter().zip(&d_used).filter(|(_, used)| !**used) {
                counts[db.class_id][bg] += 1;
            }
        }
        Self {
            num_classes,
            counts,
            iou_threshold,
            conf_threshold,
        }
    }

    /// Ground truth of class `t` (a column's sum; `t == num_classes`: the detections of
    /// nothing).
    pub fn column_sum(&self, t: usize) -> usize {
        self.counts.iter().map(|row| row[t]).sum()
    }

    /// The matrix as CSV: a header of the true classes, one row per predicted class, the
    /// background last each way, `names` naming the classes.
    pub fn to_csv(&self, names: &[String]) -> String {
        let label = |i: usize| {
            if i == self.num_classes {
                "background".to_string()
            } else {
                crate::tables::csv_field(names.get(i).map_or("?", |s| s.as_str()))
            }
        };
        let n = self.num_classes + 1;
        let mut s = String::from("predicted \\ true");
        for t in 0..n {
            s.push(',');
            s.push_str(&label(t));
        }
        s.push('\n');
        for (p, row) in self.counts.iter().enumerate() {
            s.push_str(&label(p));
            for c in row {
                s.push_str(&format!(",{c}"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image: usize, class_id: usize, x: f32) -> GtBox {
        GtBox {
            image,
            class_id,
            bbox: [x, 0.0, x + 9.0, 9.0],
        }
    }

    fn det(image: usize, class_id: usize, score: f32, x: f32) -> DetBox {
        DetBox {
            image,
            class_id,
            score,
            bbox: [x, 0.0, x + 9.0, 9.0],
        }
    }

    #[test]
    fn matrix_by_hand() {
        let gts = [gt(0, 0, 0.0), gt(0, 1, 50.0), gt(1, 1, 0.0), gt(1, 2, 50.0)];
        let dets = [
            det(0, 0, 0.9, 0.0),  // right class on gt 0: (0, 0)
            det(0, 0, 0.8, 0.0),  // a duplicate: false alarm (0, bg)
            det(0, 2, 0.9, 51.0), // wrong class on the class-1 box: (2, 1)
            det(1, 1, 0.3, 0.0),  // below the confidence threshold: the gt is missed
            det(1, 0, 0.9, 80.0), // nothing there: (0, bg)
            det(1, 7, 0.9, 50.0), // class out of range: left out, gt 3 missed
        ];
        let m = ConfusionMatrix::new(&dets, &gts, 3, 0.5, 0.5);
        let bg = 3;
        let mut want = vec![vec![0; 4]; 4];
        want[0][0] = 1;
        want[0][bg] = 2;
        want[2][1] = 1;
        want[bg][1] = 1;
        want[bg][2] = 1;
        assert_eq!(m.counts, want);
        // every ground truth is counted once, in its column
        assert_eq!((0..3).map(|t| m.column_sum(t)).sum::<usize>(), gts.len());
        assert_eq!(m.column_sum(bg), 2);
        let csv = m.to_csv(&["a".into(), "b,c".into(), "d".into()]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "predicted \\ true,a,\"b,c\",d,background");
        assert_eq!(lines[1], "a,1,0,0,2");
        assert_eq!(lines[4], "background,0,1,1,0");
        // a lower confidence threshold lets the class-1 detection find its box
        let m = ConfusionMatrix::new(&dets, &gts, 3, 0.5, 0.25);
        assert_eq!(m.counts[1][1], 1);
        assert_eq!(m.counts[bg][1], 0);
    }
}
