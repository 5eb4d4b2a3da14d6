//! Which fast paths a model's kernels take: a plain value chosen when the model is
//! built, so that one process can hold two models built differently and a test can
//! compare the paths.

/// Winograd's algorithm for 3x3 stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Winograd {
    /// Off: the direct (im2col + GEMM) path for every convolution.
    Off,
    /// F(2x2, 3x3) everywhere it applies: 16 GEMMs, 2.25x fewer multiply-adds; its
    /// transforms only add and halve, so results stay within float rounding of the
    /// direct path.
    F2,
    /// F(4x4, 3x3) on maps whose sides are both 13 or more (every YOLOv3 map at 416),
    /// F(2x2, 3x3) on thinner ones: 36 GEMMs over a quarter of the patches, 4x fewer
    /// multiply-adds, about a decimal digit of precision lost against the direct path.
    #[default]
    F4,
}

/// The kernel choices of a model. [`KernelPolicy::default`] is the fastest;
/// [`KernelPolicy::candle`] runs candle's own operations only (the baseline the fast
/// paths are checked against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPolicy {
    /// The fused CPU kernels of this crate (dense and depthwise convolution with bias
    /// and activation, in-place element-wise passes). Off: candle's `conv2d` and
    /// element-wise ops.
    pub fast_conv: bool,
    /// Winograd's algorithm for 3x3 stride-1 convolutions (only with `fast_conv`).
    pub winograd: Winograd,
    /// The AVX-512 64-row GEMM for Winograd's products where the CPU has AVX-512 (off:
    /// the `gemm` crate's kernels).
    pub gemm64: bool,
}

impl Default for KernelPolicy {
    fn default() -> Self {
        Self {
            fast_conv: true,
            winograd: Winograd::F4,
            gemm64: true,
        }
    }
}

impl KernelPolicy {
    /// Whether a dense `kernel` x `kernel` convolution with `stride` (and the padding of
    /// YOLOv3's blocks, `(kernel - 1) / 2`) takes Winograd's path on the CPU under this
    /// policy (maps or channel counts too small for it aside: those run the direct path;
    /// `DenseConv` checks them where it knows the input).
    pub fn winograd_applies(&self, kernel: usize, stride: usize) -> bool {
        self.fast_conv && self.winograd != Winograd::Off && kernel == 3 && stride == 1
    }

    /// candle's own operations only: no kernel of this crate runs.
    pub fn candle() -> Self {
        Self {
            fast_conv: false,
            winograd: Winograd::Off,
            gemm64: false,
        }
    }
}

/// The error of parsing a policy switch from a flag or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSwitchError(String);

impl std::fmt::Display for ParseSwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseSwitchError {}

impl std::str::FromStr for Winograd {
    type Err = ParseSwitchError;

    /// `off` (or `0`), `f2`, `f4` (or `1`, `on`: the default), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" => Ok(Winograd::Off),
            "f2" => Ok(Winograd::F2),
            "f4" | "on" | "1" | "true" => Ok(Winograd::F4),
            other => Err(ParseSwitchError(format!(
                "unknown Winograd choice `{other}`: expected f4, f2 or off"
            ))),
        }
    }
}

/// Parses an on/off switch: `on`, `1`, `true`, `yes` or `off`, `0`, `false`, `no`, any
/// case (the values the `NN_BLOCKS_*` variables took).
pub fn parse_switch(s: &str) -> Result<bool, ParseSwitchError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        other => Err(ParseSwitchError(format!(
            "unknown switch value `{other}`: expected on or off"
        ))),
    }
}

/// The arithmetic a model's convolutions run in (chosen when the model is built, like
/// [`KernelPolicy`]): `f32` everywhere, or the low-precision kernels of this crate
/// (`conv2d_bf16_bias_act`, `conv2d_int8_bias_act`), which still take and return `f32`
/// feature maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Single precision throughout (the reference).
    #[default]
    F32,
    /// bf16 operands (rounded to nearest even) with `f32` accumulation.
    Bf16,
    /// u8 activations times s8 weights with `i32` accumulation (post-training static
    /// quantisation; the activation scales come from calibration).
    Int8,
}

impl Precision {
    /// The name [`FromStr`](std::str::FromStr) accepts and [`Display`](std::fmt::Display) writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = ParseSwitchError;

    /// `f32`, `bf16` or `int8`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            other => Err(ParseSwitchError(format!(
                "unknown precision `{other}`: expected f32, bf16 or int8"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_as_the_old_variables_did() {
        assert_eq!("0".parse::<Winograd>().unwrap(), Winograd::Off);
        assert_eq!("F2".parse::<Winograd>().unwrap(), Winograd::F2);
        assert_eq!(" f4 ".parse::<Winograd>().unwrap(), Winograd::F4);
        assert!("f3"
            .parse::<Winograd>()
            .unwrap_err()
            .to_string()
            .contains("f3"));
        assert!(parse_switch("1").unwrap());
        assert!(!parse_switch("OFF").unwrap());
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn winograd_applies_to_3x3_stride_1_when_on() {
        let on = KernelPolicy::default();
        assert!(on.winograd_applies(3, 1));
        assert!(!on.winograd_applies(3, 2) && !on.winograd_applies(1, 1));
        let f2 = KernelPolicy {
            winograd: Winograd::F2,
            ..on
        };
        assert!(f2.winograd_applies(3, 1));
        let off = KernelPolicy {
            winograd: Winograd::Off,
            ..on
        };
        assert!(!off.winograd_applies(3, 1));
        assert!(!KernelPolicy::candle().winograd_applies(3, 1));
    }

    #[test]
    fn precisions_parse_and_print() {
        for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" INT8 ".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!(Precision::default(), Precision::F32);
        let err = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
    }
}
