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
//!
//! A folded block may also run in lower precision ([`Precision`], see
//! `docs/precision.md`): bf16 converts the folded weights at load (dense convolutions
//! only: depthwise ones stay `f32`); int8 loads weights quantised beforehand (the
//! tensors [`ConvBnAct::int8_tensors`] writes after a calibration run, in which
//! [`BlockOptions::calibrate`] makes each block record its input range).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, ModuleT, VarBuilder};

use nn_kernels::{
    conv2d_bf16_bias_act, conv2d_bias_act, conv2d_int8_bias_act, depthwise3x3_int8_bias_act,
    depthwise_conv2d, depthwise_conv2d_bias_act, ActQuant, Bf16ConvWeights, Epilogue,
    Int8ConvWeights, Int8DepthwiseWeights, Isa, KernelPolicy, Precision, RangeObserver,
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
    /// The arithmetic of a folded block (`f32` unless asked otherwise).
    pub precision: Precision,
    /// Record the range of the block's inputs during inference, for int8 calibration.
    pub calibrate: bool,
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
    /// The arithmetic of the folded blocks: `f32` (default), bf16 (weights converted at
    /// load) or int8 (weights from a quantised file: see [`ConvBnAct::int8_tensors`]).
    pub precision: Precision,
    /// Record each block's input range during inference (`f32` blocks only), for
    /// [`ConvBnAct::int8_tensors`]. Costs a copy of every input: for calibration only.
    pub calibrate: bool,
}

impl Default for BlockOptions {
    /// PyTorch's epsilon, folded BatchNorm, the fastest kernels, `f32`, no calibration.
    fn default() -> Self {
        Self {
            bn_eps: DEFAULT_BN_EPS,
            bn_mode: BnMode::Folded,
            kernels: KernelPolicy::default(),
            precision: Precision::F32,
            calibrate: false,
        }
    }
}

/// How calibration turns the recorded input ranges into int8 activation scales.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibrationMethod {
    /// The largest magnitude seen ([`RangeObserver::min_max`]).
    MinMax,
    /// The magnitude under which this share (in %, e.g. 99.99) of the values fall
    /// ([`RangeObserver::percentile`]): rare outliers are clamped, the bulk gets finer
    /// steps.
    Percentile(f32),
}

impl Default for CalibrationMethod {
    /// `Percentile(99.99)`.
    fn default() -> Self {
        CalibrationMethod::Percentile(99.99)
    }
}

impl CalibrationMethod {
    /// The activation quantisation of a layer whose inputs `observer` recorded.
    pub fn act_quant(self, observer: &RangeObserver) -> Result<ActQuant> {
        match self {
            CalibrationMethod::MinMax => observer.min_max(),
            CalibrationMethod::Percentile(p) => observer.percentile(p),
        }
    }

