//! Download (hf-hub 0.5, sync API), verification and atomic installation.
//!
//! Files come through the Hugging Face cache (`HF_HOME`, or an explicit directory);
//! a file already there is used without touching the network. The source's sha256 is
//! checked when the registry knows it and recorded in the manifest either way; the
//! converted file and its manifest are written atomically ([`yolo_io`]), so
//! `model_data/weights/` never holds a half-written or unverified file.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::convert::{convert_file, hex, sha256_hex, ConvertOptions};
use crate::manifest::{manifest_path, weights_path, Manifest, WeightSpec};
use crate::{Error, Result};

/// How to download and where to install.
#[derive(Debug, Clone, Default)]
pub struct DownloadOptions {
    /// Installation directory (`model_data/weights`).
    pub out_dir: PathBuf,
    /// Hub endpoint; `HF_ENDPOINT` or `https://huggingface.co` when `None`.
    pub endpoint: Option<String>,
    /// Hugging Face cache directory (the `hub` folder); `$HF_HOME/hub` or
    /// `~/.cache/huggingface/hub` when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Reinstall even when up to date, and download again when online.
    pub force: bool,
    /// Never touch the network: use the cache or fail.
    pub offline: bool,
    /// Show a progress bar per file on stderr.
    pub progress: bool,
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The installed file matched its manifest; nothing was done.
    UpToDate,
    /// Converted from a file already in the Hugging Face cache.
    FromCache,
    /// Downloaded, verified and converted.
    Downloaded,
}

/// The result of [`install`].
#[derive(Debug, Clone)]
pub struct Installed {
    /// What happened.
    pub outcome: Outcome,
    /// The canonical file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// sha256 (hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// Whether `{out_dir}/{name}.safetensors` is present and matches its manifest.
pub fn is_installed(out_dir: &Path, name: &str) -> Option<Manifest> {
    let m = Manifest::read(&manifest_path(out_dir, name)).ok()?;
    let (sha, _) = sha256_file(&weights_path(out_dir, name)).ok()?;
    (sha == m.converted_sha256).then_some(m)
}

/// The Hugging Face cache [`install`] uses for `opts`.
pub fn cache_for(opts: &DownloadOptions) -> Cache {
    match &opts.cache_dir {
        Some(d) => Cache::new(d.clone()),
        None => Cache::from_env(),
    }
}

/// An indicatif bar fed by hf-hub.
struct Bar(ProgressBar);

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_message(filename.to_string());
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}

fn bar(show: bool, name: &str) -> Bar {
    if !show {
        return Bar(ProgressBar::hidden());
    }
    let pb = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(name.to_string());
    Bar(pb)
}

/// Removes a cached file (its snapshot pointer and the blob behind it).
fn evict(path: &Path) {
    if let Ok(target) = std::fs::read_link(path) {
        let blob = if target.is_absolute() {
            target
        } else {
            path.parent().map(|p| p.join(&target)).unwrap_or(target)
        };
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}

/// The commit of a cached snapshot path (`…/snapshots/{commit}/{file}`).
fn commit_of(path: &Path, file: &str) -> Option<String> {
    let mut p = path.to_path_buf();
    for _ in file.split('/') {
        p.pop();
    }
    p.file_name().map(|c| c.to_string_lossy().into_owned())
}

/// Fetches `spec`'s file into the cache (or finds it there): `(path, from_cache)`.
fn fetch(spec: &WeightSpec, opts: &DownloadOptions) -> Result<(PathBuf, bool, Option<u64>)> {
    let repo = Repo::with_revision(spec.repo.clone(), RepoType::Model, spec.revision.clone());
    let cache = cache_for(opts);
    let cached = cache.repo(repo.clone()).get(&spec.file);
    match cached {
        Some(p) if opts.offline || !opts.force => return Ok((p, true, None)),
        None if opts.offline => {
            return Err(Error::NotCached {
                repo: spec.repo.clone(),
                file: spec.file.clone(),
                cache: cache.path().clone(),
            })
        }
        _ => {}
    }
    let hub = |message: String| Error::Hub {
        repo: spec.repo.clone(),
        file: spec.file.clone(),
        message,
    };
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(e) = &opts.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    if let Some(d) = &opts.cache_dir {
        builder = builder.with_cache_dir(d.clone());
    }
    let api = builder.build().map_err(|e| hub(e.to_string()))?;
    let api_repo = api.repo(repo);
    let meta = api
        .metadata(&api_repo.url(&spec.file))
        .map_err(|e| hub(e.to_string()))?;
    let path = api_repo
        .download_with_progress(&spec.file, bar(opts.progress, &spec.name))
        .map_err(|e| hub(e.to_string()))?;
    Ok((path, false, Some(meta.size() as u64)))
}

/// Installs `spec` as `{out_dir}/{name}.safetensors` plus `{name}.json`: skips when
/// up to date, else fetches (cache first), verifies, converts and renames into place.
pub fn install(spec: &WeightSpec, opts: &DownloadOptions) -> Result<Installed> {
    let out = weights_path(&opts.out_dir, &spec.name);
    let mpath = manifest_path(&opts.out_dir, &spec.name);
    if !opts.force {
        if let Some(manifest) = is_installed(&opts.out_dir, &spec.name) {
            return Ok(Installed {
                outcome: Outcome::UpToDate,
                path: out,
                manifest,
            });
        }
    }
    let (src, from_cache, announced) = fetch(spec, opts)?;
    let (sha, size) = sha256_file(&src)?;
    let expected_size = announced.or(spec.size);
    if let Some(expected) = expected_size {
        if expected != size {
            evict(&src);
            return Err(Error::Incomplete {
                repo: spec.repo.clone(),
                file: spec.file.clone(),
                expected,
                found: size,
            });
        }
    }
    if let Some(expected) = &spec.sha256 {
        if !expected.eq_ignore_ascii_case(&sha) {
            evict(&src);
            return Err(Error::Checksum {
                repo: spec.repo.clone(),
                file: spec.file.clone(),
                expected: expected.clone(),
                found: sha,
            });
        }
    }
    let converted = convert_file(
        &src,
        &ConvertOptions {
            format: Some(spec.format),
            ..Default::default()
        },
    )?;
    let mut converted = converted;
    converted.meta.source = format!("hf://{}@{}/{}", spec.repo, spec.revision, spec.file);
    let bytes = converted.to_bytes()?;
    let converted_sha256 = sha256_hex(&bytes);
    yolo_io::write_bytes_atomic(&out, yolo_io::Overwrite::Allow, &bytes)?;
    let manifest = Manifest {
        name: spec.name.clone(),
        repo: spec.repo.clone(),
        revision: spec.revision.clone(),
        commit: commit_of(&src, &spec.file),
        file: spec.file.clone(),
        source_sha256: sha,
        source_sha256_verified: spec.sha256.is_some(),
        source_size: size,
        converted_sha256,
        converted_size: bytes.len() as u64,
        model: converted.meta.model.name().into(),
        backbone: converted.meta.backbone.name().into(),
        num_classes: converted.meta.num_classes,
        bn_eps: converted.meta.bn_eps,
        tensors: converted.tensors.len(),
        parameters: converted.numel(),
        licence: spec.licence.clone(),
    };
    manifest.write(&mpath)?;
    Ok(Installed {
        outcome: if from_cache {
            Outcome::FromCache
        } else {
            Outcome::Downloaded
        },
        path: out,
        manifest,
    })
}
