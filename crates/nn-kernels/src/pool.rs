//! The kernels' threads: candle's own CPU worker pool, and a pointer that its workers
//! may share while they write disjoint parts of one buffer.

/// A raw pointer shared by the workers of one convolution (see the SAFETY notes where
/// it is dereferenced).
pub(crate) struct SharedPtr<T>(pub(crate) *mut T);
// By hand: the derives would ask `T: Copy`, and only the pointer is copied.
impl<T> Clone for SharedPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedPtr<T> {}
// SAFETY: the workers that share one write disjoint elements and only read the rest.
unsafe impl<T> Send for SharedPtr<T> {}
// SAFETY: as for Send: no two workers touch the same element mutably.
unsafe impl<T> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Threads of candle's CPU worker pool (the calling thread included).
///
/// The fast paths run on the same persistent pool as candle's own element-wise ops
/// (`candle_core::utils::barrier_pool`, sized by `CANDLE_NUM_THREADS` or
/// `RAYON_NUM_THREADS`) rather than on a second set of rayon threads: with two pools,
/// each one's spinning idle workers steal the cores the other one is computing on.
pub fn pool_threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `f(i)` for `i in 0..n` on candle's worker pool, or inline with one thread.
pub(crate) fn parallel_for(threads: usize, n: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 || n <= 1 {
        (0..n).for_each(f);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
    }
}

/// Runs `f(i, chunk)` over the `chunk`-long pieces of `data` on candle's worker pool
/// (like rayon's `par_chunks_mut(chunk).enumerate().for_each(f)`).
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let (len, pieces) = (data.len(), data.len().div_ceil(chunk));
    let ptr = SharedPtr(data.as_mut_ptr());
    parallel_for(pool_threads(), pieces, |i| {
        let start = i * chunk;
        // SAFETY: piece i alone owns data[start..start + chunk].
        let piece =
            unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), chunk.min(len - start)) };
        f(i, piece)
    });
}
