//! Products of a few rows against a weight stored `[n, k]` (`x · Wᵀ`): the
//! shape of every matmul when a few tokens go through the model at once
//! (speculative decoding's check of a draft, a batch of sequences decoding
//! together). `gemm` packs the weights into tiles on every call, which costs
//! as much as the product when there are few rows. Here the weights are read
//! from memory once and dotted with every input row while in L1. On x86 with
//! AVX-512, or AVX2 and FMA ([`vector`]):
//! - up to 8 rows: one weight row at a time (two when rows are long and
//!   AVX-512's 32 registers hold both), so the weights stream in order as in
//!   a matrix-vector product;
//! - more rows: register tiles of 4 input rows × 4 weight rows (AVX-512: 16
//!   accumulators), or 2 × 4 (AVX2's 16 registers hold no more).
//!
//! Elsewhere, 2 × 4 tiles of auto-vectorised code for two rows or more.
//!
//! In a microbenchmark against `gemm` on the 384-wide model's shapes (weights
//! read from memory, 2-core Zen 4): 1.3–2.2x faster at 2–5 rows, 1.1–1.4x at
//! 32; one row as fast on 384-long rows, 1.3x on 1536-long ones. Built for
//! AVX2 (`-C target-cpu=x86-64-v3`) on the same machine: 1.1–2.3x at 2–5
//! rows, 0.93–1.08x at 32, one row 0.89–1.12x.
//!
//! Every output is one accumulator of a fixed order over `k`, reduced the
//! same way, so a row's result does not depend on how many rows are
//! multiplied with it. With the vector unit one row takes this path too, so
//! a sequence decoded alone or in a batch gets bit-identical logits
//! ([`BATCH_INVARIANT`]); without it one row stays with `gemm`, which adds in
//! another order (reading four weight rows side by side, as the portable tile
//! does, streamed one row ~1.5x slower).

use super::matmul::SharedMut;

#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
use crate::engine::fastmath::{self, LANES};
use rayon::prelude::*;

/// Products of this many rows take this path (see the module comment).
/// One row too with the vector unit, whose one-row sweep streams the weights
/// about as fast as `gemm`'s matrix-vector product: then a row's result is
/// the same alone or in a batch.
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
pub const ROWS: std::ops::RangeInclusive<usize> = 1..=64;
#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
pub const ROWS: std::ops::RangeInclusive<usize> = 2..=64;
/// Whether every product of 1 to 64 rows goes through this kernel: then a
/// row's result never depends on the rows beside it.
pub const BATCH_INVARIANT: bool = *ROWS.start() == 1;
/// Weight rows per task: enough work to be worth a fork.
const COLS_PER_TASK: usize = 64;
/// Products under this many multiply-adds (512 KB of f32 weights) run on
/// the calling thread: waking the other worker costs more than it saves.
/// Measured on a draft model's decoding step (256-wide layers, six
/// alternating runs): 1.1–1.6x faster than with 2^15; the 384-wide target's
/// step unchanged (2^18 made it ~3% slower, 2^19 20%: its weights come from
/// memory, which two cores read faster than one).
const SERIAL_BELOW: usize = 1 << 17;
/// Input rows per register tile: with AVX-512's 32 vector registers a 4 × 4
/// tile of accumulators plus its operands fits; with 16 (AVX2) 2 × 4 does.
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
const TILE_ROWS: usize = if vector::REGISTERS >= 32 { 4 } else { 2 };
#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
const TILE_ROWS: usize = 2;

/// [`matmul_nt`] with the weights `b` in 16-bit bits, bf16 or f16 (`half`;
/// inference with 16-bit weights: half the bytes per decoding step),
/// widened exactly inside the dot products. Each output is one
/// [`fastmath::dot_bf16`] (or `dot_f16`), so a row's result does not depend
/// on the rows beside it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt_16(
    out: &mut [f32],
    a: &[f32],
    b: &[u16],
    half: crate::engine::DType,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldo: usize,
    accumulate: bool,
) {
    assert!(m > 0 && out.len() >= (m - 1) * ldo + n && a.len() >= (m - 1) * lda + k && b.len() >= (n - 1) * ldb + k);
    let store = storer(SharedMut(out.as_mut_ptr()), ldo, accumulate);
    let dot = match half {
        crate::engine::DType::F16 => crate::engine::fastmath::dot_f16,
        _ => crate::engine::fastmath::dot_bf16,
    };
    by_column_blocks(m, n, k, |j0, j1| {
        for j in j0..j1 {
            let w = &b[j * ldb..][..k];
            // Four rows ahead, a prefetch per cache line (as the f32 kernel):
            // without it the stream of weights runs well below the memory's speed.
            if j + 4 < j1 {
                let ahead = &b[(j + 4) * ldb..][..k];
                for t in (0..k).step_by(32) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a prefetch never faults; the address is inside `ahead`.
                    unsafe {
                        std::arch::x86_64::_mm_prefetch(ahead.as_ptr().add(t).cast(), std::arch::x86_64::_MM_HINT_T0)
                    };
                }
            }
            for i in 0..m {
                store(i, j, dot(&a[i * lda..][..k], w));
            }
        }
    })
}

