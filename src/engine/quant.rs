//! Block-quantized weights in GGML's layouts, so GGUF files carry them as
//! they are: quantizing f32 values into blocks, and widening blocks back.
//!
//! Every format splits a row into blocks along its length (a row's length
//! must be a whole number of blocks); a block is its scale(s) and packed
//! integers, little-endian:
//! - Q8_0, 34 bytes per 32 values: `d` (f16), then 32 int8 `q`; `x = d·q`.
//! - Q4_0, 18 bytes per 32: `d` (f16), then 16 bytes whose low nibbles are
//!   values 0–15 and high nibbles values 16–31; `x = d·(q − 8)`.
//! - Q4_K, 144 bytes per 256: `d`, `dmin` (f16), 12 bytes of eight 6-bit
//!   scales and eight 6-bit minimums ([`unpack_q4_k_scales`]), 128 bytes of
//!   nibbles: 32-byte chunk `c` holds sub-block `2c` in its low nibbles and
//!   `2c + 1` in its high ones; `x = d·sc·q − dmin·m`.
//! - Q6_K, 210 bytes per 256 (read only): low nibbles `ql[128]`, high 2-bit
//!   parts `qh[64]`, sixteen int8 scales, `d` (f16) last; `x = d·sc·(q − 32)`.
//!
//! Q8_0 and Q4_0 quantize exactly as ggml's reference code (and the `gguf`
//! Python package, which matches it bit for bit): the tests check against
//! its output. Q4_K picks each sub-block's scale and minimum by a weighted
//! least-squares search over candidate scales, ggml's approach; any choice
//! is a valid file, and the dequantizer is checked bit-exact.

use super::dtype::{f16_from_f32, f32_from_f16, DType};
use rayon::prelude::*;

/// Values per Q8_0/Q4_0 block, and per Q4_K sub-block.
pub const QK: usize = 32;
/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// A tensor's blocks on the host, as files store them.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub dtype: DType,
    pub bytes: Vec<u8>,
}

impl Quantized {
    /// Values held.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.block_bytes() * self.dtype.block_len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// Widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        dequantize(self.dtype, &self.bytes, &mut out);
        out
    }
}

/// Whether rows of `cols` values can be stored as `dtype` (whole blocks).
pub fn fits(dtype: DType, cols: usize) -> bool {
    cols > 0 && cols.is_multiple_of(dtype.block_len())
}

/// Quantizes `src` (a whole number of `dtype` blocks) into `dtype`'s blocks.
pub fn quantize(dtype: DType, src: &[f32]) -> Vec<u8> {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    assert!(dtype.is_quantized() && src.len().is_multiple_of(bl), "quantize: {} values into {dtype} blocks", src.len());
    let mut out = vec![0u8; src.len() / bl * bb];
    // Chunks of 64 blocks: work enough per task, results independent of threads.
    out.par_chunks_mut(64 * bb).zip(src.par_chunks(64 * bl)).for_each(|(o, s)| {
        for (o, s) in o.chunks_exact_mut(bb).zip(s.chunks_exact(bl)) {
            match dtype {
                DType::Q8_0 => quantize_q8_0(s, o),
                DType::Q4_0 => quantize_q4_0(s, o),
                DType::Q4_K => quantize_q4_k(s, o),
                other => panic!("quantize: ferrite does not write {other}"),
            }
        }
    });
    out
}

/// Widens `src`, whole `dtype` blocks, into `dst` (as many values).
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    assert!(src.len().is_multiple_of(bb) && dst.len() == src.len() / bb * bl, "dequantize: sizes do not match");
    dst.par_chunks_mut(64 * bl).zip(src.par_chunks(64 * bb)).for_each(|(d, s)| {
        for (d, s) in d.chunks_exact_mut(bl).zip(s.chunks_exact(bb)) {
            dequantize_block(dtype, s, d);
        }
    });
}

