//! The pictures of an evaluation (`yolo-cli eval --plots DIR`), as the reference's
//! `get_map.py` draws them and Ultralytics adds: a precision/recall curve per class with
//! its AP in the title (`pr_curves/NNN_class.png`) and all of them in one
//! (`pr_curves.png`), the AP of each class as bars with the mAP in the title
//! (`ap_per_class.png`), the ground-truth objects per class (`ground_truth.png`) and the
//! confusion matrix with a background class (`confusion_matrix.png`); beside them the
//! numbers as CSV (`ap_per_class.csv`, `confusion_matrix.csv`).

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use yolo_io::Overwrite;

use super::canvas::{file_stem, render_png, Area, Drawn, FONT};
use super::categories::Categories;
use crate::confusion::ConfusionMatrix;
use crate::metrics::{pr_curves, DetBox, EvalReport, GtBox, PrCurve};
use crate::tables::ap_per_class_csv;
use crate::{Error, Result};

/// The IoU the confusion matrix pairs boxes at.
pub const CONFUSION_IOU: f64 = 0.5;

/// Size of a per-class precision/recall picture and of `pr_curves.png`.
pub const PR_SIZE: (u32, u32) = (720, 560);

const CURVE: RGBColor = RGBColor(31, 119, 180);
const AREA: RGBColor = RGBColor(255, 205, 190);
const POINT: RGBColor = RGBColor(214, 39, 40);
const AP_BAR: RGBColor = RGBColor(31, 119, 180);
const GT_BAR: RGBColor = RGBColor(44, 160, 44);
const HEAT: RGBColor = RGBColor(8, 69, 148);

/// Colours of the curves of `pr_curves.png`, in turn.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What an evaluation is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct EvalPlotInput<'a> {
    /// All detections (any score).
    pub dets: &'a [DetBox],
    /// The ground truth.
    pub gts: &'a [GtBox],
    /// Class names, in id order.
    pub names: &'a [String],
    /// The evaluation of `dets` against `gts` ([`crate::metrics::evaluate`]).
    pub report: &'a EvalReport,
    /// The score from which a detection counts in the confusion matrix, in the
    /// precision/recall/F1 columns of `ap_per_class.csv`, and is marked on the curves.
    pub conf: f32,
}

