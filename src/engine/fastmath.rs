//! Scalar building blocks written so that LLVM vectorises the loops that call
//! them: libm's `expf` is an opaque call and would serialise softmax over a
//! 50k vocabulary, and a plain `iter().sum()` is a serial dependency chain.

/// `e^x` with a relative error below 2e-7 (Cody-Waite range reduction and a
/// degree-6 polynomial). Inlined and branch-free so loops that call it
/// vectorise. Inputs are clamped to [-87.3, 88]: e^88 = 1.65e38 is the largest
/// result, just under `f32::MAX`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with
    // plain arithmetic (`f32::round` is a libm call that blocks vectorisation).
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| <= ln2/2, Taylor coefficients.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // Scale by 2^n through the exponent bits; n is in [-126, 127] after the
    // clamp. The low bits of `shifted` hold n + 0x40_0000: integer arithmetic
    // on them vectorises, where a float-to-int cast (saturating) does not.
    p * f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// tanh through [`exp`]; accurate to ~1e-7 absolute.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-15.0, 15.0);
    let e = exp(2.0 * x);
    (e - 1.0) / (e + 1.0)
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error below
/// 1.5e-7): branch-free but for the sign, and vectorisable.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub(crate) const LANES: usize = 16;

/// Sum of a vector accumulator's lanes, pairwise (halves, then quarters,
/// ...): a few vector adds instead of a chain of `LANES - 1` dependent ones.
#[inline(always)]
pub fn hsum(mut v: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// Dot product with independent accumulators, so it vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = (a.chunks_exact(LANES), a.chunks_exact(LANES).remainder());
    let br = b.chunks_exact(LANES).remainder();
    for (x, y) in ac.zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = hsum(acc);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `a * b + c`: one fused instruction where the target has FMA (a plain
/// multiply and add elsewhere: `mul_add` without hardware FMA is a slow
/// libm call).
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    return a.mul_add(b, c);
    #[cfg(not(target_feature = "fma"))]
    return a * b + c;
}

/// `y += a * x`
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// [`dot`] with `b` in bfloat16 bits, widened exactly (a bf16 weight row
/// or KV cache row: half the bytes to stream). A fixed order of operations
/// for a given length, whatever the caller.
#[inline]
pub fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build targets AVX-512F; the lengths are equal (asserted).
    unsafe {
        avx512_bf16::dot::<false>(a, b)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        dot_widened(a, b, |x| f32::from_bits((x as u32) << 16))
    }
}

/// The portable dot product of f32 and 16-bit values, each widened by `wide`.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
#[inline]
fn dot_widened(a: &[f32], b: &[u16], wide: impl Fn(u16) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = (a.chunks_exact(LANES), a.chunks_exact(LANES).remainder());
    let br = b.chunks_exact(LANES).remainder();
    for (x, y) in ac.zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * wide(y[i]);
        }
    }
    let mut s = hsum(acc);
    for (x, y) in ar.iter().zip(br) {
        s += x * wide(*y);
    }
    s
}

/// [`dot_bf16`] with `b` in IEEE half-precision (f16) bits.
#[inline]
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: as in `dot_bf16` (AVX-512F converts halves: vcvtph2ps).
    unsafe {
        avx512_bf16::dot::<true>(a, b)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        dot_widened(a, b, crate::engine::dtype::f32_from_f16)
    }
}

/// [`axpy`] with `x` in bfloat16 bits.
#[inline]
pub fn axpy_bf16(y: &mut [f32], a: f32, x: &[u16]) {
    assert_eq!(y.len(), x.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: as in `dot_bf16`.
    unsafe {
        avx512_bf16::axpy(y, a, x)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * f32::from_bits((*xi as u32) << 16);
    }
}

/// bf16 rows widened 16 at a time (LLVM does not vectorise the scalar
/// widening well: it picks 4-lane unpacks).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512_bf16 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn widen(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
    }

    /// 16 bf16 (or, `F16`, f16) values at `p` as f32.
    #[inline(always)]
    unsafe fn widen16<const F16: bool>(p: *const u16) -> __m512 {
        if F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            widen(p)
        }
    }

    /// # Safety
    /// `a` and `b` have the same length.
    #[inline]
    pub unsafe fn dot<const F16: bool>(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), widen16::<F16>(pb.add(i + 16 * j)), *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), widen16::<F16>(pb.add(i)), acc[0]);
            i += 16;
        }
        let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut s = _mm512_reduce_add_ps(v);
        while i < n {
            let w = if F16 {
                crate::engine::dtype::f32_from_f16(*pb.add(i))
            } else {
                f32::from_bits((*pb.add(i) as u32) << 16)
            };
            s += *pa.add(i) * w;
            i += 1;
        }
        s
    }

    /// # Safety
    /// `y` and `x` have the same length.
    #[inline]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[u16]) {
        let n = y.len();
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(py.add(i), _mm512_fmadd_ps(av, widen(px.add(i)), _mm512_loadu_ps(py.add(i))));
            i += 16;
        }
        while i < n {
            *py.add(i) += a * f32::from_bits((*px.add(i) as u32) << 16);
            i += 1;
        }
    }
}

