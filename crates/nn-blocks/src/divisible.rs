//! The seed's `_make_divisible`.

/// Rounds `v` to the nearest multiple of `divisor`, never below `min_value`
/// (default: `divisor`) and never more than 10 % below `v`.
///
/// Mirrors `_make_divisible` of the seed / torchvision, including Python's
/// `int(v + divisor / 2) // divisor * divisor` truncation.
pub fn make_divisible(v: f64, divisor: usize, min_value: Option<usize>) -> usize {
    let min_value = min_value.unwrap_or(divisor);
    let d = divisor as f64;
    let rounded = ((v + d / 2.0) as usize) / divisor * divisor;
    let mut new_v = rounded.max(min_value);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn matches_python_values() {
        // Values computed with the seed's Python function.
        assert_eq!(make_divisible(32.0, 8, None), 32);
        assert_eq!(make_divisible(32.0 * 0.25, 8, None), 8);
        assert_eq!(make_divisible(16.0 * 0.35, 8, None), 8);
        assert_eq!(make_divisible(24.0 * 0.75, 8, None), 24);
        assert_eq!(make_divisible(1280.0 * 1.4, 8, None), 1792);
        assert_eq!(make_divisible(20.0, 8, None), 24);
        // The 10 % rule: 19 -> 16 would lose more than 10 %, so 24.
        assert_eq!(make_divisible(19.0, 8, None), 24);
        assert_eq!(make_divisible(3.0, 8, None), 8);
        assert_eq!(make_divisible(3.0, 1, None), 3);
        assert_eq!(make_divisible(100.0, 8, Some(16)), 104);
    }
}
