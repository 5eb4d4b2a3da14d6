//! Deterministic synthetic weights, shared bit for bit with the Python reference.
//!
//! For a tensor `name` of shape `S`, element `i` (row-major) is derived from
//! `u = fmix32(i * 2654435761 + fnv1a32(name)) / 2^32` and `x = 2u - 1`:
//!
//! | name ends with        | value                     |
//! |-----------------------|---------------------------|
//! | `running_var`         | `1 + 0.5 x`               |
//! | `running_mean`        | `0.1 x`                   |
//! | `bias`                | `0.1 x`                   |
//! | `weight`, rank 1 (BN) | `1 + 0.25 x`              |
//! | `weight`, rank 4      | `x * sqrt(6 / fan_in)`    |
//! | `weight`, rank 2      | `x * sqrt(3 / fan_in)`    |
//!
//! computed in f64 and rounded to f32. The input images use the name `input` and `u`.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// 32-bit FNV-1a hash of the tensor name.
fn fnv1a32(name: &str) -> u32 {
    name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    })
}

/// Uniform value in `[0, 1)` for element `i` of the tensor hashed to `h`.
fn unit(h: u32, i: usize) -> f64 {
    let mut k = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(h);
    k ^= k >> 16;
    k = k.wrapping_mul(0x85EB_CA6B);
    k ^= k >> 13;
    k = k.wrapping_mul(0xC2B2_AE35);
    k ^= k >> 16;
    k as f64 / 4_294_967_296.0
}

/// The synthetic values of tensor `name` with shape `dims`, row-major.
pub fn synthetic_values(name: &str, dims: &[usize]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let h = fnv1a32(name);
    let fan_in: usize = dims.iter().skip(1).product();
    let (scale, offset) = if name.ends_with("running_var") {
        (0.5, 1.0)
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        (0.1, 0.0)
    } else if name.ends_with("weight") && dims.len() == 1 {
        (0.25, 1.0)
    } else if name.ends_with("weight") && dims.len() == 4 {
        ((6.0 / fan_in as f64).sqrt(), 0.0)
    } else if name.ends_with("weight") && dims.len() == 2 {
        ((3.0 / fan_in as f64).sqrt(), 0.0)
    } else {
        (1.0, 0.0)
    };
    (0..n)
        .map(|i| (offset + scale * (2.0 * unit(h, i) - 1.0)) as f32)
        .collect()
}

/// The synthetic input batch `(B, 3, H, W)` with values in `[0, 1)`.
pub fn synthetic_input(
    batch: usize,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor> {
    let n = batch * 3 * height * width;
    let h = fnv1a32("input");
    let data: Vec<f32> = (0..n).map(|i| unit(h, i) as f32).collect();
    Tensor::from_vec(data, (batch, 3, height, width), device)
}

/// A `VarBuilder` backend that answers every request with [`synthetic_values`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SyntheticWeights;

impl SimpleBackend for SyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let values = synthetic_values(name, s.dims());
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_values_are_stable() {
        // FNV-1a reference values.
        assert_eq!(fnv1a32(""), 0x811C_9DC5);
        assert_eq!(fnv1a32("a"), 0xE40C_292C);
        // Ranges per kind.
        let var = synthetic_values("x.running_var", &[1000]);
        assert!(var.iter().all(|v| (0.5..=1.5).contains(v)));
        let w = synthetic_values("x.weight", &[8, 4, 3, 3]);
        let bound = (6.0f32 / 36.0).sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        // Spread out, not constant.
        let mean: f32 = var.iter().sum::<f32>() / var.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    }
}
