//! The numbers behind the pictures as CSV tables: `results.csv` of a training run (one
//! row per epoch, as Ultralytics writes it) and `ap_per_class.csv` of an evaluation.

use std::path::Path;

use yolo_io::Overwrite;

use crate::metrics::{EvalReport, PrCurve};
use crate::trainer::EpochRecord;
use crate::Result;

/// Columns of `results.csv`, in order: the training loss and its terms, the validation
/// loss and its terms, mAP@0.5 and mAP@[.5:.95] (empty where not computed), the learning
/// rate, whether the backbone was frozen (0/1) and the epoch's seconds.
pub const RESULTS_COLUMNS: [&str; 14] = [
    "epoch", "loss", "loc", "conf", "cls", "val_loss", "val_loc", "val_conf", "val_cls", "map50",
    "map50_95", "lr", "frozen", "seconds",
];

/// Columns of `ap_per_class.csv`: counts, and precision, recall, F1, true and false
/// positives at the confidence threshold (IoU 0.5), AP@0.5 and AP@[.5:.95].
pub const AP_COLUMNS: [&str; 11] = [
    "class_id",
    "class",
    "gt",
    "detections",
    "tp",
    "fp",
    "precision",
    "recall",
    "f1",
    "ap50",
    "ap50_95",
];

/// `s` as one CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line
/// break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// `results.csv` of `history`: a header of [`RESULTS_COLUMNS`], then one row per epoch.
pub fn results_csv(history: &[EpochRecord]) -> String {
    let mut s = RESULTS_COLUMNS.join(",");
    s.push('\n');
    for r in history {
        let row = [
            r.epoch.to_string(),
            r.loss.to_string(),
            r.loc.to_string(),
            r.conf.to_string(),
            r.cls.to_string(),
            r.val_loss.to_string(),
            opt(r.val_loc),
            opt(r.val_conf),
            opt(r.val_cls),
            opt(r.map50),
            opt(r.map50_95),
            r.lr.to_string(),
            u8::from(r.frozen).to_string(),
            format!("{:.3}", r.seconds),
        ];
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

/// Writes [`results_csv`] of `history` to `path`, atomically.
pub fn write_results_csv(path: &Path, history: &[EpochRecord]) -> Result<()> {
    Ok(yolo_io::write_bytes_atomic(
        path,
        Overwrite::Allow,
        results_csv(history).as_bytes(),
    )?)
}

/// `ap_per_class.csv`: a header of [`AP_COLUMNS`], then one row per class of `report`,
/// the counts and rates of its `curves` at `conf`, and a last row `all` with the totals,
/// the mean AP over classes with ground truth (mAP) and the precision, recall and F1 of
/// the totals.
pub fn ap_per_class_csv(report: &EvalReport, curves: &[PrCurve], conf: f32) -> String {
    let mut s = AP_COLUMNS.join(",");
    s.push('\n');
    let (mut gt, mut dets, mut tp, mut fp) = (0, 0, 0, 0);
    for (c, curve) in report.classes.iter().zip(curves) {
        let at = curve.at_score(conf);
        (gt, dets, tp, fp) = (gt + c.num_gt, dets + c.num_det, tp + at.tp, fp + at.fp);
        s.push_str(&format!(
            "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
            c.class_id,
            csv_field(&c.name),
            c.num_gt,
            c.num_det,
            at.tp,
            at.fp,
            at.precision,
            at.recall,
            at.f1,
            c.ap50,
            c.ap50_95
        ));
    }
    let p = if tp + fp > 0 {
        tp as f64 / (tp + fp) as f64
    } else {
        0.0
    };
    let r = if gt > 0 { tp as f64 / gt as f64 } else { 0.0 };
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    s.push_str(&format!(
        ",all,{gt},{dets},{tp},{fp},{p:.4},{r:.4},{f1:.4},{:.4},{:.4}\n",
        report.map50, report.map50_95
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{evaluate, pr_curves, DetBox, GtBox};
    use crate::trainer::synthetic_history;

    #[test]
    fn results_csv_has_a_row_per_epoch() {
        let mut hist = synthetic_history(3);
        hist[0].val_loc = None;
        let csv = results_csv(&hist);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "epoch,loss,loc,conf,cls,val_loss,val_loc,val_conf,val_cls,map50,map50_95,lr,frozen,seconds"
        );
        let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split(',').collect()).collect();
        assert!(cells.iter().all(|c| c.len() == 14), "{csv}");
        // epoch 1: no mAP, no validation location term (an older record); frozen
        assert_eq!(cells[1][0], "1");
        assert_eq!(cells[1][1], "10");
        assert_eq!((cells[1][6], cells[1][9], cells[1][10]), ("", "", ""));
        assert_eq!(cells[1][12], "1");
        // epoch 2: mAP computed, not frozen
        assert_eq!(cells[2][9].parse::<f64>().unwrap(), 0.1);
        assert_eq!(cells[2][10].parse::<f64>().unwrap(), 0.05);
        assert_eq!(cells[2][12], "1");
        assert_eq!(cells[3][12], "0");
        assert_eq!(cells[3][11].parse::<f64>().unwrap(), hist[2].lr);
        // written as a file
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.csv");
        write_results_csv(&p, &hist).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), csv);
    }

    #[test]
    fn ap_table_by_hand() {
        let names = vec!["cat".to_string(), "dog, big".to_string()];
        let gts = [
            GtBox {
                image: 0,
                class_id: 0,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
            GtBox {
                image: 0,
                class_id: 1,
                bbox: [20.0, 20.0, 29.0, 29.0],
            },
        ];
        let dets = [
            DetBox {
                image: 0,
                class_id: 0,
                score: 0.9,
                bbox: [0.0, 0.0, 9.0, 9.0],
            },
            DetBox {
                image: 0,
                class_id: 0,
                score: 0.6,
                bbox: [40.0, 40.0, 49.0, 49.0],
            },
            DetBox {
                image: 0,
                class_id: 1,
                score: 0.2,
                bbox: [20.0, 20.0, 29.0, 29.0],
            },
        ];
        let report = evaluate(&dets, &gts, &names);
        let curves = pr_curves(&dets, &gts, &names);
        let csv = ap_per_class_csv(&report, &curves, 0.5);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], AP_COLUMNS.join(","));
        assert_eq!(lines[1], "0,cat,1,2,1,1,0.5000,1.0000,0.6667,1.0000,1.0000");
        // the dog is found, but below the threshold
        assert_eq!(
            lines[2],
            "1,\"dog, big\",1,1,0,0,0.0000,0.0000,0.0000,1.0000,1.0000"
        );
        assert_eq!(lines[3], ",all,2,3,1,1,0.5000,0.5000,0.5000,1.0000,1.0000");
    }
}
