//! An axis of categories (class names): category `i` sits at `i`, the axis runs from
//! `-0.5` to `n - 0.5`, and there is a tick at every category and nowhere else, which
//! the label formatter turns into the category's name. Values are `f64`, so that bars
//! and cells can be drawn from `i - 0.4` to `i + 0.4`.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// `n` categories on an axis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Categories {
    /// How many.
    pub(crate) n: usize,
}

impl Ranged for Categories {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value + 0.5) / self.n.max(1) as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.n.max(1) as f64 - 0.5
    }
}

/// Only used when no formatter is given: the position.
impl ValueFormatter<f64> for Categories {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::ranged1d::BoldPoints;

    #[test]
    fn categories_map_to_the_middle_of_their_slots() {
        let c = Categories { n: 4 };
        assert_eq!(c.map(&-0.5, (0, 400)), 0);
        assert_eq!(c.map(&0.0, (0, 400)), 50);
        assert_eq!(c.map(&3.0, (0, 400)), 350);
        // a y axis runs from the bottom pixel up
        assert_eq!(c.map(&0.0, (400, 0)), 350);
        assert_eq!(c.key_points(BoldPoints(2)), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(Categories { n: 0 }.range(), -0.5..0.5);
    }
}
