//! `cargo xtask golden`: regenerate the PyTorch golden fixtures.
//!
//! Creates `.venv-golden/` with the pinned `tools/reference/requirements.txt`
//! (torch from PyPI) unless it exists, then runs the reference scripts, which
//! write `tests/fixtures/golden/`, `tests/fixtures/pipeline/` and `tests/fixtures/loss/`,
//! and, given `--reference-repo`, `tests/fixtures/map/` from the reference's own mAP code.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask golden`.
#[derive(Debug, clap::Args)]
pub struct GoldenArgs {
    /// Python interpreter used to create the virtual environment.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Reinstall the requirements even if the venv exists.
    #[arg(long)]
    reinstall: bool,
    /// A checkout of bubbliiiing/yolo3-pytorch: also regenerate tests/fixtures/map/ with
    /// its own `utils/utils_map.py` (skipped without it).
    #[arg(long)]
    reference_repo: Option<std::path::PathBuf>,
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Builds the venv if needed and regenerates every fixture.
pub fn golden(root: &Path, args: GoldenArgs) -> Result<()> {
    let venv = root.join(".venv-golden");
    let python = venv.join("bin").join("python");
    let requirements = root.join("tools/reference/requirements.txt");
    if !python.exists() {
        run(Command::new(&args.python).arg("-m").arg("venv").arg(&venv))?;
    }
    if !python.exists() || args.reinstall || !venv.join(".installed").exists() {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-r"])
            .arg(&requirements))?;
        std::fs::write(venv.join(".installed"), "")?;
    }
    let out = root.join("tests/fixtures");
    // (script, takes `--out`): make_golden_loss.py has no arguments and always writes
    // tests/fixtures/loss/ under the repository root.
    for (script, takes_out) in [
        ("make_golden.py", true),
        ("make_golden_pipeline.py", true),
        ("make_golden_loss.py", false),
    ] {
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("tools/reference").join(script))
            .current_dir(root);
        if takes_out {
            cmd.arg("--out").arg(&out);
        }
        run(&mut cmd)?;
    }
    match &args.reference_repo {
        Some(repo) => run(Command::new(&python)
            .arg(root.join("tools/reference/make_golden_map.py"))
            .arg("--reference-repo")
            .arg(repo)
            .arg("--out")
            .arg(&out)
            .current_dir(root))?,
        None => eprintln!(
            "tests/fixtures/map/ left as it is (it needs --reference-repo, a checkout of \
             bubbliiiing/yolo3-pytorch)"
        ),
    }
    eprintln!("fixtures written to {}", out.display());
    Ok(())
}
