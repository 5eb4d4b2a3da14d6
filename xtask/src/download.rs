//! `cargo xtask download-weights [NAME...] [--all] [--force] [--offline] [--list]
//! [--out-dir DIR]`: runs `yolo-cli download` from a release build, so that the weights
//! are fetched by the same build that then runs the detector (xtask itself stays free
//! of candle and builds in seconds).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Where the weights go by default, relative to the workspace root (as `yolo-cli run`
/// looks for them).
const WEIGHTS_DIR: &str = "model_data/weights";

/// Download weights from the Hugging Face Hub (honours HF_HOME and HF_ENDPOINT), verify
/// and convert them into model_data/weights/NAME.safetensors + NAME.json, with
/// `cargo run --release -p yolo-cli -- download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Names to install (default: the default model). See --list.
    pub names: Vec<String>,
    /// Install every primary weight file.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Reinstall (and download again) even when up to date.
    #[arg(long)]
    pub force: bool,
    /// Use the Hugging Face cache only; never touch the network.
    #[arg(long)]
    pub offline: bool,
    /// List the known names and exit.
    #[arg(long)]
    pub list: bool,
    /// Installation directory (default: model_data/weights in the workspace).
    #[arg(long, alias = "dir")]
    pub out_dir: Option<PathBuf>,
}

/// The arguments of `yolo-cli download` for `args`; the directory is made absolute
/// (relative to the current directory, as the user typed it), since the command runs
/// in the workspace root.
fn yolo_cli_args(root: &Path, args: &DownloadArgs) -> Result<Vec<std::ffi::OsString>> {
    let mut out: Vec<std::ffi::OsString> = vec!["download".into()];
    out.extend(args.names.iter().map(Into::into));
    for (on, flag) in [
        (args.all, "--all"),
        (args.force, "--force"),
        (args.offline, "--offline"),
        (args.list, "--list"),
    ] {
        if on {
            out.push(flag.into());
        }
    }
    let dir = match &args.out_dir {
        Some(d) => std::path::absolute(d).with_context(|| format!("--out-dir {}", d.display()))?,
        None => root.join(WEIGHTS_DIR),
    };
    out.push("--dir".into());
    out.push(dir.into());
    Ok(out)
}

/// Runs `cargo run --release -p yolo-cli -- download ...` in the workspace root. When it
/// fails, this process exits with its status: its errors are already on stderr.
pub fn run(root: &Path, args: DownloadArgs) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["run", "--release", "--quiet", "-p", "yolo-cli", "--"])
        .args(yolo_cli_args(root, &args)?);
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => bail!("yolo-cli download was stopped ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_every_option_with_an_absolute_dir() {
        let root = Path::new("/ws");
        let args = DownloadArgs {
            names: vec!["darknet53-coco".into()],
            all: false,
            force: true,
            offline: true,
            list: false,
            out_dir: None,
        };
        let argv = yolo_cli_args(root, &args).unwrap();
        assert_eq!(
            argv,
            [
                "download",
                "darknet53-coco",
                "--force",
                "--offline",
                "--dir",
                "/ws/model_data/weights"
            ]
        );
        let args = DownloadArgs {
            names: vec![],
            all: true,
            force: false,
            offline: false,
            list: true,
            out_dir: Some("w".into()),
        };
        let argv = yolo_cli_args(root, &args).unwrap();
        let dir = PathBuf::from(argv.last().unwrap());
        assert!(dir.is_absolute() && dir.ends_with("w"), "{dir:?}");
        assert_eq!(argv[1..3], ["--all", "--list"]);
    }
}
