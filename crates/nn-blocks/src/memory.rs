//! Process-wide allocator settings for inference.

/// Asks glibc's `malloc` to serve large blocks from its heap and to keep freed memory for
/// reuse (`M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` at 1 GiB), so that every activation
/// buffer does not come from a fresh `mmap` of zeroed pages that is unmapped again when the
/// tensor drops. By default glibc maps blocks above its (dynamic, at most 32 MiB) threshold
/// afresh, and a YOLOv3 forward pass then takes ~15,000 page faults (Darknet53, 416²,
/// batch 1) and far more at batch 8; with this it takes a few hundred. The peak RSS stays
/// the same (`cargo xtask bench` prints it).
///
/// It changes the whole process, so it is for binaries to call once at startup (`yolo-cli`
/// and the benchmarks do); returns whether it was applied (false off Linux/glibc).
pub fn reuse_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes malloc's tuning parameters; both are documented
        // options and the values are in range (it returns 0 on a refused value).
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB) == 1
        };
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn applies_on_linux_glibc() {
        let applied = super::reuse_freed_buffers();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // allocations keep working
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 64 << 20);
    }
}
