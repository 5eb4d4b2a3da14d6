//! The bias-and-activation epilogue every kernel applies to its output.

use candle_core::{Result, Tensor};

/// What the output pass of a kernel does to each element: add the channel's bias, then
/// apply an activation. The layers above map their own activation types onto it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue {
    /// `x + b`.
    Identity,
    /// `min(max(x + b, 0), 6)`: `nn.ReLU6`.
    Relu6,
    /// `max(x + b, s (x + b))`: `nn.LeakyReLU(s)` for `0 <= s <= 1`.
    Leaky(f32),
}

impl Epilogue {
    /// `row[i] = act(row[i] + bias)`, written so that it vectorises.
    #[inline(always)]
    pub fn apply(self, row: &mut [f32], bias: f32) {
        match self {
            Epilogue::Identity => row.iter_mut().for_each(|v| *v += bias),
            Epilogue::Relu6 => row
                .iter_mut()
                .for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
            // max(x, s * x) is the reference's LeakyReLU for 0 <= s <= 1.
            Epilogue::Leaky(s) => row.iter_mut().for_each(|v| {
                let t = *v + bias;
                *v = t.max(t * s)
            }),
        }
    }

    /// The same on a tensor with candle's own ops (the path for other devices and
    /// dtypes, and for training): `act(y)` with the bias already added.
    pub fn apply_tensor(self, y: &Tensor) -> Result<Tensor> {
        match self {
            Epilogue::Identity => Ok(y.clone()),
            Epilogue::Relu6 => y.clamp(0f32, 6f32),
            // max(x, s * x) equals LeakyReLU for 0 <= s <= 1.
            Epilogue::Leaky(s) => y.maximum(&(y * f64::from(s))?),
        }
    }
}
