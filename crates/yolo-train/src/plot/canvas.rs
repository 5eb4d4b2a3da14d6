//! The canvas every picture is drawn on: a white RGB buffer in memory behind plotters'
//! bitmap backend, text in DejaVu Sans embedded in the binary (no system font is looked
//! up), encoded as PNG and written atomically through [`yolo_io`].

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use yolo_io::Overwrite;

use crate::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The font family every text of the pictures uses.
pub(crate) const FONT: &str = "sans-serif";

/// What a drawing function returns: plotters' errors, boxed.
pub(crate) type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// The drawing area of a picture.
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font under the family names plotters asks for (once).
fn register_font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for family in [FONT, "serif", "monospace"] {
            plotters::style::register_font(family, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVu Sans font cannot be read".to_string())?;
        }
        Ok(())
    })
    .clone()
}

/// Draws a `size` (width, height) picture with `draw` on a white background and writes
/// it as a PNG to `path`, atomically (the old file stays whole until the new one is).
pub(crate) fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<()> {
    let err = |message: String| Error::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_font().map_err(err)?;
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(&root).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let mut png = Cursor::new(Vec::new());
    // pictures of flat colours and lines: the best compression keeps them small
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
    .map_err(|e| err(e.to_string()))?;
    Ok(yolo_io::write_bytes_atomic(
        path,
        Overwrite::Allow,
        png.get_ref(),
    )?)
}

/// A file name for a class: its id and its name with anything but ASCII letters, digits,
/// `-` and `_` replaced by `_` (class names may hold spaces or slashes).
pub(crate) fn file_stem(class_id: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{class_id:03}_{clean}")
}

/// `lo..hi` widened so that a flat series (or none) still gets a visible range.
pub(crate) fn padded_range(values: impl IntoIterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1e-12) {
        let pad = if hi.abs() > 0.0 { hi.abs() * 0.5 } else { 1.0 };
        return (if floor_zero { lo } else { lo - pad }, hi + pad);
    }
    (lo, hi + 0.05 * span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(padded_range([], true), (0.0, 1.0));
        assert_eq!(padded_range([f64::NAN], true), (0.0, 1.0));
        let (lo, hi) = padded_range([2.0, 2.0], true);
        assert!(lo == 0.0 && hi > 2.0, "{lo} {hi}");
        let (lo, hi) = padded_range([1e-3, 1e-3], false);
        assert!(lo < 1e-3 && hi > 1e-3, "{lo} {hi}");
        let (lo, hi) = padded_range([1.0, 3.0, f64::INFINITY], true);
        assert!(lo == 0.0 && (hi - 3.15).abs() < 1e-12, "{lo} {hi}");
    }

    #[test]
    fn class_file_names_are_plain() {
        assert_eq!(file_stem(3, "traffic light/red"), "003_traffic_light_red");
        assert_eq!(file_stem(12, "dog"), "012_dog");
    }
}