/// `out[i, j] (+)= s`, for kernels whose tasks own disjoint columns of `out`
/// (`dst` points at it, row stride `ldo`; the caller checked the bounds).
pub(super) fn storer(dst: SharedMut, ldo: usize, accumulate: bool) -> impl Fn(usize, usize, f32) + Copy + Sync {
    move |i, j, s| {
        // SAFETY: (i, j) is inside `out` (the caller's assert); tasks own
        // disjoint columns.
        unsafe {
            let o = dst.at(i * ldo + j);
            *o = if accumulate { *o + s } else { s };
        }
    }
}

/// Runs `block(j0, j1)` over the `n` weight rows: in tasks of
/// [`COLS_PER_TASK`] rows, or on this thread when the product is small.
pub(super) fn by_column_blocks(m: usize, n: usize, k: usize, block: impl Fn(usize, usize) + Sync) {
    let tasks = n.div_ceil(COLS_PER_TASK);
    if tasks <= 1 || m * n * k < SERIAL_BELOW {
        block(0, n);
    } else {
        (0..tasks).into_par_iter().for_each(|t| block(t * COLS_PER_TASK, ((t + 1) * COLS_PER_TASK).min(n)));
    }
}

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
    let store = storer(SharedMut(out.as_mut_ptr()), ldo, accumulate);
    let block = |j0: usize, j1: usize| {
        #[cfg(all(
            target_arch = "x86_64",
            any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
        ))]
        if m <= NARROW_ROWS {
            return narrow(a, b, m, k, lda, ldb, j0, j1, store);
        }
        let mut j = j0;
        while j < j1 {
            let cols = (j1 - j).min(4);
            let w: [&[f32]; 4] = std::array::from_fn(|c| &b[(j + c.min(cols - 1)) * ldb..][..k]);
            // While this block is used, fetch the one after next.
            let next = (j + 8 < j1).then(|| std::array::from_fn(|c| &b[(j + 8 + c.min(j1 - j - 9)) * ldb..][..k]));
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(TILE_ROWS);
                let x = |r: usize| &a[(i + r.min(rows - 1)) * lda..][..k];
                let prefetch = if i == 0 { next } else { None };
                let mut sums = [[0.0f32; 4]; TILE_ROWS];
                match rows {
                    1 => sums[..1].copy_from_slice(&tile::<1, 4>([x(0)], w, prefetch)),
                    2 => sums[..2].copy_from_slice(&tile::<2, 4>([x(0), x(1)], w, prefetch)),
                    _ => sums.copy_from_slice(&tile::<TILE_ROWS, 4>(std::array::from_fn(x), w, prefetch)),
                }
                for (r, sums) in sums.iter().enumerate().take(rows) {
                    for (c, &s) in sums.iter().enumerate().take(cols) {
                        store(i + r, j + c, s);
                    }
                }
                i += rows;
            }
            j += cols;
        }
    };
    by_column_blocks(m, n, k, block);
}

/// Up to this many rows, one weight row at a time is dotted with all of
/// them: the weights are then read as one sequential stream, as in a
/// matrix-vector product (four rows read side by side reached ~60% of that
/// bandwidth on 384-long rows).
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
const NARROW_ROWS: usize = 8;
/// Input rows up to this long go one weight row per sweep (see `narrow`;
/// always, with 16 registers: two weight rows' accumulators would not fit).
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
const SHORT_K: usize = if vector::REGISTERS >= 32 { 1024 } else { usize::MAX };

