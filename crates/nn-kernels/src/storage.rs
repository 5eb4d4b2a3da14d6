//! Reading candle's CPU storage as plain slices.

use candle_core::{CpuStorage, DType, Device, Layout, Result, Tensor};

/// The contiguous `f32` slice a CPU storage holds for layout `l`; `what` names the
/// operand in the error when it is not contiguous or not `f32`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// The per-channel bias as the kernels read it: `bias` flattened to contiguous `f32`, or
/// `channels` zeros without one.
pub(crate) fn bias_f32(bias: Option<&Tensor>, channels: usize, device: &Device) -> Result<Tensor> {
    match bias {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.contiguous(),
        None => Tensor::zeros(channels, DType::F32, device),
    }
}
