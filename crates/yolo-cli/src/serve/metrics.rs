//! What `GET /metrics` says (Prometheus text format), and the middleware that records
//! every request and writes its log line.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Over how long `yolo_images_per_second` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    queue_depth: Gauge,
    batch_size: Histogram,
    images: Counter,
    images_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    recent: Mutex<VecDeque<(Instant, usize)>>,
}

/// The number of images in the forward pass behind a response (the largest, for a
/// request of several images), put in the response's extensions for the log line.
#[derive(Debug, Clone, Copy)]
pub struct BatchSize(pub usize);

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("yolo");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register(
            "http_request_duration_seconds",
            "Time from the request to the response, by route",
            latency.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Images decoded and waiting for the model",
            queue_depth.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let images = Counter::default();
        registry.register("images", "Images run through the model", images.clone());
        let images_per_second = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "images_per_second",
            "Images run through the model per second, over the last 10 seconds",
            images_per_second.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queue_depth,
            batch_size,
            images,
            images_per_second,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// An image was queued for the model.
    pub fn queued(&self) {
        self.queue_depth.inc();
    }

    /// `n` images left the queue.
    pub fn dequeued(&self, n: usize) {
        self.queue_depth.dec_by(n as i64);
    }

    /// A forward pass of `n` images is done.
    pub fn batch_done(&self, n: usize) {
        self.batch_size.observe(n as f64);
        self.images.inc_by(n as u64);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back((Instant::now(), n));
        prune(&mut recent);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            prune(&mut recent);
            let n: usize = recent.iter().map(|(_, n)| n).sum();
            self.images_per_second
                .set(n as f64 / RATE_WINDOW.as_secs_f64());
        }
        let mut text = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn record(&self, route: &str, method: &str, status: u16, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(latency.as_secs_f64());
    }
}

fn prune(recent: &mut VecDeque<(Instant, usize)>) {
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
    {
        recent.pop_front();
    }
}

/// Middleware: counts the request and its latency under its route (`unmatched` for an
/// unknown path, so that scans do not grow the label set), and writes one log line.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let latency = start.elapsed();
    let status = response.status().as_u16();
    metrics.record(&route, &method, status, latency);
    let batch = response.extensions().get::<BatchSize>().map(|b| b.0);
    tracing::info!(
        method = %method,
        path = %path,
        status,
        latency_ms = latency.as_secs_f64() * 1e3,
        batch_size = batch.unwrap_or(0),
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.queued();
        m.queued();
        m.dequeued(1);
        m.batch_done(3);
        m.record(
            "/v1/detect",
            "POST",
            200,
            std::time::Duration::from_millis(12),
        );
        let text = m.encode();
        assert!(text.contains("yolo_queue_depth 1"), "{text}");
        assert!(text.contains("yolo_batch_size_count 1"), "{text}");
        assert!(text.contains("yolo_images_total 3"), "{text}");
        assert!(text.contains("yolo_images_per_second 0.3"), "{text}");
        assert!(
            text.contains(
                r#"yolo_http_requests_total{route="/v1/detect",method="POST",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"yolo_http_request_duration_seconds_count{route="/v1/detect"} 1"#),
            "{text}"
        );
    }
}
