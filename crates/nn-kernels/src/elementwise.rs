//! Element-wise passes over convolution outputs: bias plus activation, and the residual
//! add, in place where the tensor may be overwritten.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};

use crate::epilogue::Epilogue;
use crate::policy::KernelPolicy;
use crate::pool::for_each_chunk_mut;
use crate::storage::{bias_f32, contiguous_f32};

/// The in-place `y = act(y + bias[c])` over (B, C, H, W).
struct BiasActInPlace(Epilogue);

impl InplaceOp2 for BiasActInPlace {
    fn name(&self) -> &'static str {
        "bias-act-inplace"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias_s: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<()> {
        let (_, c, h, w) = dst_l.shape().dims4()?;
        let Some((start, end)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("bias-act: output must be contiguous")
        };
        let bias = contiguous_f32(bias_s, bias_l, "bias")?;
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("bias-act: f32 only")
        };
        let act = self.0;
        for_each_chunk_mut(&mut data[start..end], h * w, |plane, row| {
            act.apply(row, bias[plane % c])
        });
        Ok(())
    }
}

/// `act(y + bias)` with the bias broadcast over (B, C, H, W) as (1, C, 1, 1).
///
/// On the CPU with `f32` it runs as one pass over a fresh copy of `y` (or in place when
/// `y` is a contiguous tensor this call may overwrite: see [`bias_act_owned`]).
pub fn bias_act(y: &Tensor, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Tensor> {
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y.clone(),
    };
    epilogue.apply_tensor(&y)
}

/// `act(y + bias)` like [`bias_act`], but overwriting `y` in place on the CPU with `f32`
/// when the fast path is on. `y` (B, C, H, W) must not be shared with anyone who still
/// needs its old values (e.g. a convolution output just created).
pub fn bias_act_owned(
    y: Tensor,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    policy: KernelPolicy,
) -> Result<Tensor> {
    let fast = y.device().is_cpu()
        && y.dtype() == DType::F32
        && y.rank() == 4
        && y.is_contiguous()
        && !y.track_op()
        && policy.fast_conv;
    if !fast {
        return bias_act(&y, bias, epilogue);
    }
    let c = y.dim(1)?;
    let bias = bias_f32(bias, c, y.device())?;
    y.inplace_op2(&bias, &BiasActInPlace(epilogue))?;
    Ok(y)
}

/// `y + x`, adding `x` into `y`'s own buffer on the CPU with `f32` when the fast path is
/// on and neither takes part in autograd: a residual connection without a fourth
/// activation-sized tensor (Darknet53's blocks). `y` must not be shared with anyone who
/// still needs its old values (e.g. a convolution output just created); otherwise, and
/// for shapes that differ, this is candle's `y + x`.
pub fn add_owned(y: Tensor, x: &Tensor, policy: KernelPolicy) -> Result<Tensor> {
    let fast = y.device().is_cpu()
        && x.device().is_cpu()
        && y.dtype() == DType::F32
        && x.dtype() == DType::F32
        && y.shape() == x.shape()
        && y.is_contiguous()
        && x.is_contiguous()
        && !y.track_op()
        && !x.track_op()
        && policy.fast_conv;
    if !fast {
        return y + x;
    }
    y.inplace_op2(x, &AddInPlace)?;
    Ok(y)
}

/// The in-place `y += x` of [`add_owned`].
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-inplace"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src_s: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let Some((start, end)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("add-inplace: output must be contiguous")
        };
        let src = contiguous_f32(src_s, src_l, "addend")?;
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("add-inplace: f32 only")
        };
        // Pieces of 64 Ki floats, over the threads.
        const PIECE: usize = 64 * 1024;
        for_each_chunk_mut(&mut data[start..end], PIECE, |i, piece| {
            let src = &src[i * PIECE..][..piece.len()];
            piece.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use test_support::{max_abs, max_abs_diff};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs(b).max(1e-6)
    }

    #[test]
    fn bias_act_in_place_matches() {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 4., (2, 3, 4, 5), &dev).unwrap();
        let bias = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        for act in [Epilogue::Identity, Epilogue::Relu6, Epilogue::Leaky(0.1)] {
            let want = bias_act(&y, Some(&bias), act).unwrap();
            let got = bias_act_owned(y.copy().unwrap(), Some(&bias), act, KernelPolicy::default())
                .unwrap();
            assert!(max_rel_diff(&got, &want) < 1e-6, "{act:?}");
        }
    }

    /// The in-place residual add against candle's, and its fallbacks: a non-contiguous
    /// addend, different shapes (broadcast refused like candle's), a tracked tensor.
    #[test]
    fn add_owned_matches_candle() {
        let dev = Device::Cpu;
        // More than one piece of 64 Ki floats, the last one short.
        let y = Tensor::randn(0f32, 1., (2, 3, 150, 170), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 150, 170), &dev).unwrap();
        let want = (&y + &x).unwrap();
        let got = add_owned(y.copy().unwrap(), &x, KernelPolicy::default()).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        // A transposed (non-contiguous) addend.
        let xt = Tensor::randn(0f32, 1., (2, 3, 170, 150), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let want = (&y + &xt).unwrap();
        let got = add_owned(y.copy().unwrap(), &xt, KernelPolicy::default()).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        // Shapes that differ: candle's error, not a wrong sum.
        let small = Tensor::randn(0f32, 1., (1, 3, 150, 170), &dev).unwrap();
        assert!(add_owned(y.copy().unwrap(), &small, KernelPolicy::default()).is_err());
        // A tracked tensor keeps candle's op (and its gradient).
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let sum = add_owned(y.copy().unwrap(), v.as_tensor(), KernelPolicy::default()).unwrap();
        let grads = sum.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(v.as_tensor()).is_some());
    }
}
