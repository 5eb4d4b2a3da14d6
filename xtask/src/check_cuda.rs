//! `cargo xtask check-cuda`: does the workspace still build with `--features cuda`?
//!
//! No CUDA toolkit is needed on the machine: nvcc, the CUDA runtime headers and CCCL
//! come from PyPI (`nvidia-cuda-nvcc`, `nvidia-cuda-runtime`, `nvidia-cuda-cccl`: the
//! CUDA 13 wheels, under `nvidia/cu13/`; the `-cu12` nvcc wheel ships `ptxas` but no
//! `nvcc`) into `.venv-cuda/`. Their `bin/`, `include/` and `nvvm/`
//! are gathered under `target/cuda/toolkit/` (symlinks) to look like a CUDA install,
//! which goes on `PATH` and in `CUDA_ROOT` / `CUDA_PATH` / `CUDA_HOME`. Then
//! `cargo check --workspace --features cuda` runs in its own target directory
//! (`target/cuda`) so that it does not invalidate the ordinary builds. candle-kernels
//! compiles its kernels to PTX with nvcc; `CUDA_COMPUTE_CAP` (default 80) stands in for
//! the GPU that `nvidia-smi` would otherwise be asked about, and `CUDARC_CUDA_VERSION`
//! (default 13040) tells cudarc which CUDA API to bind, as it does not know nvcc 13.5. This builds no test and
//! needs no GPU; it is slow (candle-kernels), so it is not part of `.ci/run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask check-cuda`.
#[derive(Debug, clap::Args)]
pub struct CheckCudaArgs {
    /// Python interpreter used to create the virtual environment.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Compute capability the kernels are compiled for (`CUDA_COMPUTE_CAP`).
    #[arg(long, default_value = "80")]
    compute_cap: String,
    /// The CUDA API version cudarc binds (`CUDARC_CUDA_VERSION`): cudarc 0.19 knows CUDA
    /// up to 13.4 and refuses the 13.5 nvcc that PyPI ships unless told.
    #[arg(long, default_value = "13040")]
    cudarc_cuda_version: String,
    /// Extra arguments for cargo (e.g. `--exclude xtask`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// The PyPI packages that stand in for a CUDA toolkit.
const PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc",
    "nvidia-cuda-runtime",
    "nvidia-cuda-cccl",
];

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Links every entry of `src` into `dst` (first one wins), recursing into folders that
/// both packages provide.
fn merge_into(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        let from = entry.path();
        if target.symlink_metadata().is_ok() {
            if from.is_dir() && target.is_dir() && !target.is_symlink() {
                merge_into(&from, &target)?;
            }
            continue;
        }
        if from.is_dir() {
            // A real folder, so that a later package can add to it.
            merge_into(&from, &target)?;
        } else {
            std::os::unix::fs::symlink(&from, &target)
                .with_context(|| format!("linking {}", target.display()))?;
        }
    }
    Ok(())
}

/// Installs the packages and lays out `target/cuda/toolkit`; returns its path.
fn toolkit(root: &Path, python: &str) -> Result<PathBuf> {
    let venv = root.join(".venv-cuda");
    let py = venv.join("bin").join("python");
    if !py.exists() {
        run(Command::new(python).arg("-m").arg("venv").arg(&venv))?;
    }
    let marker = venv.join(format!(".installed-{}", PACKAGES.join("+")));
    if !marker.exists() {
        run(Command::new(&py)
            .args(["-m", "pip", "install"])
            .args(PACKAGES))?;
        std::fs::write(&marker, "")?;
    }
    let out = Command::new(&py)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()?;
    let site = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let nvidia = site.join("nvidia");
    let tk = root.join("target/cuda/toolkit");
    if tk.exists() {
        std::fs::remove_dir_all(&tk)?;
    }
    for pkg in ["cu13", "cuda_nvcc", "cuda_runtime", "cuda_cccl"] {
        let dir = nvidia.join(pkg);
        if dir.is_dir() {
            merge_into(&dir, &tk)?;
        }
    }
    // Some wheels ship only versioned runtime libraries.
    let lib = tk.join("lib");
    if lib.is_dir() && !lib.join("libcudart.so").exists() {
        if let Some(so) = std::fs::read_dir(&lib)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libcudart.so."))
            })
        {
            std::os::unix::fs::symlink(&so, lib.join("libcudart.so"))?;
        }
    }
    if !tk.join("bin/nvcc").exists() {
        bail!(
            "no bin/nvcc under {} after installing {PACKAGES:?}",
            nvidia.display()
        );
    }
    Ok(tk)
}

/// Installs nvcc from PyPI and runs `cargo check --workspace --features cuda`.
pub fn check_cuda(root: &Path, args: CheckCudaArgs) -> Result<()> {
    let tk = toolkit(root, &args.python)?;
    run(Command::new(tk.join("bin/nvcc")).arg("--version"))?;
    let path = format!(
        "{}:{}",
        tk.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ld = format!(
        "{}:{}",
        tk.join("lib").display(),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let result = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["check", "--workspace", "--features", "cuda"])
            .args(&args.cargo_args)
            .env("CARGO_TARGET_DIR", root.join("target/cuda"))
            .env("PATH", path)
            .env("LD_LIBRARY_PATH", ld)
            .env("CUDA_ROOT", &tk)
            .env("CUDA_PATH", &tk)
            .env("CUDA_HOME", &tk)
            .env("CUDA_COMPUTE_CAP", &args.compute_cap)
            .env("CUDARC_CUDA_VERSION", &args.cudarc_cuda_version)
            .current_dir(root),
    );
    let secs = started.elapsed().as_secs();
    match result {
        Ok(()) => {
            eprintln!(
                "check-cuda: passed in {secs} s (nvcc from {PACKAGES:?}, toolkit at {}, CUDA_COMPUTE_CAP={})",
                tk.display(),
                args.compute_cap
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!("check-cuda failed after {secs} s"))),
    }
}
