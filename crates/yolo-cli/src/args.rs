//! Argument types shared by the subcommands.

use std::fmt;
use std::str::FromStr;

use nn_kernels::{KernelPolicy, Winograd};
use yolov3_head::INPUT_STRIDE;

/// Which CPU kernels the model runs on (defaults: the fastest). Each flag may also come
/// from its environment variable, as the `NN_BLOCKS_*` switches did.
#[derive(Debug, Clone, clap::Args)]
pub struct KernelArgs {
    /// Our fused CPU convolution kernels (off: candle's conv2d).
    #[arg(
        long,
        env = "NN_BLOCKS_FAST_CONV",
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = nn_kernels::parse_switch
    )]
    pub fast_conv: bool,
    /// Winograd for 3x3 stride-1 convolutions: f4 (F(4x4,3x3) where it fits, else
    /// F(2x2,3x3)), f2, or off.
    #[arg(
        long,
        env = "NN_BLOCKS_WINOGRAD",
        value_name = "f4|f2|off",
        default_value = "f4"
    )]
    pub winograd: Winograd,
    /// The AVX-512 gemm_64 kernel for Winograd's products (off: the gemm crate's).
    #[arg(
        long,
        env = "NN_BLOCKS_GEMM64",
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = nn_kernels::parse_switch
    )]
    pub gemm64: bool,
}

impl KernelArgs {
    /// The kernel policy these flags ask for.
    pub fn policy(&self) -> KernelPolicy {
        KernelPolicy {
            fast_conv: self.fast_conv,
            winograd: self.winograd,
            gemm64: self.gemm64,
        }
    }
}

/// Network input size, `416` (square) or `WxH` (e.g. `480x320`); sides are multiples of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for InputSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |v: &str| {
            v.trim().parse::<usize>().map_err(|_| {
                format!("`{s}` is not an input size: expected N or WxH, e.g. 416 or 480x320")
            })
        };
        let (width, height) = match s.split_once(['x', 'X']) {
            Some((w, h)) => (parse(w)?, parse(h)?),
            None => {
                let n = parse(s)?;
                (n, n)
            }
        };
        if width == 0 || height == 0 || width % INPUT_STRIDE != 0 || height % INPUT_STRIDE != 0 {
            return Err(format!(
                "input size {width}x{height} is not supported: width and height must be positive multiples of {INPUT_STRIDE} (e.g. 416 or 480x320)"
            ));
        }
        Ok(Self { width, height })
    }
}

#[cfg(test)]
mod tests {
    use super::InputSize;

    #[test]
    fn parses_square_and_rectangular_sizes() {
        assert_eq!(
            "416".parse::<InputSize>().unwrap(),
            InputSize {
                width: 416,
                height: 416
            }
        );
        assert_eq!(
            "480x320".parse::<InputSize>().unwrap(),
            InputSize {
                width: 480,
                height: 320
            }
        );
        assert!("415"
            .parse::<InputSize>()
            .unwrap_err()
            .contains("multiples of 32"));
        assert!("0".parse::<InputSize>().is_err());
        assert!("abc"
            .parse::<InputSize>()
            .unwrap_err()
            .contains("not an input size"));
        assert!("416x".parse::<InputSize>().is_err());
    }
}
