//! A synthetic detection set: coloured shapes (square, disc, triangle) on textured
//! backgrounds, with annotation files in the reference's format.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use yolo_io::Overwrite;

use crate::dataset::{format_line, AnnBox};
use crate::{Error, Result};

/// The class names, in id order.
pub const CLASSES: [&str; 3] = ["square", "disc", "triangle"];

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticConfig {
    /// Training images.
    pub train: usize,
    /// Held-out images.
    pub val: usize,
    /// Image side in pixels.
    pub size: u32,
    /// Shapes per image: 1 to this.
    pub max_objects: usize,
    /// Seed.
    pub seed: u64,
}

fn inside(class: usize, x: f32, y: f32) -> bool {
    // (x, y) in [0, 1]^2 of the box
    match class {
        0 => true,
        1 => (x - 0.5).powi(2) + (y - 0.5).powi(2) <= 0.25,
        _ => y >= 1.0 - 2.0 * x.min(1.0 - x) * 1.0 && y <= 1.0 && 2.0 * (x - 0.5).abs() <= y,
    }
}

/// One image and its boxes.
pub fn generate_image(
    size: u32,
    max_objects: usize,
    rng: &mut ChaCha8Rng,
) -> (RgbImage, Vec<AnnBox>) {
    let base = [
        rng.random_range(60..200u8),
        rng.random_range(60..200u8),
        rng.random_range(60..200u8),
    ];
    let period = rng.random_range(4..16u32);
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let stripe = if ((x + y) / period) % 2 == 0 {
            25i16
        } else {
            -25
        };
        Rgb(base.map(|c| (c as i16 + stripe).clamp(0, 255) as u8))
    });
    for p in img.pixels_mut() {
        let n = rng.random_range(-20i16..=20);
        p.0 = p.0.map(|c| (c as i16 + n).clamp(0, 255) as u8);
    }
    let colours = [[230u8, 30, 30], [30, 200, 40], [40, 60, 230]];
    let mut boxes = Vec::new();
    for _ in 0..rng.random_range(1..=max_objects) {
        let class = rng.random_range(0..3usize);
        let s = rng.random_range(size / 6..=size / 2);
        let sh = (s as f32 * rng.random_range(0.7..1.3f32)).min(size as f32 - 1.0) as u32;
        let x0 = rng.random_range(0..size - s);
        let y0 = rng.random_range(0..size - sh);
        let col = colours[class];
        for y in y0..y0 + sh {
            for x in x0..x0 + s {
                let (u, v) = ((x - x0) as f32 / s as f32, (y - y0) as f32 / sh as f32);
                if inside(class, u, v) {
                    img.put_pixel(x, y, Rgb(col));
                }
            }
        }
        boxes.push(AnnBox {
            x1: x0 as f32,
            y1: y0 as f32,
            x2: (x0 + s) as f32,
            y2: (y0 + sh) as f32,
            class_id: class,
        });
    }
    (img, boxes)
}

/// Writes `dir/images/*.png`, `dir/train.txt`, `dir/val.txt` and `dir/classes.txt`, each
/// file atomically.
pub fn generate(dir: &Path, cfg: &SyntheticConfig) -> Result<()> {
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).map_err(|e| Error::io(&img_dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    for (split, n) in [("train", cfg.train), ("val", cfg.val)] {
        let mut lines = String::new();
        for i in 0..n {
            let (img, boxes) = generate_image(cfg.size, cfg.max_objects, &mut rng);
            let p = img_dir.join(format!("{split}_{i:05}.png"));
            yolo_io::write_atomic_path(&p, Overwrite::Allow, |t| -> Result<()> {
                img.save_with_format(t, image::ImageFormat::Png)
                    .map_err(|e| Error::Image {
                        path: p.clone(),
                        message: e.to_string(),
                    })
            })?;
            lines.push_str(&format_line(&p.display().to_string(), &boxes));
            lines.push('\n');
        }
        let f = dir.join(format!("{split}.txt"));
        yolo_io::write_bytes_atomic(&f, Overwrite::Allow, lines.as_bytes())?;
    }
    let f = dir.join("classes.txt");
    let classes = CLASSES.join("\n") + "\n";
    yolo_io::write_bytes_atomic(&f, Overwrite::Allow, classes.as_bytes())?;
    Ok(())
}