    /// The name written in weights metadata: `minmax` or `percentile(P)`.
    pub fn describe(self) -> String {
        match self {
            CalibrationMethod::MinMax => "minmax".into(),
            CalibrationMethod::Percentile(p) => format!("percentile({p})"),
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
            precision: Precision::F32,
            calibrate: false,
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

    /// Sets the precision.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Sets whether the block records its input range (int8 calibration).
    pub fn calibrate(mut self, calibrate: bool) -> Self {
        self.calibrate = calibrate;
        self
    }

    /// Sets the BatchNorm epsilon and mode, the kernel policy, the precision and the
    /// calibration switch at once.
    pub fn options(self, o: BlockOptions) -> Self {
        self.bn_eps(o.bn_eps)
            .bn_mode(o.bn_mode)
            .kernels(o.kernels)
            .precision(o.precision)
            .calibrate(o.calibrate)
    }

    /// Padding of the reference blocks: `(k - 1) // 2`.
    pub fn padding(&self) -> usize {
        (self.kernel_size - 1) / 2
    }
}

/// The weights a folded block runs with.
#[derive(Debug, Clone)]
enum Weights {
    /// `f32` (BatchNorm folded in as the bias, or kept apart in [`BnMode::Train`]).
    F32(Conv2d),
    /// bf16 weights (converted from the folded `f32` ones at load), `f32` bias.
    Bf16 {
        weights: Bf16ConvWeights,
        bias: Option<Tensor>,
    },
    /// s8 weights with one scale per output channel, the input's u8 quantisation and
    /// the `f32` bias (C_out,).
    Int8 {
        weights: Int8ConvWeights,
        x_quant: ActQuant,
        bias: Tensor,
    },
    /// As `Int8`, for a 3x3 depthwise convolution.
    Int8Depthwise {
        weights: Int8DepthwiseWeights,
        x_quant: ActQuant,
        bias: Tensor,
    },
}

/// Whether a block built for [`Precision::Bf16`] runs in bf16: dense convolutions do,
/// except the 3x3 stride-1 ones that Winograd's path takes on the CPU. Its F(4x4, 3x3)
/// saves 4x the multiply-adds, where bf16 saves at most 2x (and nothing on CPUs whose
/// `vdpbf16ps` is slow), so those stay `f32` (measured in `docs/precision.md`).
/// Depthwise convolutions stay `f32` (no bf16 kernel: they are memory-bound).
fn runs_bf16(cfg: &ConvBnConfig, device: &Device) -> bool {
    cfg.precision == Precision::Bf16
        && cfg.groups == 1
        && !(device.is_cpu() && cfg.kernels.winograd_applies(cfg.kernel_size, cfg.stride))
}

/// Convolution (no bias) + BatchNorm2d + activation.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    /// With [`BnMode::Folded`] the convolution carries the BatchNorm as its bias.
    weights: Weights,
    /// The BatchNorm, kept only in [`BnMode::Train`].
    bn: Option<BatchNorm>,
    cfg: ConvBnConfig,
    /// The convolution's tensor prefix (`{name}.weight`), the names of an int8 file.
    name: String,
    /// The range of the inputs seen, when the block calibrates.
    observer: Option<Arc<Mutex<RangeObserver>>>,
}

/// Tensor names of a quantised block in an int8 file, after its convolution's prefix:
/// the s8 weights (stored as `U8` bytes, two's complement: candle has no `i8`), one
/// `f32` scale per output channel, the folded `f32` bias, and the input's scale (one
/// `f32`; the zero point is [`ActQuant::ZERO_POINT`]).
pub const INT8_TENSORS: [&str; 4] = ["weight_q", "weight_scale", "bias", "input_scale"];

impl ConvBnAct {
    /// Loads the convolution from `conv_vb` (`weight`) and the BatchNorm from `bn_vb`
    /// (`weight`, `bias`, `running_mean`, `running_var`).
    ///
    /// With [`Precision::Int8`] the block reads a quantised file instead, under
    /// `conv_vb` only: [`INT8_TENSORS`], or the folded `weight` and `bias` of a block
    /// that calibration kept in `f32`. A source without them (an `f32` file) is refused
    /// with a message saying to quantise it first.
    pub fn load(cfg: ConvBnConfig, conv_vb: VarBuilder, bn_vb: VarBuilder) -> Result<Self> {
        if cfg.groups == 0 || !cfg.in_channels.is_multiple_of(cfg.groups) {
            candle_core::bail!(
                "{}: {} input channels cannot be split into {} groups",
                conv_vb.prefix(),
                cfg.in_channels,
                cfg.groups
            );
        }
        if cfg.precision != Precision::F32 && cfg.bn_mode == BnMode::Train {
            candle_core::bail!(
                "{}: {} blocks are for inference: training keeps the BatchNorm in f32",
                conv_vb.prefix(),
                cfg.precision
            );
        }
        let name = conv_vb.prefix();
        let conv_cfg = Conv2dConfig {
            padding: cfg.padding(),
            stride: cfg.stride,
            groups: cfg.groups,
            ..Default::default()
        };
        let observer = (cfg.calibrate && cfg.precision == Precision::F32)
            .then(|| Arc::new(Mutex::new(RangeObserver::new())));
        let block = |weights: Weights, bn: Option<BatchNorm>| Self {
            weights,
            bn,
            cfg,
            name: name.clone(),
            observer: observer.clone(),
        };
        if cfg.precision == Precision::Int8 {
            return Ok(block(Self::load_int8(&cfg, conv_cfg, &conv_vb)?, None));
        }
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
                let weight = folded.weight().detach();
                let bias = folded.bias().map(Tensor::detach);
                let weights = if runs_bf16(&cfg, weight.device()) {
                    // (C_out, C_in, K, K) rounded to bf16 once
                    Weights::Bf16 {
                        weights: Bf16ConvWeights::new(&weight)?,
                        bias,
                    }
                } else {
                    Weights::F32(Conv2d::new(weight, bias, conv_cfg))
                };
                Ok(block(weights, None))
            }
            BnMode::Train => Ok(block(Weights::F32(conv), Some(bn))),
        }
    }

    /// The weights of an int8 block from a quantised file (see [`ConvBnAct::load`]).
    fn load_int8(cfg: &ConvBnConfig, conv_cfg: Conv2dConfig, vb: &VarBuilder) -> Result<Weights> {
        let k = cfg.kernel_size;
        let (cout, cin_g) = (cfg.out_channels, cfg.in_channels / cfg.groups);
        if !vb.contains_tensor("weight_q") {
            if !vb.contains_tensor("bias") {
                candle_core::bail!(
                    "{}: no int8 weights ({}.weight_q): int8 models load from a file quantised \
                     beforehand (`yolo-cli quantize`, or the tensors of `int8_tensors` after a \
                     calibration run), not from f32 weights",
                    vb.prefix(),
                    vb.prefix()
                );
            }
            // a block kept in f32: its folded weight and bias
            let weight = vb.get((cout, cin_g, k, k), "weight")?;
            let bias = vb.get(cout, "bias")?;
            return Ok(Weights::F32(Conv2d::new(weight, Some(bias), conv_cfg)));
        }
        // the U8 bytes arrive as f32 values 0..=255 (the VarBuilder's dtype): back to s8
        let codes = vb
            .get((cout, cin_g, k, k), "weight_q")?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let values: Vec<i8> = codes.iter().map(|&v| v as u8 as i8).collect();
        let scales = vb
            .get(cout, "weight_scale")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let bias = vb.get(cout, "bias")?.to_dtype(DType::F32)?;
        let input_scale = vb
            .get(1, "input_scale")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0];
        let x_quant = ActQuant::new(input_scale)
            .map_err(|e| candle_core::Error::msg(format!("{}.input_scale: {e}", vb.prefix())))?;
        let bad = |e: candle_core::Error| {
            candle_core::Error::msg(format!("{}: int8 weights: {e}", vb.prefix()))
        };
        if is_depthwise(cfg) && k == 3 && matches!(cfg.stride, 1 | 2) {
            let values = values
                .chunks_exact(9)
                .map(|c| <[i8; 9]>::try_from(c).expect("chunks of 9"))
                .collect();
            let weights = Int8DepthwiseWeights::from_quantized(values, scales).map_err(bad)?;
            Ok(Weights::Int8Depthwise {
                weights,
                x_quant,
                bias,
            })
        } else if cfg.groups == 1 {
            let weights = Int8ConvWeights::from_quantized(values, scales, (cout, cin_g, k, k))
                .map_err(bad)?;
            Ok(Weights::Int8 {
                weights,
                x_quant,
                bias,
            })
        } else {
            candle_core::bail!(
                "{}: int8 grouped convolutions are not supported (only dense and 3x3 depthwise)",
                vb.prefix()
            )
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

    /// The prefix of the convolution's tensors (`{name}.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The precision this block actually runs in: [`ConvBnAct::config`]'s, except for
    /// the blocks that stay `f32` (in bf16: depthwise ones, and 3x3 stride-1 ones on the
    /// CPU with Winograd on; in int8: those kept in `f32` by the file).
    pub fn runs_in(&self) -> Precision {
        match self.weights {
            Weights::F32(_) => Precision::F32,
            Weights::Bf16 { .. } => Precision::Bf16,
            Weights::Int8 { .. } | Weights::Int8Depthwise { .. } => Precision::Int8,
        }
    }

    /// Whether the block can run in int8: a dense convolution, or a 3x3 depthwise one
    /// with stride 1 or 2.
    pub fn int8_capable(&self) -> bool {
        let c = &self.cfg;
        c.groups == 1 || (is_depthwise(c) && c.kernel_size == 3 && matches!(c.stride, 1 | 2))
    }

    /// What calibration recorded of this block's inputs (`None` unless it was built
    /// with [`BlockOptions::calibrate`]).
    pub fn observed(&self) -> Option<RangeObserver> {
        let o = self.observer.as_ref()?;
        Some(match o.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }

    /// This block's tensors in an int8 file, named under [`ConvBnAct::name`]: the
    /// [`INT8_TENSORS`] (folded weights quantised per output channel, the input scale
    /// from the recorded range by `method`), or with `keep_f32` (or a block that cannot
    /// run in int8) the folded `f32` `weight` and `bias`.
    ///
    /// Needs an `f32` folded block; a quantised one needs the calibration to have seen
    /// inputs ([`BlockOptions::calibrate`], then inference).
    pub fn int8_tensors(
        &self,
        method: CalibrationMethod,
        keep_f32: bool,
    ) -> Result<Vec<(String, Tensor)>> {
        let Weights::F32(conv) = &self.weights else {
            candle_core::bail!("{}: only f32 blocks can be quantised", self.name);
        };
        if self.bn.is_some() {
            candle_core::bail!("{}: fold the BatchNorm before quantising", self.name);
        }
        let n = |t: &str| format!("{}.{t}", self.name);
        let weight = conv.weight();
        let bias = match conv.bias() {
            Some(b) => b.clone(),
            None => Tensor::zeros(self.cfg.out_channels, DType::F32, weight.device())?,
        };
        if keep_f32 || !self.int8_capable() {
            return Ok(vec![(n("weight"), weight.clone()), (n("bias"), bias)]);
        }
        let observer = self.observed().unwrap_or_default();
        if observer.count() == 0 {
            candle_core::bail!(
                "{}: no calibration data (build the model with calibrate on and run images through it first)",
                self.name
            );
        }
        let x_quant = method
            .act_quant(&observer)
            .map_err(|e| candle_core::Error::msg(format!("{}: calibration: {e}", self.name)))?;
        let (values, scales): (Vec<u8>, Vec<f32>) = if is_depthwise(&self.cfg) {
            let w = Int8DepthwiseWeights::quantize(weight)?;
            let v = w.values().iter().flatten().map(|&q| q as u8).collect();
            (v, w.scales().to_vec())
        } else {
            let w = Int8ConvWeights::quantize(weight)?;
            let v = w.values().iter().map(|&q| q as u8).collect();
            (v, w.scales().to_vec())
        };
        let device = weight.device();
        Ok(vec![
            (
                n("weight_q"),
                Tensor::from_vec(values, weight.dims(), device)?,
            ),
            (n("weight_scale"), Tensor::new(scales, device)?),
            (n("bias"), bias),
            (n("input_scale"), Tensor::new(&[x_quant.scale()], device)?),
        ])
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
        if let Some(observer) = &self.observer {
            let mut o = observer
                .lock()
                .map_err(|_| candle_core::Error::msg("calibration observer poisoned"))?;
            o.observe_tensor(x)?;
        }
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
    /// where a fast kernel exists (`nn-kernels`, as the block's [`KernelPolicy`] and
    /// precision say).
    fn forward_folded(&self, x: &Tensor) -> Result<Tensor> {
        // (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        let c = &self.cfg;
        let epilogue = c.activation.epilogue();
        let geometry = (c.stride, c.padding());
        let conv = match &self.weights {
            Weights::F32(conv) => conv,
            Weights::Bf16 { weights, bias } => {
                return conv2d_bf16_bias_act(
                    x,
                    weights,
                    bias.as_ref(),
                    geometry,
                    epilogue,
                    Isa::Native,
                )
            }
            Weights::Int8 {
                weights,
                x_quant,
                bias,
            } => {
                return conv2d_int8_bias_act(
                    x,
                    weights,
                    *x_quant,
                    Some(bias),
                    geometry,
                    epilogue,
                    Isa::Native,
                )
            }
            Weights::Int8Depthwise {
                weights,
                x_quant,
                bias,
            } => {
                return depthwise3x3_int8_bias_act(
                    x,
                    weights,
                    *x_quant,
                    Some(bias),
                    c.stride,
                    epilogue,
                )
            }
        };
        if is_depthwise(c) {
            depthwise_conv2d_bias_act(
                x,
                conv.weight(),
                conv.bias(),
                c.stride,
                c.padding(),
                epilogue,
                c.kernels,
            )
        } else if c.groups == 1 {
            conv2d_bias_act(
                x,
                conv.weight(),
                conv.bias(),
                c.stride,
                c.padding(),
                epilogue,
                c.kernels,
            )
        } else {
            c.activation.apply(&conv.forward(x)?)
        }
    }

    /// The convolution alone (with the folded BatchNorm as bias in inference mode).
    fn convolve(&self, x: &Tensor) -> Result<Tensor> {
        // (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        let c = &self.cfg;
        let Weights::F32(conv) = &self.weights else {
            // blocks that keep their BatchNorm are always f32 (checked at load)
            candle_core::bail!("{}: a low-precision block has no BatchNorm", self.name);
        };
        let y = if is_depthwise(c) {
            let y = depthwise_conv2d(x, conv.weight(), c.stride, c.padding())?;
            match conv.bias() {
                Some(b) => y.broadcast_add(&b.reshape((1, c.out_channels, 1, 1))?)?,
                None => y,
            }
        } else {
            conv.forward(x)?
        };
        Ok(y)
    }
}

/// Whether `c` is a depthwise convolution (one filter per channel).
fn is_depthwise(c: &ConvBnConfig) -> bool {
    c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels
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
    use nn_kernels::Winograd;
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
            let Weights::F32(conv) = &b.weights else {
                panic!("an f32 block")
            };
            assert!(!conv.weight().track_op(), "groups {groups}");
            assert!(!conv.bias().unwrap().track_op(), "groups {groups}");
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
    fn bf16_and_int8_blocks_follow_the_f32_one() {
        let x = Tensor::randn(0f32, 1., (2, 6, 9, 7), &Device::Cpu).unwrap();
        let synthetic =
            || VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
        let acts = [
            Activation::LeakyRelu(0.1),
            Activation::Relu6,
            Activation::Identity,
        ];
        let cases = [(1, 1, 3), (1, 2, 3), (6, 1, 3), (6, 2, 3), (1, 1, 1)];
        for ((groups, stride, k), act) in cases.into_iter().flat_map(|c| acts.map(|a| (c, a))) {
            let cfg = ConvBnConfig::new(6, 6, k)
                .groups(groups)
                .stride(stride)
                .activation(act);
            let reference =
                ConvBnAct::sequential(cfg.calibrate(true), synthetic().pp("blk")).unwrap();
            let want = reference.forward(&x).unwrap(); // and records x's range
            let scale = test_support::max_abs(&want);

            let q: std::collections::HashMap<String, Tensor> = reference
                .int8_tensors(CalibrationMethod::MinMax, false)
                .unwrap()
                .into_iter()
                .collect();
            assert_eq!(q["blk.0.weight_q"].dtype(), DType::U8);
            let vb = VarBuilder::from_tensors(q, DType::F32, &Device::Cpu);
            let int8 = ConvBnAct::sequential(cfg.precision(Precision::Int8), vb.pp("blk")).unwrap();
            assert_eq!(int8.runs_in(), Precision::Int8);
            let err = max_abs_diff(&int8.forward(&x).unwrap(), &want) / scale;
            assert!(err < 0.03, "int8 {act:?} {groups} {stride} {k}: {err}");

            let no_winograd = KernelPolicy {
                winograd: Winograd::Off,
                ..KernelPolicy::default()
            };
            for kernels in [KernelPolicy::default(), no_winograd] {
                let cfg = cfg.kernels(kernels).precision(Precision::Bf16);
                let bf16 = ConvBnAct::sequential(cfg, synthetic().pp("blk")).unwrap();
                // depthwise stays f32, and so does Winograd's 3x3 stride 1
                let expected = if groups > 1 || kernels.winograd_applies(k, stride) {
                    Precision::F32
                } else {
                    Precision::Bf16
                };
                assert_eq!(
                    bf16.runs_in(),
                    expected,
                    "{groups} {stride} {k} {kernels:?}"
                );
                let err = max_abs_diff(&bf16.forward(&x).unwrap(), &want) / scale;
                assert!(err < 0.01, "bf16 {act:?} {groups} {stride} {k}: {err}");
            }
        }
    }

    #[test]
    fn int8_blocks_refuse_f32_weights_and_training() {
        let vb = VarBuilder::from_tensors(
            std::collections::HashMap::from([(
                "blk.0.weight".to_string(),
                Tensor::zeros((6, 6, 3, 3), DType::F32, &Device::Cpu).unwrap(),
            )]),
            DType::F32,
            &Device::Cpu,
        );
        let cfg = ConvBnConfig::new(6, 6, 3).precision(Precision::Int8);
        let err = ConvBnAct::sequential(cfg, vb.pp("blk"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blk.0.weight_q") && err.contains("quantize"),
            "{err}"
        );
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
        let cfg = ConvBnConfig::new(6, 6, 3)
            .precision(Precision::Bf16)
            .bn_mode(BnMode::Train);
        let err = ConvBnAct::sequential(cfg, vb.pp("blk"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference"), "{err}");
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
