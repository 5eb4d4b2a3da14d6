//! `yolo-cli run`: detection on images.

use std::process::ExitCode;

use clap::Args;

/// Arguments of `yolo-cli run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image files or directories.
    #[arg(required = true)]
    inputs: Vec<std::path::PathBuf>,
}

/// Runs detection.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`run` is not implemented yet ({} inputs)",
        args.inputs.len()
    )
}