/// Draws every picture and table of `input` into `dir` (created if need be), each file
/// written atomically; returns the files written.
pub fn write_eval_plots(dir: &Path, input: &EvalPlotInput<'_>) -> Result<Vec<PathBuf>> {
    let pr_dir = dir.join("pr_curves");
    std::fs::create_dir_all(&pr_dir).map_err(|e| Error::io(&pr_dir, e))?;
    let curves = pr_curves(input.dets, input.gts, input.names);
    let mut written = Vec::new();
    for c in &curves {
        let p = pr_dir.join(format!("{}.png", file_stem(c.class_id, &c.name)));
        render_png(&p, PR_SIZE, |root| draw_pr(root, c, input.conf))?;
        written.push(p);
    }
    let p = dir.join("pr_curves.png");
    render_png(&p, PR_SIZE, |root| draw_all_pr(root, &curves, input.report))?;
    written.push(p);

    let ap_bars: Vec<Bar> = input
        .report
        .classes
        .iter()
        .filter(|c| c.num_gt > 0)
        .map(|c| Bar {
            label: c.name.clone(),
            value: c.ap50,
            text: format!("{:.2}", c.ap50),
        })
        .collect();
    let title = format!(
        "AP@0.5 per class: mAP@0.5 = {:.2}% ({} classes)",
        100.0 * input.report.map50,
        ap_bars.len()
    );
    let p = dir.join("ap_per_class.png");
    let size = bars_size(ap_bars.len());
    render_png(&p, size, |root| {
        draw_bars(root, &title, "AP@0.5", ap_bars, 1.0, AP_BAR)
    })?;
    written.push(p);

    let gt_bars: Vec<Bar> = input
        .report
        .classes
        .iter()
        .map(|c| Bar {
            label: c.name.clone(),
            value: c.num_gt as f64,
            text: c.num_gt.to_string(),
        })
        .collect();
    let images = {
        let mut v: Vec<usize> = input.gts.iter().map(|g| g.image).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let title = format!(
        "ground-truth objects per class: {} in {images} images",
        input.gts.len()
    );
    let max = gt_bars.iter().map(|b| b.value).fold(1.0, f64::max);
    let p = dir.join("ground_truth.png");
    render_png(&p, bars_size(gt_bars.len()), |root| {
        draw_bars(root, &title, "objects", gt_bars, max, GT_BAR)
    })?;
    written.push(p);

    let m = ConfusionMatrix::new(
        input.dets,
        input.gts,
        input.names.len(),
        CONFUSION_IOU,
        input.conf,
    );
    let p = dir.join("confusion_matrix.png");
    let side = (220 + 56 * (input.names.len() as u32 + 1)).clamp(560, 1600);
    render_png(&p, (side + 60, side), |root| {
        draw_confusion(root, &m, input.names)
    })?;
    written.push(p);

    for (name, text) in [
        (
            "ap_per_class.csv",
            ap_per_class_csv(input.report, &curves, input.conf),
        ),
        ("confusion_matrix.csv", m.to_csv(input.names)),
    ] {
        let p = dir.join(name);
        yolo_io::write_bytes_atomic(&p, Overwrite::Allow, text.as_bytes())?;
        written.push(p);
    }
    Ok(written)
}

/// The precision/recall curve of one class: the precision after each detection (by
/// decreasing score) against the recall, the area under its monotone envelope (the AP)
/// shaded, and the point at the score `conf` marked.
fn draw_pr(root: &Area<'_>, c: &PrCurve, conf: f32) -> Drawn {
    let title = format!("{}: AP@0.5 = {:.2}%", c.name, 100.0 * c.ap);
    let mut chart = pr_chart(root, &title)?;
    if c.num_gt == 0 || c.scores.is_empty() {
        let note = if c.num_gt == 0 {
            format!(
                "no ground truth of this class ({} detections)",
                c.scores.len()
            )
        } else {
            format!("no detections ({} ground-truth objects)", c.num_gt)
        };
        chart.draw_series(std::iter::once(Text::new(
            note,
            (0.05, 0.5),
            (FONT, 18).into_font().color(&RGBColor(110, 110, 110)),
        )))?;
        return Ok(());
    }
    // the envelope as steps: from recall 0 at the first detection's precision
    let q = c.interpolated_precision();
    let mut outline = vec![(0.0, 0.0), (0.0, q[0])];
    for k in 0..q.len() {
        outline.push((c.recall[k], q[k]));
        if k + 1 < q.len() {
            outline.push((c.recall[k], q[k + 1]));
        }
    }
    outline.push((c.recall[q.len() - 1], 0.0));
    chart
        .draw_series(std::iter::once(Polygon::new(outline, AREA.filled())))?
        .label("area = AP (precision made monotone)")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], AREA.filled()));
    let pts: Vec<(f64, f64)> = c
        .recall
        .iter()
        .copied()
        .zip(c.precision.iter().copied())
        .collect();
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), CURVE.stroke_width(2)))?
        .label("precision after each detection")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CURVE.stroke_width(2)));
    if pts.len() <= 200 {
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, CURVE.filled())))?;
    }
    let at = c.at_score(conf);
    if at.tp + at.fp > 0 {
        chart
            .draw_series(std::iter::once(Circle::new(
                (at.recall, at.precision),
                6,
                POINT.filled(),
            )))?
            .label(format!(
                "score >= {conf}: P {:.2}, R {:.2}, F1 {:.2}",
                at.precision, at.recall, at.f1
            ))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, POINT.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft)
}

/// Every class's precision/recall curve in one picture, the AP of each in the legend.
fn draw_all_pr(root: &Area<'_>, curves: &[PrCurve], report: &EvalReport) -> Drawn {
    let title = format!(
        "precision/recall at IoU 0.5: mAP@0.5 = {:.2}%",
        100.0 * report.map50
    );
    let mut chart = pr_chart(root, &title)?;
    let shown: Vec<&PrCurve> = curves.iter().filter(|c| c.num_gt > 0).collect();
    for (i, c) in shown.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts = c.recall.iter().copied().zip(c.precision.iter().copied());
        let series = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
        // a legend line per class while they fit
        if i < 15 {
            series
                .label(format!("{} {:.3}", c.name, c.ap))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    if shown.is_empty() {
        return Ok(());
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft)
}

type PrChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Axes of recall (x) and precision (y), both from 0 to 1.
fn pr_chart<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
) -> std::result::Result<PrChart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.05)?;
    chart
        .configure_mesh()
        .x_desc("recall")
        .y_desc("precision")
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(WHITE)
        .draw()?;
    Ok(chart)
}

/// Draws the legend of `chart` at `at`.
fn legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(at)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(170, 170, 170))
        .draw()?;
    Ok(())
}

/// One bar of a bar chart.
struct Bar {
    label: String,
    value: f64,
    text: String,
}

/// A bar chart of `n` bars: wide enough for its labels, taller with more bars.
fn bars_size(n: usize) -> (u32, u32) {
    (900, (140 + 30 * n as u32).clamp(360, 2400))
}

