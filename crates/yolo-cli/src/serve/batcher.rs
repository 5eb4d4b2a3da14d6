//! Dynamic batching: one inference thread takes the decoded images of concurrent requests
//! from a queue and runs up to `max_batch` of them through the detector in one forward
//! pass, waiting at most `batch_wait` after the first for more to arrive.
//!
//! The thread is a plain OS thread, off the async runtime: the forward pass runs on the
//! same kernels and thread pool (candle's) as `yolo-cli run`. A panic inside a batch is
//! caught and answered as an error to the requests of that batch; the thread goes on.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use image::RgbImage;
use tokio::sync::oneshot;
use yolov3_head::{postprocess_heads, Detection, Detector, DetectorConfig};

use super::metrics::Metrics;
use super::request::Thresholds;

/// One image waiting for the model.
pub struct Job {
    /// The decoded image.
    pub image: RgbImage,
    /// Its thresholds.
    pub thresholds: Thresholds,
    /// When it was queued.
    pub queued: Instant,
    /// When its request gives up; a job still queued then is dropped unanswered.
    pub deadline: Instant,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Detected, String>>,
}

/// The answer for one image.
#[derive(Debug)]
pub struct Detected {
    /// Boxes in the image's pixels.
    pub detections: Vec<Detection>,
    /// Time spent in the queue.
    pub queue: Duration,
    /// Resize + forward pass of the whole batch.
    pub inference: Duration,
    /// Decoding the heads and NMS for this image.
    pub postprocess: Duration,
    /// Images in the forward pass this one was part of.
    pub batch_size: usize,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Images per forward pass at most (1: no batching).
    pub max_batch: usize,
    /// How long to wait after the first image for more.
    pub batch_wait: Duration,
}

/// The handle of the inference thread: send jobs, ask whether it is ready and alive.
pub struct Batcher {
    tx: Sender<Job>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
}

impl Batcher {
    /// Starts the inference thread. It first runs one warm-up image through `detector`
    /// (so that `ready` means "the model answers"), then serves jobs until every
    /// [`Batcher`] handle is dropped. Returns the handle and the thread, to join.
    pub fn start(
        detector: Detector,
        device: Device,
        policy: BatchPolicy,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let ready = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let worker = Worker {
            detector,
            device,
            policy,
            metrics: metrics.clone(),
            ready: ready.clone(),
            alive: alive.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || worker.run(rx))?;
        Ok((
            Self {
                tx,
                metrics,
                ready,
                alive,
            },
            thread,
        ))
    }

    /// Queues a job; fails when the inference thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.metrics.queued();
        self.tx.send(job).map_err(|_| {
            self.metrics.dequeued(1);
            "the inference thread has stopped".to_string()
        })
    }

    /// Whether the model has answered its warm-up and the thread still runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.alive.load(Ordering::Acquire)
    }
}

struct Worker {
    detector: Detector,
    device: Device,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        match self.warm_up() {
            Ok(()) => self.ready.store(true, Ordering::Release),
            Err(e) => tracing::error!("warm-up inference failed: {e}"),
        }
        while let Some(jobs) = self.next_batch(&rx) {
            self.metrics.dequeued(jobs.len());
            let now = Instant::now();
            // A request that gave up (deadline passed, client gone) costs no inference.
            let jobs: Vec<Job> = jobs
                .into_iter()
                .filter(|j| j.deadline > now && !j.reply.is_closed())
                .collect();
            if jobs.is_empty() {
                continue;
            }
            self.run_batch(jobs);
        }
        self.alive.store(false, Ordering::Release);
    }

    /// One blank image of the input size through the whole pipeline.
    fn warm_up(&self) -> Result<(), String> {
        let cfg = self.detector.config();
        let blank = RgbImage::new(cfg.input_width as u32, cfg.input_height as u32);
        let detect = AssertUnwindSafe(|| self.detector.detect(&blank));
        match std::panic::catch_unwind(detect) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked".into()),
        }
    }

    /// Blocks for the first job, then gathers more until the batch is full or the wait
    /// is over. `None` once every sender is gone and the queue is empty.
    fn next_batch(&self, rx: &Receiver<Job>) -> Option<Vec<Job>> {
        let first = rx.recv().ok()?;
        let mut jobs = vec![first];
        let until = Instant::now() + self.policy.batch_wait;
        while jobs.len() < self.policy.max_batch {
            let left = until.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            match next {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn run_batch(&self, mut jobs: Vec<Job>) {
        let images: Vec<RgbImage> = jobs
            .iter_mut()
            .map(|j| std::mem::take(&mut j.image))
            .collect();
        let thresholds: Vec<Thresholds> = jobs.iter().map(|j| j.thresholds).collect();
        let started = Instant::now();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.detect(&images, &thresholds)));
        let results = match outcome {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => return answer_all(jobs, &format!("inference failed: {e}")),
            Err(_) => return answer_all(jobs, "inference failed: the model panicked"),
        };
        let batch_size = jobs.len();
        self.metrics.batch_done(batch_size);
        for (job, (detections, inference, postprocess)) in jobs.into_iter().zip(results) {
            let queue = started.saturating_duration_since(job.queued);
            let _ = job.reply.send(Ok(Detected {
                detections,
                queue,
                inference,
                postprocess,
                batch_size,
            }));
        }
    }

    /// The forward pass of `images` as one batch, then each image's boxes under its own
    /// thresholds: per image, the boxes, the batch's inference time and its own
    /// post-processing time.
    fn detect(
        &self,
        images: &[RgbImage],
        thresholds: &[Thresholds],
    ) -> anyhow::Result<Vec<(Vec<Detection>, Duration, Duration)>> {
        let start = Instant::now();
        let input = self.detector.preprocess(images)?; // (B, 3, H, W)
        let heads = self.detector.infer(&input)?; // (B, 3*(5+C), H/32, W/32), …/16, …/8
        self.device.synchronize()?;
        let inference = start.elapsed();
        let anchors_mask = self.detector.model().config().anchors_mask;
        let mut results = Vec::with_capacity(images.len());
        for (i, (image, t)) in images.iter().zip(thresholds).enumerate() {
            let start = Instant::now();
            let one: [Tensor; 3] = [
                heads[0].narrow(0, i, 1)?,
                heads[1].narrow(0, i, 1)?,
                heads[2].narrow(0, i, 1)?,
            ];
            let config = with_thresholds(self.detector.config(), *t);
            let mut dets = postprocess_heads(&one, &config, &anchors_mask, &[image.dimensions()])?;
            results.push((dets.pop().unwrap_or_default(), inference, start.elapsed()));
        }
        Ok(results)
    }
}

/// `config` with a request's thresholds.
fn with_thresholds(config: &DetectorConfig, t: Thresholds) -> DetectorConfig {
    DetectorConfig {
        conf_threshold: t.conf,
        nms_iou: t.nms_iou,
        ..config.clone()
    }
}

fn answer_all(jobs: Vec<Job>, message: &str) {
    tracing::error!("{message}");
    for job in jobs {
        let _ = job.reply.send(Err(message.to_string()));
    }
}
