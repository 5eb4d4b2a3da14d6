//! `yolo-cli download [MODEL...] [--all] [--force] [--offline] [--list] [--dir DIR]`:
//! weights from the Hugging Face Hub, verified and converted into the project's format
//! (`cargo xtask download-weights` runs this).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use yolo_weights::download::{install, DownloadOptions, Installed, Outcome};
use yolo_weights::manifest::{lookup, registry, WeightSpec, DEFAULT_MODEL};

/// Download weights from the Hugging Face Hub (honours HF_HOME and HF_ENDPOINT), verify
/// them and convert them into DIR/MODEL.safetensors + MODEL.json.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Models to install (default: darknet53-coco). See --list.
    #[arg(value_name = "MODEL")]
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
    /// List the known models and exit.
    #[arg(long)]
    pub list: bool,
    /// Installation directory (default: the weights directory, where `yolo-cli run` looks:
    /// --weights-dir, YOLO_RS_WEIGHTS_DIR, or yolo-rs/weights in the user's data directory).
    #[arg(long, alias = "out-dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The registry, one model per two lines: name, source and licence, then what it is.
fn list_text() -> String {
    registry()
        .iter()
        .map(|s| {
            format!(
                "{:<24} {}/{} ({}){}\n{:<24} {}\n",
                s.name,
                s.repo,
                s.file,
                s.licence,
                if s.name == DEFAULT_MODEL {
                    " [default]"
                } else {
                    ""
                },
                "",
                s.description
            )
        })
        .collect()
}

/// The models asked for; every name is checked before anything is downloaded.
fn selected(args: &DownloadArgs) -> Result<Vec<WeightSpec>> {
    Ok(if args.all {
        registry().into_iter().filter(|s| s.in_all).collect()
    } else if args.names.is_empty() {
        vec![lookup(DEFAULT_MODEL)?]
    } else {
        args.names
            .iter()
            .map(|n| lookup(n))
            .collect::<Result<Vec<_>, _>>()?
    })
}

/// `NAME: what happened: FILE (backbone, classes, bn_eps, parameters; source sha256)`.
fn installed_line(spec: &WeightSpec, done: &Installed) -> String {
    let how = match done.outcome {
        Outcome::UpToDate => "up to date",
        Outcome::FromCache => "installed from the Hugging Face cache",
        Outcome::Downloaded => "downloaded and installed",
    };
    let m = &done.manifest;
    format!(
        "{}: {how}: {} ({} {} classes, bn_eps {:e}, {} parameters; source sha256 {}{})\n",
        spec.name,
        done.path.display(),
        m.backbone,
        m.num_classes,
        m.bn_eps,
        m.parameters,
        m.source_sha256,
        if m.source_sha256_verified {
            ", verified"
        } else {
            ", recorded"
        }
    )
}

/// The installation directory: `--dir`, else the weights directory (`weights_dir`, from
/// `--weights-dir` or `YOLO_RS_WEIGHTS_DIR`, else the user's).
fn install_dir(args: &DownloadArgs, weights_dir: Option<&Path>) -> Result<PathBuf> {
    match &args.dir {
        Some(dir) => Ok(dir.clone()),
        None => crate::weights_dir::resolve(weights_dir),
    }
}

/// Runs `yolo-cli download`: installs each model in turn, reporting a failure and going
/// on with the next; fails at the end if any did.
pub fn run(args: DownloadArgs, weights_dir: Option<&Path>) -> Result<ExitCode> {
    if args.list {
        crate::stdout::print(&list_text())?;
        return Ok(ExitCode::SUCCESS);
    }
    let specs = selected(&args)?;
    let opts = DownloadOptions {
        out_dir: install_dir(&args, weights_dir)?,
        endpoint: None,
        cache_dir: None,
        force: args.force,
        offline: args.offline,
        progress: true,
    };
    let mut failed = 0;
    for spec in &specs {
        match install(spec, &opts).with_context(|| format!("installing `{}`", spec.name)) {
            Ok(done) => crate::stdout::print(&installed_line(spec, &done))?,
            Err(e) => {
                eprintln!("error: {}", crate::error_message(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} weight files failed", specs.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DownloadArgs,
    }

    fn parse(argv: &[&str]) -> DownloadArgs {
        Cli::try_parse_from(std::iter::once("download").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn names_are_checked_before_any_download() {
        let e = selected(&parse(&["darknet53-coco", "no-such-model"])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no-such-model"), "{msg}");
        for s in registry() {
            assert!(msg.contains(&s.name), "{msg}");
        }
        let default = selected(&parse(&[])).unwrap();
        assert_eq!(default.len(), 1);
        assert_eq!(default[0].name, DEFAULT_MODEL);
        assert!(selected(&parse(&["--all"]))
            .unwrap()
            .iter()
            .all(|s| s.in_all));
    }

    #[test]
    fn default_dir_is_the_one_run_reads_and_out_dir_still_works() {
        let weights_dir = Path::new("/srv/weights");
        assert_eq!(
            install_dir(&parse(&[]), Some(weights_dir)).unwrap(),
            crate::weights_dir::resolve(Some(weights_dir)).unwrap()
        );
        if let Some(user) = crate::weights_dir::user_weights_dir() {
            assert_eq!(install_dir(&parse(&[]), None).unwrap(), user);
        }
        let out_dir = parse(&["--out-dir", "w"]);
        assert_eq!(
            install_dir(&out_dir, Some(weights_dir)).unwrap(),
            PathBuf::from("w")
        );
        assert!(list_text().contains(DEFAULT_MODEL));
    }
}
