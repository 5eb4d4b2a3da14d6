//! Helpers: reference key lists and synthetic tensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use nn_blocks::weights::synthetic_values;

/// `tests/fixtures/{rel}` in the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// `(name, shape)` of a golden key list, without `num_batches_tracked`.
pub fn keys(model: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture(&format!("golden/keys_{model}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let shape = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name, shape)
        })
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .collect()
}

/// Synthetic tensors for every key.
pub fn synthetic(keys: &[(String, Vec<usize>)]) -> BTreeMap<String, Tensor> {
    keys.iter()
        .map(|(n, s)| {
            let t = Tensor::from_vec(synthetic_values(n, s), s.as_slice(), &Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect()
}

pub use test_support::max_abs_diff;
