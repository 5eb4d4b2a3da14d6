//! PyTorch zip checkpoints (`torch.save`, torch >= 1.6) through candle's pickle reader.
//!
//! Accepts bare state dicts and dicts wrapping one under `state_dict` or `model`;
//! `module.` prefixes (from `DataParallel`) are stripped by the converter.

use std::io::Read;
use std::path::Path;

use candle_core::pickle::{read_pth_tensor_info, PthTensors};
use candle_core::Tensor;

use crate::{Error, Result};

/// The first bytes of a zip archive.
pub const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Whether `head` starts like a legacy (non-zip) PyTorch file: a raw pickle stream.
pub fn is_legacy_pickle(head: &[u8]) -> bool {
    head.first() == Some(&0x80) && head.get(1).is_some_and(|p| (2..=5).contains(p))
}

/// Reads every tensor of a zip `.pth`, sorted by name.
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::io(path, e))?;
    if is_legacy_pickle(&head[..n]) {
        return Err(Error::LegacyPth {
            path: path.to_path_buf(),
        });
    }
    if &head[..n] != ZIP_MAGIC {
        return Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
            detail: ": not a zip archive".into(),
        });
    }
    let mut last_err = None;
    for key in [Some("state_dict"), Some("model"), None] {
        match read_pth_tensor_info(path, false, key) {
            Ok(infos) if !infos.is_empty() => {
                let pth = PthTensors::new(path, key)?;
                let mut names: Vec<String> = infos.into_iter().map(|i| i.name).collect();
                names.sort();
                names.dedup();
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    if let Some(t) = pth.get(&name)? {
                        out.push((name, t));
                    }
                }
                return Ok(out);
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    Err(Error::NotACheckpoint {
        path: path.to_path_buf(),
        detail: match last_err {
            Some(e) => format!(": a zip archive without a state dict ({e})"),
            None => ": a zip archive without a state dict".into(),
        },
    })
}