/// `y += x`
#[inline]
pub fn add_to(y: &mut [f32], x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

/// Sum with independent accumulators.
#[inline]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let rem = chunks.remainder();
    for x in chunks {
        for i in 0..LANES {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

/// Maximum of a non-empty slice.
#[inline]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let rem = chunks.remainder();
    for x in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(x[i]);
        }
    }
    rem.iter().fold(acc.iter().cloned().fold(f32::NEG_INFINITY, f32::max), |m, &x| m.max(x))
}

/// `sum((a - m)^2)`, with independent accumulators.
#[inline]
pub fn sum_sq_dev(a: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let rem = chunks.remainder();
    for x in chunks {
        for i in 0..LANES {
            let d = x[i] - m;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rem.iter().map(|&x| (x - m) * (x - m)).sum::<f32>()
}

/// `sum(a * b * c)`, with independent accumulators.
#[inline]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0.0f32; LANES];
    let full = n / LANES * LANES;
    for ((x, y), z) in
        a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)).zip(c[..full].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in full..n {
        s += a[i] * b[i] * c[i];
    }
    s
}

/// `sum(a^2)` in f64 (for norms of large tensors), with independent accumulators.
#[inline]
pub fn sum_squares_f64(a: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let chunks = a.chunks_exact(L);
    let rem = chunks.remainder();
    for x in chunks {
        for i in 0..L {
            acc[i] += x[i] as f64 * x[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + rem.iter().map(|&x| x as f64 * x as f64).sum::<f64>()
}

/// A stateless 64-bit mixer (SplitMix64 finaliser): the counter-based random
/// source behind dropout masks.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Distinct, reproducible seeds for each use of randomness (batches,
/// dropout, evaluation), from a run's seed and what the use is.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix64(seed), |h, &p| mix64(h ^ p))
}

/// Whether element `index` survives dropout with probability `1 - p`.
#[inline(always)]
pub fn keep(seed: u64, index: u64, p: f32) -> bool {
    let u = (mix64(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40) as f32 / (1u64 << 24) as f32;
    u >= p
}

/// Makes this thread's SSE/AVX arithmetic treat subnormal floats (below
/// 1.2e-38) as zero, in results and in inputs (FTZ and DAZ, as PyTorch's
/// `torch.set_flush_denormal(True)`). The CPU takes a slow microcode path
/// for each subnormal: a fine-tuning run whose updates leave some in the
/// weights or moments ran several times slower without this. Numbers that
/// small change no result that matters.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's
    // MXCSR, keeping the rest; every x86-64 CPU has both.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_flush_to_zero_on_a_flushing_thread() {
        let half_min = |x: f32| std::hint::black_box(x) * std::hint::black_box(0.5f32);
        let (before, after) = std::thread::spawn(move || {
            let before = half_min(f32::MIN_POSITIVE);
            flush_subnormals();
            (before, half_min(f32::MIN_POSITIVE))
        })
        .join()
        .unwrap();
        assert!(before > 0.0 && before.is_subnormal());
        assert_eq!(after, 0.0);
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 87.9 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0).min(1e-37), exp(-1000.0));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn tanh_matches_std() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "{x}");
        }
    }

    #[test]
    fn erf_and_sigmoid_are_accurate() {
        // Reference erf: the series sum_n (-1)^n x^(2n+1) / (n! (2n+1)), in f64.
        let erf64 = |x: f64| {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 200.0 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -400..=400 {
            let x = i as f32 * 0.01;
            assert!((erf(x) as f64 - erf64(x as f64)).abs() < 5e-7, "erf({x})");
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - s).abs() < 1e-6, "sigmoid({x})");
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn reductions_match_naive() {
        let a: Vec<f32> = (0..103).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..103).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        assert!((sum(&a) - a.iter().sum::<f32>()).abs() < 1e-4);
        let c: Vec<f32> = (0..103).map(|i| (i as f32 * 0.05).sin()).collect();
        let naive3: f32 = a.iter().zip(&b).zip(&c).map(|((x, y), z)| x * y * z).sum();
        assert!((dot3(&a, &b, &c) - naive3).abs() < 1e-4);
        let m = 0.3;
        let naive_dev: f32 = a.iter().map(|x| (x - m) * (x - m)).sum();
        assert!((sum_sq_dev(&a, m) - naive_dev).abs() < 1e-4);
        let naive_sq: f64 = a.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((sum_squares_f64(&a) - naive_sq).abs() < 1e-9);
        assert_eq!(max(&a), a.iter().cloned().fold(f32::MIN, f32::max));
    }

    #[test]
    fn dropout_mask_rate() {
        let kept = (0..100_000u64).filter(|&i| keep(42, i, 0.2)).count();
        assert!((kept as f64 / 1e5 - 0.8).abs() < 0.01);
    }
}