/// Weight rows `j0..j1` against all `m <= NARROW_ROWS` input rows.
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
#[allow(clippy::too_many_arguments)]
fn narrow(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    j0: usize,
    j1: usize,
    store: impl Fn(usize, usize, f32),
) {
    fn run<const R: usize>(
        x: [&[f32]; R],
        b: &[f32],
        ldb: usize,
        (j0, j1): (usize, usize),
        store: impl Fn(usize, usize, f32),
    ) {
        let k = x[0].len();
        let row = |j: usize| &b[j * ldb..][..k];
        let mut j = j0;
        // Long input rows no longer all fit L1 beside the weights streaming
        // through: two weight rows per sweep halve their reloads.
        if k > SHORT_K {
            while j + 2 <= j1 {
                // Four rows ahead: a prefetch per cache line of the rows being read.
                let ahead = (j + 6 <= j1).then(|| [row(j + 4), row(j + 5)]);
                let sums = tile::<R, 2>(x, [row(j), row(j + 1)], ahead);
                for (i, s) in sums.iter().enumerate() {
                    store(i, j, s[0]);
                    store(i, j + 1, s[1]);
                }
                j += 2;
            }
        }
        while j < j1 {
            let ahead = (j + 4 < j1).then(|| [row(j + 4)]);
            for (i, s) in tile::<R, 1>(x, [row(j)], ahead).iter().enumerate() {
                store(i, j, s[0]);
            }
            j += 1;
        }
    }
    let x = |i: usize| &a[i * lda..][..k];
    let js = (j0, j1);
    match m {
        1 => run::<1>([x(0)], b, ldb, js, store),
        2 => run::<2>(std::array::from_fn(x), b, ldb, js, store),
        3 => run::<3>(std::array::from_fn(x), b, ldb, js, store),
        4 => run::<4>(std::array::from_fn(x), b, ldb, js, store),
        5 => run::<5>(std::array::from_fn(x), b, ldb, js, store),
        6 => run::<6>(std::array::from_fn(x), b, ldb, js, store),
        7 => run::<7>(std::array::from_fn(x), b, ldb, js, store),
        _ => run::<8>(std::array::from_fn(x), b, ldb, js, store),
    }
}

/// Dot products of each of `R` input rows with each of `C` weight rows,
/// sharing every load: `R × C` vector accumulators, kept in registers
/// (written with intrinsics: LLVM does not keep an array of `R × C`
/// auto-vectorised accumulators in registers, and runs 10x slower).
#[cfg(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
))]
#[inline(always)]
fn tile<const R: usize, const C: usize>(
    x: [&[f32]; R],
    w: [&[f32]; C],
    prefetch: Option<[&[f32]; C]>,
) -> [[f32; C]; R] {
    use vector::{LANES as L, V};
    let k = w[0].len();
    assert!(x.iter().chain(&w).all(|s| s.len() == k));
    let full = k / L * L;
    let mut acc = [[V::zero(); C]; R];
    let mut t = 0;
    while t < full {
        if let Some(next) = prefetch {
            // One cache line (16 floats) of each next weight row per 16 floats.
            if t % 16 == 0 {
                for row in next {
                    prefetch_line(row, t);
                }
            }
        }
        // SAFETY: every load reads `L` floats at `t + L <= full <= k`,
        // inside its slice (all have length `k`, asserted above).
        let ws: [V; C] = std::array::from_fn(|c| unsafe { V::load(w[c].as_ptr().add(t)) });
        for r in 0..R {
            let xs = unsafe { V::load(x[r].as_ptr().add(t)) };
            for c in 0..C {
                acc[r][c] = xs.fma(ws[c], acc[r][c]);
            }
        }
        t += L;
    }
    let mut sums: [[f32; C]; R] = std::array::from_fn(|r| std::array::from_fn(|c| acc[r][c].sum()));
    for (r, row) in sums.iter_mut().enumerate() {
        for (c, s) in row.iter_mut().enumerate() {
            for t in full..k {
                *s += x[r][t] * w[c][t];
            }
        }
    }
    sums
}

