//! `results.png` of a training run: a 2x3 grid of panels over the epochs — the total
//! loss and each of its terms (location, objectness, classes) for the training and the
//! validation set, mAP@0.5 and mAP@[.5:.95] at the epochs where they were computed, and
//! the learning rate with the epochs of a frozen backbone shaded. Each panel has a title,
//! axis labels with values and a legend.

use std::path::Path;

use plotters::prelude::*;

use super::canvas::{padded_range, render_png, Area, Drawn, FONT};
use crate::trainer::EpochRecord;
use crate::Result;

/// Width and height of `results.png`.
pub const RESULTS_SIZE: (u32, u32) = (1500, 800);

/// Panels of `results.png`: rows, columns.
pub const RESULTS_GRID: (usize, usize) = (2, 3);

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const MAP50: RGBColor = RGBColor(44, 160, 44);
const MAP50_95: RGBColor = RGBColor(148, 103, 189);
const LR: RGBColor = RGBColor(214, 39, 40);
const FROZEN: RGBColor = RGBColor(222, 232, 244);

/// One curve of a panel.
struct Series {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// Also draw it smoothed (dashed), as the reference's `LossHistory` does, once there
    /// are enough points for it to mean something (the training loss: it is the noisy
    /// one, measured on augmented images while the weights change).
    smoothed: Option<&'static str>,
}

/// Points from which a curve is also drawn smoothed.
const SMOOTH_FROM: usize = 10;

