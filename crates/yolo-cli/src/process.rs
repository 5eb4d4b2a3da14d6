//! Process-wide settings of the `yolo-cli` binary: candle's thread count and the
//! allocator's reuse of freed memory. They change the whole process, so they belong to
//! the binary (not to a library) and are applied once, first thing in `main`.

/// Fixes candle's thread count for the process: `threads` when it is given and not zero,
/// else what `candle_core::utils::get_num_threads()` answers (the physical cores, or the
/// CPU mask); sets `RAYON_NUM_THREADS` to it and returns it.
///
/// Without `RAYON_NUM_THREADS`, candle works that default out again at every call, and
/// calls it in most CPU ops: on Linux that reads `/proc/cpuinfo` each time (a large share
/// of a training run's time, measured in `docs/performance.md`). With the variable set, the
/// call reads the environment only.
///
/// It sets an environment variable, which is only sound while no other thread reads the
/// environment: call it at startup, before any thread starts.
pub fn fix_thread_count(threads: Option<usize>) -> usize {
    let n = match threads.filter(|&n| n > 0) {
        Some(n) => n,
        None => {
            // candle's answer, without a RAYON_NUM_THREADS it would take over
            std::env::remove_var("RAYON_NUM_THREADS");
            candle_core::utils::get_num_threads()
        }
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    n
}

/// Asks glibc's `malloc` to serve large blocks from its heap and to keep freed memory for
/// reuse (`M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` at 1 GiB), so that an activation
/// buffer does not come from a fresh `mmap` of zeroed pages that is unmapped again when
/// the tensor drops (thousands of page faults fewer per forward pass; the same peak RSS).
///
/// It also keeps one arena for every thread (`M_ARENA_MAX` 1). A thread other than the
/// main one otherwise gets an arena of its own, made of heaps of at most 64 MiB that
/// glibc shrinks and maps afresh, and whose larger blocks come from `mmap` whatever the
/// threshold: `serve`'s inference thread took about 5200 page faults per Darknet53
/// request at 416 that way, and none with one arena (`docs/performance.md`).
///
/// Returns whether it was applied: false off Linux/glibc, and false (glibc's defaults
/// kept, for comparisons) when `enabled` is false.
pub fn reuse_freed_buffers(enabled: bool) -> bool {
    if !enabled {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes malloc's tuning parameters; both are documented
        // options and the values are in range (it returns 0 on a refused value). It touches
        // no memory of ours. The binary's one unsafe block: the process tuning its own
        // allocator, which no library of the workspace may do.
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        };
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A `--threads` / `RAYON_NUM_THREADS` value: a whole number, 0 for the default.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| {
        format!("`{s}` is not a thread count (from --threads or RAYON_NUM_THREADS): expected a whole number, 0 for one per physical core")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_on_linux_glibc_unless_switched_off() {
        assert!(!reuse_freed_buffers(false));
        let applied = reuse_freed_buffers(true);
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // allocations keep working
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 64 << 20);
    }

    #[test]
    fn thread_counts_parse_or_say_where_they_come_from() {
        assert_eq!(parse_threads(" 4 "), Ok(4));
        assert_eq!(parse_threads("0"), Ok(0));
        assert!(parse_threads("many")
            .unwrap_err()
            .contains("RAYON_NUM_THREADS"));
    }

    // One test sets RAYON_NUM_THREADS throughout, so that no other test sees it change.
    #[test]
    fn thread_count_is_the_given_one_or_candles() {
        assert_eq!(fix_thread_count(Some(3)), 3);
        assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), "3");
        assert_eq!(candle_core::utils::get_num_threads(), 3);
        let n = fix_thread_count(None);
        assert!(n >= 1);
        assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), n.to_string());
        assert_eq!(candle_core::utils::get_num_threads(), n);
        assert_eq!(fix_thread_count(Some(0)), n, "0 means candle's default");
    }
}
