//! Writing to stdout without panicking when the reader goes away (`yolo-cli … | head`).

use std::io::Write;

/// Writes `text` to stdout; a closed pipe ends the process quietly with success.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}
