//! A weights backend that hands each tensor over instead of sharing it.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Like candle's `HashMap<String, Tensor>` backend, but a tensor leaves the map when the
/// model reads it with `get` (shape-checked, what layers use); `get_unchecked` only looks
/// (as the class-count check before the load does). A model that transforms what it reads (BatchNorm folded into the conv
/// weights) then holds the only copy of the original, which is freed as soon as the
/// transformed tensor is made: loading peaks at the weights' size plus one layer, instead
/// of twice the weights. Each name can be read once with `get`.
pub struct TakingBackend {
    tensors: Mutex<HashMap<String, Tensor>>,
}

impl TakingBackend {
    /// Wraps `tensors`.
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors: Mutex::new(tensors),
        }
    }

    /// A `VarBuilder` over `tensors` that hands them over as they are read.
    pub fn var_builder(
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self::new(tensors)), dtype, device.clone())
    }

    /// Removes `name` (`take`) or clones it out, failing as candle's backends do when absent.
    fn lookup(&self, name: &str, take: bool) -> Result<Tensor> {
        let mut map = self.tensors.lock().expect("weights map lock");
        let found = if take {
            map.remove(name)
        } else {
            map.get(name).cloned()
        };
        found.ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }
}

impl SimpleBackend for TakingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let tensor = self.lookup(name, true)?;
        if tensor.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        tensor.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.lookup(name, false)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors
            .lock()
            .expect("weights map lock")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_handed_over_once() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let vb = TakingBackend::var_builder(
            HashMap::from([("a.w".to_string(), t.clone())]),
            DType::F32,
            &dev,
        );
        assert!(vb.contains_tensor("a.w"));
        // looking does not take
        assert_eq!(vb.get_unchecked("a.w").unwrap().dims(), &[2, 3]);
        let got = vb.pp("a").get((2, 3), "w").unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        // gone from the builder: read once
        assert!(!vb.contains_tensor("a.w"));
        let e = vb.get((2, 3), "a.w").unwrap_err().to_string();
        assert!(e.contains("a.w"), "{e}");
    }

    #[test]
    fn wrong_shape_names_the_tensor_and_both_shapes() {
        let dev = Device::Cpu;
        let vb = TakingBackend::var_builder(
            HashMap::from([(
                "w".to_string(),
                Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
            )]),
            DType::F32,
            &dev,
        );
        let e = vb.get((3, 2), "w").unwrap_err().to_string();
        assert!(
            e.contains("shape mismatch for w") && e.contains("[2, 3]") && e.contains("[3, 2]"),
            "{e}"
        );
    }
}
