//! Replays the fuzz corpora and the regression inputs (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the targets' bodies: every file must be parsed
//! without a panic (an `Ok` or a typed error), as under the fuzzer.

use std::path::{Path, PathBuf};

use fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_has_a_corpus_and_every_folder_a_target() {
    for (name, _) in TARGETS {
        let n = files(&fuzz_dir().join("corpus").join(name)).len();
        assert!(n > 0, "fuzz/corpus/{name}/ is empty or missing");
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(src.is_file(), "{} is missing", src.display());
    }
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz_dir().join(kind))
            .into_iter()
            .flatten()
        {
            let dir = dir.unwrap();
            // scripts that make regression inputs (make_pth.py) sit beside the folders
            if !dir.file_type().unwrap().is_dir() {
                continue;
            }
            let name = dir.file_name().to_string_lossy().into_owned();
            assert!(
                fuzz_targets::target(&name).is_some(),
                "fuzz/{kind}/{name}/ names no target"
            );
        }
    }
}

#[test]
fn corpora_and_regressions_replay_without_a_panic() {
    let mut replayed = 0;
    for (name, body) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).unwrap();
                // A panic fails the test; name the input first.
                eprintln!("{name}: {}", file.display());
                body(&data);
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
}
