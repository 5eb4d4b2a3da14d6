//! The reference's `YoloDataset.get_random_data` (utils/dataloader.py): random letterbox
//! with aspect jitter and scale pasted at a random place on gray, horizontal flip, HSV
//! jitter (OpenCV 8-bit HSV and look-up tables); and the plain letterbox for validation.

use image::{Rgb, RgbImage};
use rand::Rng;
use yolov3_head::preprocess::{resize_bicubic, LetterboxGeometry};

use crate::dataset::AnnBox;
use crate::loss::TargetBox;
use crate::Result;

/// The augmentation strengths (the reference's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Aspect-ratio jitter: 0.3.
    pub jitter: f32,
    /// Scale range: 0.25 to 2.
    pub scale: (f32, f32),
    /// Flip probability: 0.5.
    pub flip: f32,
    /// Hue jitter: 0.1.
    pub hue: f32,
    /// Saturation jitter: 0.7.
    pub sat: f32,
    /// Value jitter: 0.4.
    pub val: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            jitter: 0.3,
            scale: (0.25, 2.0),
            flip: 0.5,
            hue: 0.1,
            sat: 0.7,
            val: 0.4,
        }
    }
}

const GRAY: Rgb<u8> = Rgb([128, 128, 128]);

fn rand_in<R: Rng>(rng: &mut R, a: f32, b: f32) -> f32 {
    rng.random::<f32>() * (b - a) + a
}

/// Pastes `src` at `(dx, dy)` (possibly negative) on a gray `w x h` canvas.
fn paste_on_gray(src: &RgbImage, w: u32, h: u32, dx: i64, dy: i64) -> RgbImage {
    let mut out = RgbImage::from_pixel(w, h, GRAY);
    for (x, y, p) in src.enumerate_pixels() {
        let (tx, ty) = (x as i64 + dx, y as i64 + dy);
        if tx >= 0 && ty >= 0 && tx < w as i64 && ty < h as i64 {
            out.put_pixel(tx as u32, ty as u32, *p);
        }
    }
    out
}

/// Moves the boxes by `scale` and offset, optionally flips them, clips them to the `w x h`
/// input and drops those 1 px wide or high or less, as the reference.
#[allow(clippy::too_many_arguments)]
fn move_boxes(
    boxes: &[AnnBox],
    sx: f32,
    sy: f32,
    dx: f32,
    dy: f32,
    flip: bool,
    w: f32,
    h: f32,
) -> Vec<AnnBox> {
    boxes
        .iter()
        .filter_map(|b| {
            let (mut x1, mut x2) = (b.x1 * sx + dx, b.x2 * sx + dx);
            let (mut y1, y2) = (b.y1 * sy + dy, b.y2 * sy + dy);
            if flip {
                (x1, x2) = (w - x2, w - x1);
            }
            x1 = x1.max(0.0);
            y1 = y1.max(0.0);
            let x2 = x2.min(w);
            let y2 = y2.min(h);
            (x2 - x1 > 1.0 && y2 - y1 > 1.0).then_some(AnnBox {
                x1,
                y1,
                x2,
                y2,
                class_id: b.class_id,
            })
        })
        .collect()
}

/// The reference's boxes are integers (`np.array(..., int)` arrays updated in place): the
/// moved corners are truncated.
fn truncate(boxes: Vec<AnnBox>) -> Vec<AnnBox> {
    boxes
        .into_iter()
        .map(|b| AnnBox {
            x1: b.x1.trunc(),
            y1: b.y1.trunc(),
            x2: b.x2.trunc(),
            y2: b.y2.trunc(),
            ..b
        })
        .collect()
}

/// Validation: the plain letterbox (bicubic, centred on gray).
pub fn letterbox(
    img: &RgbImage,
    boxes: &[AnnBox],
    input_wh: (u32, u32),
) -> Result<(RgbImage, Vec<AnnBox>)> {
    let (w, h) = input_wh;
    let (iw, ih) = img.dimensions();
    // the same geometry as inference's letterbox (the reference's dataloader and
    // resize_image compute it alike)
    let LetterboxGeometry { nw, nh, dx, dy } = LetterboxGeometry::new((iw, ih), input_wh);
    let resized = resize_bicubic(img, nw, nh)?;
    let out = paste_on_gray(&resized, w, h, dx as i64, dy as i64);
    let b = place_boxes(
        boxes,
        (iw, ih),
        (nw, nh),
        (dx as f32, dy as f32),
        false,
        input_wh,
    );
    Ok((out, b))
}

