//! End-to-end tests of `yolo-cli serve` on 127.0.0.1: the answers against `yolo-cli run`,
//! every kind of bad input, the limits (413, 503), the metrics and OpenAPI routes, and a
//! graceful stop under load. The server runs the synthetic MobileNetV2 weights at 64x64
//! on a port the OS picks.

#[path = "../common/synthetic.rs"]
mod synthetic;

use std::io::{BufRead, BufReader, Cursor};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use synthetic::{image, weights, MODEL_FLAGS};

/// A running `yolo-cli serve`, stopped (SIGKILL) when dropped unless stopped first.
struct Server {
    child: Child,
    base: String,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Starts the server with the test weights, input size 64 unless `extra` says
    /// otherwise, and `extra` flags, and waits until `/readyz` answers 200.
    fn start(extra: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let size: &[&str] = if extra.contains(&"--input-size") {
            &[]
        } else {
            &["--input-size", "64"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_yolo-cli"))
            .args([
                "serve",
                "--port",
                "0",
                "--backbone",
                "mobilenetv2",
                "--device",
                "cpu",
                "--weights",
            ])
            .arg(weights())
            .args(size)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        let server = Self { child, base, log };
        let start = Instant::now();
        while get(&server.url("/readyz")).0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status and the log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        sigterm(&self.child);
        let status = wait_exit(&mut self.child, Duration::from_secs(60));
        let log = std::fs::read_to_string(self.log.path()).unwrap();
        (status, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Status and body of a GET.
fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// Status, `Retry-After` and body of a POST of `body` with `content_type`.
fn post(url: &str, content_type: Option<&str>, body: &[u8]) -> (u16, Option<String>, String) {
    let mut req = agent().post(url);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let mut r = req.send(body).expect("the request is answered");
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), retry, text)
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image(w, h, seed)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image(w, h, seed)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A multipart/form-data body with one `image` part per image.
fn multipart(images: &[&[u8]]) -> (String, Vec<u8>) {
    let boundary = "yolo-rs-test-boundary";
    let mut body = Vec::new();
    for (i, img) in images.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(img);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `yolo-cli run --format json` on `files` in `dir` at conf 0.05.
fn run_json(dir: &Path, files: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-cli"))
        .current_dir(dir)
        .arg("run")
        .args(MODEL_FLAGS)
        .args([
            "--conf",
            "0.05",
            "--format",
            "json",
            "--no-draw",
            "--weights",
        ])
        .arg(weights())
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Same boxes, same order, numbers within float tolerance, exactly the same keys.
fn assert_same(served: &Value, ran: &Value) {
    let (a, b) = (served.as_array().unwrap(), ran.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "{served}\n{ran}");
    for (x, y) in a.iter().zip(b) {
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(x), keys(y));
        assert_eq!(x["class_id"], y["class_id"]);
        assert_eq!(x["class_name"], y["class_name"]);
        for k in ["x1", "y1", "x2", "y2", "score"] {
            let d = (x[k].as_f64().unwrap() - y[k].as_f64().unwrap()).abs();
            assert!(d < 1e-3, "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn detect_answers_what_run_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (png(40, 30, 1), jpeg(64, 48, 2));
    std::fs::write(dir.path().join("a.png"), &a).unwrap();
    std::fs::write(dir.path().join("b.jpg"), &b).unwrap();
    let ran = run_json(dir.path(), &["a.png", "b.jpg"]);
    let server = Server::start(&[]);
    let url = server.url("/v1/detect?conf=0.05");

    let mut total = 0;
    for (bytes, ct, name, (w, h)) in [
        (&a, "image/png", "a.png", (40, 30)),
        (&b, "image/jpeg", "b.jpg", (64, 48)),
    ] {
        let (status, _, text) = post(&url, Some(ct), bytes);
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let img = &v["images"][0];
        assert_eq!(
            (img["width"].as_u64(), img["height"].as_u64()),
            (Some(w), Some(h))
        );
        assert_same(&img["detections"], &ran[name]);
        total += img["detections"].as_array().unwrap().len();
        for k in ["decode", "queue", "inference", "postprocess"] {
            assert!(img["timings_ms"][k].as_f64().unwrap() >= 0.0);
        }
        assert!(v["timings_ms"]["total"].as_f64().unwrap() > 0.0);
    }
    assert!(total > 0, "the synthetic weights give boxes at conf 0.05");

    // both at once as a multipart form, in the order sent
    let (ct, body) = multipart(&[&a, &b]);
    let (status, _, text) = post(&url, Some(&ct), &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_same(&v["images"][0]["detections"], &ran["a.png"]);
    assert_same(&v["images"][1]["detections"], &ran["b.jpg"]);

    // a higher threshold per request keeps a subset
    let (status, _, text) = post(&server.url("/v1/detect?conf=0.9"), Some("image/png"), &a);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    for d in v["images"][0]["detections"].as_array().unwrap() {
        assert!(d["score"].as_f64().unwrap() >= 0.9);
    }

    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/v1/detect"))
        .collect();
    assert_eq!(lines.len(), 4, "one log line per request:\n{log}");
    assert!(
        lines.iter().all(|l| l.contains("status=200")
            && l.contains("method=POST")
            && l.contains("latency_ms=")
            && l.contains("batch_size=")),
        "{log}"
    );
}

#[test]
fn bad_input_gets_a_json_4xx_and_the_next_request_is_served() {
    let server = Server::start(&["--max-pixels", "3000", "--max-body", "20000"]);
    let url = server.url("/v1/detect");
    let good = png(40, 30, 3);
    let mut truncated = png(48, 48, 4);
    truncated.truncate(truncated.len() / 2);
    let big = png(64, 64, 5); // 4096 pixels, over --max-pixels 3000
    let huge = vec![0u8; 30_000]; // over --max-body
    let (form_ct, form_other) = {
        let (ct, body) = multipart(&[&good]);
        let body = String::from_utf8_lossy(&body).replace("name=\"image\"", "name=\"photo\"");
        (ct, body.into_bytes())
    };
    // what, URL, content type, body, expected status, what the error must say
    type Case<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "empty body",
            url.clone(),
            Some("image/png"),
            vec![],
            400,
            "empty body",
        ),
        (
            "not an image",
            url.clone(),
            Some("image/png"),
            b"hello, world".to_vec(),
            400,
            "cannot decode",
        ),
        (
            "truncated image",
            url.clone(),
            Some("image/jpeg"),
            truncated,
            400,
            "cannot decode",
        ),
        (
            "decompression bomb",
            url.clone(),
            Some("image/png"),
            big,
            413,
            "--max-pixels",
        ),
        (
            "body too large",
            url.clone(),
            Some("image/png"),
            huge,
            413,
            "--max-body",
        ),
        (
            "wrong content type",
            url.clone(),
            Some("application/json"),
            good.clone(),
            415,
            "Content-Type",
        ),
        (
            "bad conf",
            format!("{url}?conf=1.5"),
            Some("image/png"),
            good.clone(),
            400,
            "conf",
        ),
        (
            "unknown query key",
            format!("{url}?confidence=0.5"),
            Some("image/png"),
            good.clone(),
            400,
            "bad query",
        ),
        (
            "non-numeric nms",
            format!("{url}?nms_iou=abc"),
            Some("image/png"),
            good.clone(),
            400,
            "bad query",
        ),
        (
            "form without image part",
            url.clone(),
            Some(form_ct.as_str()),
            form_other,
            400,
            "`photo`",
        ),
        (
            "unknown route",
            server.url("/v2/detect"),
            Some("image/png"),
            good.clone(),
            404,
            "no route",
        ),
    ];
    for (what, target, ct, body, want, says) in cases {
        let (status, _, text) = post(&target, ct, &body);
        assert_eq!(status, want, "{what}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(msg.contains(says), "{what}: {msg}");
        // the server is still there, and answers a good image
        let (status, _, text) = post(&url, Some("image/png"), &good);
        assert_eq!(status, 200, "after {what}: {text}");
    }
    let (status, text) = get(&server.url("/v1/detect"));
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("\"error\""), "{text}");
    let (status, log) = server.stop();
    assert!(status.success());
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // One image admitted at a time, a slow model (256x256) and 8 clients at once.
    let server = Server::start(&["--queue", "1", "--max-images", "1", "--input-size", "256"]);
    let url = server.url("/v1/detect");
    let img = png(200, 150, 6);
    let barrier = std::sync::Barrier::new(8);
    let answers: Vec<(u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..3)
                        .map(|_| post(&url, Some("image/png"), &img))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200 || *s == 503),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(s, _, _)| *s == 200));
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "8 clients on a queue of 1 must be turned away sometimes"
    );
    for (_, retry, text) in busy {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(text.contains("queue is full"), "{text}");
    }
    let (_, metrics) = get(&server.url("/metrics"));
    assert!(
        metrics
            .contains(r#"yolo_http_requests_total{route="/v1/detect",method="POST",status="503"}"#),
        "{metrics}"
    );
}

#[test]
fn health_metrics_openapi_and_page() {
    let server = Server::start(&["--max-batch", "4"]);
    assert_eq!(get(&server.url("/healthz")).0, 200);
    let (status, text) = get(&server.url("/readyz"));
    assert_eq!((status, text.contains("ready")), (200, true), "{text}");
    let (status, text) = get(&server.url("/v1/info"));
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["backbone"], "mobilenetv2");
    assert_eq!(info["classes"].as_array().unwrap().len(), 20);
    assert_eq!(info["max_batch"], 4);

    let (status, _, text) = post(
        &server.url("/v1/detect"),
        Some("image/png"),
        &png(32, 32, 7),
    );
    assert_eq!(status, 200, "{text}");
    let (status, metrics) = get(&server.url("/metrics"));
    assert_eq!(status, 200);
    for name in [
        r#"yolo_http_requests_total{route="/v1/detect",method="POST",status="200"} 1"#,
        r#"yolo_http_request_duration_seconds_bucket{le="#,
        "yolo_queue_depth 0",
        "yolo_batch_size_count",
        "yolo_images_total",
        "yolo_images_per_second",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }

    let (status, text) = get(&server.url("/openapi.json"));
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/detect", "/v1/info", "/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let detect = &doc["paths"]["/v1/detect"]["post"];
    for status in ["200", "400", "413", "415", "503"] {
        assert!(detect["responses"][status].is_object(), "{status}");
    }

    let (status, page) = get(&server.url("/"));
    assert_eq!(status, 200);
    assert!(page.contains("<canvas") && page.contains("/v1/detect"));
}

#[test]
fn concurrent_requests_share_a_forward_pass() {
    let server = Server::start(&["--max-batch", "8", "--batch-wait-ms", "300"]);
    let url = server.url("/v1/detect?conf=0.05");
    let imgs: Vec<Vec<u8>> = (0..4).map(|i| png(30 + i * 5, 40, i as u8)).collect();
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = imgs
            .iter()
            .map(|img| s.spawn(|| post(&url, Some("image/png"), img)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, _, text) = h.join().unwrap();
                assert_eq!(status, 200, "{text}");
                serde_json::from_str(&text).unwrap()
            })
            .collect()
    });
    let biggest = answers
        .iter()
        .map(|v| v["images"][0]["batch_size"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        biggest > 1,
        "4 requests within 300 ms share a batch: {answers:?}"
    );
    // batching does not change an image's boxes
    for (img, v) in imgs.iter().zip(&answers) {
        let (_, _, alone) = post(&url, Some("image/png"), img);
        let alone: Value = serde_json::from_str(&alone).unwrap();
        assert_same(
            &v["images"][0]["detections"],
            &alone["images"][0]["detections"],
        );
    }
}

#[test]
fn sigterm_under_load_finishes_the_requests_in_flight() {
    // The first image waits up to 500 ms for others: the stop arrives while all of them
    // are queued.
    let server = Server::start(&["--max-batch", "16", "--batch-wait-ms", "500"]);
    let url = server.url("/v1/detect");
    let img = png(40, 40, 9);
    let (answers, status, log) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| post(&url, Some("image/png"), &img)))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (status, log) = server.stop();
        let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, status, log)
    });
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}\n{log}");
    for (code, _, text) in &answers {
        assert_eq!(*code, 200, "{text}");
    }
    assert!(log.contains("stopping"), "{log}");
    // nothing listens any more
    assert!(agent().get(&url).call().is_err());
}

