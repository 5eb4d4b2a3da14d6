//! What `yolo-cli run` reads and where it writes: the image files behind the inputs, and
//! the output directory, checked before any work.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Extensions picked up when a directory is given (files named explicitly are always tried).
pub(crate) const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "pnm", "pbm", "pgm", "ppm", "qoi",
    "tga", "ico",
];

/// Video extensions picked up from directories too (what a file is, image or video, is
/// then told by its content).
const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mov", "m4v"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] or [`VIDEO_EXTENSIONS`] (in any case).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|x| x.to_str())
        .map(str::to_ascii_lowercase)
        .is_some_and(|x| {
            IMAGE_EXTENSIONS.contains(&x.as_str()) || VIDEO_EXTENSIONS.contains(&x.as_str())
        })
}

/// The image files of one directory input (sorted by name), descending into
/// subdirectories when `recursive`; an unreadable entry is reported and counted in
/// `failures`.
fn images_in_dir(dir: &Path, recursive: bool, failures: &mut usize) -> Vec<PathBuf> {
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .max_depth(if recursive { usize::MAX } else { 1 });
    let mut files = Vec::new();
    for entry in walk {
        match entry {
            Ok(e) if e.file_type().is_file() && has_image_extension(e.path()) => {
                files.push(e.into_path())
            }
            Ok(_) => {}
            Err(err) => {
                eprintln!("error: skipping {}: {err}", dir.display());
                *failures += 1;
            }
        }
    }
    files
}

/// Expands directories into their image files (sorted); missing inputs are reported and
/// counted in `failures`.
pub(super) fn collect_inputs(
    inputs: &[PathBuf],
    recursive: bool,
    failures: &mut usize,
) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            files.extend(images_in_dir(input, recursive, failures));
        } else if input.exists() {
            files.push(input.clone());
        } else {
            eprintln!(
                "error: skipping {}: no such file or directory",
                input.display()
            );
            *failures += 1;
        }
    }
    files
}

/// Fails when `files` is empty, naming the inputs that gave nothing.
pub(super) fn require_images(files: &[PathBuf], inputs: &[PathBuf]) -> anyhow::Result<()> {
    if files.is_empty() {
        anyhow::bail!(
            "no images or videos found in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Creates `dir` (and `dir/labels`) and checks that files can be written there.
pub(super) fn prepare_output(dir: &Path, labels: bool) -> anyhow::Result<()> {
    check_writable(dir)?;
    if labels {
        check_writable(&dir.join("labels"))?;
    }
    Ok(())
}

/// Creates `dir` and creates (then removes) an empty probe file in it. The probe is
/// always a new file, so a file that happens to have its name is never touched.
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let cannot_write = || format!("cannot write in the output directory {}", dir.display());
    for n in 0.. {
        let probe = dir.join(format!(".yolo-cli-write-test-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(f) => {
                drop(f);
                let _ = std::fs::remove_file(&probe);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 16 => continue,
            Err(e) => return Err(e).with_context(cannot_write),
        }
    }
    unreachable!("the loop returns by its 17th name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_extensions_in_any_case() {
        assert!(has_image_extension(Path::new("a/b.JPG")));
        assert!(has_image_extension(Path::new("b.webp")));
        assert!(!has_image_extension(Path::new("notes.txt")));
        assert!(has_image_extension(Path::new("clip.MP4")));
        assert!(!has_image_extension(Path::new("png")));
    }

    #[test]
    fn probe_never_touches_an_existing_file_of_its_name() {
        let d = tempfile::tempdir().unwrap();
        let probe = d
            .path()
            .join(format!(".yolo-cli-write-test-{}-0", std::process::id()));
        std::fs::write(&probe, b"user data").unwrap();
        prepare_output(d.path(), true).unwrap();
        assert_eq!(std::fs::read(&probe).unwrap(), b"user data");
        assert!(d.path().join("labels").is_dir());
        // a fresh directory is left without the probe
        let labels = d.path().join("labels");
        assert_eq!(std::fs::read_dir(&labels).unwrap().count(), 0);
    }

    #[test]
    fn missing_inputs_are_counted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.png"), b"").unwrap();
        std::fs::write(d.path().join("a.jpg"), b"").unwrap();
        std::fs::write(d.path().join("c.txt"), b"").unwrap();
        let mut failures = 0;
        let files = collect_inputs(
            &[d.path().to_path_buf(), d.path().join("missing.png")],
            false,
            &mut failures,
        );
        assert_eq!(files, [d.path().join("a.jpg"), d.path().join("b.png")]);
        assert_eq!(failures, 1);
        assert!(require_images(&[], &[PathBuf::from("x")])
            .unwrap_err()
            .to_string()
            .contains("no images or videos found in x"));
    }
}
