//! `Conv2d` + `BatchNorm2d` + activation.
//!
//! This one type covers three PyTorch spellings of the same block:
//! - the seed's `ConvBNReLU(nn.Sequential)`: tensors `{prefix}.0.weight`, `{prefix}.1.*`, ReLU6;
//! - the head's `conv2d(filter_in, filter_out, k)`: `{prefix}.conv.weight`, `{prefix}.bn.*`, LeakyReLU(0.1);
//! - Darknet53's attribute triples (`conv1`/`bn1`, `ds_conv`/`ds_bn`), LeakyReLU(0.1).
//!
//! For inference ([`BnMode::Folded`], the default) the BatchNorm is folded into the
//! convolution at load time (`w' = w * gamma / sqrt(var + eps)`,
//! `b' = beta - mean * gamma / sqrt(var + eps)`), so a forward pass is one convolution
//! with bias plus the activation. For training ([`BnMode::Train`]) the BatchNorm stays
//! a separate layer that uses batch statistics and updates its running averages.

use candle_core::{Module, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, ModuleT, VarBuilder};

use nn_kernels::{
    conv2d_bias_act, depthwise_conv2d, depthwise_conv2d_bias_act, Epilogue, KernelPolicy,
};

use crate::summary::{conv_output_hw, Summary};

/// PyTorch's default `BatchNorm2d` epsilon. Darknet's own files use 1e-6.
pub const DEFAULT_BN_EPS: f64 = 1e-5;

/// The activation after the BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `nn.ReLU6`: `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
    /// `nn.LeakyReLU(slope)`; YOLOv3 uses 0.1.
    LeakyRelu(f64),
    /// No activation (MobileNetV2's linear bottleneck projection).
    Identity,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.epilogue().apply_tensor(x)
    }

    /// The kernels' epilogue for this activation (after the bias).
    pub fn epilogue(&self) -> Epilogue {
        match *self {
            Activation::Relu6 => Epilogue::Relu6,
            Activation::LeakyRelu(slope) => Epilogue::Leaky(slope as f32),
            Activation::Identity => Epilogue::Identity,
        }
    }
}

/// How a block keeps its BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BnMode {
    /// Folded into the convolution at load time: inference only, fastest.
    #[default]
    Folded,
    /// A separate BatchNorm layer: batch statistics when training, running ones otherwise.
    Train,
}

/// Shape and behaviour of a [`ConvBnAct`] block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvBnConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size; padding is `(k - 1) / 2` as in every block of the reference.
    pub kernel_size: usize,
    /// Convolution stride.
    pub stride: usize,
    /// Convolution groups (`in_channels` for a depthwise convolution).
    pub groups: usize,
    /// Activation after the BatchNorm.
    pub activation: Activation,
    /// BatchNorm epsilon (1e-5 in PyTorch, 1e-6 in darknet).
    pub bn_eps: f64,
    /// Whether the BatchNorm is folded (inference) or kept (training).
    pub bn_mode: BnMode,
    /// The CPU kernels a folded block runs on.
    pub kernels: KernelPolicy,
}

/// What every block of a network shares: the BatchNorm's epsilon and mode and the kernel
/// policy. Each network's config carries these and hands them to its blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockOptions {
    /// BatchNorm epsilon (1e-5 in PyTorch, 1e-6 in darknet).
    pub bn_eps: f64,
    /// Whether the BatchNorm is folded (inference) or kept (training).
    pub bn_mode: BnMode,
    /// The CPU kernels folded blocks run on.
    pub kernels: KernelPolicy,
}

impl Default for BlockOptions {
    /// PyTorch's epsilon, folded BatchNorm, the fastest kernels.
    fn default() -> Self {
        Self {
            bn_eps: DEFAULT_BN_EPS,
            bn_mode: BnMode::Folded,
            kernels: KernelPolicy::default(),
        }
    }
}

impl ConvBnConfig {
    /// A stride-1, ungrouped block with LeakyReLU(0.1) and PyTorch's BN epsilon.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            groups: 1,
            activation: Activation::LeakyRelu(0.1),
            bn_eps: DEFAULT_BN_EPS,
            bn_mode: BnMode::Folded,
            kernels: KernelPolicy::default(),
        }
    }

    /// Sets the stride.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets the activation.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the BatchNorm epsilon.
    pub fn bn_eps(mut self, bn_eps: f64) -> Self {
        self.bn_eps = bn_eps;
        self
    }

    /// Sets the BatchNorm mode.
    pub fn bn_mode(mut self, bn_mode: BnMode) -> Self {
        self.bn_mode = bn_mode;
        self
    }

    /// Sets the kernel policy.
    pub fn kernels(mut self, kernels: KernelPolicy) -> Self {
        self.kernels = kernels;
        self
    }

    /// Sets the BatchNorm epsilon and mode and the kernel policy at once.
    pub fn options(self, o: BlockOptions) -> Self {
        self.bn_eps(o.bn_eps).bn_mode(o.bn_mode).kernels(o.kernels)
    }

    /// Padding of the reference blocks: `(k - 1) // 2`.
    pub fn padding(&self) -> usize {
        (self.kernel_size - 1) / 2
    }
}

