//! Reading safetensors files one tensor at a time.
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header (the
//! `__metadata__` map, and each tensor's dtype, shape and byte range in the data
//! section), then the data section. The header is parsed and validated with the
//! `safetensors` crate's own types ([`TensorInfo`], [`Metadata`]: contiguous byte ranges
//! of the size their shapes and dtypes say, no overflow), and checked against the file's
//! length before any tensor is read. The tensors are then read from the file one by one,
//! never the whole file at once, so loading holds the tensors read so far plus one
//! tensor's bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use serde::Deserialize;

use crate::{Error, Result};

/// The largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes of the header-length prefix.
const LENGTH_PREFIX_BYTES: u64 = 8;

/// A safetensors file's `__metadata__` map and its named tensors.
pub type SafetensorsContents = (HashMap<String, String>, Vec<(String, Tensor)>);

/// Reads any safetensors file one tensor at a time: its `__metadata__` map and its
/// tensors (in their stored dtypes, on `device`), in the order they are stored. The
/// header is checked first: a truncated or corrupt file is refused, naming the tensor.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<SafetensorsContents> {
    let file = SafetensorsFile::open(path)?;
    let metadata = file.metadata();
    Ok((metadata, file.read_tensors(device, Ok)?))
}

/// As [`read_safetensors`], from the bytes of a file in memory; `path` names them in
/// errors. The same checks run, in the same order.
pub fn read_safetensors_from_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<SafetensorsContents> {
    let file = SafetensorsFile::from_reader(Cursor::new(bytes), bytes.len() as u64, path)?;
    let metadata = file.metadata();
    Ok((metadata, file.read_tensors(device, Ok)?))
}

/// The header as it is stored: the `__metadata__` map and the tensors by name. (The
/// `safetensors` crate deserialises the same shape straight into [`Metadata`]; going
/// through the list here lets an error name the tensor at fault.)
#[derive(Deserialize)]
struct StoredHeader {
    #[serde(rename = "__metadata__", default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(flatten)]
    tensors: HashMap<String, TensorInfo>,
}

/// An open safetensors file (or its bytes: any `R` that reads and seeks) whose header
/// has been read and validated against the file.
pub(crate) struct SafetensorsFile<R = File> {
    path: PathBuf,
    file: R,
    header: Metadata,
    /// Offset of the data section in the file.
    data_start: u64,
}

impl SafetensorsFile {
    /// Opens `path` and reads and validates its header; nothing of the data section is
    /// read yet.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::from_reader(file, file_len, path)
    }
}