/// Widens one block.
pub fn dequantize_block(dtype: DType, b: &[u8], out: &mut [f32]) {
    match dtype {
        DType::Q8_0 => {
            let d = half(b, 0);
            for (o, &q) in out.iter_mut().zip(&b[2..34]) {
                *o = d * (q as i8) as f32;
            }
        }
        DType::Q4_0 => {
            let d = half(b, 0);
            for (i, &q) in b[2..18].iter().enumerate() {
                out[i] = d * ((q & 0xF) as i32 - 8) as f32;
                out[i + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        DType::Q4_K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let (sc, mn) = unpack_q4_k_scales(&b[4..16]);
            for c in 0..4 {
                let qs = &b[16 + 32 * c..16 + 32 * (c + 1)];
                for (half_, shift) in [(0, 0), (1, 4)] {
                    let s = 2 * c + half_;
                    let (dl, ml) = (d * sc[s] as f32, dmin * mn[s] as f32);
                    for (i, &q) in qs.iter().enumerate() {
                        out[32 * s + i] = dl * ((q >> shift) & 0xF) as f32 - ml;
                    }
                }
            }
        }
        DType::Q6_K => {
            let (ql, qh, scales, d) = (&b[..128], &b[128..192], &b[192..208], half(b, 208));
            for h in 0..2 {
                for g in 0..4 {
                    for i in 0..32 {
                        let lo = (ql[64 * h + (g % 2) * 32 + i] >> (4 * (g / 2))) & 0xF;
                        let hi = (qh[32 * h + i] >> (2 * g)) & 3;
                        let e = 128 * h + 32 * g + i;
                        let q = (lo | (hi << 4)) as i32 - 32;
                        out[e] = d * (scales[e / 16] as i8) as f32 * q as f32;
                    }
                }
            }
        }
        other => panic!("dequantize: {other} is not block-quantized"),
    }
}

/// The f16 at byte `at` of a block, widened.
#[inline(always)]
pub fn half(b: &[u8], at: usize) -> f32 {
    f32_from_f16(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Q4_K's eight 6-bit scales and minimums from their 12 packed bytes:
/// bytes 0–3 hold scales 0–3 (low 6 bits) and the top 2 bits of scales
/// 4–7; bytes 4–7 the same for the minimums; bytes 8–11 the low 4 bits of
/// scale (low nibble) and minimum (high nibble) 4–7.
#[inline(always)]
pub fn unpack_q4_k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

fn pack_q4_k_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    s
}

/// ggml's `roundf`: halves away from zero (Rust's `round`).
#[inline(always)]
fn nearest(x: f32) -> f32 {
    x.round()
}

/// The reciprocal of a scale, 0 for 0 (an all-zero block stays zeros).
#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_from_f32(d).to_le_bytes());
    for (o, &v) in out[2..].iter_mut().zip(x) {
        *o = nearest(v * id) as i8 as u8;
    }
}

fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    // The value of largest magnitude, with its sign, maps to -8.
    let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
    for i in 0..16 {
        out[2 + i] = q(x[i]) | (q(x[i + 16]) << 4);
    }
}

fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for (s, sub) in x.chunks_exact(QK).enumerate() {
        (scales[s], mins[s]) = fit_sub_block(sub);
    }
    // The sub-blocks' scales and minimums as 6-bit multiples of d and dmin.
    let max_scale = scales.iter().fold(0f32, |a, &b| a.max(b));
    let max_min = mins.iter().fold(0f32, |a, &b| a.max(b));
    let six = |v: f32, max: f32| if max > 0.0 { nearest(v * 63.0 / max).min(63.0) as u8 } else { 0 };
    let (sc, mn): ([u8; 8], [u8; 8]) = (scales.map(|s| six(s, max_scale)), mins.map(|m| six(m, max_min)));
    let (d16, dmin16) = (f16_from_f32(max_scale / 63.0), f16_from_f32(max_min / 63.0));
    out[..2].copy_from_slice(&d16.to_le_bytes());
    out[2..4].copy_from_slice(&dmin16.to_le_bytes());
    out[4..16].copy_from_slice(&pack_q4_k_scales(&sc, &mn));
    // The values against the scales as stored (rounded), not as fitted.
    let (d, dmin) = (f32_from_f16(d16), f32_from_f16(dmin16));
    let mut q = [0u8; QK_K];
    for s in 0..8 {
        let (dl, ml) = (d * sc[s] as f32, dmin * mn[s] as f32);
        if dl == 0.0 {
            continue;
        }
        for i in 0..QK {
            q[QK * s + i] = nearest((x[QK * s + i] + ml) / dl).clamp(0.0, 15.0) as u8;
        }
    }
    for c in 0..4 {
        for i in 0..32 {
            out[16 + 32 * c + i] = q[64 * c + i] | (q[64 * c + 32 + i] << 4);
        }
    }
}