/// The web page in Debian's headless Chromium, driven by playwright-core
/// (`tools/browser/page_test.mjs`): upload an image, read the boxes drawn on the page,
/// move the confidence slider. Needs `chromium` and `npm ci` in tools/browser, so it is
/// ignored by default; `.ci/run` installs both and runs it:
/// `cargo test -p yolo-cli --test serve -- --ignored browser_page`.
#[test]
#[ignore = "needs /usr/bin/chromium and tools/browser/node_modules (see .ci/run)"]
fn browser_page_draws_the_detections() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(96, 72, 11);
    let file = dir.path().join("photo.png");
    std::fs::write(&file, &img).unwrap();
    let server = Server::start(&["--conf", "0.05"]);
    let (status, _, text) = post(&server.url("/v1/detect?conf=0.05"), Some("image/png"), &img);
    assert_eq!(status, 200, "{text}");
    let api: Value = serde_json::from_str(&text).unwrap();
    let api = &api["images"][0]["detections"];
    assert!(!api.as_array().unwrap().is_empty(), "something to draw");

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/browser/page_test.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .arg(&file)
        .arg(&shots)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    // the page shows what the API answers, box for box
    assert_same(&page["detections"], api);
    assert_eq!(page["canvas"], serde_json::json!([96, 72]));
    assert!(page["drawn_pixels"].as_u64().unwrap() > 0, "boxes drawn");
    // the slider re-filters in the page, without another upload
    let kept: Vec<&Value> = api
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["score"].as_f64().unwrap() >= 0.3)
        .collect();
    assert_eq!(page["after_slider"].as_array().unwrap().len(), kept.len());
    assert_eq!(page["detect_requests"], 1);
    assert_eq!(page["elsewhere"], serde_json::json!([]));
    assert!(shots.join("page.png").is_file());
    eprintln!("screenshots in {}", shots.display());
}
