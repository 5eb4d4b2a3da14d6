//! Drawing detections as the reference's `YOLO.detect_image` does: a box of
//! `thickness` one-pixel rectangles in the class colour and a filled label
//! `"{class} {score:.2f}"` above it (below its top edge when there is no room), in
//! DejaVu Sans (embedded) sized `floor(0.03 * height + 0.5)`.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};
use yolov3_head::Detection;

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The reference's palette: hue `i / C`, full saturation and value, each channel
/// `int(x * 255)` (`colorsys.hsv_to_rgb`).
pub fn class_colors(num_classes: usize) -> Vec<[u8; 3]> {
    (0..num_classes)
        .map(|i| {
            let h = i as f64 / num_classes as f64;
            let k = (h * 6.0) as i64;
            let f = h * 6.0 - k as f64;
            let (r, g, b) = match k % 6 {
                0 => (1.0, f, 0.0),
                1 => (1.0 - f, 1.0, 0.0),
                2 => (0.0, 1.0, f),
                3 => (0.0, 1.0 - f, 1.0),
                4 => (f, 0.0, 1.0),
                _ => (1.0, 0.0, 1.0 - f),
            };
            [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
        })
        .collect()
}

/// Draws boxes and labels on images.
pub struct Painter {
    font: FontRef<'static>,
    colors: Vec<[u8; 3]>,
}

impl Painter {
    /// A painter for `num_classes` class colours.
    pub fn new(num_classes: usize) -> anyhow::Result<Self> {
        let font = FontRef::try_from_slice(FONT)
            .map_err(|e| anyhow::anyhow!("the embedded font does not load: {e}"))?;
        Ok(Self {
            font,
            colors: class_colors(num_classes.max(1)),
        })
    }

    /// Draws `detections` on `img`; `input_wh` is the network input size (the line
    /// width is `max((W + H) // mean(input), 1)` as the reference).
    pub fn draw(&self, img: &mut RgbImage, detections: &[Detection], input_wh: (usize, usize)) {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let mean_input = (input_wh.0 + input_wh.1) as f64 / 2.0;
        let thickness = (((w + h) as f64 / mean_input).floor() as i64).max(1);
        let font_px = ((0.03 * h as f64 + 0.5).floor() as f32).max(1.0);
        let scale = self
            .font
            .pt_to_px_scale(font_px)
            .unwrap_or(PxScale::from(font_px));
        for d in detections {
            let color = Rgb(self.colors[d.class_id % self.colors.len()]);
            let top = (d.y1.floor() as i64).max(0);
            let left = (d.x1.floor() as i64).max(0);
            let bottom = (d.y2.floor() as i64).min(h);
            let right = (d.x2.floor() as i64).min(w);
            let label = format!("{} {:.2}", d.class_name, d.score);
            let (lw, lh) = self.text_size(&label, scale);
            let origin = if top - lh >= 0 {
                (left, top - lh)
            } else {
                (left, top + 1)
            };
            for i in 0..thickness {
                outline(img, left + i, top + i, right - i, bottom - i, color);
            }
            fill(img, origin.0, origin.1, origin.0 + lw, origin.1 + lh, color);
            self.text(img, &label, origin, scale, Rgb([0, 0, 0]));
        }
    }

    /// `(width, height)` of `text` in pixels: advances and kerning, ascent - descent.
    fn text_size(&self, text: &str, scale: PxScale) -> (i64, i64) {
        let sf = self.font.as_scaled(scale);
        let mut width = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                width += sf.kern(p, id);
            }
            width += sf.h_advance(id);
            prev = Some(id);
        }
        (
            width.ceil() as i64,
            (sf.ascent() - sf.descent()).ceil() as i64,
        )
    }

    /// Draws `text` with its top-left (ascent line) at `origin`, alpha-blended.
    fn text(
        &self,
        img: &mut RgbImage,
        text: &str,
        origin: (i64, i64),
        scale: PxScale,
        color: Rgb<u8>,
    ) {
        let sf = self.font.as_scaled(scale);
        let mut x = origin.0 as f32;
        let baseline = origin.1 as f32 + sf.ascent();
        let mut prev = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                x += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(x, baseline));
            x += sf.h_advance(id);
            prev = Some(id);
            let Some(outlined) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let px = b.min.x as i64 + gx as i64;
                let py = b.min.y as i64 + gy as i64;
                blend(img, px, py, color, coverage.clamp(0.0, 1.0));
            });
        }
    }
}

fn blend(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>, alpha: f32) {
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for c in 0..3 {
        let v = p.0[c] as f32 * (1.0 - alpha) + color.0[c] as f32 * alpha;
        p.0[c] = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// PIL's `rectangle([x0, y0, x1, y1], outline=...)`: one-pixel edges, both ends included.
fn outline(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    if x1 < x0 || y1 < y0 {
        return;
    }
    for x in x0..=x1 {
        blend(img, x, y0, color, 1.0);
        blend(img, x, y1, color, 1.0);
    }
    for y in y0..=y1 {
        blend(img, x0, y, color, 1.0);
        blend(img, x1, y, color, 1.0);
    }
}

/// PIL's `rectangle([x0, y0, x1, y1], fill=...)`, both ends included, clipped.
fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_colorsys() {
        // colorsys.hsv_to_rgb(i/20, 1, 1) * 255, truncated
        let c = class_colors(20);
        assert_eq!(c[0], [255, 0, 0]);
        assert_eq!(c[1], [255, 76, 0]);
        assert_eq!(c[5], [127, 255, 0]);
        assert_eq!(c[10], [0, 255, 255]);
        assert_eq!(c[19], [255, 0, 76]);
    }

    #[test]
    fn draws_box_and_label_inside_the_image() {
        let painter = Painter::new(2).unwrap();
        let mut img = RgbImage::from_pixel(400, 300, Rgb([255, 255, 255]));
        let det = Detection {
            x1: 50.7,
            y1: 140.2,
            x2: 350.0,
            y2: 299.9,
            score: 0.876,
            class_id: 1,
            class_name: "dog".into(),
        };
        painter.draw(&mut img, std::slice::from_ref(&det), (416, 416));
        let color = class_colors(2)[1];
        // left edge of the box at floor(x1)
        assert_eq!(img.get_pixel(50, 200).0, color);
        assert_eq!(img.get_pixel(49, 200).0, [255, 255, 255]);
        // inside the box untouched
        assert_eq!(img.get_pixel(200, 220).0, [255, 255, 255]);
        // the label (9 px font at height 300) sits above the box: black text on the fill
        let label: Vec<[u8; 3]> = (125..140)
            .flat_map(|y| (50..120).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(label.contains(&color));
        assert!(label.iter().any(|p| p[0] < 100 && p[1] < 100 && p[2] < 100));
        // boxes entirely outside or degenerate do not panic
        let mut tiny = RgbImage::new(1, 1);
        let far = Detection {
            x1: 1.0,
            y1: 1.0,
            x2: 1.0,
            y2: 1.0,
            ..det
        };
        painter.draw(&mut tiny, &[far], (416, 416));
    }
}
