//! The seed's `YoloBody` and `make_last_layers`.

use std::collections::BTreeMap;

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use darknet53::DarkNet;
use mobilenet_v2::MobileNetV2Backbone;
use nn_blocks::summary::Summary;
use nn_blocks::{
    conv2d_bias_act, Backbone, BlockOptions, CalibrationMethod, ConvBnAct, ConvBnConfig, Epilogue,
    KernelPolicy,
};

use crate::config::{BackboneKind, YoloConfig};
use crate::{Error, Result};

/// The seed's `make_last_layers(filters_list, in_filters, out_filter)`: five
/// conv-BN-LeakyReLU blocks (1x1, 3x3, 1x1, 3x3, 1x1) whose output also feeds the
/// next scale, then a 3x3 block and a plain 1x1 conv with bias giving the raw head.
///
/// PyTorch names: `{vb}.0` … `{vb}.5` (each `conv`/`bn`), `{vb}.6` (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct LastLayers {
    blocks: Vec<ConvBnAct>,
    /// The plain 1x1 conv that gives the raw predictions: always `f32` (see
    /// `docs/precision.md`).
    out: Conv2d,
    /// The prefix of `out`'s tensors (`{vb}.6`).
    out_name: String,
    /// The CPU kernels `out` runs on in inference.
    kernels: KernelPolicy,
}

impl LastLayers {
    /// `filters` = (f0, f1) of the reference's `filters_list`.
    pub fn new(
        filters: (usize, usize),
        in_filters: usize,
        out_filter: usize,
        opts: BlockOptions,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let (f0, f1) = filters;
        let plan = [
            (in_filters, f0, 1),
            (f0, f1, 3),
            (f1, f0, 1),
            (f0, f1, 3),
            (f1, f0, 1),
            (f0, f1, 3),
        ];
        let blocks = plan
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout, k))| {
                ConvBnAct::named(ConvBnConfig::new(cin, cout, k).options(opts), vb.pp(i))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let out_name = vb.pp(6).prefix();
        let out = candle_nn::conv2d(f1, out_filter, 1, Default::default(), vb.pp(6))?;
        Ok(Self {
            blocks,
            out,
            out_name,
            kernels: opts.kernels,
        })
    }

    /// The conv-BN blocks, in forward order (the final plain conv is not one).
    pub fn blocks(&self) -> Vec<&ConvBnAct> {
        self.blocks.iter().collect()
    }

    /// The final conv's tensors, `f32`, by name (`{vb}.6.weight`, `{vb}.6.bias`).
    fn out_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![(
            format!("{}.weight", self.out_name),
            self.out.weight().clone(),
        )];
        if let Some(b) = self.out.bias() {
            v.push((format!("{}.bias", self.out_name), b.clone()));
        }
        v
    }

    /// `self.last_layerN[:5](x)`: the branch that also feeds the next scale.
    pub fn forward_branch(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.blocks[..5]
            .iter()
            .try_fold(x.clone(), |x, b| b.forward_t(&x, train))
    }

    /// `self.last_layerN[5:](branch)`: the raw head `(B, 3*(5+C), h, w)`.
    pub fn forward_head(&self, branch: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = self.blocks[5].forward_t(branch, train)?;
        if train {
            return self.out.forward(&x);
        }
        // Inference: the fused kernels on candle's worker pool, like every other layer
        // (candle's own conv2d would start the `gemm` crate's rayon threads beside it).
        let policy = self.kernels;
        conv2d_bias_act(
            &x,
            self.out.weight(),
            self.out.bias(),
            1,
            0,
            Epilogue::Identity,
            policy,
        )
    }

    fn summarize(
        &self,
        name: &str,
        input: &[usize],
        summary: &mut Summary,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut s = input.to_vec();
        let mut branch = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            s = b.summarize(&format!("{name}.{i}"), &s, summary);
            if i == 4 {
                branch = s.clone();
            }
        }
        let (cout, cin) = (self.out.weight().dims()[0], self.out.weight().dims()[1]);
        let out = vec![s[0], cout, s[2], s[3]];
        let macs = (cout * cin) as u64 * (s[0] * s[2] * s[3]) as u64;
        summary.push(
            &format!("{name}.6"),
            "Conv2d",
            &out,
            cout * cin + cout,
            macs,
        );
        (branch, out)
    }
}

/// YOLOv3: a [`Backbone`] and three FPN-style heads at strides 32, 16 and 8.
pub struct YoloBody {
    backbone: Box<dyn Backbone>,
    last_layer0: LastLayers,
    last_layer1_conv: ConvBnAct,
    last_layer1: LastLayers,
    last_layer2_conv: ConvBnAct,
    last_layer2: LastLayers,
    config: YoloConfig,
}

impl std::fmt::Debug for YoloBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YoloBody")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The stride every input side must be a multiple of.
pub const INPUT_STRIDE: usize = 32;

