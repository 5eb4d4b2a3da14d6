//! `cargo xtask fuzz [--time S] [TARGET]`: runs the cargo-fuzz targets of `fuzz/` one
//! after the other, each for `--time` seconds (default 600), on one core (one libFuzzer
//! process: no `-jobs`, `-workers` or `-fork`), with the limits every finding is judged
//! by: one second per input, 2 GiB resident, no single allocation over 256 MiB, inputs
//! up to 64 KiB. `--list` prints the targets.
//!
//! Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The targets
//! are the files of `fuzz/fuzz_targets/`; their bodies live in `crates/fuzz-targets`,
//! whose `replay` test runs the corpora and regressions on stable. See `docs/fuzzing.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target (`-max_total_time`).
    #[arg(long, default_value_t = 600)]
    time: u64,
    /// Print the targets and stop.
    #[arg(long)]
    list: bool,
    /// The target to run (all of them, in turn, when absent).
    target: Option<String>,
    /// Extra libFuzzer flags, after `--` (e.g. `-- -seed=1`).
    #[arg(last = true)]
    libfuzzer_args: Vec<String>,
}

/// The limits of a run: what counts as a finding besides a panic or an abort.
pub const LIMITS: &[&str] = &[
    "-timeout=1",
    "-rss_limit_mb=2048",
    "-malloc_limit_mb=256",
    "-max_len=65536",
    "-print_final_stats=1",
];

/// The target names: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The `cargo +nightly fuzz run` command for `target`.
fn command(root: &Path, target: &str, time: u64, extra: &[String]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["+nightly", "fuzz", "run", target])
        .arg(PathBuf::from("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={time}"))
        .arg(format!("-artifact_prefix=fuzz/artifacts/{target}/"))
        .args(LIMITS)
        .args(extra);
    cmd
}

/// Runs `cargo xtask fuzz`.
pub fn fuzz(root: &Path, args: FuzzArgs) -> Result<()> {
    let all = targets(&root.join("fuzz"))?;
    if args.list {
        for t in &all {
            println!("{t}");
        }
        return Ok(());
    }
    let chosen = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!(
            "no fuzz target `{t}` (cargo xtask fuzz --list: {})",
            all.join(", ")
        ),
        None => all,
    };
    let mut failed = Vec::new();
    for target in &chosen {
        std::fs::create_dir_all(root.join("fuzz/artifacts").join(target))?;
        let mut cmd = command(root, target, args.time, &args.libfuzzer_args);
        eprintln!("$ {cmd:?}");
        let status = cmd
            .status()
            .with_context(|| format!("starting {cmd:?} (cargo install cargo-fuzz?)"))?;
        if !status.success() {
            eprintln!("{target}: {status}; the input is under fuzz/artifacts/{target}/");
            failed.push(target.clone());
        }
    }
    if !failed.is_empty() {
        bail!("findings in: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_file_is_found_and_the_command_carries_the_limits() {
        let root = crate::workspace_root();
        let names = targets(&root.join("fuzz")).unwrap();
        for t in ["safetensors", "pth", "darknet", "image", "voc"] {
            assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
        }
        let cmd = command(&root, "voc", 7, &["-seed=1".into()]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..4], ["+nightly", "fuzz", "run", "voc"]);
        for want in [
            "-max_total_time=7",
            "-timeout=1",
            "-malloc_limit_mb=256",
            "-seed=1",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
    }
}
