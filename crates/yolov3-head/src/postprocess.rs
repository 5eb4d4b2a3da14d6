//! Back to the original image: the reference's `DecodeBox.yolo_correct_boxes`, and
//! clipping to the image.

use crate::nms::Candidate;

/// Rounds half to even, as `np.round`.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The reference's `yolo_correct_boxes` for one box: the NMS corners (fractions of the
/// network input `(h, w)`) -> `[top, left, bottom, right]` in pixels of the original image
/// `(h, w)`, undoing the letterbox when `letterbox` is set. Not clipped.
///
/// Follows the reference's numpy dtypes: centre and size in f32, the letterbox algebra
/// in f64 (with the box size rounded back to f32 by the in-place `box_hw *= scale`),
/// the result rounded to f32.
pub fn yolo_correct_box(
    c: &Candidate,
    input_hw: (usize, usize),
    image_hw: (usize, usize),
    letterbox: bool,
) -> [f32; 4] {
    // (y, x) and (h, w) of the centre and size, f32
    let yx = [(c.y1 + c.y2) / 2.0, (c.x1 + c.x2) / 2.0];
    let hw = [c.y2 - c.y1, c.x2 - c.x1];
    let image = [image_hw.0 as f64, image_hw.1 as f64];
    let (mins, maxes): ([f64; 2], [f64; 2]) = if letterbox {
        let input = [input_hw.0 as f64, input_hw.1 as f64];
        let min_ratio = (input[0] / image[0]).min(input[1] / image[1]);
        let mut mins = [0f64; 2];
        let mut maxes = [0f64; 2];
        for k in 0..2 {
            // a side the reference would round to 0 (and divide by) is kept at 1
            let new_shape = round_half_even(image[k] * min_ratio).max(1.0);
            let offset = (input[k] - new_shape) / 2.0 / input[k];
            let scale = input[k] / new_shape;
            let centre = (yx[k] as f64 - offset) * scale;
            let half = ((hw[k] as f64 * scale) as f32 / 2.0) as f64;
            mins[k] = centre - half;
            maxes[k] = centre + half;
        }
        (mins, maxes)
    } else {
        let mins = [(yx[0] - hw[0] / 2.0) as f64, (yx[1] - hw[1] / 2.0) as f64];
        let maxes = [(yx[0] + hw[0] / 2.0) as f64, (yx[1] + hw[1] / 2.0) as f64];
        (mins, maxes)
    };
    [
        (mins[0] * image[0]) as f32,
        (mins[1] * image[1]) as f32,
        (maxes[0] * image[0]) as f32,
        (maxes[1] * image[1]) as f32,
    ]
}

/// Clips `[top, left, bottom, right]` to the image and returns `(x1, y1, x2, y2)`
/// with `0 <= x1 <= x2 <= width` and `0 <= y1 <= y2 <= height` (NaN becomes 0).
pub fn clip_to_image(tlbr: [f32; 4], image_hw: (usize, usize)) -> (f32, f32, f32, f32) {
    let (h, w) = (image_hw.0 as f32, image_hw.1 as f32);
    let c = |v: f32, hi: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, hi) };
    let (y1, x1) = (c(tlbr[0], h), c(tlbr[1], w));
    let (y2, x2) = (c(tlbr[2], h).max(y1), c(tlbr[3], w).max(x1));
    (x1, y1, x2, y2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(x1: f32, y1: f32, x2: f32, y2: f32) -> Candidate {
        Candidate {
            x1,
            y1,
            x2,
            y2,
            obj: 1.0,
            class_conf: 1.0,
            class_id: 0,
        }
    }

    #[test]
    fn stretch_scales_to_the_image() {
        let b = yolo_correct_box(&cand(0.25, 0.5, 0.75, 1.0), (416, 416), (100, 200), false);
        assert_eq!(b, [50.0, 50.0, 100.0, 150.0]);
    }

    #[test]
    fn letterbox_is_undone() {
        // 200x100 (w x h) into 416x416: new shape (208, 416), offset_y = 0.25, scale_y = 2.
        // The image occupies y in [0.25, 0.75] of the input.
        let b = yolo_correct_box(&cand(0.0, 0.25, 1.0, 0.75), (416, 416), (100, 200), true);
        for (g, w) in b.iter().zip([0.0, 0.0, 100.0, 200.0]) {
            assert!((g - w).abs() < 1e-4, "{b:?}");
        }
        // the centre of the input is the centre of the image
        let b = yolo_correct_box(&cand(0.4, 0.4, 0.6, 0.6), (416, 416), (100, 200), true);
        assert!(((b[0] + b[2]) / 2.0 - 50.0).abs() < 1e-4);
        assert!(((b[1] + b[3]) / 2.0 - 100.0).abs() < 1e-4);
    }

    #[test]
    fn clipping() {
        assert_eq!(
            clip_to_image([-5.0, -1.0, 120.0, 250.0], (100, 200)),
            (0.0, 0.0, 200.0, 100.0)
        );
        assert_eq!(
            clip_to_image([10.0, 20.0, 30.0, 40.0], (100, 200)),
            (20.0, 10.0, 40.0, 30.0)
        );
        assert_eq!(
            clip_to_image([f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 5.0], (1, 1)),
            (0.0, 0.0, 1.0, 1.0)
        );
    }
}
