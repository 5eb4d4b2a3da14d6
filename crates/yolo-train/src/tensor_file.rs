//! Writing safetensors files (checkpoint weights, optimiser state) atomically through
//! [`yolo_io`], with the permissions any new file gets.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;

use candle_core::Tensor;
use yolo_io::Overwrite;

use crate::Result;

/// Writes `tensors` to `path` as safetensors, atomically: `path` is its old self or the
/// complete new file. A new file gets the umask's permissions, a replaced one keeps its
/// own.
pub fn save_tensors_atomic<K: AsRef<str> + Ord + Display>(
    path: &Path,
    tensors: &HashMap<K, Tensor>,
) -> Result<()> {
    // safetensors writes a file of its own (mode 0o600) and renames it over `tmp`;
    // yolo-io gives the result the usual mode before its own rename.
    yolo_io::write_atomic_path(path, Overwrite::Allow, |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(tensors, tmp)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[cfg(unix)]
    #[test]
    fn a_saved_file_has_the_umask_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = HashMap::from([("a", Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())]);
        save_tensors_atomic(&path, &t).unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        assert_eq!(mode(&path), mode(&probe));
        let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back["a"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        // a replaced file keeps its mode, and no temporary file is left
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        save_tensors_atomic(&path, &t).unwrap();
        assert_eq!(mode(&path), 0o640);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
