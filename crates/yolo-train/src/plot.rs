//! The end-of-training plot, drawn with `image` alone (no fonts): training loss (red) and
//! validation loss (blue) on a shared scale from 0 to their maximum, mAP@0.5 (green) from
//! 0 to 1, over epochs, on a light grid with a line every tenth of the height.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::trainer::EpochRecord;
use crate::{Error, Result};

/// Reads one curve's value off a record.
type Getter = Box<dyn Fn(&EpochRecord) -> Option<f64>>;

const W: u32 = 640;
const H: u32 = 400;
const M: i64 = 30;

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for k in 0..=n {
        let x = x0 + (x1 - x0) * k / n;
        let y = y0 + (y1 - y0) * k / n;
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x + dx, y + dy);
            if px >= 0 && py >= 0 && px < W as i64 && py < H as i64 {
                img.put_pixel(px as u32, py as u32, c);
            }
        }
    }
}

/// Draws the curves into a PNG at `path` (written atomically).
pub fn plot_history(history: &[EpochRecord], path: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = (W as i64 - 2 * M, H as i64 - 2 * M);
    for k in 0..=10 {
        let y = M + ph * k / 10;
        line(&mut img, (M, y), (M + pw, y), Rgb([225, 225, 225]));
    }
    line(&mut img, (M, M), (M, M + ph), Rgb([0, 0, 0]));
    line(&mut img, (M, M + ph), (M + pw, M + ph), Rgb([0, 0, 0]));
    let n = history.len();
    let ymax = history
        .iter()
        .flat_map(|r| [r.loss, r.val_loss])
        .filter(|v| v.is_finite())
        .fold(0f32, f32::max)
        .max(1e-6);
    let px = |i: usize| {
        if n <= 1 {
            M + pw / 2
        } else {
            M + pw * i as i64 / (n as i64 - 1)
        }
    };
    let py = |v: f64, max: f64| M + ph - ((v / max).clamp(0.0, 1.0) * ph as f64) as i64;
    let series: [(Getter, f64, Rgb<u8>); 3] = [
        (
            Box::new(|r| Some(r.loss as f64)),
            ymax as f64,
            Rgb([220, 40, 40]),
        ),
        (
            Box::new(|r| Some(r.val_loss as f64)),
            ymax as f64,
            Rgb([40, 80, 220]),
        ),
        (Box::new(|r| r.map50), 1.0, Rgb([30, 160, 60])),
    ];
    for (get, max, c) in series.iter() {
        let pts: Vec<(i64, i64)> = history
            .iter()
            .enumerate()
            .filter_map(|(i, r)| get(r).map(|v| (px(i), py(v, *max))))
            .collect();
        for p in &pts {
            for d in -2..=2 {
                line(&mut img, (p.0 + d, p.1 - 2), (p.0 + d, p.1 + 2), *c);
            }
        }
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], *c);
        }
    }
    yolo_io::write_atomic_path(path, yolo_io::Overwrite::Allow, |t| -> Result<()> {
        img.save_with_format(t, image::ImageFormat::Png)
            .map_err(|e| Error::Image {
                path: t.to_path_buf(),
                message: e.to_string(),
            })
    })
}