/// Horizontal bars sorted by value (the largest on top, ties in the given order), the
/// class names on the y axis and each value written after its bar, on an x axis from 0
/// to `x_max` (above 1: counts).
fn draw_bars(
    root: &Area<'_>,
    title: &str,
    x_desc: &str,
    mut bars: Vec<Bar>,
    x_max: f64,
    color: RGBColor,
) -> Drawn {
    // the largest on top; ties in class order from the top
    bars.reverse();
    bars.sort_by(|a, b| a.value.total_cmp(&b.value));
    let longest = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(4);
    let label_w = (longest as u32 * 9 + 24).clamp(60, 320);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0.0..x_max * 1.12, Categories { n: bars.len() })?;
    let names: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let name_of = |v: &f64| {
        let i = v.round();
        if i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    // counts read as whole numbers, shares with a decimal
    let x_fmt = |v: &f64| {
        if x_max > 1.0 && v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .x_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&name_of)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let y = i as f64;
        Rectangle::new(
            [(0.0, y - 0.35), (b.value.max(0.0), y + 0.35)],
            color.filled(),
        )
    }))?;
    let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            b.text.clone(),
            (b.value.max(0.0) + 0.01 * x_max, i as f64),
            style.clone(),
        )
    }))?;
    Ok(())
}

