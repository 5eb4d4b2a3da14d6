//! The interface between a feature extractor and the YOLOv3 head.

use candle_core::{Result, Tensor};

use crate::summary::Summary;
use crate::ConvBnAct;

/// Channel counts of the three feature maps a [`Backbone`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureChannels {
    /// Channels of `out3` (stride 8).
    pub out3: usize,
    /// Channels of `out4` (stride 16).
    pub out4: usize,
    /// Channels of `out5` (stride 32).
    pub out5: usize,
}

/// A feature extractor for YOLOv3: three feature maps at strides 8, 16 and 32.
///
/// `forward` takes `(B, 3, H, W)` and returns
/// `(out3, out4, out5)` = `(B, C3, H/8, W/8)`, `(B, C4, H/16, W/16)`, `(B, C5, H/32, W/32)`.
pub trait Backbone: Send + Sync {
    /// Runs the backbone and returns the three taps; `train` puts BatchNorms kept for
    /// training ([`crate::BnMode::Train`]) on batch statistics.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)>;

    /// Inference forward pass: [`Backbone::forward_t`] with `train = false`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.forward_t(x, false)
    }

    /// Channel counts of the three taps.
    fn channels(&self) -> FeatureChannels;

    /// Appends one row per block to `summary` for an input of shape `input`
    /// and returns the shapes of the three taps.
    fn summarize(
        &self,
        prefix: &str,
        input: &[usize],
        summary: &mut Summary,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>);

    /// Every conv-BN-activation block, in the order a forward pass runs them (for
    /// calibration and quantisation).
    fn blocks(&self) -> Vec<&ConvBnAct>;
}

impl<T: Backbone + ?Sized> Backbone for Box<T> {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        (**self).forward_t(x, train)
    }

    fn channels(&self) -> FeatureChannels {
        (**self).channels()
    }

    fn summarize(
        &self,
        prefix: &str,
        input: &[usize],
        summary: &mut Summary,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        (**self).summarize(prefix, input, summary)
    }

    fn blocks(&self) -> Vec<&ConvBnAct> {
        (**self).blocks()
    }
}
