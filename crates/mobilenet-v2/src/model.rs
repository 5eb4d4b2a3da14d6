//! The seed's `MobileNetV2` (ImageNet classifier) and its YOLOv3 backbone wrapper.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use nn_blocks::summary::Summary;
use nn_blocks::{
    make_divisible, Activation, Backbone, BlockOptions, BnMode, ConvBnAct, ConvBnConfig,
    FeatureChannels, KernelPolicy, Precision, DEFAULT_BN_EPS,
};

use crate::InvertedResidual;

/// One row `(t, c, n, s)` of the inverted residual setting: expansion factor,
/// output channels, repeats, stride of the first repeat.
pub type BlockSetting = (f64, usize, usize, usize);

/// `(input channels, output channels, stride, expansion)` of one inverted residual block.
type BlockPlan = (usize, usize, usize, f64);

/// MobileNetV2 hyper-parameters, as the seed's `MobileNetV2.__init__` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Classifier outputs (1000 for ImageNet).
    pub num_classes: usize,
    /// Channel width multiplier.
    pub width_mult: f64,
    /// Channels are rounded to multiples of this.
    pub round_nearest: usize,
    /// The `(t, c, n, s)` table.
    pub inverted_residual_setting: Vec<BlockSetting>,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
    /// BatchNorm folded for inference or kept for training.
    pub bn_mode: BnMode,
    /// The CPU kernels of the folded blocks.
    pub kernels: KernelPolicy,
    /// The arithmetic of the folded blocks (see [`BlockOptions::precision`]).
    pub precision: Precision,
    /// Record each block's input range, for int8 calibration.
    pub calibrate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::imagenet()
    }
}

impl Config {
    /// The standard MobileNetV2-1.0 with 1000 ImageNet classes.
    pub fn imagenet() -> Self {
        Self {
            num_classes: 1000,
            width_mult: 1.0,
            round_nearest: 8,
            inverted_residual_setting: vec![
                (1.0, 16, 1, 1),  // 208,208,32 -> 208,208,16
                (6.0, 24, 2, 2),  // -> 104,104,24
                (6.0, 32, 3, 2),  // -> 52,52,32   (out3 after features[6])
                (6.0, 64, 4, 2),  // -> 26,26,64
                (6.0, 96, 3, 1),  // -> 26,26,96   (out4 after features[13])
                (6.0, 160, 3, 2), // -> 13,13,160
                (6.0, 320, 1, 1), // -> 13,13,320  (out5 after features[17])
            ],
            bn_eps: DEFAULT_BN_EPS,
            bn_mode: BnMode::Folded,
            kernels: KernelPolicy::default(),
            precision: Precision::F32,
            calibrate: false,
        }
    }

    /// The options every block shares.
    pub fn block_options(&self) -> BlockOptions {
        BlockOptions {
            bn_eps: self.bn_eps,
            bn_mode: self.bn_mode,
            kernels: self.kernels,
            precision: self.precision,
            calibrate: self.calibrate,
        }
    }

