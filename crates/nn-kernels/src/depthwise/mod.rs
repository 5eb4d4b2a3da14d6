//! Depthwise 2-D convolution (`groups == channels`): the general op with a backward pass
//! for training, and the fused 3x3 kernel of inference.

mod fused;
mod trainable;

pub use fused::depthwise_conv2d_bias_act;
pub use trainable::depthwise_conv2d;
