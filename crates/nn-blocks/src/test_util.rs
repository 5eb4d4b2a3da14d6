//! Helpers shared by the unit tests of this crate.

use candle_core::Tensor;

/// `max |t|` over all elements.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar())
        .expect("max |t|")
}

/// `max |a - b|` over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).expect("a - b"))
}
