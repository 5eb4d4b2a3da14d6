//! Decoding speed: frames per second of `VideoReader` (YUV) and of the RGB frames, on one
//! file.
//!
//! ```sh
//! cargo run --release -p yolo-video --example decode_speed -- clip.mp4
//! ```

use std::time::Instant;

use yolo_video::{VideoReader, DEFAULT_MAX_PIXELS};

fn main() -> Result<(), yolo_video::Error> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: decode_speed VIDEO");
        std::process::exit(2);
    };
    let mut reader = VideoReader::open(path.as_ref(), DEFAULT_MAX_PIXELS)?;
    let info = reader.info().clone();
    let (mut frames, mut decode, mut rgb) = (0u64, 0.0f64, 0.0f64);
    loop {
        let t = Instant::now();
        let Some(frame) = reader.next_yuv()? else {
            break;
        };
        let t1 = Instant::now();
        let image = frame.to_rgb();
        rgb += t1.elapsed().as_secs_f64();
        decode += (t1 - t).as_secs_f64();
        frames += 1;
        std::hint::black_box(image);
    }
    let ms = |s: f64| s * 1e3 / frames.max(1) as f64;
    println!(
        "{}: {}x{} H.264 {}, {frames} frames: decode {:.2} ms/frame, to RGB {:.2} ms/frame, {:.1} frames/s",
        path.to_string_lossy(),
        info.width,
        info.height,
        info.profile,
        ms(decode),
        ms(rgb),
        frames as f64 / (decode + rgb)
    );
    Ok(())
}
