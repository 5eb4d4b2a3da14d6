//! bubbliiiing's `BasicBlock` and `DarkNet`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::summary::Summary;
use nn_blocks::{
    add_owned, Backbone, BlockOptions, BnMode, ConvBnAct, ConvBnConfig, FeatureChannels,
    KernelPolicy, Precision, DEFAULT_BN_EPS,
};

/// Darknet53 hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Residual blocks per stage; Darknet53 is `[1, 2, 8, 8, 4]`.
    pub layers: [usize; 5],
    /// BatchNorm epsilon (1e-5 as in PyTorch; weights from darknet use 1e-6).
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
        Self::darknet53()
    }
}

impl Config {
    /// The standard Darknet53.
    pub fn darknet53() -> Self {
        Self {
            layers: [1, 2, 8, 8, 4],
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
}

/// Residual block: 1x1 conv to `planes.0`, 3x3 conv back to `planes.1`, plus the input.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    conv1: ConvBnAct,
    conv2: ConvBnAct,
}

impl BasicBlock {
    /// Loads `{vb}.conv1`, `{vb}.bn1`, `{vb}.conv2`, `{vb}.bn2`.
    pub fn new(
        inplanes: usize,
        planes: (usize, usize),
        opts: BlockOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c1 = ConvBnConfig::new(inplanes, planes.0, 1).options(opts);
        let c2 = ConvBnConfig::new(planes.0, planes.1, 3).options(opts);
        Ok(Self {
            conv1: ConvBnAct::load(c1, vb.pp("conv1"), vb.pp("bn1"))?,
            conv2: ConvBnAct::load(c2, vb.pp("conv2"), vb.pp("bn2"))?,
        })
    }

    fn summarize(&self, name: &str, input: &[usize], summary: &mut Summary) -> Vec<usize> {
        let s = self
            .conv1
            .summarize(&format!("{name}.conv1"), input, summary);
        self.conv2.summarize(&format!("{name}.conv2"), &s, summary)
    }
}

impl BasicBlock {
    /// Forward pass; `train` is passed to the BatchNorms (see [`BnMode`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // (B, C, H, W) -> (B, C/2, H, W) -> (B, C, H, W), + x
        let y = self.conv1.forward_t(x, train)?;
        let y = self.conv2.forward_t(&y, train)?;
        // y is this block's own: in inference the sum goes into its buffer
        add_owned(y, x, self.conv2.config().kernels)
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

/// One stage: a stride-2 3x3 downsampling conv then residual blocks.
#[derive(Debug, Clone)]
struct Stage {
    ds: ConvBnAct,
    blocks: Vec<BasicBlock>,
}

impl Stage {
    fn new(
        inplanes: usize,
        planes: (usize, usize),
        blocks: usize,
        opts: BlockOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let ds_cfg = ConvBnConfig::new(inplanes, planes.1, 3)
            .stride(2)
            .options(opts);
        let ds = ConvBnAct::load(ds_cfg, vb.pp("ds_conv"), vb.pp("ds_bn"))?;
        let blocks = (0..blocks)
            .map(|i| BasicBlock::new(planes.1, planes, opts, vb.pp(format!("residual_{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { ds, blocks })
    }

    fn summarize(&self, name: &str, input: &[usize], summary: &mut Summary) -> Vec<usize> {
        let mut s = self
            .ds
            .summarize(&format!("{name}.ds_conv"), input, summary);
        for (i, b) in self.blocks.iter().enumerate() {
            s = b.summarize(&format!("{name}.residual_{i}"), &s, summary);
        }
        s
    }
}

impl Stage {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.ds.forward_t(x, train)?; // (B, C, H, W) -> (B, 2C, H/2, W/2)
        self.blocks
            .iter()
            .try_fold(x, |x, b| b.forward_t(&x, train))
    }
}

/// Darknet53 without its classifier: returns the outputs of stages 3, 4 and 5.
#[derive(Debug, Clone)]
pub struct DarkNet {
    stem: ConvBnAct,
    stages: Vec<Stage>,
}

/// `(in, out)` channels of each stage's residual block; the stage outputs `out`.
const STAGE_PLANES: [(usize, usize); 5] =
    [(32, 64), (64, 128), (128, 256), (256, 512), (512, 1024)];

impl DarkNet {
    /// Loads the network from `vb` (`conv1.weight`, `layer1...` below it).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let opts = cfg.block_options();
        let stem_cfg = ConvBnConfig::new(3, 32, 3).options(opts);
        let stem = ConvBnAct::load(stem_cfg, vb.pp("conv1"), vb.pp("bn1"))?;
        let mut inplanes = 32;
        let mut stages = Vec::with_capacity(5);
        for (i, (&planes, &n)) in STAGE_PLANES.iter().zip(cfg.layers.iter()).enumerate() {
            stages.push(Stage::new(
                inplanes,
                planes,
                n,
                opts,
                vb.pp(format!("layer{}", i + 1)),
            )?);
            inplanes = planes.1;
        }
        Ok(Self { stem, stages })
    }
}

impl Backbone for DarkNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let x = self.stem.forward_t(x, train)?; // (B, 32, H, W)
        let x = self.stages[0].forward_t(&x, train)?; // (B, 64, H/2, W/2)
        let x = self.stages[1].forward_t(&x, train)?; // (B, 128, H/4, W/4)
        let out3 = self.stages[2].forward_t(&x, train)?; // (B, 256, H/8, W/8)
        let out4 = self.stages[3].forward_t(&out3, train)?; // (B, 512, H/16, W/16)
        let out5 = self.stages[4].forward_t(&out4, train)?; // (B, 1024, H/32, W/32)
        Ok((out3, out4, out5))
    }

    fn blocks(&self) -> Vec<&ConvBnAct> {
        let mut v = vec![&self.stem];
        for stage in &self.stages {
            v.push(&stage.ds);
            for b in &stage.blocks {
                v.extend([&b.conv1, &b.conv2]);
            }
        }
        v
    }

    fn channels(&self) -> FeatureChannels {
        FeatureChannels {
            out3: 256,
            out4: 512,
            out5: 1024,
        }
    }

    fn summarize(
        &self,
        prefix: &str,
        input: &[usize],
        summary: &mut Summary,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let mut s = self
            .stem
            .summarize(&format!("{prefix}conv1"), input, summary);
        let mut taps = Vec::with_capacity(3);
        for (i, stage) in self.stages.iter().enumerate() {
            s = stage.summarize(&format!("{prefix}layer{}", i + 1), &s, summary);
            if i >= 2 {
                taps.push(s.clone());
            }
        }
        (taps[0].clone(), taps[1].clone(), taps[2].clone())
    }
}
