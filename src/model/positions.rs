//! Fixed position tables: sinusoidal embeddings (the original Transformer's)
//! and the cos/sin tables of rotary embeddings. Computed in f64 on the host.

/// Sinusoidal position embeddings `[positions, channels]`: channel `2i` is
/// `sin(p / 10000^(2i / channels))`, channel `2i + 1` the cosine.
pub fn sinusoidal(positions: usize, channels: usize) -> Vec<f32> {
    let mut table = vec![0.0f32; positions * channels];
    for p in 0..positions {
        for i in 0..channels.div_ceil(2) {
            let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / channels as f64);
            table[p * channels + 2 * i] = angle.sin() as f32;
            if 2 * i + 1 < channels {
                table[p * channels + 2 * i + 1] = angle.cos() as f32;
            }
        }
    }
    table
}

/// Rotary embedding tables `(cos, sin)`, each `[positions, head_dim / 2]`:
/// position `p`, pair `i` turns by `p * base^(-2i / head_dim)`.
pub fn rope_tables(positions: usize, head_dim: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for i in 0..half {
            let angle = p as f64 * (base as f64).powf(-(2.0 * i as f64) / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_the_textbook_values() {
        let t = sinusoidal(3, 4);
        // p = 2: sin(2), cos(2), sin(2 / 100), cos(2 / 100)
        let want = [2f64.sin(), 2f64.cos(), 0.02f64.sin(), 0.02f64.cos()];
        for (a, b) in t[8..].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-7);
        }
        let (c, s) = rope_tables(4, 8, 10000.0);
        // p = 3, i = 1: angle 3 * 10000^(-1/4) = 0.3
        assert!((c[3 * 4 + 1] as f64 - 0.3f64.cos()).abs() < 1e-7);
        assert!((s[3 * 4 + 1] as f64 - 0.3f64.sin()).abs() < 1e-7);
    }
}
