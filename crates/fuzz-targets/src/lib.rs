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

use candle_core::Device;
use yolo_train::dataset::{parse_annotations, BadLinePolicy};
use yolo_weights::convert::{convert_file, detect_format_of, ConvertOptions};
use yolo_weights::load::{read_safetensors_from_bytes, WeightsMeta};
use yolov3_head::{Anchors, ClassNames};

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