/// `boxes` of an `(iw, ih)` image resized to `(nw, nh)` and pasted at `(dx, dy)` on the
/// `(w, h)` canvas (mirrored when `flip`): moved, clipped, and the degenerate ones dropped.
fn place_boxes(
    boxes: &[AnnBox],
    (iw, ih): (u32, u32),
    (nw, nh): (u32, u32),
    (dx, dy): (f32, f32),
    flip: bool,
    (w, h): (u32, u32),
) -> Vec<AnnBox> {
    let b = move_boxes(
        boxes,
        nw as f32 / iw as f32,
        nh as f32 / ih as f32,
        dx,
        dy,
        flip,
        w as f32,
        h as f32,
    );
    truncate(b)
}

/// Training: random aspect and scale, random placement, flip, HSV jitter.
pub fn random_augment<R: Rng>(
    img: &RgbImage,
    boxes: &[AnnBox],
    input_wh: (u32, u32),
    cfg: &AugmentConfig,
    rng: &mut R,
) -> Result<(RgbImage, Vec<AnnBox>)> {
    let (w, h) = input_wh;
    let (iw, ih) = img.dimensions();
    let j = cfg.jitter;
    let new_ar =
        iw as f32 / ih as f32 * rand_in(rng, 1.0 - j, 1.0 + j) / rand_in(rng, 1.0 - j, 1.0 + j);
    let scale = rand_in(rng, cfg.scale.0, cfg.scale.1);
    let (nw, nh) = if new_ar < 1.0 {
        let nh = (scale * h as f32) as u32;
        ((nh as f32 * new_ar) as u32, nh)
    } else {
        let nw = (scale * w as f32) as u32;
        (nw, (nw as f32 / new_ar) as u32)
    };
    let (nw, nh) = (nw.max(1), nh.max(1));
    let resized = resize_bicubic(img, nw, nh)?;
    let dx = rand_in(rng, 0.0, w as f32 - nw as f32) as i64;
    let dy = rand_in(rng, 0.0, h as f32 - nh as f32) as i64;
    let mut out = paste_on_gray(&resized, w, h, dx, dy);
    let flip = rng.random::<f32>() < cfg.flip;
    if flip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    let r = [
        rand_in(rng, -1.0, 1.0) * cfg.hue + 1.0,
        rand_in(rng, -1.0, 1.0) * cfg.sat + 1.0,
        rand_in(rng, -1.0, 1.0) * cfg.val + 1.0,
    ];
    hsv_jitter(&mut out, r);
    let b = place_boxes(
        boxes,
        (iw, ih),
        (nw, nh),
        (dx as f32, dy as f32),
        flip,
        input_wh,
    );
    Ok((out, b))
}

/// Applies the reference's HSV look-up tables with gains `r = [hue, sat, val]`.
pub fn hsv_jitter(img: &mut RgbImage, r: [f32; 3]) {
    let mut lut_h = [0u8; 256];
    let mut lut_s = [0u8; 256];
    let mut lut_v = [0u8; 256];
    for x in 0..256usize {
        let xf = x as f32;
        lut_h[x] = ((xf * r[0]) % 180.0) as u8;
        lut_s[x] = (xf * r[1]).clamp(0.0, 255.0) as u8;
        lut_v[x] = (xf * r[2]).clamp(0.0, 255.0) as u8;
    }
    for p in img.pixels_mut() {
        let [hh, ss, vv] = rgb_to_hsv(p.0);
        p.0 = hsv_to_rgb([lut_h[hh as usize], lut_s[ss as usize], lut_v[vv as usize]]);
    }
}