impl YoloBody {
    /// Builds the body and its backbone (under `{vb}.backbone`) from `cfg`.
    ///
    /// With [`Precision::Int8`](nn_blocks::Precision::Int8) `vb` must hold an int8 file's
    /// tensors ([`YoloBody::int8_tensors`]); with bf16 the folded weights are converted.
    ///
    /// Fails with [`Error::ClassCountMismatch`] when the weights were
    /// trained for another number of classes, and with candle's messages (naming the
    /// tensor and both shapes) for missing tensors or shape mismatches.
    pub fn new(cfg: &YoloConfig, vb: VarBuilder) -> Result<Self> {
        check_class_count(cfg, &vb)?;
        let backbone: Box<dyn Backbone> = match cfg.backbone {
            BackboneKind::MobileNetV2 => {
                let mcfg = mobilenet_v2::Config {
                    bn_eps: cfg.bn_eps,
                    bn_mode: cfg.bn_mode,
                    kernels: cfg.kernels,
                    precision: cfg.precision,
                    calibrate: cfg.calibrate,
                    ..mobilenet_v2::Config::imagenet()
                };
                Box::new(MobileNetV2Backbone::new(&mcfg, vb.pp("backbone"))?)
            }
            BackboneKind::Darknet53 => {
                let dcfg = darknet53::Config {
                    bn_eps: cfg.bn_eps,
                    bn_mode: cfg.bn_mode,
                    kernels: cfg.kernels,
                    precision: cfg.precision,
                    calibrate: cfg.calibrate,
                    ..darknet53::Config::darknet53()
                };
                Box::new(DarkNet::new(&dcfg, vb.pp("backbone"))?)
            }
        };
        Self::with_backbone(backbone, cfg, vb)
    }

    /// Builds the head over an already loaded `backbone` (whose tensors are not read again).
    pub fn with_backbone(
        backbone: Box<dyn Backbone>,
        cfg: &YoloConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        check_class_count(cfg, &vb)?;
        let ch = backbone.channels();
        let opts = cfg.block_options();
        let conv =
            |cin, cout, vb| ConvBnAct::named(ConvBnConfig::new(cin, cout, 1).options(opts), vb);
        Ok(Self {
            last_layer0: LastLayers::new(
                (512, 1024),
                ch.out5,
                cfg.head_channels(0),
                opts,
                vb.pp("last_layer0"),
            )?,
            last_layer1_conv: conv(512, 256, vb.pp("last_layer1_conv"))?,
            last_layer1: LastLayers::new(
                (256, 512),
                ch.out4 + 256,
                cfg.head_channels(1),
                opts,
                vb.pp("last_layer1"),
            )?,
            last_layer2_conv: conv(256, 128, vb.pp("last_layer2_conv"))?,
            last_layer2: LastLayers::new(
                (128, 256),
                ch.out3 + 128,
                cfg.head_channels(2),
                opts,
                vb.pp("last_layer2"),
            )?,
            backbone,
            config: cfg.clone(),
        })
    }

    /// The configuration this body was built with.
    pub fn config(&self) -> &YoloConfig {
        &self.config
    }

    /// The feature extractor.
    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// Every conv-BN-activation block of the body, backbone first, in forward order
    /// within each part.
    pub fn blocks(&self) -> Vec<&ConvBnAct> {
        let mut v = self.backbone.blocks();
        v.extend(self.last_layer0.blocks());
        v.push(&self.last_layer1_conv);
        v.extend(self.last_layer1.blocks());
        v.push(&self.last_layer2_conv);
        v.extend(self.last_layer2.blocks());
        v
    }

    /// The tensors of an int8 weights file for this body, after a calibration run (a
    /// body built `f32` with [`YoloConfig::calibrate`], then run on calibration images):
    /// each block's [`ConvBnAct::int8_tensors`] (input scales by `method`; the blocks
    /// for which `keep_f32` says yes, and those without an int8 kernel, as folded `f32`),
    /// and the heads' final 1x1 convs in `f32`. A body built from these tensors with
    /// [`Precision::Int8`](nn_blocks::Precision::Int8) runs the quantised blocks in int8.
    pub fn int8_tensors(
        &self,
        method: CalibrationMethod,
        keep_f32: impl Fn(&ConvBnAct) -> bool,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for block in self.blocks() {
            out.extend(block.int8_tensors(method, keep_f32(block))?);
        }
        for head in [&self.last_layer0, &self.last_layer1, &self.last_layer2] {
            out.extend(head.out_tensors());
        }
        Ok(out)
    }