/// The scale and minimum (`x ≈ scale·q − min`, `q` in 0..=15, `min >= 0`)
/// of one 32-value sub-block: candidate scales around `(max − min) / 15`,
/// each refined by weighted least squares, the best kept. Larger values
/// weigh more (`|x|` plus the block's RMS), as in ggml.
fn fit_sub_block(x: &[f32]) -> (f32, f32) {
    let lo = x.iter().fold(f32::INFINITY, |a, &b| a.min(b)).min(0.0);
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if hi <= lo {
        return (0.0, -lo);
    }
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / QK as f32).sqrt();
    let w: Vec<f32> = x.iter().map(|v| rms + v.abs()).collect();
    let error = |scale: f32, min: f32, l: &[f32]| -> f32 {
        x.iter().zip(&w).zip(l).map(|((&v, &w), &l)| w * (scale * l + min - v).powi(2)).sum()
    };
    let levels = |iscale: f32| -> Vec<f32> { x.iter().map(|&v| nearest(iscale * (v - lo)).clamp(0.0, 15.0)).collect() };
    let (mut scale, mut min) = ((hi - lo) / 15.0, lo);
    let mut best = error(scale, min, &levels(15.0 / (hi - lo)));
    let (sw, sx) = (w.iter().sum::<f32>(), x.iter().zip(&w).map(|(v, w)| v * w).sum::<f32>());
    for step in 0..=20 {
        let l = levels((15.0 - 1.0 + 0.1 * step as f32) / (hi - lo));
        let (mut sl, mut sl2, mut sxl) = (0f32, 0f32, 0f32);
        for ((&v, &w), &l) in x.iter().zip(&w).zip(&l) {
            sl += w * l;
            sl2 += w * l * l;
            sxl += w * l * v;
        }
        let det = sw * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let (mut s, mut m) = ((sw * sxl - sx * sl) / det, (sl2 * sx - sl * sxl) / det);
        if m > 0.0 {
            (s, m) = (sxl / sl2, 0.0);
        }
        let e = error(s, m, &l);
        if e < best {
            (best, scale, min) = (e, s, m);
        }
    }
    (scale.max(0.0), -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture `scripts/make_quant_fixture.py` writes with the `gguf`
    /// package (ggml's reference quantizer and dequantizers).
    fn reference() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant/ggml_reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn hex(v: &serde_json::Value) -> Vec<u8> {
        let s = v.as_str().unwrap();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn dtype(v: &serde_json::Value) -> DType {
        v["type"].as_str().unwrap().parse().unwrap_or(DType::Q6_K)
    }

    #[test]
    fn q8_0_and_q4_0_quantize_bit_exactly_as_ggml() {
        let r = reference();
        let cases = r["quantize"].as_array().unwrap();
        assert!(cases.len() >= 2);
        for case in cases {
            let (dt, values) = (dtype(case), floats(&case["values"]));
            assert_eq!(quantize(dt, &values), hex(&case["bytes"]), "{dt}");
            let back = Quantized { dtype: dt, bytes: hex(&case["bytes"]) }.to_f32();
            let want = floats(&case["dequantized"]);
            assert!(back.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dt} dequantized");
        }
    }

    #[test]
    fn k_quants_dequantize_bit_exactly_as_ggml() {
        let r = reference();
        let mut seen = vec![];
        for case in r["dequantize"].as_array().unwrap() {
            let dt = dtype(case);
            let back = Quantized { dtype: dt, bytes: hex(&case["bytes"]) }.to_f32();
            let want = floats(&case["dequantized"]);
            assert_eq!(back.len(), want.len());
            assert!(back.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dt}");
            seen.push(dt);
        }
        assert_eq!(seen, [DType::Q4_K, DType::Q6_K]);
    }

    /// Root-mean-square error of a round trip, relative to the values' RMS.
    fn relative_rms_error(dt: DType, x: &[f32]) -> f32 {
        let back = Quantized { dtype: dt, bytes: quantize(dt, x) }.to_f32();
        let err: f32 = x.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum();
        (err / x.iter().map(|a| a * a).sum::<f32>()).sqrt()
    }

    #[test]
    fn round_trips_lose_what_their_bits_allow() {
        // Gaussian-like values (sum of uniforms): the shape of trained weights.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..64 * QK_K).map(|_| (0..4).map(|_| next()).sum::<f32>() * 0.05).collect();
        let (q8, q4, q4k) = (
            relative_rms_error(DType::Q8_0, &x),
            relative_rms_error(DType::Q4_0, &x),
            relative_rms_error(DType::Q4_K, &x),
        );
        assert!(q8 < 0.006, "q8_0 {q8}");
        assert!(q4 < 0.12, "q4_0 {q4}");
        // Q4_K's fitted scales and minimums beat Q4_0's one scale per block.
        assert!(q4k < q4 * 0.9, "q4_k {q4k} vs q4_0 {q4}");
        // Zeros stay zeros; a block whose scale is a power of two is exact in Q8_0.
        for dt in DType::QUANTIZED {
            assert!(Quantized { dtype: dt, bytes: quantize(dt, &[0.0; QK_K]) }.to_f32().iter().all(|&v| v == 0.0));
        }
        assert_eq!(
            Quantized { dtype: DType::Q8_0, bytes: quantize(DType::Q8_0, &[-127.0; QK]) }.to_f32(),
            [-127.0; QK]
        );
    }

    #[test]
    fn q4_k_scales_pack_and_unpack() {
        let sc = [0, 1, 17, 63, 32, 45, 2, 63];
        let mn = [63, 5, 0, 31, 16, 8, 62, 1];
        assert_eq!(unpack_q4_k_scales(&pack_q4_k_scales(&sc, &mn)), (sc, mn));
    }
}
