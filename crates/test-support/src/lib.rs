//! Tensor comparisons shared by the tests of the yolo-rs crates.
//!
//! A dev-dependency only: the helpers panic on error, as tests want.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

/// `max |t|` over all elements.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .and_then(|t| t.abs())
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar())
        .expect("max |t|")
}

/// `max |a - b|` over all elements; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).expect("a - b"))
}

/// The largest `max |a[k] - b[k]|` over same-named tensors, computed in f64; the two
/// maps must hold the same names.
pub fn max_abs_diff_maps(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    let mut names_a: Vec<_> = a.keys().collect();
    let mut names_b: Vec<_> = b.keys().collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "tensor names differ");
    a.iter()
        .map(|(name, ta)| {
            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).expect("to f64");
            let tb = &b[name];
            assert_eq!(ta.dims(), tb.dims(), "{name}: shapes differ");
            (f64_of(ta) - f64_of(tb))
                .and_then(|d| d.abs())
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f64>())
                .expect("max |a - b|")
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn differences() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1f32, -4.0, 2.0], &dev).unwrap();
        let b = Tensor::new(&[1f32, -1.5, 2.5], &dev).unwrap();
        assert_eq!(max_abs(&a), 4.0);
        assert_eq!(max_abs_diff(&a, &b), 2.5);
        let map = |t: &Tensor| HashMap::from([("x".to_string(), t.clone())]);
        assert_eq!(max_abs_diff_maps(&map(&a), &map(&b)), 2.5);
    }

    #[test]
    #[should_panic(expected = "tensor names differ")]
    fn different_names_are_refused() {
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let a = HashMap::from([("x".to_string(), t.clone())]);
        let b = HashMap::from([("y".to_string(), t)]);
        max_abs_diff_maps(&a, &b);
    }
}