/// The widest f32 vector of the build (AVX-512, or AVX2 with FMA), with the
/// four operations the tiles need. Its lane sum has a fixed order, so a dot
/// product's result depends only on its inputs. (The `unsafe` blocks call
/// intrinsics of features this module is only compiled with.)
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod vector {
    use std::arch::x86_64::*;
    pub const LANES: usize = 16;
    pub const REGISTERS: usize = 32;
    #[derive(Clone, Copy)]
    pub struct V(__m512);
    impl V {
        #[inline(always)]
        pub fn zero() -> V {
            unsafe { V(_mm512_setzero_ps()) }
        }
        /// # Safety
        /// `LANES` floats must be readable at `p`.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            V(_mm512_loadu_ps(p))
        }
        /// `self * b + c`
        #[inline(always)]
        pub fn fma(self, b: V, c: V) -> V {
            unsafe { V(_mm512_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        pub fn sum(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(target_feature = "avx512f"), target_feature = "avx2", target_feature = "fma"))]
mod vector {
    use std::arch::x86_64::*;
    pub const LANES: usize = 8;
    pub const REGISTERS: usize = 16;
    #[derive(Clone, Copy)]
    pub struct V(__m256);
    impl V {
        #[inline(always)]
        pub fn zero() -> V {
            unsafe { V(_mm256_setzero_ps()) }
        }
        /// # Safety
        /// `LANES` floats must be readable at `p`.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            V(_mm256_loadu_ps(p))
        }
        /// `self * b + c`
        #[inline(always)]
        pub fn fma(self, b: V, c: V) -> V {
            unsafe { V(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }
        /// Halves, then quarters, then the last pair.
        #[inline(always)]
        pub fn sum(self) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
            }
        }
    }
}

/// Portable version of the tile above: one or two rows, eight named
/// accumulators (the most LLVM reliably keeps in registers).
#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
#[inline(always)]
fn tile<const R: usize, const C: usize>(
    x: [&[f32]; R],
    w: [&[f32]; 4],
    prefetch: Option<[&[f32]; 4]>,
) -> [[f32; 4]; R] {
    let both = dot4(x[0], x.get(1).copied(), w, prefetch);
    std::array::from_fn(|r| both[r])
}

/// Dot products of `x` (and of `y`, when given) with each of `w[0..4]`,
/// sharing every load. Named accumulators (not an array indexed later) so
/// that LLVM keeps all eight in vector registers.
#[cfg(not(all(
    target_arch = "x86_64",
    any(target_feature = "avx512f", all(target_feature = "avx2", target_feature = "fma"))
)))]
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
        let mut s = fastmath::hsum(acc);
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
    fn half_weights_match_naive_and_are_independent_of_the_row_count() {
        use crate::engine::dtype::{encode16, round_to};
        use crate::engine::DType;
        // k = 200: four 64-wide blocks, a 16-wide step and a scalar tail.
        let (n, k) = (150, 200);
        let a = crate::engine::gradcheck::rand_vec(5 * k, 1);
        let wf = crate::engine::gradcheck::rand_vec(n * k, 2);
        for half in [DType::BF16, DType::F16] {
            let mut w = vec![0u16; n * k];
            encode16(&wf, &mut w, half);
            let mut five = vec![0.0; 5 * n];
            matmul_nt_16(&mut five, &a, &w, half, 5, n, k, k, k, n, false);
            for i in 0..5 {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| a[i * k + t] as f64 * round_to(wf[j * k + t], half) as f64).sum();
                    assert!((five[i * n + j] as f64 - want).abs() < 1e-4, "{half} ({i}, {j})");
                }
            }
            let mut one = vec![0.0; n];
            matmul_nt_16(&mut one, &a[2 * k..], &w, half, 1, n, k, k, k, n, false);
            assert_eq!(one, five[2 * n..3 * n], "{half}: a row's result depends on the rows beside it");
        }
    }

    #[test]
    fn matches_naive_and_is_independent_of_the_row_count() {
        // k: vector chunks and a ragged end, short and long rows (the
        // few-row path reads one or two weight rows per sweep); n: a ragged
        // last block of four weight rows. 7 rows take the few-row path, 64
        // the register tiles, in parallel.
        for (n, k) in [(70, 45), (37, 1100)] {
            let a: Vec<f32> = (0..64 * k).map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0).collect();
            let b: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 89) as f32 / 40.0 - 1.0).collect();
            for m in [7, 64] {
                let mut all = vec![0.0; m * n];
                matmul_nt(&mut all, &a, &b, m, n, k, k, k, n, false);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|t| a[i * k + t] as f64 * b[j * k + t] as f64).sum();
                        assert!((all[i * n + j] as f64 - want).abs() < 1e-3, "({i}, {j})");
                    }
                    // The same row alone gives bit-identical outputs.
                    let mut one = vec![1.0; n];
                    matmul_nt(&mut one, &a[i * k..], &b, 1, n, k, k, k, n, true);
                    let alone: Vec<f32> = one.iter().map(|x| x - 1.0).collect();
                    let mut fresh = vec![0.0; n];
                    matmul_nt(&mut fresh, &a[i * k..], &b, 1, n, k, k, k, n, false);
                    assert_eq!(fresh, all[i * n..(i + 1) * n]);
                    assert!(alone.iter().zip(&fresh).all(|(x, y)| (x - y).abs() < 1e-3));
                }
            }
        }
    }
}
