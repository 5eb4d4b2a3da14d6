//! The model being trained: built over a `VarMap` and initialised as the reference's
//! `weights_init` from a seeded generator, and its inference form (BatchNorm folded)
//! for evaluation.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use yolov3_head::{YoloBody, YoloConfig};

use crate::Result;

/// Builds a YOLOv3 in training mode over a VarMap, initialised as the reference's
/// `weights_init` (conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0,
/// conv biases PyTorch's default U(±1/sqrt(fan_in)), running statistics 0 and 1), every
/// value drawn from a generator seeded with `seed`: the same seed gives the same model.
pub fn build_train_model(
    cfg: &YoloConfig,
    device: &Device,
    seed: u64,
) -> Result<(VarMap, YoloBody)> {
    let varmap = VarMap::new();
    let mut tc = cfg.clone();
    tc.bn_mode = nn_blocks::BnMode::Train;
    let model = YoloBody::new(&tc, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in names {
        let var = &data[n];
        let t = var.as_tensor();
        let shape = t.shape().clone();
        let normal = |std: f32, mean: f32, rng: &mut ChaCha8Rng| -> Result<Tensor> {
            use rand_distr::{Distribution, Normal};
            let d = Normal::new(mean, std).expect("normal");
            let v: Vec<f32> = (0..shape.elem_count()).map(|_| d.sample(rng)).collect();
            Ok(Tensor::from_vec(v, shape.clone(), device)?)
        };
        if t.rank() == 4 {
            var.set(&normal(0.02, 0.0, &mut rng)?)?;
        } else if n.ends_with(".weight") {
            var.set(&normal(0.02, 1.0, &mut rng)?)?;
        } else if let Some(w) = n
            .strip_suffix(".bias")
            .and_then(|p| data.get(&format!("{p}.weight")))
            .filter(|w| w.as_tensor().rank() == 4)
        {
            // a conv bias keeps PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
            // as the reference's weights_init leaves it; drawn here from the seeded generator
            // (candle's own init draws from an unseeded one, which made runs differ)
            use rand::Rng;
            let d = w.as_tensor().dims();
            let bound = 1.0 / ((d[1] * d[2] * d[3]) as f32).sqrt();
            let v: Vec<f32> = (0..shape.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            var.set(&Tensor::from_vec(v, shape.clone(), device)?)?;
        } else if n.ends_with(".running_var") {
            var.set(&Tensor::ones(shape.clone(), DType::F32, device)?)?;
        } else {
            // BatchNorm biases and running means
            var.set(&Tensor::zeros(shape.clone(), DType::F32, device)?)?;
        }
    }
    drop(data);
    Ok((varmap, model))
}

/// The inference model (BatchNorm folded) from the training VarMap.
pub fn folded_model(varmap: &VarMap, cfg: &YoloConfig, device: &Device) -> Result<YoloBody> {
    let data = varmap.data().lock().expect("varmap lock");
    let tensors = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    drop(data);
    let mut c = cfg.clone();
    c.bn_mode = nn_blocks::BnMode::Folded;
    Ok(YoloBody::new(
        &c,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )?)
}
