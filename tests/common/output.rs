//! Reading a finished `yolo-cli` process in the CLI tests: its output as text, and the
//! check that it stopped on an error of its own rather than a panic.

use std::process::Output;

/// Standard output, lossily decoded.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error, lossily decoded.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The process did not panic (no panic message, not Rust's panic exit code 101).
pub fn assert_no_panic(out: &Output) {
    let err = stderr_of(out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
