//! The decoder against ffmpeg's frames, the writer read back, and the errors, on the
//! clips of `tests/fixtures/video` (made by `tools/make_video_fixtures.sh`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use yolo_video::{Error, FrameSource, SourceOptions, VideoReader, VideoWriter, DEFAULT_MAX_PIXELS};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/video")
        .join(name)
}

/// `(pts in the stream's time base, sha256)` of each frame of an ffmpeg `framehash` file.
fn ffmpeg_frames(name: &str) -> Vec<(i64, String)> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f[2].parse().unwrap(), f[5].to_string())
        })
        .collect()
}

fn decode_all(name: &str) -> (yolo_video::VideoInfo, Vec<yolo_video::YuvFrame>) {
    let mut r = VideoReader::open(&fixture(name), DEFAULT_MAX_PIXELS).unwrap();
    let info = r.info().clone();
    let mut frames = Vec::new();
    while let Some(f) = r.next_yuv().unwrap() {
        frames.push(f);
    }
    (info, frames)
}

#[test]
fn frames_are_identical_to_ffmpegs() {
    for (clip, profile) in [("clip_high", "High"), ("clip_baseline", "Baseline")] {
        let (info, frames) = decode_all(&format!("{clip}.mp4"));
        assert_eq!(info.profile, profile);
        assert_eq!((info.width, info.height, info.frames), (320, 240, 16));
        assert!((info.fps - 15.0).abs() < 1e-9, "{}", info.fps);
        let expected = ffmpeg_frames(&format!("{clip}.framehash"));
        assert_eq!(frames.len(), expected.len(), "{clip}");
        for (f, (pts, hash)) in frames.iter().zip(&expected) {
            // ffmpeg's time base is 1/15 s here
            assert!(
                (f.pts_ms() - *pts as f64 * 1000.0 / 15.0).abs() < 1e-6,
                "{clip} {f:?}"
            );
            let ours = format!("{:x}", Sha256::digest(f.planes()));
            assert_eq!(&ours, hash, "{clip} frame {}", f.index);
        }
    }
}

#[test]
fn source_strides_and_stops() {
    let opts = SourceOptions {
        stride: 3,
        max_frames: Some(4),
        queue: 1,
        ..SourceOptions::default()
    };
    let src = FrameSource::open(&fixture("clip_high.mp4"), opts).unwrap();
    assert_eq!(src.expected_frames(), 4);
    let frames: Vec<_> = src.spawn().unwrap().map(|f| f.unwrap()).collect();
    let idx: Vec<u64> = frames.iter().map(|f| f.index).collect();
    assert_eq!(idx, [0, 3, 6, 9]);
    assert!((frames[1].pts_ms - 200.0).abs() < 1e-6);
    assert_eq!(frames[0].image.dimensions(), (320, 240));
    // the RGB frame is the decoder's YUV frame converted
    let (_, yuv) = decode_all("clip_high.mp4");
    assert_eq!(frames[2].image, yuv[6].to_rgb());
    // a consumer that stops early does not hang the thread
    let mut it = FrameSource::open(
        &fixture("clip_high.mp4"),
        SourceOptions {
            queue: 1,
            ..SourceOptions::default()
        },
    )
    .unwrap()
    .spawn()
    .unwrap();
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

#[test]
fn written_mp4_reads_back() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.mp4");
    let src = FrameSource::open(&fixture("clip_high.mp4"), SourceOptions::default()).unwrap();
    let info = src.info().clone();
    let mut w =
        VideoWriter::create(&out, info.width, info.height, info.fps, info.timescale).unwrap();
    let mut pts = Vec::new();
    for f in src.spawn().unwrap() {
        let f = f.unwrap();
        w.write(&f.image, f.pts).unwrap();
        pts.push(f.pts_ms);
    }
    assert!(!out.exists(), "the file appears only once finished");
    w.finish().unwrap();
    let (back, frames) = {
        let mut r = VideoReader::open(&out, DEFAULT_MAX_PIXELS).unwrap();
        let info = r.info().clone();
        let mut v = Vec::new();
        while let Some(f) = r.next_yuv().unwrap() {
            v.push(f);
        }
        (info, v)
    };
    assert_eq!((back.width, back.height, back.frames), (320, 240, 16));
    assert!((back.fps - 15.0).abs() < 1e-6, "{}", back.fps);
    let back_pts: Vec<f64> = frames.iter().map(|f| f.pts_ms()).collect();
    assert_eq!(back_pts.len(), pts.len());
    for (a, b) in back_pts.iter().zip(&pts) {
        assert!((a - b).abs() < 1e-6, "{back_pts:?} vs {pts:?}");
    }
    // lossy, but close to what went in (mean absolute luma difference)
    let (_, orig) = decode_all("clip_high.mp4");
    let diff: f64 = frames[5]
        .y
        .iter()
        .zip(&orig[5].y)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / orig[5].y.len() as f64;
    assert!(diff < 6.0, "mean luma difference {diff}");
    let leftovers = std::fs::read_dir(d.path()).unwrap().count();
    assert_eq!(leftovers, 1, "only out.mp4");
}

