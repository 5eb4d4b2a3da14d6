//! Helpers shared by the training tests.

use std::path::Path;

use yolo_train::dataset::{load_annotations, BadLinePolicy, Sample};
use yolo_train::synthetic::{generate, SyntheticConfig};

/// `train` and `val` synthetic 64x64 images (1-2 shapes each) written to `dir/data`, read back.
pub fn synthetic_samples(
    dir: &Path,
    train: usize,
    val: usize,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let d = dir.join("data");
    generate(
        &d,
        &SyntheticConfig {
            train,
            val,
            size: 64,
            max_objects: 2,
            seed,
        },
    )
    .unwrap();
    let tr = load_annotations(&d.join("train.txt"), 3, BadLinePolicy::Refuse).unwrap();
    let va = load_annotations(&d.join("val.txt"), 3, BadLinePolicy::Refuse).unwrap();
    (tr.samples, va.samples)
}
