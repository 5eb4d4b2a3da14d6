//! The seed's `InvertedResidual`: expand (1x1) -> depthwise (3x3) -> project (1x1, linear).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use nn_blocks::summary::Summary;
use nn_blocks::{Activation, BlockOptions, ConvBnAct, ConvBnConfig};

/// MobileNetV2's inverted residual block.
///
/// PyTorch names under `{vb}.conv`: with expansion `0` (1x1 ConvBNReLU), `1` (depthwise
/// ConvBNReLU), `2` (1x1 conv), `3` (BatchNorm); without expansion `0`, `1`, `2`.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
    project: ConvBnAct,
    use_res_connect: bool,
}

impl InvertedResidual {
    /// Builds the block `inp -> oup` with `stride` (1 or 2) and `expand_ratio`.
    pub fn new(
        inp: usize,
        oup: usize,
        stride: usize,
        expand_ratio: f64,
        opts: BlockOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        if stride != 1 && stride != 2 {
            candle_core::bail!(
                "{}: InvertedResidual stride must be 1 or 2, got {stride}",
                vb.prefix()
            );
        }
        // Python's int(round(x)) rounds half to even, as f64::round_ties_even does.
        let hidden = (inp as f64 * expand_ratio).round_ties_even() as usize;
        let vb = vb.pp("conv");
        let mut idx = 0;
        let expand = if expand_ratio != 1.0 {
            let cfg = ConvBnConfig::new(inp, hidden, 1)
                .activation(Activation::Relu6)
                .options(opts);
            idx += 1;
            Some(ConvBnAct::sequential(cfg, vb.pp("0"))?)
        } else {
            None
        };
        let dw_cfg = ConvBnConfig::new(hidden, hidden, 3)
            .stride(stride)
            .groups(hidden)
            .activation(Activation::Relu6)
            .options(opts);
        let depthwise = ConvBnAct::sequential(dw_cfg, vb.pp(idx))?;
        let pw_cfg = ConvBnConfig::new(hidden, oup, 1)
            .activation(Activation::Identity)
            .options(opts);
        let project = ConvBnAct::load(pw_cfg, vb.pp(idx + 1), vb.pp(idx + 2))?;
        Ok(Self {
            expand,
            depthwise,
            project,
            use_res_connect: stride == 1 && inp == oup,
        })
    }

    /// The conv-BN blocks, in forward order: expansion (if any), depthwise, projection.
    pub fn blocks(&self) -> Vec<&ConvBnAct> {
        let mut v: Vec<&ConvBnAct> = self.expand.iter().collect();
        v.push(&self.depthwise);
        v.push(&self.project);
        v
    }

    /// Appends the block's rows to `summary`; returns the output shape.
    pub fn summarize(&self, name: &str, input: &[usize], summary: &mut Summary) -> Vec<usize> {
        let mut shape = input.to_vec();
        let mut idx = 0;
        if let Some(expand) = &self.expand {
            shape = expand.summarize(&format!("{name}.conv.0"), &shape, summary);
            idx = 1;
        }
        shape = self
            .depthwise
            .summarize(&format!("{name}.conv.{idx}"), &shape, summary);
        self.project
            .summarize(&format!("{name}.conv.{}", idx + 1), &shape, summary)
    }
}

impl InvertedResidual {
    /// Forward pass; `train` is passed to the BatchNorms (see [`BnMode`](nn_blocks::BnMode)).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // (B, inp, H, W) -> (B, hidden, H, W) -> (B, hidden, H/s, W/s) -> (B, oup, H/s, W/s)
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward_t(&y, train)?;
        }
        let y = self.depthwise.forward_t(&y, train)?;
        let y = self.project.forward_t(&y, train)?;
        if self.use_res_connect {
            x + y
        } else {
            Ok(y)
        }
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
