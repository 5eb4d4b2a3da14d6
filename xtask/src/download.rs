//! `cargo xtask download-weights [NAME...] [--all] [--force] [--offline]`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use yolo_weights::download::{install, DownloadOptions, Outcome};
use yolo_weights::manifest::{lookup, registry, DEFAULT_MODEL, WEIGHTS_DIR};

/// Download weights from the Hugging Face Hub (honours HF_HOME and HF_ENDPOINT),
/// verify and convert them into model_data/weights/NAME.safetensors + NAME.json.
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
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(root: &Path, args: DownloadArgs) -> Result<()> {
    if args.list {
        for s in registry() {
            println!(
                "{:<24} {}/{} ({}){}\n{:<24} {}",
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
            );
        }
        return Ok(());
    }
    let specs = if args.all {
        registry().into_iter().filter(|s| s.in_all).collect()
    } else if args.names.is_empty() {
        vec![lookup(DEFAULT_MODEL)?]
    } else {
        args.names
            .iter()
            .map(|n| lookup(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    let opts = DownloadOptions {
        out_dir: args
            .out_dir
            .clone()
            .unwrap_or_else(|| root.join(WEIGHTS_DIR)),
        endpoint: None,
        cache_dir: None,
        force: args.force,
        offline: args.offline,
        progress: true,
    };
    let mut failed = 0;
    for spec in &specs {
        match install(spec, &opts).with_context(|| format!("installing `{}`", spec.name)) {
            Ok(done) => {
                let how = match done.outcome {
                    Outcome::UpToDate => "up to date",
                    Outcome::FromCache => "installed from the Hugging Face cache",
                    Outcome::Downloaded => "downloaded and installed",
                };
                let m = &done.manifest;
                println!(
                    "{}: {how}: {} ({} {} classes, bn_eps {:e}, {} parameters; source sha256 {}{})",
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
                );
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} weight files failed", specs.len());
    }
    Ok(())
}