#[test]
fn an_unfinished_writer_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.mp4");
    let mut w = VideoWriter::create(&out, 64, 48, 10.0, 1000).unwrap();
    w.write(&image::RgbImage::new(64, 48), 0).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    assert!(VideoWriter::create(&out, 63, 48, 10.0, 1000).is_err());
}

fn open_err(path: &Path, max_pixels: u64) -> Error {
    match VideoReader::open(path, max_pixels) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_files_are_named_with_what_is_wrong() {
    let e = open_err(&fixture("clip.mkv"), DEFAULT_MAX_PIXELS);
    assert!(
        matches!(
            e,
            Error::UnsupportedContainer {
                container: "Matroska/WebM",
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("clip.mkv") && msg.contains("-c:v libx264 -pix_fmt yuv420p"),
        "{msg}"
    );

    let e = open_err(&fixture("clip_hevc.mp4"), DEFAULT_MAX_PIXELS);
    assert!(e.to_string().contains("H.265/HEVC (hev1)"), "{e}");
    assert!(e.to_string().contains("clip_hevc-h264.mp4"), "{e}");

    let e = open_err(&fixture("audio_only.mp4"), DEFAULT_MAX_PIXELS);
    assert!(matches!(e, Error::NoVideoTrack { .. }), "{e}");

    let e = open_err(&fixture("clip_high.mp4"), 320 * 240 - 1);
    assert!(
        matches!(
            e,
            Error::TooManyPixels {
                width: 320,
                height: 240,
                ..
            }
        ),
        "{e}"
    );

    let d = tempfile::tempdir().unwrap();
    for clip in ["clip_high.mp4", "clip_baseline.mp4"] {
        let bytes = std::fs::read(fixture(clip)).unwrap();
        let cut = d.path().join(format!("cut_{clip}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = open_err(&cut, DEFAULT_MAX_PIXELS);
        assert!(matches!(e, Error::Malformed { .. }), "{e}");
        assert!(
            e.to_string().contains("truncated") && e.to_string().contains("cut_"),
            "{e}"
        );
    }

    let empty = d.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        open_err(&empty, DEFAULT_MAX_PIXELS),
        Error::Malformed { .. }
    ));
}

/// An MP4 whose H.264 track has no sample.
#[test]
fn zero_frames_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("zero.mp4");
    let mut w = VideoWriter::create(&path, 64, 48, 10.0, 1000).unwrap();
    // one frame makes the track; then the sample tables are emptied by hand
    w.write(&image::RgbImage::new(64, 48), 0).unwrap();
    w.finish().unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    let mp4 = mp4::Mp4Reader::read_header(std::io::BufReader::new(f), len).unwrap();
    let mut moov = mp4.moov.clone();
    let stbl = &mut moov.traks[0].mdia.minf.stbl;
    stbl.stsz.sample_count = 0;
    stbl.stsz.sample_sizes.clear();
    stbl.stts.entries.clear();
    stbl.stsc.entries.clear();
    if let Some(c) = stbl.co64.as_mut() {
        c.entries.clear();
    }
    if let Some(c) = stbl.stco.as_mut() {
        c.entries.clear();
    }
    stbl.stss = None;
    let mut bytes = Vec::new();
    use mp4::WriteBox;
    mp4.ftyp.write_box(&mut bytes).unwrap();
    moov.write_box(&mut bytes).unwrap();
    let zero = d.path().join("zero_frames.mp4");
    std::fs::write(&zero, &bytes).unwrap();
    let e = open_err(&zero, DEFAULT_MAX_PIXELS);
    assert!(matches!(e, Error::NoFrames { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("zero_frames.mp4: the video has no frames"),
        "{e}"
    );
}

#[test]
fn a_box_of_size_zero_inside_moov_is_refused_not_looped_on() {
    // The `mp4` fuzz target's findings: the mp4 crate re-reads a size-0 child of `stbl`
    // for ever, and one of `dref` up to its entry count. The inputs are kept in
    // fuzz/regressions/mp4/.
    for (name, parent) in [
        ("size0_box_in_stbl.mp4", "'stbl'"),
        ("size0_box_in_dref.mp4", "'dref'"),
        ("second_moov.mp4", "second moov"),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/mp4")
            .join(name);
        let e = open_err(&path, DEFAULT_MAX_PIXELS).to_string();
        assert!(e.contains(name) && e.contains(parent), "{e}");
    }
}
