//! Products of a few rows against a weight stored `[n, k]` (`x · Wᵀ`): the
//! shape of every matmul when a few tokens go through the model at once
//! (speculative decoding's check of a draft, small decoding batches).
//! `gemm` packs its operands for large tiles: on a 6-layer 384-wide model a
//! 2-row pass cost 2.3x a 1-row one and a 5-row pass 2.3x too. Here each
//! weight row is read from memory once and dotted with every input row while
//! it sits in L1 (two input rows per sweep, four weight rows at a time,
//! prefetching ahead): 2 rows now cost about what one does, 5 rows 1.8x.
//!
//! Every output is one [`dot4`] lane of a fixed order over `k`, so a row's
//! result does not depend on how many rows are multiplied with it.

use super::matmul::SharedMut;
use crate::engine::fastmath::{self, LANES};
use rayon::prelude::*;

/// Products of 2 to this many rows take this path (measured on the 6-layer
/// 384-wide model: 1.6x faster than `gemm` at 5 rows, even at 12, slower
/// beyond; one row is a matrix-vector product `gemm` already streams well).
pub const ROWS: std::ops::RangeInclusive<usize> = 2..=12;
/// Weight rows per task: enough work to be worth a fork.
const COLS_PER_TASK: usize = 64;

/// `out[i, j] (+)= Σ_k a[i*lda + k] · b[j*ldb + k]` for `i < m`, `j < n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldo: usize,
    accumulate: bool,
) {
    assert!(m > 0 && out.len() >= (m - 1) * ldo + n && a.len() >= (m - 1) * lda + k && b.len() >= (n - 1) * ldb + k);
    let dst = SharedMut(out.as_mut_ptr());
    let block = |j0: usize, j1: usize| {
        let mut j = j0;
        while j < j1 {
            let cols = (j1 - j).min(4);
            let rows: [&[f32]; 4] = std::array::from_fn(|c| &b[(j + c.min(cols - 1)) * ldb..][..k]);
            // While the first rows stream these weights in, fetch those two blocks on.
            let next = (j + 8 < j1).then(|| std::array::from_fn(|c| &b[(j + 8 + c.min(j1 - j - 9)) * ldb..][..k]));
            let mut i = 0;
            while i < m {
                let pair = (i + 1 < m).then(|| &a[(i + 1) * lda..][..k]);
                let sums = dot4(&a[i * lda..][..k], pair, rows, if i == 0 { next } else { None });
                for (r, sums) in sums.iter().enumerate().take(if pair.is_some() { 2 } else { 1 }) {
                    for (c, &s) in sums.iter().enumerate().take(cols) {
                        // SAFETY: (i + r, j + c) is inside `out` (the assert
                        // above); tasks own disjoint columns.
                        unsafe {
                            let o = dst.at((i + r) * ldo + j + c);
                            *o = if accumulate { *o + s } else { s };
                        }
                    }
                }
                i += 2;
            }
            j += cols;
        }
    };
    let tasks = n.div_ceil(COLS_PER_TASK);
    if tasks <= 1 || m * n * k < 1 << 15 {
        block(0, n);
    } else {
        (0..tasks).into_par_iter().for_each(|t| block(t * COLS_PER_TASK, ((t + 1) * COLS_PER_TASK).min(n)));
    }
}

/// Dot products of `x` (and of `y`, when given) with each of `w[0..4]`,
/// sharing every load. Named accumulators (not an array indexed later) so
/// that LLVM keeps all eight in vector registers.
#[inline(always)]
fn dot4(x: &[f32], y: Option<&[f32]>, w: [&[f32]; 4], prefetch: Option<[&[f32]; 4]>) -> [[f32; 4]; 2] {
    let k = x.len();
    let y = y.unwrap_or(x);
    let (w0, w1, w2, w3) = (&w[0][..k], &w[1][..k], &w[2][..k], &w[3][..k]);
    let z = [0.0f32; LANES];
    let (mut a0, mut a1, mut a2, mut a3, mut b0, mut b1, mut b2, mut b3) = (z, z, z, z, z, z, z, z);
    let chunks = x
        .chunks_exact(LANES)
        .zip(y[..k].chunks_exact(LANES))
        .zip(w0.chunks_exact(LANES))
        .zip(w1.chunks_exact(LANES))
        .zip(w2.chunks_exact(LANES))
        .zip(w3.chunks_exact(LANES));
    for (t, (((((xs, ys), c0), c1), c2), c3)) in chunks.enumerate() {
        if let Some(next) = prefetch {
            // One cache line (16 floats) of each next weight row per chunk.
            for row in next {
                prefetch_line(row, t * LANES);
            }
        }
        for l in 0..LANES {
            a0[l] = fastmath::fma(xs[l], c0[l], a0[l]);
            a1[l] = fastmath::fma(xs[l], c1[l], a1[l]);
            a2[l] = fastmath::fma(xs[l], c2[l], a2[l]);
            a3[l] = fastmath::fma(xs[l], c3[l], a3[l]);
            b0[l] = fastmath::fma(ys[l], c0[l], b0[l]);
            b1[l] = fastmath::fma(ys[l], c1[l], b1[l]);
            b2[l] = fastmath::fma(ys[l], c2[l], b2[l]);
            b3[l] = fastmath::fma(ys[l], c3[l], b3[l]);
        }
    }
    let full = k / LANES * LANES;
    let finish = |acc: [f32; LANES], x: &[f32], w: &[f32]| {
        let mut s = fastmath::sum(&acc);
        for t in full..k {
            s += x[t] * w[t];
        }
        s
    };
    [
        [finish(a0, x, w0), finish(a1, x, w1), finish(a2, x, w2), finish(a3, x, w3)],
        [finish(b0, y, w0), finish(b1, y, w1), finish(b2, y, w2), finish(b3, y, w3)],
    ]
}

/// Hints the cache to load the line holding `row[at]` (no-op elsewhere).
#[inline(always)]
fn prefetch_line(row: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < row.len() {
        // SAFETY: a prefetch never faults; the address is inside `row`.
        unsafe { std::arch::x86_64::_mm_prefetch(row.as_ptr().add(at) as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_and_is_independent_of_the_row_count() {
        let (n, k) = (70, 45);
        let a: Vec<f32> = (0..12 * k).map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 89) as f32 / 40.0 - 1.0).collect();
        let mut all = vec![0.0; 12 * n];
        matmul_nt(&mut all, &a, &b, 12, n, k, k, k, n, false);
        for i in 0..12 {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((all[i * n + j] - want).abs() < 1e-4, "({i}, {j})");
            }
            // The same row alone gives bit-identical outputs.
            let mut one = vec![1.0; n];
            matmul_nt(&mut one, &a[i * k..], &b, 1, n, k, k, k, n, true);
            let alone: Vec<f32> = one.iter().map(|x| x - 1.0).collect();
            let mut fresh = vec![0.0; n];
            matmul_nt(&mut fresh, &a[i * k..], &b, 1, n, k, k, k, n, false);
            assert_eq!(fresh, all[i * n..(i + 1) * n]);
            assert!(alone.iter().zip(&fresh).all(|(x, y)| (x - y).abs() < 1e-5));
        }
    }
}
