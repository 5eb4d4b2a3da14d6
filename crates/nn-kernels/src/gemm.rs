//! Matrix products on the `gemm` crate's kernels (the ones candle itself uses, with
//! their AVX-512 versions picked at run time).

use gemm::Parallelism;

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, for matrices of sizes
/// `(m, n, k)`, each given as (pointer, row stride, column stride), on the calling
/// thread (without `accumulate`, dst's old contents are ignored: the `gemm` crate's
/// alpha = 0).
///
/// # Safety
/// The pointers must be valid for the matrices they describe, and `dst` must not
/// overlap the others nor be touched by another thread meanwhile.
pub(crate) unsafe fn matmul_into(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (*mut f32, usize, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller guarantees the three matrices are valid for these sizes and
    // strides and that `dst` is this thread's alone; the strides are passed as the
    // `gemm` crate's (column, row) pairs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    };
}
