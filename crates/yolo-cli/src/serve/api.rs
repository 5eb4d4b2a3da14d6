//! The routes of `yolo-cli serve`, their answers and the OpenAPI document generated from
//! them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use utoipa::{OpenApi, ToSchema};
use yolov3_head::Detection;

use super::batcher::{Batcher, Detected, Job};
use super::error::{ApiError, ErrorBody};
use super::metrics::{self, BatchSize, Metrics};
use super::request::{self, DetectQuery, Thresholds};

/// What the handlers share.
pub struct AppState {
    /// The inference thread.
    pub batcher: Batcher,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// One permit per image admitted (decoding, queued or in the model): `--queue`.
    pub permits: Arc<Semaphore>,
    /// `--conf` and `--nms-iou`.
    pub defaults: Thresholds,
    /// `--max-body` in bytes.
    pub max_body: usize,
    /// `--max-pixels`.
    pub max_pixels: u64,
    /// `--timeout-ms`.
    pub timeout: Duration,
    /// Images in one request at most.
    pub max_images: usize,
    /// What `GET /v1/info` answers.
    pub info: ModelInfo,
}

/// `GET /v1/info`: the model behind the service and its defaults.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    /// `darknet53` or `mobilenetv2`.
    pub backbone: String,
    /// The weights file's name.
    pub weights: String,
    /// One name per class, by class id.
    pub classes: Vec<String>,
    /// Network input width.
    pub input_width: usize,
    /// Network input height.
    pub input_height: usize,
    /// Letterbox (true) or stretch.
    pub letterbox: bool,
    /// Default score threshold.
    pub conf: f64,
    /// Default NMS IoU.
    pub nms_iou: f64,
    /// Images per forward pass at most.
    pub max_batch: usize,
    /// Images per request at most.
    pub max_images: usize,
    /// yolo-cli's version.
    pub version: String,
}

/// One detected object, in pixels of the image; the keys of `yolo-cli run --format json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiDetection {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
    /// `objectness * class score`.
    pub score: f32,
    /// Index of the class.
    pub class_id: usize,
    /// Name of the class.
    pub class_name: String,
}

impl From<Detection> for ApiDetection {
    fn from(d: Detection) -> Self {
        Self {
            x1: d.x1,
            y1: d.y1,
            x2: d.x2,
            y2: d.y2,
            score: d.score,
            class_id: d.class_id,
            class_name: d.class_name,
        }
    }
}

/// Where the time of one image went, in milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageTimings {
    /// Decoding the image bytes.
    pub decode: f64,
    /// Waiting for the model.
    pub queue: f64,
    /// Resize and forward pass of the batch it was in.
    pub inference: f64,
    /// Decoding the heads, NMS.
    pub postprocess: f64,
}

/// The result for one image.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageResult {
    /// Image width in pixels (after EXIF orientation).
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The boxes, best first per class.
    pub detections: Vec<ApiDetection>,
    /// Images in the forward pass this one was part of.
    pub batch_size: usize,
    /// Timings in milliseconds.
    pub timings_ms: ImageTimings,
}

/// The time of the whole request, in milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestTimings {
    /// From the request to the answer.
    pub total: f64,
}

/// The answer of `POST /v1/detect`: one result per image, in the order sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectResponse {
    /// One per image.
    pub images: Vec<ImageResult>,
    /// Timings in milliseconds.
    pub timings_ms: RequestTimings,
}

/// The bytes of an image in any format `yolo-cli run` reads.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only
pub struct ImageBytes(Vec<u8>);

/// A multipart form of images.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct DetectForm {
    /// One or more images, each a part named `image`.
    #[schema(min_items = 1)]
    image: Vec<ImageBytes>,
}

/// `{"status": "…"}` of the health routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "yolo-rs detection service",
        description = "YOLOv3 (MobileNetV2 / Darknet53) object detection over HTTP: `yolo-cli serve`."
    ),
    paths(detect, info, healthz, readyz, metrics_text, openapi_json),
    components(schemas(
        DetectResponse,
        ImageResult,
        ApiDetection,
        ImageTimings,
        RequestTimings,
        ErrorBody,
        ModelInfo,
        Status,
        ImageBytes,
        DetectForm
    ))
)]
pub struct ApiDoc;