    /// The same network with another width multiplier.
    pub fn with_width(width_mult: f64) -> Self {
        Self {
            width_mult,
            ..Self::imagenet()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.inverted_residual_setting.is_empty() {
            candle_core::bail!("inverted_residual_setting should be non-empty");
        }
        if self.width_mult.is_nan() || self.width_mult <= 0.0 || self.round_nearest == 0 {
            candle_core::bail!(
                "width_mult must be > 0 and round_nearest >= 1 (got {} and {})",
                self.width_mult,
                self.round_nearest
            );
        }
        Ok(())
    }

    /// Output channels of the stem, of every inverted residual block, and of the last conv.
    fn channel_plan(&self) -> (usize, Vec<BlockPlan>, usize) {
        let stem = make_divisible(32.0 * self.width_mult, self.round_nearest, None);
        let last = make_divisible(1280.0 * self.width_mult.max(1.0), self.round_nearest, None);
        let mut blocks = Vec::new();
        let mut input = stem;
        for &(t, c, n, s) in &self.inverted_residual_setting {
            let output = make_divisible(c as f64 * self.width_mult, self.round_nearest, None);
            for i in 0..n {
                blocks.push((input, output, if i == 0 { s } else { 1 }, t));
                input = output;
            }
        }
        (stem, blocks, last)
    }
}

/// One entry of `features`.
#[derive(Debug, Clone)]
enum Feature {
    Conv(Box<ConvBnAct>),
    Block(Box<InvertedResidual>),
}

impl Feature {
    fn summarize(&self, name: &str, input: &[usize], summary: &mut Summary) -> Vec<usize> {
        match self {
            Feature::Conv(c) => c.summarize(name, input, summary),
            Feature::Block(b) => b.summarize(name, input, summary),
        }
    }
}

impl Feature {
    fn blocks(&self) -> Vec<&ConvBnAct> {
        match self {
            Feature::Conv(c) => vec![c.as_ref()],
            Feature::Block(b) => b.blocks(),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Feature::Conv(c) => c.forward_t(x, train),
            Feature::Block(b) => b.forward_t(x, train),
        }
    }
}

/// Builds `features[..count]` (all of them when `count` is `None`) under `vb` = `…features`.
/// Returns the layers and the output channels of each.
fn build_features(
    cfg: &Config,
    count: Option<usize>,
    vb: VarBuilder,
) -> Result<(Vec<Feature>, Vec<usize>)> {
    cfg.validate()?;
    let (stem, blocks, last) = cfg.channel_plan();
    let total = blocks.len() + 2;
    let count = count.unwrap_or(total).min(total);
    let mut layers = Vec::with_capacity(count);
    let mut channels = Vec::with_capacity(count);
    for i in 0..count {
        let vb_i = vb.pp(i);
        if i == 0 {
            // 416,416,3 -> 208,208,32
            let c = ConvBnConfig::new(3, stem, 3)
                .stride(2)
                .activation(Activation::Relu6)
                .options(cfg.block_options());
            layers.push(Feature::Conv(Box::new(ConvBnAct::sequential(c, vb_i)?)));
            channels.push(stem);
        } else if i <= blocks.len() {
            let (inp, oup, stride, t) = blocks[i - 1];
            let block = InvertedResidual::new(inp, oup, stride, t, cfg.block_options(), vb_i)?;
            layers.push(Feature::Block(Box::new(block)));
            channels.push(oup);
        } else {
            let inp = *channels.last().unwrap_or(&stem);
            let c = ConvBnConfig::new(inp, last, 1)
                .activation(Activation::Relu6)
                .options(cfg.block_options());
            layers.push(Feature::Conv(Box::new(ConvBnAct::sequential(c, vb_i)?)));
            channels.push(last);
        }
    }
    Ok((layers, channels))
}

/// The MobileNetV2 ImageNet classifier: `features` then global average pool,
/// `Dropout(0.2)` (identity at inference) and `classifier.1` (`Linear`).
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    features: Vec<Feature>,
    classifier: Linear,
    last_channel: usize,
    num_classes: usize,
}

impl MobileNetV2 {
    /// Loads the classifier; `vb` points at the model root (`features.0.0.weight` below it).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (features, channels) = build_features(cfg, None, vb.pp("features"))?;
        let last_channel = *channels.last().unwrap_or(&0);
        let classifier =
            candle_nn::linear(last_channel, cfg.num_classes, vb.pp("classifier").pp(1))?;
        Ok(Self {
            features,
            classifier,
            last_channel,
            num_classes: cfg.num_classes,
        })
    }

    /// Runs `features` only: `(B, 3, H, W) -> (B, 1280, H/32, W/32)`.
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        self.features
            .iter()
            .try_fold(x.clone(), |x, f| f.forward_t(&x, false))
    }

    /// Per-layer summary for an input of shape `input`.
    pub fn summary(&self, input: &[usize]) -> Summary {
        let mut summary = Summary::default();
        let mut shape = input.to_vec();
        for (i, f) in self.features.iter().enumerate() {
            shape = f.summarize(&format!("features.{i}"), &shape, &mut summary);
        }
        let out = [shape[0], self.num_classes];
        summary.push(
            "classifier.1",
            "Linear",
            &out,
            self.last_channel * self.num_classes + self.num_classes,
            (shape[0] * self.last_channel * self.num_classes) as u64,
        );
        summary
    }
}

