//! Scalar building blocks written so that LLVM vectorises the loops that call
//! them: libm's `expf` is an opaque call and would serialise softmax over a
//! 50k vocabulary, and a plain `iter().sum()` is a serial dependency chain.

/// `e^x` with a relative error below 2e-7 over the f32 range (Cody-Waite range
/// reduction and a degree-6 polynomial). Inlined, branch-free, vectorisable.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| <= ln2/2, Taylor coefficients.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // Scale by 2^n through the exponent bits; n is in [-126, 128] after the clamp.
    let bits = ((n as i32 + 127) as u32) << 23;
    if n >= 128.0 {
        // 2^128 overflows the bit trick; split it.
        return p * f32::from_bits(((n as i32 + 126) as u32) << 23) * 2.0;
    }
    p * f32::from_bits(bits)
}

/// tanh through [`exp`]; accurate to ~1e-7 absolute.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = x.clamp(-15.0, 15.0);
    let e = exp(2.0 * x);
    (e - 1.0) / (e + 1.0)
}

const LANES: usize = 16;

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
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `y += a * x`
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
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

/// A stateless 64-bit mixer (SplitMix64 finaliser): the counter-based random
/// source behind dropout masks.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether element `index` survives dropout with probability `1 - p`.
#[inline(always)]
pub fn keep(seed: u64, index: u64, p: f32) -> bool {
    let u = (mix64(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40) as f32 / (1u64 << 24) as f32;
    u >= p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
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
    fn reductions_match_naive() {
        let a: Vec<f32> = (0..103).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..103).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        assert!((sum(&a) - a.iter().sum::<f32>()).abs() < 1e-4);
        assert_eq!(max(&a), a.iter().cloned().fold(f32::MIN, f32::max));
    }

    #[test]
    fn dropout_mask_rate() {
        let kept = (0..100_000u64).filter(|&i| keep(42, i, 0.2)).count();
        assert!((kept as f64 / 1e5 - 0.8).abs() < 0.01);
    }
}