    /// Refuses inputs that are not `(B, 3, H, W)` with `H` and `W` multiples of 32.
    pub fn check_input(dims: &[usize]) -> Result<()> {
        match dims {
            [_, 3, h, w] if h % INPUT_STRIDE == 0 && w % INPUT_STRIDE == 0 && *h > 0 && *w > 0 => {
                Ok(())
            }
            [_, 3, h, w] => Err(Error::InputSize {
                height: *h,
                width: *w,
                stride: INPUT_STRIDE,
            }),
            other => Err(Error::InputLayout(other.to_vec())),
        }
    }

    /// Runs the network: `(B, 3, H, W)` -> the three raw heads
    /// `(B, 3*(5+C), H/32, W/32)`, `(B, 3*(5+C), H/16, W/16)`, `(B, 3*(5+C), H/8, W/8)`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.forward_t(x, false)
    }

    /// [`YoloBody::forward`] with `train` passed to the BatchNorms: with
    /// [`BnMode::Train`](nn_blocks::BnMode::Train) they use batch statistics and update their running averages.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        Self::check_input(x.dims())?;
        // x2: (B, C3, H/8, W/8), x1: (B, C4, H/16, W/16), x0: (B, C5, H/32, W/32)
        let (x2, x1, x0) = self.backbone.forward_t(x, train)?;

        // 13,13,C5 -> 13,13,512 (branch) -> 13,13,3*(5+C)
        let out0_branch = self.last_layer0.forward_branch(&x0, train)?;
        let out0 = self.last_layer0.forward_head(&out0_branch, train)?;

        // 13,13,512 -> 13,13,256 -> 26,26,256, concat with x1 -> 26,26,256+C4
        let x1_in = upsample2(&self.last_layer1_conv.forward_t(&out0_branch, train)?)?;
        let x1_in = Tensor::cat(&[&x1_in, &x1], 1)?;
        let out1_branch = self.last_layer1.forward_branch(&x1_in, train)?;
        let out1 = self.last_layer1.forward_head(&out1_branch, train)?;

        // 26,26,256 -> 26,26,128 -> 52,52,128, concat with x2 -> 52,52,128+C3
        let x2_in = upsample2(&self.last_layer2_conv.forward_t(&out1_branch, train)?)?;
        let x2_in = Tensor::cat(&[&x2_in, &x2], 1)?;
        let out2_branch = self.last_layer2.forward_branch(&x2_in, train)?;
        let out2 = self.last_layer2.forward_head(&out2_branch, train)?;
        Ok((out0, out1, out2))
    }

    /// Per-layer output shapes, parameters and multiply-adds for an input `(B, 3, H, W)`.
    pub fn summary(&self, input: &[usize]) -> Result<Summary> {
        Self::check_input(input)?;
        let mut s = Summary::default();
        let (x2, x1, x0) = self.backbone.summarize("backbone.", input, &mut s);
        let (b0, _) = self.last_layer0.summarize("last_layer0", &x0, &mut s);
        let c1 = self
            .last_layer1_conv
            .summarize("last_layer1_conv", &b0, &mut s);
        let up1 = vec![c1[0], c1[1] + x1[1], c1[2] * 2, c1[3] * 2];
        s.push("last_layer1_upsample+cat", "Upsample", &up1, 0, 0);
        let (b1, _) = self.last_layer1.summarize("last_layer1", &up1, &mut s);
        let c2 = self
            .last_layer2_conv
            .summarize("last_layer2_conv", &b1, &mut s);
        let up2 = vec![c2[0], c2[1] + x2[1], c2[2] * 2, c2[3] * 2];
        s.push("last_layer2_upsample+cat", "Upsample", &up2, 0, 0);
        self.last_layer2.summarize("last_layer2", &up2, &mut s);
        Ok(s)
    }
}

/// `nn.Upsample(scale_factor=2, mode='nearest')`.
fn upsample2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(h * 2, w * 2)
}

/// Compares the channels of the 13x13 head in the weights with the configuration, so a
/// class-count mismatch is reported in words rather than as a bare shape error.
fn check_class_count(cfg: &YoloConfig, vb: &VarBuilder) -> Result<()> {
    let name = "last_layer0.6.weight";
    if !vb.contains_tensor(name) {
        return Ok(());
    }
    // Backends that cannot answer without a shape (synthetic weights) are skipped;
    // the regular load reports anything missing.
    let Ok(t) = vb.get_unchecked(name) else {
        return Ok(());
    };
    let found = t.dims().first().copied().unwrap_or(0);
    let expected = cfg.head_channels(0);
    if found != expected {
        let anchors = cfg.anchors_mask[0].len();
        return Err(Error::ClassCountMismatch {
            tensor: format!("{}{name}", prefix_of(vb)),
            expected_channels: expected,
            found_channels: found,
            anchors,
            configured_classes: cfg.num_classes,
            weights_classes: (found / anchors).saturating_sub(5),
        });
    }
    Ok(())
}

