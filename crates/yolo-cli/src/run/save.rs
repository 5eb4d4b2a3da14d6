//! The files `yolo-cli run` writes per image: the drawn image and, with `--save-txt`, the
//! label file, each written atomically through `yolo_io` (a run that is interrupted
//! leaves the previous file or the complete new one, never a truncated one).

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::RgbImage;
use yolo_io::Overwrite;
use yolov3_head::Detection;

use crate::draw::Painter;
use crate::output::{self, OutputNamer};

/// JPEG quality of drawn `.jpg` images.
const JPEG_QUALITY: u8 = 95;

/// Writes each image's files into the output directory.
///
/// Outputs of an earlier run with the same names are replaced (that is what the output
/// directory is for); the inputs themselves never are, as [`OutputNamer`] never picks
/// an input's path.
pub(super) struct Saver {
    dir: PathBuf,
    painter: Option<Painter>,
    namer: OutputNamer,
    save_txt: bool,
    input_size: (usize, usize),
}

impl Saver {
    /// A saver into `dir` for `inputs`; `painter` is `None` with `--no-draw`.
    pub fn new(
        dir: &Path,
        inputs: &[PathBuf],
        painter: Option<Painter>,
        save_txt: bool,
        input_size: (usize, usize),
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            painter,
            namer: OutputNamer::new(dir, inputs),
            save_txt,
            input_size,
        }
    }

    /// The drawn video's path and the label file's path for the video `input`.
    pub fn video_outputs(&mut self, input: &Path) -> (PathBuf, PathBuf) {
        let (stem, drawn) = self.namer.next_with_extension(input, "mp4");
        (drawn, self.dir.join("labels").join(format!("{stem}.txt")))
    }

    /// Draws `dets` on `img` and writes it, then the label file: the errors of both (so
    /// that one failing does not stop the other).
    pub fn save(
        &mut self,
        input: &Path,
        img: &mut RgbImage,
        dets: &[Detection],
    ) -> Vec<anyhow::Error> {
        let (stem, drawn_path) = self.namer.next(input);
        let mut errors = Vec::new();
        if let Some(p) = &self.painter {
            p.draw(img, dets, self.input_size);
            if let Err(e) = save_drawn(img, &drawn_path) {
                errors.push(e);
            }
        }
        if self.save_txt {
            let txt = self.dir.join("labels").join(format!("{stem}.txt"));
            if let Err(e) = save_labels(dets, &txt) {
                errors.push(e);
            }
        }
        errors
    }
}

/// Writes `img` as a JPEG (quality 95) when `path` ends in `.jpg`, as a PNG otherwise.
fn save_drawn(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    let is_jpg = path.extension().is_some_and(|e| e == "jpg");
    yolo_io::write_atomic(path, Overwrite::Allow, |w| -> anyhow::Result<()> {
        if is_jpg {
            image::codecs::jpeg::JpegEncoder::new_with_quality(w, JPEG_QUALITY)
                .encode_image(img)?;
        } else {
            img.write_to(w, image::ImageFormat::Png)?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the `--save-txt` lines of `dets` to `path`.
fn save_labels(dets: &[Detection], path: &Path) -> anyhow::Result<()> {
    yolo_io::write_bytes_atomic(path, Overwrite::Allow, output::label_lines(dets).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decodable_images_and_label_lines() {
        let d = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 7]));
        for name in ["a.jpg", "a.png"] {
            let p = d.path().join(name);
            std::fs::write(&p, b"an earlier run's file, longer than nothing").unwrap();
            save_drawn(&img, &p).unwrap();
            assert_eq!(image::open(&p).unwrap().to_rgb8().dimensions(), (9, 7));
        }
        let det = Detection {
            x1: 1.0,
            y1: 2.0,
            x2: 3.0,
            y2: 4.0,
            score: 0.5,
            class_id: 1,
            class_name: "dog".into(),
        };
        let txt = d.path().join("labels/a.txt");
        save_labels(std::slice::from_ref(&det), &txt).unwrap();
        assert_eq!(
            std::fs::read_to_string(&txt).unwrap(),
            output::label_lines(&[det])
        );
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        // a directory where the image should go: the rename fails, nothing is lost
        let p = d.path().join("taken.png");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside.txt"), b"keep").unwrap();
        let e = save_drawn(&RgbImage::new(2, 2), &p).unwrap_err();
        assert!(format!("{e:#}").contains("cannot write"), "{e:#}");
        assert!(format!("{e:#}").contains("taken.png"), "{e:#}");
        assert_eq!(std::fs::read(p.join("inside.txt")).unwrap(), b"keep");
    }
}
