//! `x · Wᵀ` with block-quantized weights `W` (Q8_0, Q4_0, Q4_K; layouts in
//! [`crate::engine::quant`]), computed on the blocks as llama.cpp's CPU
//! backend does, so that the same file gives the same numbers: each input
//! row is first rounded to int8 blocks, then every block's product is an
//! integer dot product, scaled and summed in f32. The inputs' blocks are
//! llama.cpp's: for Q8_0 and Q4_0 weights Q8_0 (32 values, the scale
//! `amax/127` rounded to f16, values `x·127/amax` rounded half to even);
//! for Q4_K, Q8_K (256 values, the scale `-max/127` of the value of
//! largest magnitude, in f32, with the sums of each 32 values for the
//! minimums), and a super-block's eight sub-block products are summed in
//! integers before one multiplication.
//!
//! Why not widen the weights to f32 in registers instead: a decoding step
//! reads each weight once, so the kernel must keep up with memory at 4–8
//! bits a weight; an integer dot product does 32 multiply-adds in one or
//! two instructions (`vpdpbusd` with AVX512-VNNI, `vpmaddubsw` + `vpmaddwd`
//! with AVX2), converting weights to f32 costs several per 8 values.
//! Q8_0's signed weights go through `vpdpbusd`'s unsigned operand as their
//! magnitudes, their signs moved onto the activations (`vpsignb`).
//!
//! Each output is one dot product of a fixed order, whatever the number of
//! rows, so a row's result does not depend on the rows beside it.

use super::matmul::SharedMut;
use super::skinny::{by_column_blocks, storer};
use crate::engine::dtype::{f16_from_f32, f32_from_f16};
use crate::engine::quant::{half, unpack_q4_k_scales, QK, QK_K};
use crate::engine::DType;

/// Input rows per pass over a task's weight rows: their int8 copies stay in
/// L1/L2 while the weights go by.
const ROW_CHUNK: usize = 32;

/// Input rows rounded to int8 blocks: values, one scale per block (of
/// 32 values for Q8_0, 256 for Q8_K), the sum of each 32 values.
struct QActs {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<i32>,
    k: usize,
    block: usize,
}

impl QActs {
    /// `m` rows of `k` values (stride `lda`) in blocks of `block` (32: Q8_0, 256: Q8_K).
    fn new(a: &[f32], (m, k, lda): (usize, usize, usize), block: usize) -> QActs {
        let (nb, ns) = (k / block, k / QK);
        let (mut q, mut d, mut s) = (vec![0i8; m * k], vec![0f32; m * nb], vec![0i32; m * ns]);
        for i in 0..m {
            let row = &a[i * lda..][..k];
            for b in 0..nb {
                let x = &row[b * block..][..block];
                let out = &mut q[i * k + b * block..][..block];
                d[i * nb + b] = if block == QK { q8_0(x, out) } else { q8_k(x, out) };
            }
            for (sum, q) in s[i * ns..][..ns].iter_mut().zip(q[i * k..][..k].chunks_exact(QK)) {
                *sum = q.iter().map(|&v| v as i32).sum();
            }
        }
        QActs { q, d, s, k, block }
    }

    fn row(&self, i: usize) -> Acts<'_> {
        let (nb, ns) = (self.k / self.block, self.k / QK);
        Acts { q: &self.q[i * self.k..][..self.k], d: &self.d[i * nb..][..nb], s: &self.s[i * ns..][..ns] }
    }
}

/// llama.cpp's Q8_0 rounding of 32 inputs (its x86 `quantize_row_q8_0`):
/// the scale as the f16 it stores.
fn q8_0(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * id).round_ties_even() as i8;
    }
    f32_from_f16(f16_from_f32(amax / 127.0))
}

/// llama.cpp's Q8_K rounding of 256 inputs (`quantize_row_q8_K`): the value
/// of largest magnitude maps to -127.
fn q8_k(x: &[f32], out: &mut [i8]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if max == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (iscale * v).round_ties_even().min(127.0) as i8;
    }
    1.0 / iscale
}