/// `points` averaged over a centred window of about a tenth of them (at least 3, odd),
/// shrunk at both ends.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let half = (points.len() / 20).max(1);
    (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            let w = &points[a..b];
            (
                points[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// One panel: its curves and how its axes read.
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
    /// Fixed y range (None: from the data, from 0 up).
    y_range: Option<(f64, f64)>,
    /// How a y tick reads.
    y_fmt: fn(&f64) -> String,
    /// Where the legend goes.
    legend_at: SeriesLabelPosition,
    /// Shown when no curve has a point.
    empty_note: &'static str,
    /// Epochs `(first, last)` to shade as the frozen-backbone phase.
    frozen: Option<(f64, f64)>,
}

fn fmt_loss(v: &f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_unit(v: &f64) -> String {
    format!("{v:.1}")
}

fn fmt_lr(v: &f64) -> String {
    format!("{v:.1e}")
}

/// The `(epoch, value)` points of `get` over `history`, non-finite and absent values left
/// out.
/// Values beyond this magnitude (and NaN, infinities) are left out of the curves: no
/// loss or learning rate is ever that large, and plotters' pixel arithmetic overflows
/// on spans near `f64::MAX`.
const MAX_PLOTTED: f64 = 1e30;

fn points(history: &[EpochRecord], get: impl Fn(&EpochRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|r| {
            get(r)
                .filter(|v| v.abs() <= MAX_PLOTTED)
                .map(|v| (r.epoch as f64, v))
        })
        .collect()
}

/// A loss panel: training `train` and validation `val` curves.
fn loss_panel(
    history: &[EpochRecord],
    title: &'static str,
    train: impl Fn(&EpochRecord) -> f32,
    val: impl Fn(&EpochRecord) -> Option<f32>,
) -> Panel {
    Panel {
        title,
        y_desc: "loss",
        series: vec![
            Series {
                label: "train",
                color: TRAIN,
                points: points(history, |r| Some(train(r) as f64)),
                smoothed: Some("train (smoothed)"),
            },
            Series {
                label: "val",
                color: VAL,
                points: points(history, |r| val(r).map(f64::from)),
                smoothed: None,
            },
        ],
        y_range: None,
        y_fmt: fmt_loss,
        legend_at: SeriesLabelPosition::UpperRight,
        empty_note: "no epoch yet",
        frozen: None,
    }
}

/// The six panels of `results.png`, row by row.
fn panels(history: &[EpochRecord]) -> Vec<Panel> {
    let frozen: Vec<f64> = history
        .iter()
        .filter(|r| r.frozen)
        .map(|r| r.epoch as f64)
        .collect();
    let frozen = frozen
        .first()
        .zip(frozen.last())
        .map(|(a, b)| (*a - 0.5, *b + 0.5));
    vec![
        loss_panel(history, "total loss", |r| r.loss, |r| Some(r.val_loss)),
        loss_panel(
            history,
            "location loss (1 - GIoU)",
            |r| r.loc,
            |r| r.val_loc,
        ),
        loss_panel(history, "objectness loss (BCE)", |r| r.conf, |r| r.val_conf),
        loss_panel(history, "class loss (BCE)", |r| r.cls, |r| r.val_cls),
        Panel {
            title: "mAP on the validation set",
            y_desc: "mAP",
            series: vec![
                Series {
                    label: "mAP@0.5",
                    color: MAP50,
                    points: points(history, |r| r.map50),
                    smoothed: None,
                },
                Series {
                    label: "mAP@.5:.95",
                    color: MAP50_95,
                    points: points(history, |r| r.map50_95),
                    smoothed: None,
                },
            ],
            y_range: Some((0.0, 1.0)),
            y_fmt: fmt_unit,
            legend_at: SeriesLabelPosition::UpperLeft,
            empty_note: "not computed yet (see --eval-period)",
            frozen: None,
        },
        Panel {
            title: "learning rate",
            y_desc: "lr",
            series: vec![Series {
                label: "lr",
                color: LR,
                points: points(history, |r| Some(r.lr)),
                smoothed: None,
            }],
            y_range: None,
            y_fmt: fmt_lr,
            legend_at: SeriesLabelPosition::UpperRight,
            empty_note: "no epoch yet",
            frozen,
        },
    ]
}

/// The epochs axis: from the first to the last epoch of `history` (one epoch: ±0.5).
fn epoch_range(history: &[EpochRecord]) -> (f64, f64) {
    let first = history.iter().map(|r| r.epoch).min().unwrap_or(1) as f64;
    let last = history.iter().map(|r| r.epoch).max().unwrap_or(1) as f64;
    if last > first {
        (first, last)
    } else {
        (first - 0.5, first + 0.5)
    }
}

fn draw_panel(area: &Area<'_>, p: &Panel, x: (f64, f64)) -> Drawn {
    let (ylo, yhi) = p.y_range.unwrap_or_else(|| {
        padded_range(
            p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)),
            true,
        )
    });
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, ylo..yhi)?;
    // `as` saturates (a history can span u32::MAX epochs); the +1 must not overflow.
    let ticks = ((x.1 - x.0).round() as usize)
        .saturating_add(1)
        .clamp(2, 10);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(p.y_desc)
        .x_labels(ticks)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&p.y_fmt)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(WHITE)
        .draw()?;
    // A point outside a fixed y range (an mAP of -1e30, say) would be mapped to pixels
    // past i32 inside plotters: draw it on the panel's edge instead.
    let inside = |&(x, y): &(f64, f64)| (x, y.clamp(ylo, yhi));
    let mut labelled = false;
    if let Some((a, b)) = p.frozen {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a.max(x.0), ylo), (b.min(x.1), yhi)],
                FROZEN.filled(),
            )))?
            .label("backbone frozen")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], FROZEN.filled()));
        labelled = true;
    }
    for s in p.series.iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(inside),
                color.stroke_width(2),
            ))?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.points.len() <= 60 {
            chart.draw_series(
                s.points
                    .iter()
                    .map(|q| Circle::new(inside(q), 3, color.filled())),
            )?;
        }
        if let Some(label) = s.smoothed.filter(|_| s.points.len() >= SMOOTH_FROM) {
            let dark = RGBColor(color.0 / 2, color.1 / 2, color.2 / 2);
            chart
                .draw_series(DashedLineSeries::new(
                    smooth(&s.points).iter().map(inside),
                    6,
                    4,
                    dark.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 6, y)], dark.stroke_width(2))
                });
        }
        labelled = true;
    }
    if p.series.iter().all(|s| s.points.is_empty()) {
        chart.draw_series(std::iter::once(Text::new(
            p.empty_note,
            (x.0 + 0.05 * (x.1 - x.0), ylo + 0.5 * (yhi - ylo)),
            (FONT, 16).into_font().color(&RGBColor(110, 110, 110)),
        )))?;
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(p.legend_at.clone())
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(170, 170, 170))
            .draw()?;
    }
    Ok(())
}

