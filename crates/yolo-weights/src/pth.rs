//! PyTorch zip checkpoints (`torch.save`, torch >= 1.6).
//!
//! Accepts bare state dicts and dicts wrapping one under `state_dict` or `model`;
//! `module.` prefixes (from `DataParallel`) are stripped by the converter.
//!
//! The file is untrusted: its `data.pkl` runs on a bounded pickle machine (see
//! `pickle.rs`: no panic, no allocation the bytes do not justify), each tensor's
//! record (storage, offset, shape, strides) is checked, and its storage must hold the
//! bytes its shape asks for before any is read. (candle's own `.pth` reader panics on
//! short records and allocates whatever size a record claims.)

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::pickle::Object;
use candle_core::{DType, Device, Tensor};

use crate::pickle::unpickle;
use crate::{Error, Result};

/// The first bytes of a zip archive.
pub const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Whether `head` starts like a legacy (non-zip) PyTorch file: a raw pickle stream.
pub fn is_legacy_pickle(head: &[u8]) -> bool {
    head.first() == Some(&0x80) && head.get(1).is_some_and(|p| (2..=5).contains(p))
}

/// Reads every tensor of a zip `.pth`, sorted by name.
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_pth_from(std::io::BufReader::new(file), path)
}

/// As [`read_pth`], from the bytes of a file in memory; `path` names them in errors.
pub fn read_pth_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    read_pth_from(Cursor::new(bytes), path)
}

/// A tensor's record in `data.pkl`, checked.
#[derive(Debug)]
struct TensorRecord {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Whether the strides are column-major (else row-major).
    fortran: bool,
    /// Offset into the storage, in elements.
    offset: usize,
    /// The storage's entry in the archive.
    entry: String,
}