/// Convolution (no bias) + BatchNorm2d + activation.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    /// With [`BnMode::Folded`] this convolution carries the BatchNorm as its bias.
    conv: Conv2d,
    /// The BatchNorm, kept only in [`BnMode::Train`].
    bn: Option<BatchNorm>,
    cfg: ConvBnConfig,
}

impl ConvBnAct {
    /// Loads the convolution from `conv_vb` (`weight`) and the BatchNorm from `bn_vb`
    /// (`weight`, `bias`, `running_mean`, `running_var`).
    pub fn load(cfg: ConvBnConfig, conv_vb: VarBuilder, bn_vb: VarBuilder) -> Result<Self> {
        if cfg.groups == 0 || !cfg.in_channels.is_multiple_of(cfg.groups) {
            candle_core::bail!(
                "{}: {} input channels cannot be split into {} groups",
                conv_vb.prefix(),
                cfg.in_channels,
                cfg.groups
            );
        }
        let conv_cfg = Conv2dConfig {
            padding: cfg.padding(),
            stride: cfg.stride,
            groups: cfg.groups,
            ..Default::default()
        };
        let conv = candle_nn::conv2d_no_bias(
            cfg.in_channels,
            cfg.out_channels,
            cfg.kernel_size,
            conv_cfg,
            conv_vb,
        )?;
        let bn_cfg = BatchNormConfig {
            eps: cfg.bn_eps,
            ..Default::default()
        };
        let bn = candle_nn::batch_norm(cfg.out_channels, bn_cfg, bn_vb)?;
        match cfg.bn_mode {
            BnMode::Folded => {
                // candle's BatchNorm holds its running statistics as `Var`s, so the folded
                // tensors come with an autograd graph that keeps the unfolded weight alive
                // (twice the weights in memory): detach them.
                let folded = conv.absorb_bn(&bn)?;
                let conv = Conv2d::new(
                    folded.weight().detach(),
                    folded.bias().map(Tensor::detach),
                    conv_cfg,
                );
                Ok(Self {
                    conv,
                    bn: None,
                    cfg,
                })
            }
            BnMode::Train => Ok(Self {
                conv,
                bn: Some(bn),
                cfg,
            }),
        }
    }

    /// The seed's `ConvBNReLU(nn.Sequential)`: `{vb}.0` is the conv, `{vb}.1` the BatchNorm.
    pub fn sequential(cfg: ConvBnConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, vb.pp("0"), vb.pp("1"))
    }

    /// The head's `conv2d(...)` (an `OrderedDict` Sequential): `{vb}.conv`, `{vb}.bn`.
    pub fn named(cfg: ConvBnConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, vb.pp("conv"), vb.pp("bn"))
    }

    /// The block's configuration.
    pub fn config(&self) -> &ConvBnConfig {
        &self.cfg
    }

    /// Trainable parameters of the PyTorch block: conv weight plus BN weight and bias.
    pub fn num_params(&self) -> usize {
        let c = &self.cfg;
        c.out_channels * (c.in_channels / c.groups) * c.kernel_size * c.kernel_size
            + 2 * c.out_channels
    }

    /// Appends this block's row to `summary` for an input of `input` = (B, C, H, W)
    /// and returns the output shape.
    pub fn summarize(&self, name: &str, input: &[usize], summary: &mut Summary) -> Vec<usize> {
        let c = &self.cfg;
        let (oh, ow) = conv_output_hw((input[2], input[3]), c.kernel_size, c.stride, c.padding());
        let out = vec![input[0], c.out_channels, oh, ow];
        // torchsummaryX counts conv multiply-adds as kernel numel x output positions.
        let macs = (c.out_channels * (c.in_channels / c.groups) * c.kernel_size * c.kernel_size)
            as u64
            * (input[0] * oh * ow) as u64;
        summary.push_with_bn(
            name,
            "ConvBnAct",
            &out,
            self.num_params(),
            macs,
            c.out_channels as u64,
        );
        out
    }
}

