//! Darknet `.weights` for YOLOv3-Darknet53, read and written in `yolov3.cfg` order.
//!
//! Layout: int32 `major`, `minor`, `revision`; `seen` as int64 when
//! `major * 10 + minor >= 2`, else int32; then, for every convolution in cfg order,
//! either BN beta, gamma, running mean, running variance then the weights
//! (`[out, in, k, k]`, row-major), or, for the linear head convs, the bias then the
//! weights. All values little-endian f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::maps::{yolov3_convs, DARKNET_BN_ORDER};
use crate::{Error, Result};

/// The BatchNorm epsilon darknet normalises with.
pub const DARKNET_BN_EPS: f64 = 1e-6;

/// The header of a `.weights` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DarknetHeader {
    /// Major version.
    pub major: i32,
    /// Minor version.
    pub minor: i32,
    /// Revision.
    pub revision: i32,
    /// Images seen in training.
    pub seen: u64,
}

impl Default for DarknetHeader {
    /// What current darknet writes: 0.2, revision 0, `seen` as int64.
    fn default() -> Self {
        Self {
            major: 0,
            minor: 2,
            revision: 0,
            seen: 0,
        }
    }
}

impl DarknetHeader {
    /// Whether `seen` is stored as int64 (else int32).
    pub fn seen_is_64bit(&self) -> bool {
        self.major * 10 + self.minor >= 2
    }

    /// Header size in bytes.
    pub fn len(&self) -> usize {
        if self.seen_is_64bit() {
            20
        } else {
            16
        }
    }

    /// Always false: a header has at least 16 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn known(&self) -> bool {
        matches!((self.major, self.minor), (0, 0..=2) | (1, 0))
    }
}

/// Floats the YOLOv3-Darknet53 network stores for `num_classes` classes.
pub fn yolov3_float_count(num_classes: usize) -> usize {
    yolov3_convs(num_classes).iter().map(|s| s.floats()).sum()
}

/// The class count a file of `floats` floats would fit, if any.
fn fitting_classes(floats: usize) -> Option<usize> {
    let base = yolov3_float_count(0);
    let per_class = yolov3_float_count(1) - base;
    (floats >= base && (floats - base).is_multiple_of(per_class))
        .then(|| (floats - base) / per_class)
}

fn hint(floats: usize, num_classes: usize) -> String {
    match fitting_classes(floats) {
        Some(c) if c != num_classes && c > 0 => {
            format!(" (the size fits {c} classes: pass --num-classes {c})")
        }
        _ => String::new(),
    }
}

/// A parsed `.weights` file: its header and the tensors under reference names.
#[derive(Debug)]
pub struct DarknetWeights {
    /// The header.
    pub header: DarknetHeader,
    /// `(reference name, f32 tensor)` in file order.
    pub tensors: Vec<(String, Tensor)>,
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the bytes of a YOLOv3-Darknet53 `.weights` file (`path` is for messages).
pub fn parse_darknet(bytes: &[u8], num_classes: usize, path: &Path) -> Result<DarknetWeights> {
    if bytes.len() < 16 {
        return Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
            detail: format!(": {} bytes is too short for a darknet header", bytes.len()),
        });
    }
    let (major, minor, revision) = (i32_at(bytes, 0), i32_at(bytes, 4), i32_at(bytes, 8));
    let mut header = DarknetHeader {
        major,
        minor,
        revision,
        seen: 0,
    };
    if !header.known() {
        return Err(Error::DarknetVersion {
            path: path.to_path_buf(),
            major,
            minor,
            revision,
        });
    }
    if bytes.len() < header.len() {
        return Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
            detail: ": too short for a darknet header".into(),
        });
    }
    header.seen = if header.seen_is_64bit() {
        u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"))
    } else {
        i32_at(bytes, 12) as u32 as u64
    };
    let body = &bytes[header.len()..];
    let found = body.len() / 4;
    let expected = yolov3_float_count(num_classes);
    if found < expected {
        return Err(Error::DarknetTruncated {
            path: path.to_path_buf(),
            expected,
            found,
            num_classes,
            hint: hint(found, num_classes),
        });
    }
    if body.len() > expected * 4 {
        return Err(Error::DarknetTrailing {
            path: path.to_path_buf(),
            expected,
            found,
            extra_bytes: body.len() - expected * 4,
            num_classes,
            hint: if body.len().is_multiple_of(4) {
                hint(found, num_classes)
            } else {
                String::new()
            },
        });
    }
    let mut pos = 0usize;
    let mut take = |dims: &[usize]| -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = body[pos * 4..(pos + n) * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        pos += n;
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    };
    let mut tensors = Vec::with_capacity(75 * 5);
    for slot in yolov3_convs(num_classes) {
        let out = slot.shape[0];
        if let Some(bn) = &slot.bn {
            for p in DARKNET_BN_ORDER {
                tensors.push((format!("{bn}.{p}"), take(&[out])?));
            }
        } else if let Some(bias) = &slot.bias {
            tensors.push((bias.clone(), take(&[out])?));
        }
        tensors.push((slot.weight.clone(), take(&slot.shape)?));
    }
    Ok(DarknetWeights { header, tensors })
}

/// Reads a YOLOv3-Darknet53 `.weights` file.
pub fn read_darknet(path: &Path, num_classes: usize) -> Result<DarknetWeights> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_darknet(&bytes, num_classes, path)
}

/// Serialises reference-named tensors as a YOLOv3-Darknet53 `.weights` file.
///
/// Every tensor the network needs must be in `tensors` with its shape.
pub fn darknet_bytes(
    header: &DarknetHeader,
    tensors: &HashMap<String, Tensor>,
    num_classes: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(header.len() + yolov3_float_count(num_classes) * 4);
    out.extend_from_slice(&header.major.to_le_bytes());
    out.extend_from_slice(&header.minor.to_le_bytes());
    out.extend_from_slice(&header.revision.to_le_bytes());
    if header.seen_is_64bit() {
        out.extend_from_slice(&header.seen.to_le_bytes());
    } else {
        out.extend_from_slice(&(header.seen as u32).to_le_bytes());
    }
    let mut put = |name: &str, dims: &[usize]| -> Result<()> {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::Unrecognized(format!("missing tensor `{name}`")))?;
        if t.dims() != dims {
            return Err(Error::Unrecognized(format!(
                "`{name}`: expected shape {dims:?}, found {:?}",
                t.dims()
            )));
        }
        for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            out.extend_from_slice(&v.to_le_bytes());
        }
        Ok(())
    };
    for slot in yolov3_convs(num_classes) {
        let o = slot.shape[0];
        if let Some(bn) = &slot.bn {
            for p in DARKNET_BN_ORDER {
                put(&format!("{bn}.{p}"), &[o])?;
            }
        } else if let Some(bias) = &slot.bias {
            put(bias, &[o])?;
        }
        put(&slot.weight, &slot.shape)?;
    }
    Ok(out)
}
