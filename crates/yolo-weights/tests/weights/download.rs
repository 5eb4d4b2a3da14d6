//! Download through a loopback server that answers like the Hub's `resolve` route.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use yolo_weights::download::{install, sha256_file, DownloadOptions, Outcome};
use yolo_weights::{load_canonical, Error, ModelKind, SourceFormat, WeightSpec};

use super::common::fixture;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A one-file Hub: `GET /{repo}/resolve/{revision}/{file}` with `Range` support,
/// `ETag`, `X-Repo-Commit` and `Content-Range`; `truncate` cuts full-body answers in half.
struct Hub {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    fn start(route: String, body: Vec<u8>, truncate: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(c, &route, &body, truncate);
                }
            }
        });
        Self {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(c: TcpStream, route: &str, body: &[u8], truncate: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range:") {
            range = v.trim().strip_prefix("bytes=").map(str::to_string);
        }
    }
    let mut c = c;
    if path != route {
        write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let n = body.len();
    let (start, end) = match range {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                n - 1
            } else {
                b.parse().unwrap()
            };
            (a, b.min(n - 1))
        }
        None => (0, n - 1),
    };
    let part = &body[start..=end];
    write!(
        c,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{n}\r\nETag: \"etag-{n}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        part.len()
    )?;
    if truncate && part.len() > 1 {
        c.write_all(&part[..part.len() / 2])?;
    } else {
        c.write_all(part)?;
    }
    c.flush()
}

fn spec(sha256: Option<String>) -> WeightSpec {
    WeightSpec {
        name: "tiny-mobilenet".into(),
        repo: "test-org/tiny".into(),
        revision: "main".into(),
        file: "mobilenetv2_w010.pth".into(),
        format: SourceFormat::Pth,
        sha256,
        size: None,
        licence: "test".into(),
        description: "test".into(),
        in_all: true,
    }
}

fn opts(hub: &Hub, cache: &Path, out: &Path) -> DownloadOptions {
    DownloadOptions {
        out_dir: out.to_path_buf(),
        endpoint: Some(hub.addr.clone()),
        cache_dir: Some(cache.to_path_buf()),
        force: false,
        offline: false,
        progress: false,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const ROUTE: &str = "/test-org/tiny/resolve/main/mobilenetv2_w010.pth";

#[test]
fn download_verifies_installs_and_then_hits_the_cache() {
    let body = std::fs::read(fixture("weights/mobilenetv2_w010.pth")).unwrap();
    let (sha, _) = sha256_file(&fixture("weights/mobilenetv2_w010.pth")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("hf"), tmp.path().join("weights"));
    let mut hub = Hub::start(ROUTE.into(), body, false);
    let o = opts(&hub, &cache, &out);

    let done = install(&spec(Some(sha.clone())), &o).unwrap();
    assert_eq!(done.outcome, Outcome::Downloaded);
    assert!(hub.requests.load(Ordering::SeqCst) >= 2);
    let m = &done.manifest;
    assert_eq!(m.source_sha256, sha);
    assert!(m.source_sha256_verified);
    assert_eq!(m.commit.as_deref(), Some(COMMIT));
    assert_eq!(
        (m.model.as_str(), m.num_classes),
        ("mobilenetv2-classifier", 8)
    );
    assert_eq!(
        listing(&out),
        vec!["tiny-mobilenet.json", "tiny-mobilenet.safetensors"]
    );
    let (installed_sha, _) = sha256_file(&done.path).unwrap();
    assert_eq!(installed_sha, m.converted_sha256);
    let w = load_canonical(&done.path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(w.meta.model, ModelKind::Classifier);
    assert!(w.meta.source.contains("test-org/tiny"));

    // Server gone: up to date without the network, and reinstalled from the cache.
    hub.stop();
    let again = install(&spec(Some(sha.clone())), &o).unwrap();
    assert_eq!(again.outcome, Outcome::UpToDate);
    std::fs::remove_file(&done.path).unwrap();
    let again = install(&spec(None), &o).unwrap();
    assert_eq!(again.outcome, Outcome::FromCache);
    assert!(!again.manifest.source_sha256_verified);
    assert_eq!(
        again.manifest.source_sha256, sha,
        "recorded even when not verified"
    );
    // Offline with an empty cache: a clear error.
    let err = install(
        &spec(None),
        &DownloadOptions {
            cache_dir: Some(tmp.path().join("empty-cache")),
            out_dir: tmp.path().join("elsewhere"),
            offline: true,
            ..o.clone()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotCached { .. }), "{err}");
}

#[test]
fn checksum_mismatch_installs_nothing_and_keeps_the_old_file() {
    let body = std::fs::read(fixture("weights/mobilenetv2_w010.pth")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("hf"), tmp.path().join("weights"));
    let hub = Hub::start(ROUTE.into(), body, false);
    let o = opts(&hub, &cache, &out);
    let wrong = "00".repeat(32);
    let err = install(&spec(Some(wrong.clone())), &o).unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { expected, .. } if *expected == wrong),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    // The bad file left the cache: the next try downloads again.
    let before = hub.requests.load(Ordering::SeqCst);
    let good = install(&spec(None), &o).unwrap();
    assert_eq!(good.outcome, Outcome::Downloaded);
    assert!(hub.requests.load(Ordering::SeqCst) > before);
    // A forced reinstall that fails verification leaves the installed file alone.
    let (sha_before, _) = sha256_file(&good.path).unwrap();
    let forced = DownloadOptions {
        force: true,
        ..o.clone()
    };
    assert!(install(&spec(Some(wrong)), &forced).is_err());
    assert_eq!(sha256_file(&good.path).unwrap().0, sha_before);
    assert_eq!(
        listing(&out),
        vec!["tiny-mobilenet.json", "tiny-mobilenet.safetensors"]
    );
}

#[test]
fn interrupted_download_leaves_nothing_half_written() {
    let body = std::fs::read(fixture("weights/mobilenetv2_w010.pth")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("hf"), tmp.path().join("weights"));
    let hub = Hub::start(ROUTE.into(), body, true);
    let err = install(&spec(None), &opts(&hub, &cache, &out)).unwrap_err();
    assert!(
        matches!(err, Error::Hub { .. } | Error::Incomplete { .. }),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}