/// The confusion matrix as a heat map: true classes across, predicted classes down (the
/// background last each way), each cell shaded by its share of its column (of the true
/// class's objects, or of the detections of nothing) and showing its count.
fn draw_confusion(root: &Area<'_>, m: &ConfusionMatrix, names: &[String]) -> Drawn {
    let n = m.num_classes + 1;
    let label = |i: usize| {
        if i == m.num_classes {
            "background".to_string()
        } else {
            names.get(i).cloned().unwrap_or_default()
        }
    };
    let labels: Vec<String> = (0..n).map(label).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4);
    let label_w = (longest as u32 * 9 + 40).clamp(60, 320);
    // many names do not fit across: they are written downwards (plotters' own rotated
    // tick labels are centred on the tick, half of them inside the plot)
    let rotate = n > 6;
    let title = format!(
        "confusion matrix (IoU >= {}, score >= {})",
        m.iou_threshold, m.conf_threshold
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(if rotate { label_w } else { 56 })
        .y_label_area_size(label_w)
        .build_cartesian_2d(Categories { n }, Categories { n })?;
    // predicted class p is drawn on row n - 1 - p, so that the first is on top
    let row = |p: usize| (n - 1 - p) as f64;
    let x_name = |v: &f64| {
        let i = v.round() as usize;
        match labels.get(i) {
            Some(l) if !rotate => l.clone(),
            _ => String::new(),
        }
    };
    let y_name = |v: &f64| {
        let r = v.round() as usize;
        labels
            .get(n - 1 - r.min(n - 1))
            .cloned()
            .unwrap_or_default()
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh()
        .x_desc("true class")
        .y_desc("predicted class")
        .x_label_formatter(&x_name)
        .y_label_formatter(&y_name)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16));
    mesh.draw()?;
    if rotate {
        let style = TextStyle::from((FONT, 14).into_font())
            .transform(FontTransform::Rotate90)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (i, l) in labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64, -0.5));
            root.draw(&Text::new(l.clone(), (px, py + 8), style.clone()))?;
        }
    }
    let cell_px = root.dim_in_pixel().1 as usize / (n + 2);
    let font = (cell_px / 3).clamp(9, 18) as i32;
    for t in 0..n {
        let total = m.column_sum(t);
        for p in 0..n {
            let count = m.counts[p][t];
            let share = if total > 0 {
                count as f64 / total as f64
            } else {
                0.0
            };
            let mix = |c: u8| (255.0 - share * (255.0 - c as f64)).round() as u8;
            let fill = RGBColor(mix(HEAT.0), mix(HEAT.1), mix(HEAT.2));
            let (x, y) = (t as f64, row(p));
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                fill.filled(),
            )))?;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                RGBColor(200, 200, 200).stroke_width(1),
            )))?;
            if count > 0 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = TextStyle::from((FONT, font).into_font())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series(std::iter::once(Text::new(count.to_string(), (x, y), style)))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::evaluate;

    /// Colours of `img`.
    fn colours(img: &image::RgbImage) -> usize {
        img.pixels()
            .map(|p| p.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    fn has(img: &image::RgbImage, c: RGBColor) -> bool {
        img.pixels().any(|p| p.0 == [c.0, c.1, c.2])
    }

    /// Three classes: `a` found well, `b` found half, `c` never; one detection of
    /// nothing.
    fn data() -> (Vec<DetBox>, Vec<GtBox>, Vec<String>) {
        let names: Vec<String> = ["a", "b long name", "c/x"].map(String::from).to_vec();
        let mut gts = Vec::new();
        let mut dets = Vec::new();
        for i in 0..4 {
            let at = |x: f32| [x, 0.0, x + 9.0, 9.0];
            gts.push(GtBox {
                image: i,
                class_id: 0,
                bbox: at(0.0),
            });
            gts.push(GtBox {
                image: i,
                class_id: 1,
                bbox: at(30.0),
            });
            gts.push(GtBox {
                image: i,
                class_id: 2,
                bbox: at(60.0),
            });
            dets.push(DetBox {
                image: i,
                class_id: 0,
                score: 0.9 - 0.1 * i as f32,
                bbox: at(0.0),
            });
            if i % 2 == 0 {
                dets.push(DetBox {
                    image: i,
                    class_id: 1,
                    score: 0.7,
                    bbox: at(30.0),
                });
            }
        }
        dets.push(DetBox {
            image: 0,
            class_id: 1,
            score: 0.95,
            bbox: at_far(),
        });
        (dets, gts, names)
    }

    fn at_far() -> [f32; 4] {
        [200.0, 200.0, 209.0, 209.0]
    }

    #[test]
    fn eval_plots_are_written() {
        let (dets, gts, names) = data();
        let report = evaluate(&dets, &gts, &names);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let input = EvalPlotInput {
            dets: &dets,
            gts: &gts,
            names: &names,
            report: &report,
            conf: 0.5,
        };
        let files = write_eval_plots(&out, &input).unwrap();
        let rel: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            rel,
            [
                "pr_curves/000_a.png",
                "pr_curves/001_b_long_name.png",
                "pr_curves/002_c_x.png",
                "pr_curves.png",
                "ap_per_class.png",
                "ground_truth.png",
                "confusion_matrix.png",
                "ap_per_class.csv",
                "confusion_matrix.csv",
            ]
        );
        for f in files.iter().filter(|f| f.extension().unwrap() == "png") {
            let img = image::open(f).unwrap().to_rgb8();
            assert!(img.width() >= 360 && img.height() >= 360, "{f:?}");
            assert!(colours(&img) > 20, "{f:?} is nearly blank");
        }
        let pr_a = image::open(&files[0]).unwrap().to_rgb8();
        assert_eq!(pr_a.dimensions(), PR_SIZE);
        // the curve, the shaded AP and the point at the threshold are there
        assert!(has(&pr_a, CURVE) && has(&pr_a, AREA) && has(&pr_a, POINT));
        // class c has no detection: no curve is drawn
        let pr_c = image::open(&files[2]).unwrap().to_rgb8();
        assert!(!has(&pr_c, CURVE) && !has(&pr_c, AREA));
        assert!(has(&image::open(&files[4]).unwrap().to_rgb8(), AP_BAR));
        assert!(has(&image::open(&files[5]).unwrap().to_rgb8(), GT_BAR));
        // the CSV tables: a row per class and the totals; the 4 x 4 matrix
        let ap = std::fs::read_to_string(&files[7]).unwrap();
        assert_eq!(ap.lines().count(), 1 + 3 + 1);
        assert!(
            ap.lines()
                .nth(1)
                .unwrap()
                .starts_with("0,a,4,4,4,0,1.0000,1.0000,1.0000,1.0000"),
            "{ap}"
        );
        let cm = std::fs::read_to_string(&files[8]).unwrap();
        let lines: Vec<&str> = cm.lines().collect();
        assert_eq!(lines.len(), 5);
        // a found 4 times; b found on images 0 and 2, missed on 1 and 3; c always missed;
        // the far detection of b is a detection of nothing
        assert_eq!(lines[1], "a,4,0,0,0");
        assert_eq!(lines[2], "b long name,0,2,0,1");
        assert_eq!(lines[4], "background,0,2,4,0");
        // drawing again replaces the files
        write_eval_plots(&out, &input).unwrap();
    }

    #[test]
    fn many_classes_still_draw() {
        // twenty classes with long names: rotated labels, small cells
        let names: Vec<String> = (0..20).map(|i| format!("class number {i}")).collect();
        let gts: Vec<GtBox> = (0..20)
            .map(|i| GtBox {
                image: i,
                class_id: i,
                bbox: [0.0, 0.0, 9.0, 9.0],
            })
            .collect();
        let dets: Vec<DetBox> = (0..20)
            .map(|i| DetBox {
                image: i,
                class_id: (i + i % 3) % 20,
                score: 0.8,
                bbox: [0.0, 0.0, 9.0, 9.0],
            })
            .collect();
        let report = evaluate(&dets, &gts, &names);
        let dir = tempfile::tempdir().unwrap();
        let input = EvalPlotInput {
            dets: &dets,
            gts: &gts,
            names: &names,
            report: &report,
            conf: 0.5,
        };
        let files = write_eval_plots(dir.path(), &input).unwrap();
        assert_eq!(files.len(), 20 + 6);
        let cm = image::open(dir.path().join("confusion_matrix.png"))
            .unwrap()
            .to_rgb8();
        assert!(cm.width() > 1000, "{:?}", cm.dimensions());
    }
}
