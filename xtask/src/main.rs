//! Project automation: `cargo xtask <task>`.
//!
//! - `golden`: regenerate the PyTorch golden fixtures (needs Python; installs torch in a venv).
//! - `download-weights`: download, verify and convert weights into `model_data/weights/`
//!   (runs `yolo-cli download` from the release build).
//! - `bench`: CPU speed against PyTorch eager and ONNX Runtime (installs them in a venv).
//! - `loadtest`: `yolo-cli serve` under load with wrk, against a FastAPI + ONNX Runtime
//!   server, and schemathesis on its OpenAPI document.
//! - `check-cuda`: `cargo check --workspace --features cuda` with nvcc from PyPI.
//! - `bump-version`: one new version for every crate (root `Cargo.toml`).
//! - `fuzz`: the cargo-fuzz targets of `fuzz/`, one after the other (nightly, cargo-fuzz).
//! - `accuracy`: mAP and reproduced detections of bf16 and int8 against f32 on a trained
//!   checkpoint (by default the synthetic-set model, trained once).

mod accuracy;
mod bench;
mod bump;
mod check_cuda;
mod download;
mod fuzz;
mod golden;
mod loadtest;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "yolo-rs project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Regenerate tests/fixtures from the PyTorch reference (tools/reference).
    Golden(golden::GoldenArgs),
    /// Download, verify and convert weights into model_data/weights/.
    DownloadWeights(download::DownloadArgs),
    /// CPU speed of yolo-rs against PyTorch eager and ONNX Runtime (tools/bench).
    Bench(bench::BenchArgs),
    /// `yolo-cli serve` under load (wrk) against a Python server, and its API fuzzed.
    Loadtest(loadtest::LoadtestArgs),
    /// `cargo check --workspace --features cuda` with nvcc installed from PyPI.
    CheckCuda(check_cuda::CheckCudaArgs),
    /// Set the version of every crate (workspace version and path dependencies).
    BumpVersion(bump::BumpArgs),
    /// Run the fuzz targets (nightly + cargo-fuzz): `--time S` each, or just TARGET.
    Fuzz(fuzz::FuzzArgs),
    /// bf16 and int8 against f32 on a trained checkpoint: mAP@0.5 and reproduced detections.
    Accuracy(accuracy::AccuracyArgs),
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Golden(args) => golden::golden(&root, args),
        Task::DownloadWeights(args) => download::run(&root, args),
        Task::Bench(args) => bench::bench(&root, args),
        Task::Loadtest(args) => loadtest::loadtest(&root, args),
        Task::CheckCuda(args) => check_cuda::check_cuda(&root, args),
        Task::BumpVersion(args) => bump::bump(&root, args),
        Task::Fuzz(args) => fuzz::fuzz(&root, args),
        Task::Accuracy(args) => accuracy::accuracy(&root, args),
    }
}