fn prefix_of(vb: &VarBuilder) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        p
    } else {
        format!("{p}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Shape};
    use candle_nn::var_builder::SimpleBackend;
    use nn_blocks::weights::SyntheticWeights;

    /// Synthetic weights with one tensor missing or reshaped, and a head of a
    /// chosen width, as a broken or mismatched checkpoint would have.
    struct Faulty {
        missing: Option<&'static str>,
        reshaped: Option<(&'static str, Vec<usize>)>,
        head_channels: Option<usize>,
    }

    impl SimpleBackend for Faulty {
        fn get(
            &self,
            s: Shape,
            name: &str,
            h: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            if self.missing == Some(name) {
                return Err(candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                });
            }
            if let Some((n, shape)) = &self.reshaped {
                if *n == name && shape.as_slice() != s.dims() {
                    return Err(candle_core::Error::UnexpectedShape {
                        msg: format!("shape mismatch for {name}"),
                        expected: s,
                        got: shape.clone().into(),
                    });
                }
            }
            SyntheticWeights.get(s, name, h, dtype, dev)
        }

        fn get_unchecked(
            &self,
            name: &str,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            match (name, self.head_channels) {
                ("last_layer0.6.weight", Some(c)) => Tensor::zeros((c, 1024, 1, 1), dtype, dev),
                _ => candle_core::bail!("no shape for {name}"),
            }
        }

        fn contains_tensor(&self, name: &str) -> bool {
            self.missing != Some(name)
        }
    }

    fn build(backend: Faulty, cfg: &YoloConfig) -> Result<YoloBody> {
        YoloBody::new(
            cfg,
            VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu),
        )
    }

    #[test]
    fn missing_tensor_is_named() {
        let backend = Faulty {
            missing: Some("last_layer1.3.bn.running_var"),
            reshaped: None,
            head_channels: None,
        };
        let err = build(backend, &YoloConfig::voc_mobilenetv2())
            .unwrap_err()
            .to_string();
        assert!(err.contains("last_layer1.3.bn.running_var"), "{err}");
    }

    #[test]
    fn wrong_shape_names_tensor_and_both_shapes() {
        let backend = Faulty {
            missing: None,
            reshaped: Some(("backbone.layer2.ds_conv.weight", vec![128, 64, 1, 1])),
            head_channels: None,
        };
        let err = build(backend, &YoloConfig::coco_darknet53())
            .unwrap_err()
            .to_string();
        assert!(err.contains("backbone.layer2.ds_conv.weight"), "{err}");
        assert!(
            err.contains("[128, 64, 3, 3]") && err.contains("[128, 64, 1, 1]"),
            "{err}"
        );
    }

    #[test]
    fn class_count_mismatch_is_explained() {
        // 80-class weights (255 channels) loaded as the 20-class VOC model (75 channels).
        let backend = Faulty {
            missing: None,
            reshaped: None,
            head_channels: Some(255),
        };
        let err = build(backend, &YoloConfig::voc_mobilenetv2()).unwrap_err();
        assert!(matches!(
            err,
            Error::ClassCountMismatch {
                expected_channels: 75,
                found_channels: 255,
                weights_classes: 80,
                configured_classes: 20,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("80 classes") && msg.contains("configured for 20"),
            "{msg}"
        );
        assert!(msg.contains("255") && msg.contains("75"), "{msg}");
    }

    #[test]
    fn input_sizes_must_be_multiples_of_32() {
        assert!(YoloBody::check_input(&[1, 3, 416, 416]).is_ok());
        assert!(YoloBody::check_input(&[2, 3, 320, 480]).is_ok());
        let err = YoloBody::check_input(&[1, 3, 415, 416])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("415x416") && err.contains("multiples of 32"),
            "{err}"
        );
        let err = YoloBody::check_input(&[1, 4, 416, 416])
            .unwrap_err()
            .to_string();
        assert!(err.contains("(B, 3, H, W)"), "{err}");
        assert!(YoloBody::check_input(&[3, 416, 416]).is_err());
        assert!(YoloBody::check_input(&[1, 3, 0, 416]).is_err());
    }

    #[test]
    fn forward_refuses_bad_sizes_without_panicking() {
        let model = build(
            Faulty {
                missing: None,
                reshaped: None,
                head_channels: None,
            },
            &YoloConfig::voc_mobilenetv2(),
        )
        .unwrap();
        let x = Tensor::zeros((1, 3, 100, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            model.forward(&x),
            Err(Error::InputSize {
                height: 100,
                width: 64,
                ..
            })
        ));
        // Any batch and any multiple of 32 works.
        let x = Tensor::zeros((3, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
        let (a, b, c) = model.forward(&x).unwrap();
        assert_eq!(a.dims(), &[3, 75, 2, 3]);
        assert_eq!(b.dims(), &[3, 75, 4, 6]);
        assert_eq!(c.dims(), &[3, 75, 8, 12]);
    }
}