/// The title of `results.png`: epochs and the last epoch's numbers.
fn title(history: &[EpochRecord]) -> String {
    match history.last() {
        None => "training results: no epoch yet".to_string(),
        Some(r) => {
            let best_map = history
                .iter()
                .filter_map(|r| r.map50.map(|m| (r.epoch, m)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(e, m)| format!(", best mAP@0.5 {m:.4} (epoch {e})"))
                .unwrap_or_default();
            format!(
                "training results: epoch {}, loss {:.4}, val loss {:.4}{best_map}",
                r.epoch, r.loss, r.val_loss
            )
        }
    }
}

/// Draws `results.png` of `history` (one record per finished epoch) to `path`,
/// atomically: [`RESULTS_SIZE`] pixels, [`RESULTS_GRID`] panels.
pub fn plot_results(history: &[EpochRecord], path: &Path) -> Result<()> {
    let x = epoch_range(history);
    let panels = panels(history);
    render_png(path, RESULTS_SIZE, |root| {
        let body = root.titled(&title(history), (FONT, 24))?;
        let areas = body.split_evenly(RESULTS_GRID);
        for (area, p) in areas.iter().zip(&panels) {
            draw_panel(area, p, x)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::synthetic_history;

    /// Distinct colours in the `(x0, y0, w, h)` region of `img`.
    fn colours(img: &image::RgbImage, (x0, y0, w, h): (u32, u32, u32, u32)) -> usize {
        let mut seen = std::collections::HashSet::new();
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                seen.insert(img.get_pixel(x, y).0);
            }
        }
        seen.len()
    }

    fn has(img: &image::RgbImage, c: RGBColor) -> bool {
        img.pixels().any(|p| p.0 == [c.0, c.1, c.2])
    }

    #[test]
    fn smoothing_averages_neighbours() {
        let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, (i * i) as f64)).collect();
        // 5 points: a window of 3, shrunk at the ends
        assert_eq!(
            smooth(&pts),
            vec![
                (0.0, 0.5),
                (1.0, 5.0 / 3.0),
                (2.0, 14.0 / 3.0),
                (3.0, 29.0 / 3.0),
                (4.0, 12.5)
            ]
        );
        let flat = vec![(1.0, 2.0); 40];
        assert_eq!(smooth(&flat), flat);
    }

    #[test]
    fn results_png_has_its_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.png");
        plot_results(&synthetic_history(12), &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), RESULTS_SIZE);
        // every panel of the grid (below the title) holds a drawing: text, grid, curves
        let (rows, cols) = RESULTS_GRID;
        let (w, h) = RESULTS_SIZE;
        let (pw, ph) = (w / cols as u32, (h - 40) / rows as u32);
        for r in 0..rows as u32 {
            for c in 0..cols as u32 {
                let n = colours(&img, (c * pw, 40 + r * ph, pw, ph));
                assert!(n > 20, "panel {r},{c}: {n} colours");
            }
        }
        // the title strip holds text (anti-aliased grey levels), the curves their colours
        assert!(colours(&img, (0, 0, w, 30)) > 5);
        let dark = |c: RGBColor| RGBColor(c.0 / 2, c.1 / 2, c.2 / 2);
        for c in [TRAIN, VAL, MAP50, MAP50_95, LR, FROZEN, dark(TRAIN)] {
            assert!(has(&img, c), "{c:?} missing");
        }
    }

    /// What a `state.json` may hold (the `state_json` fuzz target reads it, but leaves out
    /// the plot as too slow under the fuzzer): extreme finite values of either sign, the
    /// f32 fields' overflow to infinity, epochs 0 and `usize::MAX`, out of order.
    #[test]
    fn results_png_copes_with_the_extremes_a_state_json_can_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.png");
        let mut h = synthetic_history(3);
        h[0].epoch = usize::MAX;
        h[0].lr = f64::MAX;
        h[0].loss = f32::MAX;
        h[0].val_loss = f32::INFINITY;
        h[0].map50 = Some(-f64::MAX);
        h[1].epoch = 0;
        h[1].lr = -f64::MAX;
        h[1].loss = -f32::MAX;
        h[1].seconds = f64::MAX;
        h[2].map50_95 = Some(f64::MAX);
        plot_results(&h, &path).unwrap();
        assert!(image::open(&path).is_ok());
    }

    #[test]
    fn results_png_copes_with_one_epoch_and_missing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.png");
        let mut one = synthetic_history(1);
        // a record of an older version: no validation terms, no mAP
        one[0].val_loc = None;
        one[0].val_conf = None;
        one[0].val_cls = None;
        one[0].frozen = false;
        plot_results(&one, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), RESULTS_SIZE);
        assert!(has(&img, TRAIN) && has(&img, VAL) && !has(&img, MAP50));
        // nothing at all still makes a picture
        plot_results(&[], &path).unwrap();
        // a path that cannot be written (a folder is there) is an error naming it
        let bad = dir.path().join("taken.png");
        std::fs::create_dir_all(bad.join("inside")).unwrap();
        let e = plot_results(&one, &bad).unwrap_err().to_string();
        assert!(e.contains("taken.png"), "{e}");
    }
}
