//! The bodies of the fuzz targets of yolo-rs: one function per parser of untrusted
//! bytes, called by `fuzz/fuzz_targets/<name>.rs` (cargo-fuzz, nightly) and by this
//! crate's `replay` test, which runs every file of `fuzz/corpus/<name>/` and
//! `fuzz/regressions/<name>/` through the same function on the stable toolchain.
//!
//! A body returns nothing: it passes when the parser returns, `Ok` or a typed error.
//! A panic, an abort, a time-out or an allocation past the fuzzer's limit is a finding.
//!
//! To add a target: write `pub fn name(data: &[u8])` here, list it in [`TARGETS`], add
//! `fuzz/fuzz_targets/name.rs` (three lines, as the others) and its `[[bin]]` in
//! `fuzz/Cargo.toml`, and seed `fuzz/corpus/name/`. See `docs/fuzzing.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use candle_core::Device;
use yolo_train::dataset::{parse_annotations, BadLinePolicy};
use yolo_weights::convert::{convert_file, detect_format_of, ConvertOptions};
use yolo_weights::load::{read_safetensors_from_bytes, WeightsMeta};
use yolov3_head::{Anchors, ClassNames};

// The request reading of `yolo-cli serve`, a binary crate: compiled here from its own
// files, so that the `http_body` target runs exactly the server's code. Not every item
// is used here (the error's 503 constructor, say).
#[allow(dead_code)]
#[path = "../../yolo-cli/src/serve/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../yolo-cli/src/serve/request.rs"]
mod request;

/// A fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("image", image),
    ("safetensors", safetensors),
    ("pth", pth),
    ("darknet", darknet),
    ("convert", convert),
    ("annotations", annotations),
    ("voc", voc),
    ("anchors", anchors),
    ("classes", classes),
    ("state_json", state_json),
    ("http_body", http_body),
    ("mp4", mp4),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The pixel limit the `image` target decodes under: 1 megapixel, so that what the
/// decoders may allocate ([`yolov3_head::preprocess`]: 8 bytes a pixel plus 64 MiB)
/// stays well inside the fuzzer's malloc limit.
pub const FUZZ_MAX_PIXELS: u64 = 1 << 20;

/// A file in a temporary folder of this process, rewritten for each input, for the
/// readers that only take a path (candle's `.pth` reader).
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"));
    let path = dir.path().join(name);
    std::fs::write(&path, data).expect("the temporary file is writable");
    path
}

/// The text of a file read with `read_to_string`: inputs that are not UTF-8 stop there.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Image decoding with the pixel limit: [`yolov3_head::load_image_from_memory`].
pub fn image(data: &[u8]) {
    let _ = yolov3_head::load_image_from_memory(data, FUZZ_MAX_PIXELS);
}

/// The safetensors reader (header, then every tensor) and the canonical metadata
/// check `load_canonical` runs on what it read.
pub fn safetensors(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    if let Ok((meta, tensors)) = read_safetensors_from_bytes(data, path, &Device::Cpu) {
        let shapes = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        if let Ok(m) = WeightsMeta::from_metadata(&meta, &shapes, path) {
            let _ = m.yolo_config();
            let _ = m.classifier_config();
        }
    }
}

/// The zip `.pth` reader ([`yolo_weights::pth::read_pth`], through a file: candle's
/// pickle reader takes a path).
pub fn pth(data: &[u8]) {
    let _ = yolo_weights::pth::read_pth(&scratch_file("fuzz.pth", data));
}

/// The darknet `.weights` reader, for 80 classes and for 1.
pub fn darknet(data: &[u8]) {
    let path = Path::new("fuzz.weights");
    for num_classes in [80, 1] {
        let _ = yolo_weights::darknet::parse_darknet(data, num_classes, path);
    }
}

/// `convert`'s format sniffing and conversion: the first byte picks the file's
/// extension (`.weights`, `.pth`, `.safetensors`, `.bin`), the rest is the file, which
/// [`detect_format_of`] sniffs and [`convert_file`] converts.
pub fn convert(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ext = ["weights", "pth", "safetensors", "bin"][usize::from(pick % 4)];
    let name = format!("fuzz.{ext}");
    let _ = detect_format_of(body, body.len() as u64, Path::new(&name));
    let _ = convert_file(&scratch_file(&name, body), &ConvertOptions::default());
}

