//! Test inputs shared by the CLI and service tests: one synthetic-weights file
//! (MobileNetV2 body, 20 VOC classes, the deterministic weights of
//! `nn_blocks::weights::synthetic_values`), written once per build into Cargo's
//! integration-test temp dir, and small generated images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::{Rgb, RgbImage};
use nn_blocks::weights::{synthetic_values, RecordingBackend, SyntheticWeights};
use yolov3_head::{YoloBody, YoloConfig};

/// The shared weights file (generated on first use).
pub fn weights() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("cli-mobilenetv2-voc-synthetic-v1.safetensors");
        if path.is_file() {
            return path;
        }
        let (backend, log) = RecordingBackend::new(SyntheticWeights);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        YoloBody::new(&YoloConfig::voc_mobilenetv2(), vb).expect("synthetic model");
        let tensors: HashMap<String, Tensor> = log
            .entries()
            .into_iter()
            .map(|(name, dims)| {
                let t =
                    Tensor::from_vec(synthetic_values(&name, &dims), dims, &Device::Cpu).unwrap();
                (name, t)
            })
            .collect();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        candle_core::safetensors::save(&tensors, &tmp).expect("write weights");
        std::fs::rename(&tmp, &path).expect("rename weights");
        path
    })
}

/// A `w`x`h` gradient image; `seed` shifts its colours.
pub fn image(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 + seed as u32) as u8,
            (y * 11) as u8,
            ((x + y) * 3 + seed as u32 * 5) as u8,
        ])
    })
}

/// The model flags every test runs the synthetic weights with: MobileNetV2 at 64x64 on
/// the CPU (then `--weights`, [`weights`]).
pub const MODEL_FLAGS: [&str; 6] = [
    "--backbone",
    "mobilenetv2",
    "--input-size",
    "64",
    "--device",
    "cpu",
];
