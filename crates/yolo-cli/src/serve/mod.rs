//! `yolo-cli serve`: the detector behind HTTP.
//!
//! [`api`] has the routes and the OpenAPI document, [`request`] reads a detection
//! request, [`batcher`] is the inference thread that joins concurrent images into one
//! forward pass, [`metrics`] counts and logs every request, and [`page`] is the web page.
//! This module starts them: model, inference thread, async runtime, listener, and the
//! graceful stop on SIGINT/SIGTERM.

mod api;
mod batcher;
mod error;
mod metrics;
mod page;
mod request;

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::Semaphore;

use crate::model;
use crate::model_args::{self, ModelArgs};
use api::{AppState, ModelInfo};
use batcher::{BatchPolicy, Batcher};
use metrics::Metrics;
use request::Thresholds;

/// Arguments of `yolo-cli serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    model: ModelArgs,
    /// Images per forward pass at most: concurrent requests are joined up to this (1: no
    /// batching). Default: 1 on the CPU, where batching measured no faster (the model
    /// already keeps every core busy; docs/serving.md), 8 on a GPU.
    #[arg(long, alias = "batch", value_parser = clap::value_parser!(u32).range(1..=256))]
    max_batch: Option<u32>,
    /// How long the first image of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    batch_wait_ms: u64,
    /// Images admitted at once (decoding, queued or in the model); beyond, requests get
    /// 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    queue: u32,
    /// Images in one multipart request at most.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_images: u32,
    /// Request bodies over this many bytes get 413.
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    max_body: usize,
    /// A request not answered within this many milliseconds gets 503.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

/// `--max-batch` on the CPU when not given: on 2 cores the load test served MobileNetV2
/// at 7.1 requests/s without batching and 6.2-6.8 with batches of up to 8, Darknet53 at
/// 3.0 and 1.6-2.4 (docs/serving.md).
const DEFAULT_MAX_BATCH_CPU: usize = 1;
/// `--max-batch` on a GPU when not given, where a batch costs little more than an image.
const DEFAULT_MAX_BATCH_GPU: usize = 8;

/// Runs the service until SIGINT or SIGTERM, then lets the requests in flight finish.
pub fn serve(args: ServeArgs, weights_dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    init_logging();
    if u64::from(args.max_images) > u64::from(args.queue) {
        anyhow::bail!(
            "--max-images {} is over --queue {}: a request could never be admitted",
            args.max_images,
            args.queue
        );
    }
    let resolved = args.model.resolve(weights_dir)?;
    let device = model::select_device(args.model.device)?;
    let max_batch = match args.max_batch {
        Some(n) => n as usize,
        None if device.is_cpu() => DEFAULT_MAX_BATCH_CPU,
        None => DEFAULT_MAX_BATCH_GPU,
    };
    let info = ModelInfo {
        backbone: args.model.backbone.to_string(),
        weights: resolved
            .weights
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        classes: resolved.class_names.names().to_vec(),
        input_width: args.model.input_size.width,
        input_height: args.model.input_size.height,
        letterbox: !args.model.no_letterbox,
        conf: args.model.conf,
        nms_iou: args.model.nms_iou,
        max_batch,
        max_images: args.max_images as usize,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let detector = model_args::build_detector(&args.model, resolved, &device)?;
    let metrics = Arc::new(Metrics::new());
    let policy = BatchPolicy {
        max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
    };
    let (batcher, inference) = Batcher::start(detector, device, policy, metrics.clone())
        .context("cannot start the inference thread")?;
    let state = Arc::new(AppState {
        batcher,
        metrics,
        permits: Arc::new(Semaphore::new(args.queue as usize)),
        defaults: Thresholds {
            conf: args.model.conf as f32,
            nms_iou: args.model.nms_iou,
        },
        max_body: args.max_body,
        max_pixels: args.model.max_pixels,
        timeout: Duration::from_millis(args.timeout_ms),
        max_images: args.max_images as usize,
        info,
    });
    // The async threads only move bytes; decoding runs on tokio's blocking threads and
    // the model on the inference thread (and candle's pool).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(listen(args.host, args.port, state))?;
    drop(runtime);
    // Every sender is gone with the router: the inference thread ends after its last batch.
    inference
        .join()
        .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn listen(host: IpAddr, port: u16, state: Arc<AppState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    // The one line on stdout: scripts and tests read the port from it.
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(stop_signal())
        .await
        .context("the server failed")?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("stopping: finishing the requests in flight");
}

/// One line per event on stderr; `RUST_LOG`-style filtering is not needed for a service
/// this small, so the level is fixed at INFO.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}
