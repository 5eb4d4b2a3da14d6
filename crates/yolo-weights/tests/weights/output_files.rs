//! Files this crate writes: a converted canonical file gets the permissions any new file
//! gets (the umask's, not a temporary file's private mode), is refused over an existing
//! file unless overwriting is asked for, and leaves no temporary file behind.

use yolo_weights::{convert_file, ConvertOptions, Error};

use super::common::fixture;

/// Names in `dir` that start as the atomic writer's temporary files do.
fn temporary_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[cfg(unix)]
#[test]
fn a_converted_file_has_the_umask_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let c = convert_file(
        &fixture("weights/mobilenetv2_w010.pth"),
        &ConvertOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w010.safetensors");
    c.save(&out, false).unwrap();
    // what any program gets for a new file in the same directory under the same umask
    let probe = dir.path().join("probe.txt");
    std::fs::write(&probe, b"").unwrap();
    assert_eq!(
        mode(&out),
        mode(&probe),
        "converted file mode {:o}",
        mode(&out)
    );
    assert!(temporary_files(dir.path()).is_empty());

    // overwriting keeps the replaced file's own permissions
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    c.save(&out, true).unwrap();
    assert_eq!(mode(&out), 0o640);
}

#[test]
fn an_existing_file_is_kept_unless_overwriting() {
    let c = convert_file(
        &fixture("weights/mobilenetv2_w010.pth"),
        &ConvertOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w010.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let e = c.save(&out, false).unwrap_err();
    assert!(matches!(&e, Error::Exists(p) if p == &out), "{e}");
    assert!(e.to_string().contains("w010.safetensors"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let sha = c.save(&out, true).unwrap();
    let written = std::fs::read(&out).unwrap();
    assert_eq!(sha, yolo_weights::convert::sha256_hex(&written));
    // the converted file itself (the metadata's key order may differ between writes)
    let back = yolo_weights::load_canonical(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.meta, c.meta);
    assert_eq!(back.tensors.len(), c.tensors.len());
    assert!(temporary_files(dir.path()).is_empty());
}
