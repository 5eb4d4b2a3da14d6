//! Data loading for the loop: a [`Loader`] thread that reads, augments (or letterboxes)
//! and stacks the images of each batch while the previous step runs, handing them over
//! through a bounded channel.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::{letterbox, random_augment, to_targets, AugmentConfig};
use crate::dataset::Sample;
use crate::loss::TargetBox;
use crate::{Error, Result};

/// One batch as the loader thread builds it.
struct Batch {
    /// The images, CHW f32 one after the other.
    images: Vec<f32>,
    /// The boxes of each image, in network input coordinates.
    targets: Vec<Vec<TargetBox>>,
}

/// Reads an image as RGB, naming the file when it cannot be decoded.
pub(super) fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .to_rgb8())
}

/// Reads and prepares the images of `samples` into one batch.
fn make_batch(
    samples: &[&Sample],
    input_wh: (u32, u32),
    augment: Option<&AugmentConfig>,
    rng: &mut ChaCha8Rng,
) -> Result<Batch> {
    let (w, h) = input_wh;
    let mut images = Vec::with_capacity(samples.len() * 3 * (w * h) as usize);
    let mut targets = Vec::with_capacity(samples.len());
    for s in samples {
        let img = load_rgb(&s.path)?;
        let (out, boxes) = match augment {
            Some(cfg) => random_augment(&img, &s.boxes, input_wh, cfg, rng)?,
            None => letterbox(&img, &s.boxes, input_wh)?,
        };
        images.extend(yolov3_head::preprocess::to_chw_f32(&out));
        targets.push(to_targets(&boxes, input_wh));
    }
    Ok(Batch { images, targets })
}

/// The receiving end of a loader thread. Dropping it stops the thread at its next batch.
pub(super) struct Loader {
    rx: Receiver<Result<Batch>>,
    batch: usize,
    input_wh: (u32, u32),
}

impl Loader {
    /// Spawns the loader: `steps` batches of `batch` (the last partial one dropped, as
    /// the reference) in a seeded shuffled order (file order without a seed), built on
    /// another thread while the step runs.
    pub(super) fn spawn(
        samples: Vec<Sample>,
        batch: usize,
        steps: usize,
        input_wh: (u32, u32),
        augment: Option<AugmentConfig>,
        shuffle_seed: Option<u64>,
    ) -> Self {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(shuffle_seed.unwrap_or(0));
            if shuffle_seed.is_some() {
                order.shuffle(&mut rng);
            }
            for s in 0..steps {
                let chunk: Vec<&Sample> = order[s * batch..(s + 1) * batch]
                    .iter()
                    .map(|&i| &samples[i])
                    .collect();
                let b = make_batch(&chunk, input_wh, augment.as_ref(), &mut rng);
                if tx.send(b).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            batch,
            input_wh,
        }
    }

    /// The next batch: the images as an NCHW tensor on `device`, and their targets.
    pub(super) fn next_batch(&self, device: &Device) -> Result<(Tensor, Vec<Vec<TargetBox>>)> {
        let b = self
            .rx
            .recv()
            .map_err(|_| Error::Config("the loader stopped".into()))??;
        let (w, h) = self.input_wh;
        let x = Tensor::from_vec(b.images, (self.batch, 3, h as usize, w as usize), device)?;
        Ok((x, b.targets))
    }
}
