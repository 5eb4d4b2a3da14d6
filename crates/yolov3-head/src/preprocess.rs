//! Image loading and the network input: the reference's `cvtColor`, `resize_image`
//! and `preprocess_input` (bubbliiiing/yolo3-pytorch `utils/utils.py`).

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// The default pixel limit: Pillow's `2 * MAX_IMAGE_PIXELS` (the size at which Pillow
/// refuses an image as a decompression bomb), about 179 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// The gray of the letterbox bars, as the reference's `Image.new('RGB', size, (128, 128, 128))`.
pub const LETTERBOX_GRAY: u8 = 128;

/// How an image is fitted to the network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Keep the aspect ratio and pad with gray bars (`letterbox_image=True`).
    #[default]
    Letterbox,
    /// Stretch to the input size (`letterbox_image=False`, the reference's default).
    Stretch,
}

/// Reads an image file of any format the `image` crate decodes (by content, not by
/// extension), applies its EXIF orientation and converts it to 8-bit RGB.
///
/// Images whose header claims more than `max_pixels` pixels are refused before any
/// pixel buffer is allocated.
pub fn load_image(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ImageReader::new(std::io::BufReader::new(file));
    decode(reader, path, max_pixels)
}

/// As [`load_image`], from bytes in memory.
pub fn load_image_from_memory(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    decode(
        ImageReader::new(Cursor::new(bytes)),
        Path::new("<memory>"),
        max_pixels,
    )
}

fn decode<R: BufRead + Seek>(
    reader: ImageReader<R>,
    path: &Path,
    max_pixels: u64,
) -> Result<RgbImage> {
    let dec_err = |source| Error::Decode {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = reader.with_guessed_format().map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut limits = Limits::default();
    // Room for the decoded image at up to 16 bits x 4 channels, plus decoder state.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(dec_err)?;
    let (width, height) = decoder.dimensions();
    if (width as u64) * (height as u64) > max_pixels {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max_pixels,
        });
    }
    let orientation = decoder.orientation().map_err(dec_err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(dec_err)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Decode {
            path: path.to_path_buf(),
            source: image::ImageError::Limits(image::error::LimitError::from_kind(
                image::error::LimitErrorKind::DimensionError,
            )),
        });
    }
    // `cvtColor`: gray, palette, RGBA, 16-bit … -> RGB8 (alpha dropped, as PIL's convert('RGB')).
    Ok(img.into_rgb8())
}

/// The letterbox geometry of the reference's `resize_image`: the image is resized to
/// `(nw, nh)` and pasted at `(dx, dy)` on the `(w, h)` canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetterboxGeometry {
    /// Resized width, `int(iw * scale)` (at least 1).
    pub nw: u32,
    /// Resized height, `int(ih * scale)` (at least 1).
    pub nh: u32,
    /// Left offset, `(w - nw) // 2`.
    pub dx: u32,
    /// Top offset, `(h - nh) // 2`.
    pub dy: u32,
}

impl LetterboxGeometry {
    /// `scale = min(w/iw, h/ih)`, `nw = int(iw*scale)`, `nh = int(ih*scale)`, centred.
    pub fn new(image_wh: (u32, u32), input_wh: (u32, u32)) -> Self {
        let (iw, ih) = (image_wh.0 as f64, image_wh.1 as f64);
        let (w, h) = input_wh;
        let scale = (w as f64 / iw).min(h as f64 / ih);
        // Python's int() truncates; a side that would vanish (very thin images, where
        // PIL itself fails) is kept at one pixel.
        let nw = ((iw * scale) as u32).clamp(1, w);
        let nh = ((ih * scale) as u32).clamp(1, h);
        Self {
            nw,
            nh,
            dx: (w - nw) / 2,
            dy: (h - nh) / 2,
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's BICUBIC kernel: cubic convolution with a = -0.5, support 2.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first
/// input pixel and the fixed-point weights of the window.
fn pillow_coeffs(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut w: Vec<f64> = (0..n)
                .map(|x| bicubic_filter((x as f64 + xmin as f64 - center + 0.5) / filter_scale))
                .collect();
            let ww: f64 = w.iter().sum();
            if ww != 0.0 {
                w.iter_mut().for_each(|v| *v /= ww);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS).min(255) as u8
    }
}

/// PIL's `image.resize((w, h), Image.BICUBIC)`, bit for bit: Pillow's separable
/// fixed-point convolution (`Resample.c`, 8 bits per channel) with the a = -0.5 cubic
/// kernel, widened when shrinking (antialias), horizontal pass first with an 8-bit
/// intermediate, a pass skipped when its side is unchanged.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::Config(format!(
            "cannot resize {}x{} to {width}x{height}",
            img.width(),
            img.height()
        )));
    }
    let mut cur = img.clone();
    if width != cur.width() {
        let coeffs = pillow_coeffs(cur.width(), width);
        let (src, sw) = (cur.as_raw(), cur.width() as usize);
        let mut out = vec![0u8; width as usize * cur.height() as usize * 3];
        for (y, row) in out.chunks_exact_mut(width as usize * 3).enumerate() {
            let src_row = &src[y * sw * 3..(y + 1) * sw * 3];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += src_row[(xmin + x) * 3 + c] as i64 * kx as i64;
                    }
                    row[xx * 3 + c] = clip8(ss);
                }
            }
        }
        cur = RgbImage::from_raw(width, cur.height(), out)
            .ok_or_else(|| Error::Config("resize: buffer size".into()))?;
    }
    if height != cur.height() {
        let coeffs = pillow_coeffs(cur.height(), height);
        let (src, stride) = (cur.as_raw(), width as usize * 3);
        let mut out = vec![0u8; stride * height as usize];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            let row = &mut out[yy * stride..(yy + 1) * stride];
            for (i, v) in row.iter_mut().enumerate() {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss += src[(ymin + y) * stride + i] as i64 * ky as i64;
                }
                *v = clip8(ss);
            }
        }
        cur = RgbImage::from_raw(width, height, out)
            .ok_or_else(|| Error::Config("resize: buffer size".into()))?;
    }
    Ok(cur)
}

