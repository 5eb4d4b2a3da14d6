//! The result type.

use serde::Serialize;

/// One detected object, in pixels of the original image (after EXIF orientation).
///
/// Serialises (JSON) with exactly the keys `x1`, `y1`, `x2`, `y2`, `score`,
/// `class_id`, `class_name`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Left edge, `0 <= x1 <= x2`.
    pub x1: f32,
    /// Top edge, `0 <= y1 <= y2`.
    pub y1: f32,
    /// Right edge, `x2 <= width`.
    pub x2: f32,
    /// Bottom edge, `y2 <= height`.
    pub y2: f32,
    /// `objectness * class score`.
    pub score: f32,
    /// Index of the class.
    pub class_id: usize,
    /// Name of the class.
    pub class_name: String,
}

impl Detection {
    /// Width of the box in pixels.
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    /// Height of the box in pixels.
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }
}
