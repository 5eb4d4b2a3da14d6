//! `cargo xtask bump-version X.Y.Z`: one version for every crate of the workspace.
//!
//! The crates inherit `[workspace.package] version`, and the root manifest's
//! `[workspace.dependencies]` name each publishable crate with `version = "…", path = …`
//! (a published crate must name its dependencies' versions). This rewrites both, and
//! nothing else, in the root `Cargo.toml`; Cargo.lock follows at the next build.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Set the version of every crate of the workspace (the root Cargo.toml's
/// [workspace.package] version and the versions of the path dependencies in
/// [workspace.dependencies]).
#[derive(Debug, Args)]
pub struct BumpArgs {
    /// The new version, e.g. 0.2.0 or 0.2.0-rc.1.
    pub version: String,
}

/// Whether `v` is a semantic version: `MAJOR.MINOR.PATCH` with an optional
/// `-pre.release` suffix.
fn is_semver(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.split('.').all(|id| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        })
}

/// Replaces the value of `version = "…"` in `line` (the first occurrence) by `new`.
fn replace_version(line: &str, new: &str) -> Option<String> {
    let key = line.find("version")?;
    let after_key = &line[key + "version".len()..];
    let eq = after_key.find('=')?;
    if !after_key[..eq].trim().is_empty() {
        return None;
    }
    let value = &after_key[eq + 1..];
    let open = value.find('"')?;
    if !value[..open].trim().is_empty() {
        return None;
    }
    let close = value[open + 1..].find('"')?;
    let start = key + "version".len() + eq + 1 + open + 1;
    let end = start + close;
    Some(format!("{}{new}{}", &line[..start], &line[end..]))
}

/// The root manifest `manifest` with `new` as the workspace version and as the version
/// of every path dependency in `[workspace.dependencies]`. Fails when the manifest has
/// no `[workspace.package]` version, or a path dependency there has no version.
pub fn rewrite(manifest: &str, new: &str) -> Result<String> {
    let mut section = String::new();
    let mut package_version = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            section = trimmed
                .trim_end()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string();
        }
        let is_comment = trimmed.starts_with('#');
        let rewritten = match section.as_str() {
            "workspace.package" if !is_comment && trimmed.starts_with("version") => {
                package_version = true;
                replace_version(line, new)
            }
            "workspace.dependencies" if !is_comment && trimmed.contains("path =") => {
                match replace_version(line, new) {
                    Some(l) => Some(l),
                    // test-support and the like: path only, never published
                    None => Some(line.to_string()),
                }
            }
            _ => None,
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
    }
    if !package_version {
        bail!("no `version` in [workspace.package]");
    }
    Ok(out)
}

/// Runs `cargo xtask bump-version`.
pub fn bump(root: &Path, args: BumpArgs) -> Result<()> {
    if !is_semver(&args.version) {
        bail!(
            "`{}` is not a version: expected MAJOR.MINOR.PATCH, e.g. 0.2.0",
            args.version
        );
    }
    let path = root.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let new = rewrite(&text, &args.version)?;
    if new == text {
        println!("{}: already at {}", path.display(), args.version);
        return Ok(());
    }
    std::fs::write(&path, &new).with_context(|| format!("writing {}", path.display()))?;
    for (old, changed) in text.lines().zip(new.lines()).filter(|(a, b)| a != b) {
        println!("- {old}\n+ {changed}");
    }
    println!(
        "{} rewritten; now move CHANGELOG.md's [Unreleased] entries under [{}] and run `cargo check --workspace` to update Cargo.lock",
        path.display(),
        args.version
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[workspace]
members = ["crates/*", "xtask"]

[workspace.package]
version = "0.1.0"
edition = "2021"
rust-version = "1.89"

[workspace.dependencies]
candle-core = "0.11.1"
clap = { version = "4", features = ["derive"] }
nn-kernels = { version = "0.1.0", path = "crates/nn-kernels" }
yolov3-head = { version = "0.1.0", path = "crates/yolov3-head" }
# test-support is not published: path only
test-support = { path = "crates/test-support" }

[profile.dev]
opt-level = 1
"#;

    #[test]
    fn rewrites_the_workspace_and_path_dependency_versions_only() {
        let out = rewrite(SAMPLE, "0.2.0").unwrap();
        let expected = SAMPLE.replace(r#"version = "0.1.0""#, r#"version = "0.2.0""#);
        assert_eq!(out, expected);
        // the registry dependencies keep theirs
        assert!(out.contains(r#"candle-core = "0.11.1""#));
        assert!(out.contains(r#"clap = { version = "4", features = ["derive"] }"#));
        assert!(out.contains(r#"test-support = { path = "crates/test-support" }"#));
        assert!(out.contains(r#"rust-version = "1.89""#));
        // and again: nothing changes
        assert_eq!(rewrite(&out, "0.2.0").unwrap(), out);
    }

    #[test]
    fn a_manifest_without_a_workspace_version_is_refused() {
        let e = rewrite("[package]\nname = \"x\"\nversion = \"0.1.0\"\n", "0.2.0").unwrap_err();
        assert!(e.to_string().contains("[workspace.package]"), "{e}");
    }

    #[test]
    fn versions_are_checked() {
        for good in ["0.2.0", "1.10.3", "0.2.0-rc.1", "2.0.0-alpha-2"] {
            assert!(is_semver(good), "{good}");
        }
        for bad in [
            "0.2",
            "v0.2.0",
            "0.2.0-",
            "0..1",
            "0.2.x",
            "0.2.0-rc..1",
            "",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
        assert_eq!(
            replace_version(r#"a = { version = "0.1.0", path = "p" }"#, "9.9.9").as_deref(),
            Some(r#"a = { version = "9.9.9", path = "p" }"#)
        );
        assert_eq!(replace_version(r#"a = { path = "p" }"#, "9.9.9"), None);
    }

    #[test]
    fn the_real_manifest_is_understood() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let current = text
            .lines()
            .skip_while(|l| l.trim() != "[workspace.package]")
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("workspace version")
            .to_string();
        // rewriting to the current version changes nothing
        assert_eq!(rewrite(&text, &current).unwrap(), text);
        // every path dependency with a version follows a bump
        let bumped = rewrite(&text, "99.0.0").unwrap();
        for line in bumped.lines().filter(|l| l.contains("path = \"crates/")) {
            assert!(
                line.contains("version = \"99.0.0\"") || line.starts_with("test-support"),
                "{line}"
            );
        }
    }
}