impl<R: Read + Seek> SafetensorsFile<R> {
    /// Reads and validates the header of the `file_len` bytes `file` reads (from its
    /// start); `path` names them in errors.
    pub(crate) fn from_reader(mut file: R, file_len: u64, path: &Path) -> Result<Self> {
        let (header, data_start) = read_header(&mut file, file_len).map_err(|e| match e {
            HeaderError::Io(e) => Error::io(path, e),
            HeaderError::Bad(m) => Error::NotACheckpoint {
                path: path.to_path_buf(),
                detail: format!(": bad safetensors ({m})"),
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            header,
            data_start,
        })
    }

    /// The `__metadata__` map (empty when absent).
    pub(crate) fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// Tensor shapes by name.
    pub(crate) fn shapes(&self) -> HashMap<String, Vec<usize>> {
        let tensors = self.header.tensors().into_iter();
        tensors
            .map(|(name, info)| (name, info.shape.clone()))
            .collect()
    }

    /// Reads every tensor, in file order, passing each through `convert` as soon as it
    /// is read (its raw bytes are dropped before the next one is read).
    pub(crate) fn read_tensors(
        mut self,
        device: &Device,
        convert: impl Fn(Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Vec<(String, Tensor)>> {
        let names = self.header.offset_keys();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let info = self
                .header
                .info(&name)
                .expect("a name of the header")
                .clone();
            let tensor = self.read_tensor(&info, device)?;
            tensors.push((name, convert(tensor)?));
        }
        Ok(tensors)
    }

    /// Reads one tensor's bytes (validated against the file by [`read_header`]).
    fn read_tensor(&mut self, info: &TensorInfo, device: &Device) -> Result<Tensor> {
        let (start, end) = info.data_offsets;
        let dtype = candle_dtype(info.dtype).expect("dtype checked with the header");
        self.file
            .seek(SeekFrom::Start(self.data_start + start as u64))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(Tensor::from_raw_buffer(&bytes, dtype, &info.shape, device)?)
    }
}

/// The candle dtype of a stored one, for those this reader loads (floats, and integer
/// buffers such as `num_batches_tracked`).
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

/// Why a header was refused.
enum HeaderError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The header is malformed or does not fit the file (the message says how).
    Bad(String),
}

/// Reads and validates the header of a file of `file_len` bytes: its length within
/// bounds and the file, its JSON, every tensor's dtype supported and byte range the size
/// its shape says, and the byte ranges covering the data section exactly. Returns the
/// header and the offset of the data section. Nothing is allocated from what the header
/// claims before it is checked against the file's length.
fn read_header(file: &mut impl Read, file_len: u64) -> Result<(Metadata, u64), HeaderError> {
    let bad = |m: String| HeaderError::Bad(m);
    if file_len < LENGTH_PREFIX_BYTES {
        return Err(bad(format!(
            "{file_len} bytes, shorter than the header length"
        )));
    }
    let mut n = [0u8; LENGTH_PREFIX_BYTES as usize];
    file.read_exact(&mut n).map_err(HeaderError::Io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || LENGTH_PREFIX_BYTES + n > file_len {
        return Err(bad(format!("header of {n} bytes in a file of {file_len}")));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(HeaderError::Io)?;
    let stored: StoredHeader =
        serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
    let mut tensors: Vec<(String, TensorInfo)> = stored.tensors.into_iter().collect();
    tensors.sort_by(|(a, x), (b, y)| x.data_offsets.cmp(&y.data_offsets).then(a.cmp(b)));
    for (name, info) in &tensors {
        if candle_dtype(info.dtype).is_none() {
            return Err(bad(format!(
                "{name}: dtype {} is not supported",
                info.dtype
            )));
        }
    }
    let header = match Metadata::new(stored.metadata, tensors.clone()) {
        Ok(h) => h,
        Err(e) => return Err(bad(describe_invalid(&e, &tensors))),
    };
    let data_start = LENGTH_PREFIX_BYTES + n;
    let data_len = file_len - data_start;
    let covered = header.data_len() as u64;
    if covered > data_len {
        let (name, info) = tensors
            .iter()
            .find(|(_, info)| info.data_offsets.1 as u64 > data_len)
            .expect("a tensor ends past the data section");
        return Err(bad(format!(
            "{} in a data section of {data_len} bytes (truncated or corrupt)",
            describe_tensor(name, info)
        )));
    }
    if covered < data_len {
        return Err(bad(format!(
            "{} bytes after the last tensor in a data section of {data_len} bytes (corrupt: \
             the tensors must cover it exactly)",
            data_len - covered
        )));
    }
    Ok((header, data_start))
}

/// `name: bytes start..end for shape [..] DTYPE`.
fn describe_tensor(name: &str, info: &TensorInfo) -> String {
    let (start, end) = info.data_offsets;
    format!(
        "{name}: bytes {start}..{end} for shape {:?} {}",
        info.shape, info.dtype
    )
}

/// What the `safetensors` crate's validation refused, naming the first tensor that is at
/// fault on its own (its byte range not the size of its shape and dtype, or a size that
/// overflows) when the crate's error does not name one.
fn describe_invalid(
    err: &safetensors::SafeTensorError,
    tensors: &[(String, TensorInfo)],
) -> String {
    if let safetensors::SafeTensorError::InvalidOffset(name) = err {
        return match tensors.iter().find(|(n, _)| n == name) {
            Some((name, info)) => format!(
                "{}: a gap or an overlap with the bytes before it (corrupt)",
                describe_tensor(name, info)
            ),
            None => format!("{err} (truncated or corrupt)"),
        };
    }
    let at_fault = tensors.iter().find(|(name, info)| {
        let (start, end) = info.data_offsets;
        let alone = TensorInfo {
            data_offsets: (0, end.saturating_sub(start)),
            ..info.clone()
        };
        Metadata::new(None, vec![(name.clone(), alone)]).is_err()
    });
    match at_fault {
        Some((name, info)) => format!(
            "{}: {err} (truncated or corrupt)",
            describe_tensor(name, info)
        ),
        None => format!("{err} (truncated or corrupt)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file made of `header` (JSON) and `data_len` zero bytes.
    fn file_with(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn refusal(path: &Path) -> String {
        let e = read_safetensors(path, &Device::Cpu).unwrap_err();
        assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
        let msg = e.to_string();
        let file = path.file_name().unwrap().to_string_lossy();
        assert!(msg.contains(file.as_ref()), "{msg}");
        msg
    }

    #[test]
    fn reads_metadata_and_tensors_in_file_order() {
        let d = tempfile::tempdir().unwrap();
        let header = r#"{"__metadata__":{"k":"v"},
            "b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},
            "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let p = file_with(d.path(), "ok.safetensors", header, 6);
        let (meta, tensors) = read_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(meta, HashMap::from([("k".to_string(), "v".to_string())]));
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(tensors[1].1.dtype(), DType::U8);
        assert_eq!(tensors[1].1.to_vec1::<u8>().unwrap(), [0, 0]);
    }

    #[test]
    fn bytes_in_memory_read_as_the_file_does() {
        let d = tempfile::tempdir().unwrap();
        let header = r#"{"__metadata__":{"k":"v"},
            "b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},
            "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let p = file_with(d.path(), "ok.safetensors", header, 6);
        let bytes = std::fs::read(&p).unwrap();
        let (meta, tensors) = read_safetensors_from_bytes(&bytes, &p, &Device::Cpu).unwrap();
        let (file_meta, file_tensors) = read_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(meta, file_meta);
        let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&tensors), names(&file_tensors));
        assert_eq!(tensors[0].1.to_vec1::<f32>().unwrap(), [0.0]);
        // The same refusals, naming the path given.
        let e =
            read_safetensors_from_bytes(&bytes[..bytes.len() - 1], &p, &Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("ok.safetensors") && e.to_string().contains("b: bytes 4..6"),
            "{e}"
        );
    }

    #[test]
    fn an_absurd_tensor_is_refused_before_anything_is_allocated() {
        let d = tempfile::tempdir().unwrap();
        // 2^40 f32 elements: the byte range is consistent, the file far too short.
        let elems = 1u64 << 40;
        let header = format!(
            r#"{{"huge":{{"dtype":"F32","shape":[{elems}],"data_offsets":[0,{}]}}}}"#,
            elems * 4
        );
        let msg = refusal(&file_with(d.path(), "huge.safetensors", &header, 16));
        assert!(
            msg.contains("huge: bytes 0..4398046511104") && msg.contains("truncated or corrupt"),
            "{msg}"
        );
        // A shape whose size overflows, and one that does not match its byte range.
        let header = r#"{"big":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#;
        let msg = refusal(&file_with(d.path(), "overflow.safetensors", header, 4));
        assert!(msg.contains("big: bytes 0..4"), "{msg}");
        let header = r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
            "y":{"dtype":"F32","shape":[3],"data_offsets":[4,8]}}"#;
        let msg = refusal(&file_with(d.path(), "misfit.safetensors", header, 8));
        assert!(msg.contains("y: bytes 4..8 for shape [3] F32"), "{msg}");
    }

    #[test]
    fn malformed_headers_are_refused_naming_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("json.safetensors", "{not json", 0, "header:"),
            (
                "dtype.safetensors",
                r#"{"c":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#,
                8,
                "c: dtype C64 is not supported",
            ),
            (
                "gap.safetensors",
                r#"{"g":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#,
                3,
                "g: bytes 2..3",
            ),
            (
                "trailing.safetensors",
                r#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                5,
                "4 bytes after the last tensor",
            ),
        ];
        for (file, header, data_len, needle) in cases {
            let msg = refusal(&file_with(d.path(), file, header, data_len));
            assert!(msg.contains(needle), "{file}: {msg}");
        }
        // A header length past the end of the file.
        let p = d.path().join("long.safetensors");
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&p, bytes).unwrap();
        let msg = refusal(&p);
        assert!(
            msg.contains("header of 1099511627776 bytes in a file of 10"),
            "{msg}"
        );
    }
}