/// One input row as int8 blocks.
#[derive(Clone, Copy)]
pub struct Acts<'a> {
    q: &'a [i8],
    /// Per block (Q8_0: 32 values; Q8_K: 256).
    d: &'a [f32],
    /// Per 32 values.
    s: &'a [i32],
}

type Dot = fn(&[u8], Acts) -> f32;
/// Four rows at once (each weight block prepared once for the four).
type Dot4 = fn(&[u8], [Acts; 4]) -> [f32; 4];

/// `out[i, j] (+)= Σ_k a[i*lda + k] · W[j, k]` for `i < m`, `j < n`, with
/// `W`'s rows (`k` values each, whole blocks) stored one after another in `b`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt_q(
    out: &mut [f32],
    a: &[f32],
    b: &[u8],
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    lda: usize,
    ldo: usize,
    accumulate: bool,
) {
    assert!(k % dtype.block_len() == 0, "matmul: rows of {k} values are not whole {dtype} blocks");
    let row_bytes = dtype.size_of(k);
    assert!(m > 0 && out.len() >= (m - 1) * ldo + n && a.len() >= (m - 1) * lda + k && b.len() >= n * row_bytes);
    let acts = QActs::new(a, (m, k, lda), if dtype == DType::Q4_K { QK_K } else { QK });
    let dot: Dot = match dtype {
        DType::Q8_0 => kernels::dot_q8_0,
        DType::Q4_0 => kernels::dot_q4_0,
        DType::Q4_K => kernels::dot_q4_k,
        other => panic!("matmul: no kernel for {other} weights"),
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    let dot4: Option<Dot4> = match dtype {
        DType::Q8_0 => Some(kernels::dot4_q8_0),
        DType::Q4_0 => Some(kernels::dot4_q4_0),
        _ => None,
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    let dot4: Option<Dot4> = None;
    let store = storer(SharedMut(out.as_mut_ptr()), ldo, accumulate);
    // Fewer bytes a weight than f32: more multiply-adds before a fork pays.
    by_column_blocks(m, n, row_bytes.div_ceil(4), |j0, j1| {
        for i0 in (0..m).step_by(ROW_CHUNK) {
            for j in j0..j1 {
                let w = &b[j * row_bytes..][..row_bytes];
                if j + 4 < j1 && i0 == 0 {
                    prefetch(&b[(j + 4) * row_bytes..][..row_bytes]);
                }
                let (mut i, end) = (i0, (i0 + ROW_CHUNK).min(m));
                if let Some(dot4) = dot4 {
                    while i + 4 <= end {
                        let sums = dot4(w, std::array::from_fn(|r| acts.row(i + r)));
                        (0..4).for_each(|r| store(i + r, j, sums[r]));
                        i += 4;
                    }
                }
                for i in i..end {
                    store(i, j, dot(w, acts.row(i)));
                }
            }
        }
    })
}

/// Asks for `row` a few rows ahead: without it the stream of weights runs
/// below the memory's speed (as in the 16-bit kernel).
#[inline(always)]
fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for t in (0..row.len()).step_by(64) {
        // SAFETY: a prefetch never faults; the address is inside `row`.
        unsafe { std::arch::x86_64::_mm_prefetch(row.as_ptr().add(t).cast(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The dot products in plain Rust: the fallback, and the tests' reference
/// for the vector ones (the integer sums are exact either way).
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"),
    allow(dead_code)
)]
pub mod portable {
    use super::*;

    fn isum(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
        w.zip(x).map(|(w, &x)| w * x as i32).sum()
    }

    pub fn dot_q8_0(w: &[u8], x: Acts) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(34).enumerate() {
            let s = isum(blk[2..].iter().map(|&q| q as i8 as i32), &x.q[b * QK..][..QK]);
            acc += half(blk, 0) * x.d[b] * s as f32;
        }
        acc
    }

    pub fn dot_q4_0(w: &[u8], x: Acts) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(18).enumerate() {
            let q = blk[2..].iter().map(|&q| (q & 0xF) as i32).chain(blk[2..].iter().map(|&q| (q >> 4) as i32));
            let s = isum(q, &x.q[b * QK..][..QK]) - 8 * x.s[b];
            acc += half(blk, 0) * x.d[b] * s as f32;
        }
        acc
    }

    pub fn dot_q4_k(w: &[u8], x: Acts) -> f32 {
        let (mut acc, mut offset) = (0f32, 0f32);
        for (sb, blk) in w.chunks_exact(144).enumerate() {
            let (sc, mn) = unpack_q4_k_scales(&blk[4..16]);
            let (mut sum, mut mins) = (0i32, 0i32);
            for s in 0..8 {
                let (c, shift, xb) = (s / 2, 4 * (s % 2), 8 * sb + s);
                let q = blk[16 + 32 * c..][..32].iter().map(|&q| ((q >> shift) & 0xF) as i32);
                sum += sc[s] as i32 * isum(q, &x.q[xb * QK..][..QK]);
                mins += mn[s] as i32 * x.s[xb];
            }
            acc += x.d[sb] * half(blk, 0) * sum as f32;
            offset += x.d[sb] * half(blk, 2) * mins as f32;
        }
        acc - offset
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
use portable as kernels;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod kernels {
    //! AVX2 + FMA, with AVX512-VNNI's one-instruction byte dot product where
    //! the build targets it (`-C target-cpu=native` on such a machine).
    use super::*;
    use std::arch::x86_64::*;

    /// Sums of 4 adjacent `u8 × i8` products into 8 i32 lanes.
    #[inline(always)]
    unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        }
        // vpmaddubsw saturates pairs at ±32767: |w| ≤ 128 and |x| ≤ 127 stay below.
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline(always)]
    unsafe fn acts(x: &[i8], block: usize) -> __m256i {
        _mm256_loadu_si256(x.as_ptr().add(block * QK).cast())
    }

    /// The f16 scale at byte `at`, widened by F16C (`vcvtph2ps`).
    #[inline(always)]
    unsafe fn scale(w: &[u8], at: usize) -> f32 {
        let h = u16::from_le_bytes([w[at], w[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    /// Σ over 32-value blocks of `scale(w) · x.d · (signed 32-byte dot)`
    /// for each of `R` input rows, `weights(b)` giving block `b`'s 32 signed
    /// weights (prepared once for all the rows). Four accumulators a row,
    /// block `b` into `b % 4`: a block's fma does not wait for the one
    /// before (2x faster than one), and a row's sum is the same whatever
    /// `R` (rows stay batch-invariant).
    #[inline(always)]
    unsafe fn blocks32<const R: usize>(
        w: &[u8],
        xs: [Acts; R],
        stride: usize,
        weights: impl Fn(usize) -> __m256i,
    ) -> [f32; R] {
        let nb = w.len() / stride;
        assert!(xs.iter().all(|x| x.q.len() >= nb * QK && x.d.len() >= nb));
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for b in 0..nb {
            let wv = weights(b);
            let (magnitude, ws) = (_mm256_sign_epi8(wv, wv), scale(w, stride * b));
            for (x, acc) in xs.iter().zip(&mut acc) {
                let p = dot_u8_i8(magnitude, _mm256_sign_epi8(acts(x.q, b), wv));
                acc[b % 4] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(ws * x.d[b]), acc[b % 4]);
            }
        }
        acc.map(|a| hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))))
    }

    /// [`blocks32`] for one row, its four accumulators in registers (the
    /// array form of `blocks32` measured ~20% slower for one row). The same
    /// sums in the same order: `b % 4` is `i` below.
    #[inline(always)]
    unsafe fn blocks32_one(w: &[u8], x: Acts, stride: usize, weights: impl Fn(usize) -> __m256i) -> f32 {
        let nb = w.len() / stride;
        assert!(x.q.len() >= nb * QK && x.d.len() >= nb);
        let one = |b: usize, acc: __m256| {
            let wv = weights(b);
            let p = dot_u8_i8(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(acts(x.q, b), wv));
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale(w, stride * b) * x.d[b]), acc)
        };
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 3 < nb {
            (a0, a1, a2, a3) = (one(b, a0), one(b + 1, a1), one(b + 2, a2), one(b + 3, a3));
            b += 4;
        }
        let tail = nb - b;
        if tail > 0 {
            a0 = one(b, a0);
        }
        if tail > 1 {
            a1 = one(b + 1, a1);
        }
        if tail > 2 {
            a2 = one(b + 2, a2);
        }
        hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
    }

    #[inline(always)]
    unsafe fn q8_0_block(w: &[u8], b: usize) -> __m256i {
        _mm256_loadu_si256(w.as_ptr().add(34 * b + 2).cast())
    }

    /// Stored q + 8 as nibbles: the signed values, as Q8_0's are.
    #[inline(always)]
    unsafe fn q4_0_block(w: &[u8], b: usize) -> __m256i {
        let low = _mm_set1_epi8(0xF);
        let qs = _mm_loadu_si128(w.as_ptr().add(18 * b + 2).cast());
        let u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), low), _mm_and_si128(qs, low));
        _mm256_sub_epi8(u, _mm256_set1_epi8(8))
    }

    pub fn dot_q8_0(w: &[u8], x: Acts) -> f32 {
        // SAFETY: AVX2, FMA and F16C are enabled at build time (this
        // module's cfg); every load is inside `w` or `x.q` (`blocks32`'s assert).
        unsafe { blocks32_one(w, x, 34, |b| q8_0_block(w, b)) }
    }

    pub fn dot_q4_0(w: &[u8], x: Acts) -> f32 {
        // SAFETY: as in `dot_q8_0`.
        unsafe { blocks32_one(w, x, 18, |b| q4_0_block(w, b)) }
    }

    /// Four input rows against one weight row, each as [`dot_q8_0`] gives it.
    pub fn dot4_q8_0(w: &[u8], xs: [Acts; 4]) -> [f32; 4] {
        // SAFETY: as in `dot_q8_0`.
        unsafe { blocks32(w, xs, 34, |b| q8_0_block(w, b)) }
    }

    /// Four input rows against one weight row, each as [`dot_q4_0`] gives it.
    pub fn dot4_q4_0(w: &[u8], xs: [Acts; 4]) -> [f32; 4] {
        // SAFETY: as in `dot_q8_0`.
        unsafe { blocks32(w, xs, 18, |b| q4_0_block(w, b)) }
    }

    pub fn dot_q4_k(w: &[u8], x: Acts) -> f32 {
        let nsb = w.len() / 144;
        assert!(x.q.len() >= nsb * QK_K && x.d.len() >= nsb && x.s.len() >= nsb * 8);
        // SAFETY: as in `dot_q8_0`.
        unsafe {
            let low = _mm256_set1_epi8(0xF);
            let (mut acc, mut offset) = (_mm256_setzero_ps(), 0f32);
            for sb in 0..nsb {
                let blk = &w[144 * sb..][..144];
                let (sc, mn) = unpack_q4_k_scales(&blk[4..16]);
                // The eight sub-blocks' products, each times its scale, summed in integers.
                let mut sum = _mm256_setzero_si256();
                let mut mins = 0i32;
                for c in 0..4 {
                    let q = _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * c).cast());
                    let nibbles = [_mm256_and_si256(q, low), _mm256_and_si256(_mm256_srli_epi16(q, 4), low)];
                    for (h, wv) in nibbles.into_iter().enumerate() {
                        let (s, xb) = (2 * c + h, 8 * sb + 2 * c + h);
                        let p = dot_u8_i8(wv, acts(x.q, xb));
                        sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(p, _mm256_set1_epi32(sc[s] as i32)));
                        mins += mn[s] as i32 * x.s[xb];
                    }
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(x.d[sb] * scale(blk, 0)), acc);
                offset += x.d[sb] * scale(blk, 2) * mins as f32;
            }
            hsum(acc) - offset
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quant::{quantize, Quantized};

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                let mut g = 0.0;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    g += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                g
            })
            .collect()
    }

    /// Against the exact product of the dequantized weights with the f32
    /// inputs: what remains is the inputs' rounding to int8, bounded by
    /// half a step (amax/254) per value: |error| ≤ Σ_k |w_k| · amax_b/254.
    #[test]
    fn quantized_products_match_the_dequantized_weights() {
        let (m, n, k) = (5, 70, 2 * QK_K);
        let a = noise(m * k, 7);
        for dt in DType::QUANTIZED {
            let w = noise(n * k, 11);
            let q = Quantized { dtype: dt, bytes: quantize(dt, &w) };
            let wide = q.to_f32();
            let mut out = vec![0f32; m * n];
            matmul_nt_q(&mut out, &a, &q.bytes, dt, (m, n, k), k, n, false);
            for i in 0..m {
                let x = &a[i * k..][..k];
                for j in 0..n {
                    let wj = &wide[j * k..][..k];
                    let exact: f64 = x.iter().zip(wj).map(|(&x, &w)| x as f64 * w as f64).sum();
                    // Q8_K rounds the inputs in blocks of 256; Q8_0's f16 scale adds 2^-11 relative.
                    let block = if dt == DType::Q4_K { QK_K } else { QK };
                    let slack: f64 = x.iter().zip(wj).map(|(&x, &w)| (x as f64 * w as f64).abs()).sum::<f64>() / 1024.0;
                    let bound: f64 = slack
                        + x.chunks(block)
                            .zip(wj.chunks(block))
                            .map(|(xb, wb)| {
                                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                                wb.iter().map(|w| w.abs() as f64).sum::<f64>() * amax / 254.0
                            })
                            .sum::<f64>();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= bound * 1.001 + 1e-5,
                        "{dt} [{i},{j}]: {got} vs {exact} (bound {bound})"
                    );
                    // Typical error is far below the worst case: ~0.5% of the scale.
                    assert!((got - exact).abs() < 0.25 * (bound + 1e-3), "{dt}: {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn vector_and_portable_dots_agree_and_rows_are_independent() {
        let k = 3 * QK_K;
        let (a, w) = (noise(3 * k, 3), noise(4 * k, 5));
        for dt in DType::QUANTIZED {
            let bytes = quantize(dt, &w);
            let acts = QActs::new(&a, (3, k, k), if dt == DType::Q4_K { QK_K } else { QK });
            let rb = dt.size_of(k);
            let (vector, plain): (Dot, Dot) = match dt {
                DType::Q8_0 => (kernels::dot_q8_0, portable::dot_q8_0),
                DType::Q4_0 => (kernels::dot_q4_0, portable::dot_q4_0),
                _ => (kernels::dot_q4_k, portable::dot_q4_k),
            };
            for i in 0..3 {
                for j in 0..4 {
                    let (v, p) =
                        (vector(&bytes[j * rb..][..rb], acts.row(i)), plain(&bytes[j * rb..][..rb], acts.row(i)));
                    assert!((v - p).abs() <= 1e-5 * p.abs().max(1.0), "{dt}: {v} vs {p}");
                }
            }
            // A row alone gives the bits it gives among five (four of them
            // through the four-row kernel, where there is one).
            let a5 = noise(5 * k, 9);
            let mut five = vec![0f32; 5 * 4];
            matmul_nt_q(&mut five, &a5, &bytes, dt, (5, 4, k), k, 4, false);
            for i in 0..5 {
                let mut one = vec![0f32; 4];
                matmul_nt_q(&mut one, &a5[i * k..], &bytes, dt, (1, 4, k), k, 4, false);
                assert_eq!(&five[i * 4..i * 4 + 4], &one[..], "{dt}: row {i}");
            }
        }
    }
}
