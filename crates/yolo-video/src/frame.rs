//! Decoded frames: the decoder's YUV 4:2:0 planes, and RGB frames for the detector.

use std::time::Duration;

use image::RgbImage;

/// A frame as the H.264 decoder gives it: 8-bit YUV 4:2:0 planes without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YuvFrame {
    /// Display index, from 0.
    pub index: u64,
    /// Presentation time in ticks of [`YuvFrame::timescale`], from the first frame shown.
    pub pts: i64,
    /// Ticks per second of `pts`.
    pub timescale: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Luma, `width * height` bytes.
    pub y: Vec<u8>,
    /// Blue-difference chroma, `ceil(width / 2) * ceil(height / 2)` bytes.
    pub u: Vec<u8>,
    /// Red-difference chroma, as `u`.
    pub v: Vec<u8>,
}

impl YuvFrame {
    /// The presentation time in milliseconds.
    pub fn pts_ms(&self) -> f64 {
        self.pts as f64 * 1000.0 / self.timescale as f64
    }

    /// The planes one after the other (Y, U, V): what `ffmpeg -pix_fmt yuv420p` hashes per
    /// frame in its `framemd5`/`framehash` output.
    pub fn planes(&self) -> Vec<u8> {
        [&self.y[..], &self.u, &self.v].concat()
    }

    /// The frame in RGB: BT.601 limited range (what H.264 streams without other colour
    /// information use), each pixel with the chroma sample of its 2x2 block.
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let cw = w.div_ceil(2);
        let mut out = vec![0u8; w * h * 3];
        // 16.16 fixed point: 1.164 (Y - 16), 1.596 V, 0.392 U + 0.813 V, 2.017 U
        const K_Y: i32 = 76_284;
        const K_RV: i32 = 104_595;
        const K_GU: i32 = 25_690;
        const K_GV: i32 = 53_281;
        const K_BU: i32 = 132_186;
        let clamp = |x: i32| ((x + 32_768) >> 16).clamp(0, 255) as u8;
        for (row, line) in out.chunks_exact_mut(w * 3).enumerate() {
            let ys = &self.y[row * w..(row + 1) * w];
            let us = &self.u[(row / 2) * cw..(row / 2 + 1) * cw];
            let vs = &self.v[(row / 2) * cw..(row / 2 + 1) * cw];
            for (x, px) in line.chunks_exact_mut(3).enumerate() {
                let y = (ys[x] as i32 - 16) * K_Y;
                let u = us[x / 2] as i32 - 128;
                let v = vs[x / 2] as i32 - 128;
                px[0] = clamp(y + K_RV * v);
                px[1] = clamp(y - K_GU * u - K_GV * v);
                px[2] = clamp(y + K_BU * u);
            }
        }
        RgbImage::from_raw(self.width, self.height, out).expect("w * h * 3 bytes")
    }
}

/// An RGB frame of a video, with where it is in the video.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Display index in the video, from 0 (frames left out by a stride keep their gaps).
    pub index: u64,
    /// Presentation time in milliseconds from the first frame shown.
    pub pts_ms: f64,
    /// Presentation time in ticks of `timescale` (exact, for writing it back).
    pub pts: i64,
    /// Ticks per second of `pts`.
    pub timescale: u32,
    /// The picture.
    pub image: RgbImage,
    /// Time spent decoding this frame (and the frames a stride skipped before it) and
    /// converting it to RGB, on the decoding thread.
    pub decode_time: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_range_black_white_and_red() {
        let f = YuvFrame {
            index: 0,
            pts: 512,
            timescale: 1024,
            width: 3,
            height: 1,
            y: vec![16, 235, 81],
            u: vec![128, 90],
            v: vec![128, 240],
        };
        let rgb = f.to_rgb();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        // BT.601 red is Y 81, U 90, V 240
        let r = rgb.get_pixel(2, 0).0;
        assert!(r[0] >= 254 && r[1] <= 1 && r[2] <= 1, "{r:?}");
        assert_eq!(f.pts_ms(), 500.0);
        assert_eq!(f.planes().len(), 3 + 2 + 2);
    }
}
