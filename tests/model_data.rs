//! `model_data/` holds copies of the class lists and anchors that `yolov3-head` builds in
//! from its own `data/` (a published crate can only embed files inside itself): the
//! copies must stay byte for byte the same.

use std::path::Path;

#[test]
fn model_data_copies_match_the_built_in_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for name in ["coco_classes.txt", "voc_classes.txt", "yolo_anchors.txt"] {
        let built_in = root.join("crates/yolov3-head/data").join(name);
        let copy = root.join("model_data").join(name);
        let a = std::fs::read(&built_in).unwrap_or_else(|e| panic!("{}: {e}", built_in.display()));
        let b = std::fs::read(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        assert!(
            a == b,
            "{} differs from {}: edit crates/yolov3-head/data/{name} and copy it to model_data/",
            copy.display(),
            built_in.display()
        );
    }
    // and the built-in lists are what the library answers with
    let coco = std::fs::read_to_string(root.join("model_data/coco_classes.txt")).unwrap();
    let names: Vec<&str> = coco
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(names.len(), 80);
    assert_eq!(yolov3_head::ClassNames::coco().names(), names.as_slice());
}
