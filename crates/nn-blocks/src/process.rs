//! Process-wide settings for binaries: the allocator and the thread count.

/// Whether the on/off switch in the environment variable `var` is on: it is unless set
/// to `0` (the `NN_BLOCKS_*` switches, which turn fast paths off for comparisons).
pub(crate) fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.trim() != "0")
}

/// Asks glibc's `malloc` to serve large blocks from its heap and to keep freed memory for
/// reuse (`M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` at 1 GiB), so that every activation
/// buffer does not come from a fresh `mmap` of zeroed pages that is unmapped again when the
/// tensor drops. By default glibc maps blocks above its (dynamic, at most 32 MiB) threshold
/// afresh, and a YOLOv3 forward pass then takes ~15,000 page faults (Darknet53, 416²,
/// batch 1) and far more at batch 8; with this it takes a few hundred. The peak RSS stays
/// the same (`cargo xtask bench` prints it).
///
/// It changes the whole process, so it is for binaries to call once at startup (`yolo-cli`
/// and the benchmarks do); returns whether it was applied (false off Linux/glibc, or with
/// `NN_BLOCKS_REUSE_BUFFERS=0` in the environment, which keeps glibc's defaults for
/// comparisons).
pub fn reuse_freed_buffers() -> bool {
    if !switched_on("NN_BLOCKS_REUSE_BUFFERS") {
        return false;
    }
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

/// Fixes candle's thread count for the process: sets `RAYON_NUM_THREADS` to what
/// `candle_core::utils::get_num_threads()` answers when it is unset (the physical cores, or
/// the CPU mask), and returns it.
///
/// Without `RAYON_NUM_THREADS`, candle works that default out again at every call, and
/// calls it in most CPU ops: on Linux that reads `/proc/cpuinfo` each time (66,000 reads in
/// three training steps at 64 px, a third of the run's time in the kernel). With the
/// variable set, the call reads the environment only. The number of threads is unchanged.
/// Call it at startup, before other threads start (it sets an environment variable).
pub fn cache_thread_count() -> usize {
    let set = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    match set {
        Some(n) => n,
        None => {
            let n = candle_core::utils::get_num_threads();
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            n
        }
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

    #[test]
    fn thread_count_is_candles_and_stays() {
        let n = super::cache_thread_count();
        assert!(n >= 1);
        assert_eq!(candle_core::utils::get_num_threads(), n);
        assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), n.to_string());
        assert_eq!(super::cache_thread_count(), n);
    }
}