impl Module for MobileNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (B, 1280, h, w) -> mean over (h, w) -> (B, 1280) -> (B, num_classes)
        let x = self.forward_features(x)?.mean((2, 3))?;
        self.classifier.forward(&x)
    }
}

/// Index ranges of `features` behind out3, out4 and out5 (the wrapper's slices).
const TAPS: [std::ops::Range<usize>; 3] = [0..7, 7..14, 14..18];

/// The YOLOv3 wrapper of the seed: `self.model = mobilenet_v2()`, forward returns
/// `features[:7]`, `features[7:14]`, `features[14:18]`. Tensor names live under
/// `{vb}.model.features.*`; `features.18` and `classifier` are never read.
#[derive(Debug, Clone)]
pub struct MobileNetV2Backbone {
    features: Vec<Feature>,
    channels: FeatureChannels,
}

impl MobileNetV2Backbone {
    /// Loads `features[:18]` from `{vb}.model.features`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (features, channels) =
            build_features(cfg, Some(TAPS[2].end), vb.pp("model").pp("features"))?;
        if features.len() < TAPS[2].end {
            candle_core::bail!(
                "the YOLOv3 taps need at least {} feature layers, this MobileNetV2 setting has {}",
                TAPS[2].end,
                features.len()
            );
        }
        let channels = FeatureChannels {
            out3: channels[TAPS[0].end - 1],
            out4: channels[TAPS[1].end - 1],
            out5: channels[TAPS[2].end - 1],
        };
        Ok(Self { features, channels })
    }

    /// Parameters the PyTorch wrapper holds but the detector never runs:
    /// `features.18` (1x1 ConvBNReLU to the last channel) and `classifier.1`.
    pub fn unused_reference_params(cfg: &Config) -> usize {
        let (_, blocks, last) = cfg.channel_plan();
        let c = blocks.last().map(|b| b.1).unwrap_or(0);
        c * last + 2 * last + last * cfg.num_classes + cfg.num_classes
    }

    fn run(&self, range: std::ops::Range<usize>, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features[range]
            .iter()
            .try_fold(x.clone(), |x, f| f.forward_t(&x, train))
    }
}

impl Backbone for MobileNetV2Backbone {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let out3 = self.run(TAPS[0].clone(), x, train)?; // (B, 32, H/8, W/8)
        let out4 = self.run(TAPS[1].clone(), &out3, train)?; // (B, 96, H/16, W/16)
        let out5 = self.run(TAPS[2].clone(), &out4, train)?; // (B, 320, H/32, W/32)
        Ok((out3, out4, out5))
    }

    fn channels(&self) -> FeatureChannels {
        self.channels
    }

    fn blocks(&self) -> Vec<&ConvBnAct> {
        self.features.iter().flat_map(Feature::blocks).collect()
    }

    fn summarize(
        &self,
        prefix: &str,
        input: &[usize],
        summary: &mut Summary,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let mut shape = input.to_vec();
        let mut taps = Vec::with_capacity(3);
        for (i, f) in self.features.iter().enumerate() {
            shape = f.summarize(&format!("{prefix}model.features.{i}"), &shape, summary);
            if TAPS.iter().any(|r| r.end == i + 1) {
                taps.push(shape.clone());
            }
        }
        (taps[0].clone(), taps[1].clone(), taps[2].clone())
    }
}
