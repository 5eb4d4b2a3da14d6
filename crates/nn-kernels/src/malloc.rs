//! One allocator setting for binaries to choose: glibc's malloc keeping freed
//! activation buffers for reuse.
//!
//! It changes the whole process, so no library of yolo-rs calls it: `yolo-cli` and the
//! benchmark call it at the top of `main` (a binary of one's own may too). It lives here
//! because it is a foreign call, and this is the one crate where `unsafe` is allowed.

/// Asks glibc's `malloc` to serve large blocks from its heap and to keep freed memory for
/// reuse (`M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` at 1 GiB), so that every activation
/// buffer does not come from a fresh `mmap` of zeroed pages that is unmapped again when
/// the tensor drops. By default glibc maps blocks above its (dynamic, at most 32 MiB)
/// threshold afresh, and a YOLOv3 forward pass then takes thousands of page faults; with
/// this, a few hundred. The peak RSS stays the same.
///
/// Returns whether it was applied (false off Linux with glibc).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes malloc's tuning parameters; both are documented
        // options and the values are in range (it returns 0 on a refused value).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB) == 1
        }
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
        let applied = super::retain_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // allocations keep working
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 64 << 20);
    }
}