/// Annotation lines ([`parse_annotations`], as `load_annotations` runs it), with every
/// image 640x480 except those whose name says `missing`, under both bad-line policies.
pub fn annotations(data: &[u8]) {
    let Some(text) = text(data) else { return };
    for policy in [BadLinePolicy::Skip, BadLinePolicy::Refuse] {
        let _ = parse_annotations(text, Path::new("fuzz.txt"), 20, policy, |file| {
            if file.contains("missing") {
                Err(format!("image {file} does not exist"))
            } else {
                Ok((PathBuf::from(file), (640, 480)))
            }
        });
    }
}

/// VOC XML ([`yolo_train::voc::parse_voc_str`]).
pub fn voc(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = yolo_train::voc::parse_voc_str(text, Path::new("fuzz.xml"));
    }
}

/// Anchors files ([`Anchors::parse`]).
pub fn anchors(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = Anchors::parse(text, "fuzz_anchors.txt");
    }
}

/// Classes files ([`ClassNames::parse`]).
pub fn classes(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = ClassNames::parse(text, "fuzz_classes.txt");
    }
}

/// A checkpoint's `state.json` ([`yolo_train::trainer::state_json_history`]) and the
/// `results.csv` a resumed run writes from its history. (The `results.png` plot is left
/// out: drawing it takes about a second under the fuzzer's sanitizer, its time limit.)
pub fn state_json(data: &[u8]) {
    let path = Path::new("state.json");
    if let Ok(history) = yolo_train::trainer::state_json_history(data, path) {
        let _ = yolo_train::tables::results_csv(&history);
    }
}

/// What `yolo-cli serve` does with the bytes of a `POST /v1/detect` request: the input
/// is a `Content-Type` line, a query line and the body (split at the first two
/// newlines; an empty first line sends no `Content-Type`). The query's thresholds, the
/// body within its limit, the image parts of a multipart form, then each image decoded
/// under the pixel limit, as the server does before anything reaches the model.
pub fn http_body(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(content_type), Some(query), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    if !content_type.is_empty() {
        // hyper hands the server only header values it could parse
        let Ok(v) = HeaderValue::from_bytes(content_type) else {
            return;
        };
        headers.insert(header::CONTENT_TYPE, v);
    }
    // axum's RawQuery is a string: hyper refuses a request line that is not text
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let defaults = request::Thresholds {
        conf: 0.5,
        nms_iou: 0.3,
    };
    let _ = request::thresholds(Some(query), defaults);
    let body = Body::from(Bytes::copy_from_slice(body));
    let images = runtime().block_on(async {
        let body = request::read_body(&headers, body, HTTP_MAX_BODY).await?;
        request::image_bytes(&headers, body, HTTP_MAX_IMAGES).await
    });
    for bytes in images.into_iter().flatten() {
        let _ = yolov3_head::load_image_from_memory(&bytes, FUZZ_MAX_PIXELS);
    }
}

/// The body limit of the `http_body` target (the fuzzer's inputs are at most 64 KiB, so
/// a smaller limit than the server's default is what reaches the 413 path).
pub const HTTP_MAX_BODY: usize = 32 * 1024;
/// The image count limit of the `http_body` target (the server's default).
pub const HTTP_MAX_IMAGES: usize = 16;

/// A single-threaded runtime for the request futures (which never wait on I/O here).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Frames the `mp4` target decodes at most per input (decoding is the slow part; the
/// container's boxes and the first frames are where the parsing is).
pub const MP4_MAX_FRAMES: usize = 4;

/// Video input ([`yolo_video::sniff`], then [`yolo_video::VideoReader`] through a file:
/// the MP4 boxes, the H.264 track's parameters and sample table, and the first
/// [`MP4_MAX_FRAMES`] frames decoded and converted to RGB, under the pixel limit).
pub fn mp4(data: &[u8]) {
    let _ = yolo_video::sniff(data);
    let path = scratch_file("fuzz.mp4", data);
    let Ok(mut reader) = yolo_video::VideoReader::open(&path, FUZZ_MAX_PIXELS) else {
        return;
    };
    for _ in 0..MP4_MAX_FRAMES {
        match reader.next_yuv() {
            Ok(Some(frame)) => {
                let _ = frame.to_rgb();
            }
            Ok(None) | Err(_) => break,
        }
    }
}
