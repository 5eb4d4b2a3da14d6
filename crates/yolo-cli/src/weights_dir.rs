//! Where `yolo-cli` keeps downloaded weights and looks for its default ones.
//!
//! The directory is `--weights-dir DIR` (env `YOLO_RS_WEIGHTS_DIR`, both read by clap in
//! `main`), else `yolo-rs/weights` in the user's data directory, so that an installed
//! binary finds its weights from any directory. In a checkout of the repository,
//! `yolo-cli run` first tries `model_data/weights/` of the current directory, where
//! `cargo xtask download-weights` puts them.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `yolo-rs/weights` in the user's data directory: `$XDG_DATA_HOME` or `~/.local/share`
/// on Linux, `~/Library/Application Support` on macOS, `%APPDATA%` on Windows. `None`
/// when the system knows no home directory.
pub fn user_weights_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("yolo-rs").join("weights"))
}

/// The weights directory: `explicit` (from `--weights-dir` or `YOLO_RS_WEIGHTS_DIR`),
/// else [`user_weights_dir`].
pub fn resolve(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir.to_path_buf()),
        None => user_weights_dir().context(
            "no data directory for this user (no home directory): pass --weights-dir DIR or set YOLO_RS_WEIGHTS_DIR",
        ),
    }
}

/// The command that installs `name` into `dir`: `cargo xtask download-weights NAME` for
/// a checkout's `model_data/weights`, `yolo-cli download NAME` for the user's weights
/// directory, `yolo-cli download NAME --dir DIR` otherwise.
pub fn download_command(name: &str, dir: &Path) -> String {
    if dir == Path::new(yolo_weights::WEIGHTS_DIR) {
        format!("cargo xtask download-weights {name}")
    } else if user_weights_dir().as_deref() == Some(dir) {
        format!("yolo-cli download {name}")
    } else {
        format!("yolo-cli download {name} --dir {}", dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_directory_wins() {
        assert_eq!(resolve(Some(Path::new("/w"))).unwrap(), PathBuf::from("/w"));
        if let Some(user) = user_weights_dir() {
            assert!(user.ends_with("yolo-rs/weights"), "{}", user.display());
            assert_eq!(resolve(None).unwrap(), user);
        }
    }

    #[test]
    fn download_commands_install_where_run_looks() {
        assert_eq!(
            download_command("darknet53-coco", Path::new("model_data/weights")),
            "cargo xtask download-weights darknet53-coco"
        );
        assert_eq!(
            download_command("darknet53-coco", Path::new("/srv/w")),
            "yolo-cli download darknet53-coco --dir /srv/w"
        );
        if let Some(user) = user_weights_dir() {
            assert_eq!(
                download_command("darknet53-coco", &user),
                "yolo-cli download darknet53-coco"
            );
        }
    }
}