impl ConvBnAct {
    /// Forward pass; `train` selects batch statistics (and updates the running ones)
    /// when the block keeps its BatchNorm ([`BnMode::Train`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.bn.is_none() {
            return self.forward_folded(x);
        }
        let y = self.convolve(x)?;
        let y = match &self.bn {
            Some(bn) => bn.forward_t(&y, train)?,
            None => y,
        };
        self.cfg.activation.apply(&y)
    }

    /// Inference with the BatchNorm folded: convolution, bias and activation fused
    /// where a fast kernel exists (`nn-kernels`, as the block's [`KernelPolicy`] says).
    fn forward_folded(&self, x: &Tensor) -> Result<Tensor> {
        // (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        let c = &self.cfg;
        if self.is_depthwise() {
            depthwise_conv2d_bias_act(
                x,
                self.conv.weight(),
                self.conv.bias(),
                c.stride,
                c.padding(),
                c.activation.epilogue(),
                c.kernels,
            )
        } else if c.groups == 1 {
            conv2d_bias_act(
                x,
                self.conv.weight(),
                self.conv.bias(),
                c.stride,
                c.padding(),
                c.activation.epilogue(),
                c.kernels,
            )
        } else {
            c.activation.apply(&self.conv.forward(x)?)
        }
    }

    /// Whether this is a depthwise convolution (one filter per channel).
    fn is_depthwise(&self) -> bool {
        let c = &self.cfg;
        c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels
    }

    /// The convolution alone (with the folded BatchNorm as bias in inference mode).
    fn convolve(&self, x: &Tensor) -> Result<Tensor> {
        // (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        let c = &self.cfg;
        let y = if self.is_depthwise() {
            let y = depthwise_conv2d(x, self.conv.weight(), c.stride, c.padding())?;
            match self.conv.bias() {
                Some(b) => y.broadcast_add(&b.reshape((1, c.out_channels, 1, 1))?)?,
                None => y,
            }
        } else {
            self.conv.forward(x)?
        };
        Ok(y)
    }
}

impl Module for ConvBnAct {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SyntheticWeights;
    use candle_core::{DType, Device};
    use test_support::max_abs_diff;

    fn block(mode: BnMode, act: Activation, groups: usize) -> ConvBnAct {
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
        let cfg = ConvBnConfig::new(6, 6, 3)
            .groups(groups)
            .activation(act)
            .bn_mode(mode);
        ConvBnAct::sequential(cfg, vb.pp("blk")).unwrap()
    }

    #[test]
    fn folded_weights_do_not_keep_the_unfolded_ones_alive() {
        // candle's BatchNorm makes its running statistics `Var`s; folding through them
        // must not leave an autograd graph that holds the original weight
        for groups in [1, 6] {
            let b = block(BnMode::Folded, Activation::Relu6, groups);
            assert!(!b.conv.weight().track_op(), "groups {groups}");
            assert!(!b.conv.bias().unwrap().track_op(), "groups {groups}");
        }
    }

    #[test]
    fn folded_and_kept_batchnorm_agree_at_inference() {
        let x = Tensor::randn(0f32, 1., (2, 6, 9, 7), &Device::Cpu).unwrap();
        for groups in [1, 6] {
            for act in [
                Activation::Relu6,
                Activation::LeakyRelu(0.1),
                Activation::Identity,
            ] {
                let folded = block(BnMode::Folded, act, groups).forward(&x).unwrap();
                let kept = block(BnMode::Train, act, groups)
                    .forward_t(&x, false)
                    .unwrap();
                assert!(
                    max_abs_diff(&folded, &kept) < 1e-5,
                    "{act:?} groups {groups}"
                );
            }
        }
    }

    #[test]
    fn training_mode_normalises_with_batch_statistics() {
        let x = (Tensor::randn(0f32, 1., (4, 6, 8, 8), &Device::Cpu).unwrap() * 3.0).unwrap();
        let blk = block(BnMode::Train, Activation::Identity, 1);
        let y = blk.forward_t(&x, true).unwrap();
        // After BN with batch statistics each channel's mean is its beta (bias).
        let mean = y.mean((0, 2, 3)).unwrap();
        let beta = Tensor::new(
            crate::weights::synthetic_values("blk.1.bias", &[6]).as_slice(),
            &Device::Cpu,
        )
        .unwrap();
        assert!(max_abs_diff(&mean, &beta) < 1e-4);
        // The activations differ from the running-statistics path.
        let eval = blk.forward_t(&x, false).unwrap();
        assert!(max_abs_diff(&y, &eval) > 1e-2);
    }

    #[test]
    fn activations() {
        let x = Tensor::new(&[-2f32, -0.5, 0., 3., 7.], &Device::Cpu).unwrap();
        let v = |a: Activation| a.apply(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(Activation::Relu6), [0., 0., 0., 3., 6.]);
        assert_eq!(v(Activation::LeakyRelu(0.1)), [-0.2, -0.05, 0., 3., 7.]);
        assert_eq!(v(Activation::Identity), [-2., -0.5, 0., 3., 7.]);
    }
}