/// The reference's `resize_image(image, (w, h), letterbox_image)`.
pub fn resize_image(img: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> Result<RgbImage> {
    match mode {
        ResizeMode::Stretch => resize_bicubic(img, width, height),
        ResizeMode::Letterbox => {
            let g = LetterboxGeometry::new(img.dimensions(), (width, height));
            let resized = resize_bicubic(img, g.nw, g.nh)?;
            let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([LETTERBOX_GRAY; 3]));
            image::imageops::replace(&mut canvas, &resized, g.dx as i64, g.dy as i64);
            Ok(canvas)
        }
    }
}

/// `preprocess_input` and the transpose: RGB8 `(H, W, 3)` -> `(3, H, W)` f32 in [0, 1]
/// (divided by 255, no mean or std).
pub fn to_chw_f32(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    out
}

/// Resized images -> the network input `(B, 3, H, W)` on `device`. All images must
/// have the same size.
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(Error::Config("no image to batch".into()));
    };
    let (w, h) = (first.width() as usize, first.height() as usize);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        if img.dimensions() != first.dimensions() {
            return Err(Error::Config(format!(
                "batched images differ in size: {:?} and {:?}",
                first.dimensions(),
                img.dimensions()
            )));
        }
        data.extend(to_chw_f32(img));
    }
    // (B*3*H*W) -> (B, 3, H, W)
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_geometry_follows_the_reference() {
        // 500x375 into 416x416: scale 0.832, nw 416, nh 312, dy 52
        let g = LetterboxGeometry::new((500, 375), (416, 416));
        assert_eq!((g.nw, g.nh, g.dx, g.dy), (416, 312, 0, 52));
        // very wide: 2000x50 into 128x128 -> 128x3 at dy 62
        let g = LetterboxGeometry::new((2000, 50), (128, 128));
        assert_eq!((g.nw, g.nh, g.dx, g.dy), (128, 3, 0, 62));
        // 1x1 into 160x96
        let g = LetterboxGeometry::new((1, 1), (160, 96));
        assert_eq!((g.nw, g.nh, g.dx, g.dy), (96, 96, 32, 0));
        // a side that would be 0 in the reference is kept at 1
        let g = LetterboxGeometry::new((100_000, 1), (416, 416));
        // (Python: int(100000 * (416 / 100000)) == 415)
        assert_eq!((g.nw, g.nh), (415, 1));
    }

    #[test]
    fn letterbox_pads_with_gray_and_stretch_fills() {
        let img = RgbImage::from_pixel(40, 20, image::Rgb([255, 0, 0]));
        let lb = resize_image(&img, 64, 64, ResizeMode::Letterbox).unwrap();
        assert_eq!(lb.dimensions(), (64, 64));
        assert_eq!(lb.get_pixel(0, 0).0, [128, 128, 128]);
        assert_eq!(lb.get_pixel(32, 32).0, [255, 0, 0]);
        let st = resize_image(&img, 64, 64, ResizeMode::Stretch).unwrap();
        assert_eq!(st.get_pixel(0, 0).0, [255, 0, 0]);
    }

    #[test]
    fn tensor_is_chw_over_255() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, image::Rgb([255, 51, 0]));
        let t = images_to_tensor(&[img], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 1.0, 0.0, 0.2, 0.0, 0.0]);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"not an image at all",
            &[0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0],
        ] {
            assert!(matches!(
                load_image_from_memory(bytes, DEFAULT_MAX_PIXELS),
                Err(Error::Decode { .. }) | Err(Error::Io { .. })
            ));
        }
    }

    #[test]
    fn pixel_limit_refuses_large_headers() {
        let img = RgbImage::new(20, 10);
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(
            load_image_from_memory(&png, 200).unwrap().dimensions(),
            (20, 10)
        );
        let err = load_image_from_memory(&png, 199).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ImageTooLarge {
                    width: 20,
                    height: 10,
                    ..
                }
            ),
            "{err}"
        );
    }
}