/// The service's routes, with the metrics and log middleware around them.
pub fn router(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/", get(page))
        .route("/v1/detect", post(detect))
        .route("/v1/info", get(info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

/// Detect objects in one or more images.
#[utoipa::path(
    post,
    path = "/v1/detect",
    params(DetectQuery),
    request_body(
        description = "The image bytes (JPEG, PNG, BMP, GIF, TIFF, WebP, …), or a multipart form with one or more parts named `image`.",
        content(
            (ImageBytes = "application/octet-stream"),
            (ImageBytes = "image/jpeg"),
            (ImageBytes = "image/png"),
            (DetectForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 200, description = "The detections of each image", body = DetectResponse),
        (status = 400, description = "Empty body, not an image, a truncated image, a bad query or a bad form", body = ErrorBody),
        (status = 413, description = "Body over --max-body, image over --max-pixels, or too many images", body = ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = ErrorBody),
        (status = 500, description = "The model failed", body = ErrorBody),
        (status = 503, description = "Queue full or deadline passed: retry after the Retry-After seconds", body = ErrorBody),
    )
)]
async fn detect(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let deadline = start + state.timeout;
    let work = detect_images(&state, query.as_deref(), &headers, body, deadline);
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(Ok((results, batch))) => {
            let total = start.elapsed().as_secs_f64() * 1e3;
            let mut response = Json(DetectResponse {
                images: results,
                timings_ms: RequestTimings { total },
            })
            .into_response();
            response.extensions_mut().insert(BatchSize(batch));
            response
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::busy(format!(
            "no answer within {} ms (--timeout-ms)",
            state.timeout.as_millis()
        ))
        .into_response(),
    }
}

/// Admission, body, decoding, inference: the images' results and the largest batch.
async fn detect_images(
    state: &Arc<AppState>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    deadline: Instant,
) -> Result<(Vec<ImageResult>, usize), ApiError> {
    let thresholds = request::thresholds(query, state.defaults)?;
    // One permit before the body is read, so memory is bounded by the queue.
    let mut permits = admit(state, 1)?;
    let body = request::read_body(headers, body, state.max_body).await?;
    let images = request::image_bytes(headers, body, state.max_images).await?;
    if images.len() > 1 {
        permits.merge(admit(state, images.len() - 1)?);
    }
    let mut waiting = Vec::with_capacity(images.len());
    let n = images.len();
    for (i, bytes) in images.into_iter().enumerate() {
        let (image, decode) = decode(bytes, state.max_pixels, i, n).await?;
        let (tx, rx) = oneshot::channel();
        let (width, height) = image.dimensions();
        state
            .batcher
            .submit(Job {
                image,
                thresholds,
                queued: Instant::now(),
                deadline,
                reply: tx,
            })
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        waiting.push((rx, width, height, decode));
    }
    let mut results = Vec::with_capacity(n);
    let mut batch = 0;
    for (rx, width, height, decode) in waiting {
        let detected: Detected = rx
            .await
            .map_err(|_| ApiError::busy("the request was dropped by the model's queue"))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        batch = batch.max(detected.batch_size);
        results.push(ImageResult {
            width,
            height,
            batch_size: detected.batch_size,
            timings_ms: ImageTimings {
                decode: ms(decode),
                queue: ms(detected.queue),
                inference: ms(detected.inference),
                postprocess: ms(detected.postprocess),
            },
            detections: detected.detections.into_iter().map(Into::into).collect(),
        });
    }
    drop(permits);
    Ok((results, batch))
}

/// `n` permits of the bounded queue, or 503 when it is full.
fn admit(state: &AppState, n: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    state
        .permits
        .clone()
        .try_acquire_many_owned(n32)
        .map_err(|_| ApiError::busy("the queue is full (--queue): retry shortly"))
}

/// Decodes image `i` of `n` off the async threads, with the pixel limit checked from the
/// header first.
async fn decode(
    bytes: Bytes,
    max_pixels: u64,
    i: usize,
    n: usize,
) -> Result<(image::RgbImage, Duration), ApiError> {
    let which = if n == 1 {
        "the image".to_string()
    } else {
        format!("image {} of {n}", i + 1)
    };
    let task = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let img = yolov3_head::load_image_from_memory(&bytes, max_pixels);
        (img, start.elapsed())
    });
    let (img, took) = task.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding {which} failed"),
        )
    })?;
    match img {
        Ok(img) => Ok((img, took)),
        Err(yolov3_head::Error::ImageTooLarge {
            width,
            height,
            max_pixels,
            ..
        }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{which} is {width}x{height} = {} pixels, over the limit of {max_pixels} (--max-pixels); refused before decoding",
                width as u64 * height as u64
            ),
        )),
        Err(yolov3_head::Error::Decode { source, .. }) => Err(ApiError::bad_request(format!(
            "cannot decode {which}: {source}"
        ))),
        Err(e) => Err(ApiError::bad_request(format!("cannot read {which}: {e}"))),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The model, its classes and the service's defaults.
#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = ModelInfo)))]
async fn info(State(state): State<Arc<AppState>>) -> Json<ModelInfo> {
    Json(state.info.clone())
}

/// Alive: the server answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Ready: the model is loaded and has answered its warm-up run.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.batcher.is_ready() {
        Json(Status {
            status: "ready".into(),
        })
        .into_response()
    } else {
        ApiError::busy("the model is not ready").into_response()
    }
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(super::page::INDEX_HTML)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}: see /openapi.json (POST /v1/detect, GET /v1/info, /healthz, /readyz, /metrics, /)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}: see /openapi.json",
            uri.path()
        ),
    )
}