/// OpenCV's 8-bit `COLOR_RGB2HSV`: H in [0, 180), S and V in [0, 255].
pub fn rgb_to_hsv(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(|v| v as f32);
    let v = r.max(g).max(b);
    let mn = r.min(g).min(b);
    let diff = v - mn;
    let s = if v > 0.0 { diff * 255.0 / v } else { 0.0 };
    let mut h = if diff == 0.0 {
        0.0
    } else if v == r {
        60.0 * (g - b) / diff
    } else if v == g {
        120.0 + 60.0 * (b - r) / diff
    } else {
        240.0 + 60.0 * (r - g) / diff
    };
    if h < 0.0 {
        h += 360.0;
    }
    [
        ((h / 2.0).round() as u32 % 180) as u8,
        s.round() as u8,
        v as u8,
    ]
}

/// OpenCV's 8-bit `COLOR_HSV2RGB`.
pub fn hsv_to_rgb(hsv: [u8; 3]) -> [u8; 3] {
    let h = (hsv[0] as f32 * 2.0) % 360.0 / 60.0;
    let s = hsv[1] as f32 / 255.0;
    let v = hsv[2] as f32;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// Corner boxes in input pixels -> the loss's targets (centre and size as fractions).
pub fn to_targets(boxes: &[AnnBox], input_wh: (u32, u32)) -> Vec<TargetBox> {
    let (w, h) = (input_wh.0 as f32, input_wh.1 as f32);
    boxes
        .iter()
        .map(|b| TargetBox {
            cx: (b.x1 + b.x2) / 2.0 / w,
            cy: (b.y1 + b.y2) / 2.0 / h,
            w: (b.x2 - b.x1) / w,
            h: (b.y2 - b.y1) / h,
            class_id: b.class_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hsv_round_trips_and_identity_gains_keep_colours() {
        for rgb in [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [128, 128, 128],
            [200, 100, 50],
        ] {
            let back = hsv_to_rgb(rgb_to_hsv(rgb));
            for k in 0..3 {
                assert!(
                    (back[k] as i32 - rgb[k] as i32).abs() <= 3,
                    "{rgb:?} -> {back:?}"
                );
            }
        }
        assert_eq!(rgb_to_hsv([255, 0, 0]), [0, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 255]), [120, 255, 255]);
    }

    #[test]
    fn letterbox_moves_boxes_exactly() {
        let img = RgbImage::from_pixel(200, 100, Rgb([10, 20, 30]));
        let b = [AnnBox {
            x1: 20.0,
            y1: 10.0,
            x2: 120.0,
            y2: 90.0,
            class_id: 1,
        }];
        let (out, boxes) = letterbox(&img, &b, (64, 64)).unwrap();
        // scale 0.32 -> 64 x 32 at dy 16
        assert_eq!(out.dimensions(), (64, 64));
        assert_eq!(out.get_pixel(0, 0), &GRAY);
        assert_eq!(
            boxes,
            vec![AnnBox {
                x1: 6.0,
                y1: 19.0,
                x2: 38.0,
                y2: 44.0,
                class_id: 1
            }]
        );
    }

    #[test]
    fn random_augment_keeps_boxes_inside_and_drops_tiny_ones() {
        let img = RgbImage::from_fn(120, 80, |x, y| Rgb([x as u8, y as u8, 90]));
        let b = [
            AnnBox {
                x1: 10.0,
                y1: 10.0,
                x2: 60.0,
                y2: 50.0,
                class_id: 0,
            },
            AnnBox {
                x1: 0.0,
                y1: 0.0,
                x2: 2.0,
                y2: 2.0,
                class_id: 1,
            },
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut kept = 0;
        for _ in 0..50 {
            let (out, boxes) =
                random_augment(&img, &b, (96, 64), &AugmentConfig::default(), &mut rng).unwrap();
            assert_eq!(out.dimensions(), (96, 64));
            for bx in &boxes {
                assert!(
                    bx.x1 >= 0.0 && bx.y1 >= 0.0 && bx.x2 <= 96.0 && bx.y2 <= 64.0,
                    "{bx:?}"
                );
                assert!(bx.x2 - bx.x1 > 0.0 && bx.y2 - bx.y1 > 0.0);
                kept += 1;
            }
        }
        assert!(kept > 20, "{kept}");
        // same seed, same result
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let a = random_augment(&img, &b, (96, 64), &AugmentConfig::default(), &mut r1).unwrap();
        let c = random_augment(&img, &b, (96, 64), &AugmentConfig::default(), &mut r2).unwrap();
        assert_eq!(a, c);
    }
}