fn read_pth_from<R: Read + Seek>(mut r: R, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let io = |e| Error::io(path, e);
    let file_len = r.seek(SeekFrom::End(0)).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut head = Vec::with_capacity(4);
    (&mut r).take(4).read_to_end(&mut head).map_err(io)?;
    if is_legacy_pickle(&head) {
        return Err(Error::LegacyPth {
            path: path.to_path_buf(),
        });
    }
    if head != ZIP_MAGIC {
        return Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
            detail: ": not a zip archive".into(),
        });
    }
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let corrupt = |m: String| Error::NotACheckpoint {
        path: path.to_path_buf(),
        detail: format!(": a corrupt zip .pth ({m})"),
    };
    let mut zip = zip::ZipArchive::new(r).map_err(|e| corrupt(format!("zip: {e}")))?;
    let mut pickles = Vec::new();
    for name in zip.file_names() {
        let name = name.map_err(|e| corrupt(format!("zip: {e}")))?;
        if name.ends_with("data.pkl") {
            pickles.push(name.into_owned());
        }
    }
    // Each data.pkl's object (a `__torch__` Module wrapper taken off) and its folder.
    let mut objects = Vec::with_capacity(pickles.len());
    for name in &pickles {
        let bytes = read_entry(&mut zip, name, 0, None, file_len).map_err(&corrupt)?;
        let obj = unpickle(&bytes).map_err(|e| corrupt(format!("{name}: {e}")))?;
        let dir = name.strip_suffix(".pkl").unwrap_or(name).to_string();
        objects.push((dir, unwrap_module(obj)));
    }
    let mut last_err = None;
    for key in [Some("state_dict"), Some("model"), None] {
        let mut records = Vec::new();
        for (dir, obj) in &objects {
            match state_dict(obj, key) {
                Ok(Object::Dict(items)) => {
                    for (name, value) in items {
                        if let Some(rec) = tensor_record(name, value, dir).map_err(&corrupt)? {
                            records.push(rec);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        if records.is_empty() {
            continue;
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records.dedup_by(|a, b| a.name == b.name);
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            let t = read_tensor(&mut zip, &rec, file_len).map_err(&corrupt)?;
            out.push((rec.name, t));
        }
        return Ok(out);
    }
    Err(Error::NotACheckpoint {
        path: path.to_path_buf(),
        detail: match last_err {
            Some(e) => format!(": a zip archive without a state dict ({e})"),
            None => ": a zip archive without a state dict".into(),
        },
    })
}

/// The object a TorchScript-style `__torch__` Module wraps, else `obj`.
fn unwrap_module(obj: Object) -> Object {
    if let Object::Build { callable, args } = &obj {
        if let Object::Reduce { callable, .. } = callable.as_ref() {
            if matches!(callable.as_ref(), Object::Class { module_name, class_name }
                if module_name == "__torch__" && class_name == "Module")
            {
                return args.as_ref().clone();
            }
        }
    }
    obj
}

/// The value under `key` of a dict (the whole object when it is not a dict or `key` is
/// none).
fn state_dict(obj: &Object, key: Option<&str>) -> std::result::Result<Object, String> {
    match (obj, key) {
        (Object::Dict(items), Some(key)) => items
            .iter()
            .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("key {key} not found")),
        _ => Ok(obj.clone()),
    }
}

fn is_class(obj: &Object, module: &str, class: &str) -> bool {
    matches!(obj, Object::Class { module_name, class_name }
        if module_name == module && class_name == class)
}

/// A non-negative integer that fits `usize`.
fn count(obj: &Object) -> Option<usize> {
    match obj {
        Object::Int(i) => usize::try_from(*i).ok(),
        Object::Long(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn counts(obj: &Object) -> Option<Vec<usize>> {
    match obj {
        Object::Tuple(v) | Object::List(v) => v.iter().map(count).collect(),
        _ => None,
    }
}

/// The tensor record of a state dict's item, `None` when the item is no tensor; an
/// error names the tensor whose record is malformed.
fn tensor_record(
    name: Object,
    value: Object,
    dir: &str,
) -> std::result::Result<Option<TensorRecord>, String> {
    let Object::Unicode(name) = name else {
        return Ok(None);
    };
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let bad = |what: &str| format!("tensor `{name}`: {what}");
    let (callable, args) = if is_class(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        // (function, type, args, state)
        match *args {
            Object::Tuple(mut a) if a.len() >= 3 => {
                let inner = a.swap_remove(2);
                (Box::new(a.swap_remove(0)), Box::new(inner))
            }
            _ => return Err(bad("a _rebuild_from_type_v2 without its arguments")),
        }
    } else if is_class(&callable, "torch._utils", "_rebuild_parameter") {
        // (data, requires_grad, backward_hooks)
        match *args {
            Object::Tuple(mut a) if !a.is_empty() => match a.swap_remove(0) {
                Object::Reduce { callable, args } => (callable, args),
                _ => return Err(bad("a _rebuild_parameter of no tensor")),
            },
            _ => return Err(bad("a _rebuild_parameter without its arguments")),
        }
    } else {
        (callable, args)
    };
    if !is_class(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    let Object::Tuple(a) = *args else {
        return Err(bad("_rebuild_tensor_v2 arguments are not a tuple"));
    };
    if a.len() < 4 {
        return Err(bad("fewer than 4 _rebuild_tensor_v2 arguments"));
    }
    let offset = count(&a[1]).ok_or_else(|| bad("the storage offset is not a count"))?;
    let shape = counts(&a[2]).ok_or_else(|| bad("the size is not a tuple of counts"))?;
    let stride = counts(&a[3]).ok_or_else(|| bad("the stride is not a tuple of counts"))?;
    if stride.len() != shape.len() {
        return Err(bad("size and stride differ in rank"));
    }
    // ('storage', storage class, key, location, numel)
    let storage = match &a[0] {
        Object::PersistentLoad(id) => match id.as_ref() {
            Object::Tuple(s) if s.len() >= 5 => s,
            _ => return Err(bad("a storage id that is not a 5-tuple")),
        },
        _ => return Err(bad("no persistent storage")),
    };
    let Object::Class { class_name, .. } = &storage[1] else {
        return Err(bad("the storage type is not a class"));
    };
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        other => return Err(bad(&format!("unsupported storage type {other}"))),
    };
    let Object::Unicode(key) = &storage[2] else {
        return Err(bad("the storage key is not a string"));
    };
    // Row-major or column-major strides (dimensions of size 1 have any stride).
    let strides_of = |dims: &mut dyn Iterator<Item = (usize, usize)>| {
        let mut expected = 1usize;
        for (n, s) in dims {
            if n != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(n);
        }
        true
    };
    let pairs = || shape.iter().copied().zip(stride.iter().copied());
    let row_major = strides_of(&mut pairs().rev());
    let fortran = !row_major && strides_of(&mut pairs());
    if !row_major && !fortran {
        return Err(bad(&format!(
            "strides {stride:?} for size {shape:?} (only contiguous tensors are read)"
        )));
    }
    Ok(Some(TensorRecord {
        name,
        dtype,
        shape,
        fortran,
        offset,
        entry: format!("{dir}/{key}"),
    }))
}

/// The bytes `[skip, skip + len)` of the archive's entry `name` (to its end when `len`
/// is none), refused when the entry is shorter; nothing larger than the file is
/// allocated.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    skip: u64,
    len: Option<u64>,
    file_len: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut entry = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let size = entry.size();
    let want = len.unwrap_or(size.saturating_sub(skip));
    let end = skip.checked_add(want).filter(|&e| e <= size);
    if end.is_none() || want > file_len {
        return Err(format!(
            "{name}: {want} bytes wanted at {skip} of an entry of {size} bytes"
        ));
    }
    std::io::copy(&mut (&mut entry).take(skip), &mut std::io::sink())
        .map_err(|e| format!("{name}: {e}"))?;
    let mut bytes = Vec::with_capacity(want as usize);
    (&mut entry)
        .take(want)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 != want {
        return Err(format!(
            "{name}: {} of {want} bytes (truncated)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Reads the tensor of `rec` from its storage entry.
fn read_tensor<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    rec: &TensorRecord,
    file_len: u64,
) -> std::result::Result<Tensor, String> {
    let bad = |what: String| format!("tensor `{}`: {what}", rec.name);
    let elem = rec.dtype.size_in_bytes();
    let bytes = rec
        .shape
        .iter()
        .try_fold(elem, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| bad(format!("size {:?} overflows", rec.shape)))?;
    let skip = rec
        .offset
        .checked_mul(elem)
        .ok_or_else(|| bad(format!("storage offset {} overflows", rec.offset)))?;
    let raw = read_entry(zip, &rec.entry, skip as u64, Some(bytes as u64), file_len)
        .map_err(|e| bad(format!("size {:?} {:?}: {e}", rec.shape, rec.dtype)))?;
    let t = if rec.fortran {
        let reversed: Vec<usize> = rec.shape.iter().rev().copied().collect();
        let dims: Vec<usize> = (0..reversed.len()).rev().collect();
        Tensor::from_raw_buffer(&raw, rec.dtype, &reversed, &Device::Cpu)
            .and_then(|t| t.permute(dims))
    } else {
        Tensor::from_raw_buffer(&raw, rec.dtype, &rec.shape, &Device::Cpu)
    };
    t.map_err(|e| bad(e.to_string()))
}
