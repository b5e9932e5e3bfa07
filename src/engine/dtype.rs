//! Element types of engine buffers, and conversions between them.
//!
//! A buffer knows its [`DType`]; each [`super::Backend`] operation says which
//! dtypes it takes (most take f32 only: norms, softmax, the loss and the
//! optimizer accumulate in f32 whatever the model stores). 16-bit values
//! are stored as their bit patterns (`u16`), little-endian in files, as
//! safetensors and PyTorch store them. Block-quantized types (int8/int4 with
//! per-block scales, GGML's layouts: [`super::quant`]) store blocks of
//! bytes; only the operations that read weights take them.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(non_camel_case_types)] // GGML's names: Q4_K is not Q4K
pub enum DType {
    #[default]
    F32,
    /// bfloat16: f32's exponent range with 8 bits of mantissa (PyTorch's
    /// `torch.bfloat16`); what mixed-precision training computes in.
    BF16,
    /// IEEE half precision (`torch.float16`): more mantissa, range to 65504.
    F16,
    /// GGML's Q8_0: blocks of 32 int8 values and an f16 scale (8.5 bits a weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGML's Q4_0: blocks of 32 4-bit values and an f16 scale (4.5 bits a weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// GGML's Q4_K: super-blocks of 256 4-bit values in 8 sub-blocks, each
    /// with a 6-bit scale and minimum (4.5 bits a weight).
    #[serde(rename = "q4_k")]
    Q4_K,
    /// GGML's Q6_K (6.5625 bits a weight): read from GGUF files only, and
    /// widened to f32 as it is read ([`super::quant`] has no kernel for it).
    #[serde(rename = "q6_k")]
    Q6_K,
}

impl DType {
    /// The floating-point dtypes: every operation's inputs and outputs.
    pub const ALL: [DType; 3] = [DType::F32, DType::BF16, DType::F16];
    /// The block-quantized dtypes weights may be stored in (with kernels).
    pub const QUANTIZED: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::Q4_K];

    /// Bytes per element of a floating-point dtype (a block-quantized one
    /// has no whole number: see [`Self::size_of`]).
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            q => panic!("{q} stores blocks, not elements: use size_of"),
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }

    /// Values per block (1 for the floating-point dtypes).
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::BF16 | DType::F16 => 1,
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_K => 144,
            DType::Q6_K => 210,
        }
    }

    /// Bytes that `n` values take (`n` a whole number of blocks).
    pub fn size_of(self, n: usize) -> usize {
        debug_assert_eq!(n % self.block_len(), 0);
        n / self.block_len() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_K => "q4_k",
            DType::Q6_K => "q6_k",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            "q8_0" => Ok(DType::Q8_0),
            "q4_0" => Ok(DType::Q4_0),
            "q4_k" => Ok(DType::Q4_K),
            _ => bail!("unknown dtype {s:?} (valid: f32, bf16, f16, q8_0, q4_0, q4_k)"),
        }
    }
}

/// f32 to bfloat16, rounding to nearest even (as PyTorch and the
/// `vcvtneps2bf16` instruction do); NaN stays NaN. Branch-free but for
/// the NaN select, so loops over it vectorise.
#[inline(always)]
pub fn bf16_from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

#[inline(always)]
pub fn f32_from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[inline(always)]
pub fn f16_from_f32(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[inline(always)]
pub fn f32_from_f16(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// `x` rounded to `dtype` and back: the value a buffer of that dtype holds.
pub fn round_to(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::BF16 => f32_from_bf16(bf16_from_f32(x)),
        DType::F16 => f32_from_f16(f16_from_f32(x)),
        q => panic!("round_to: {q} rounds blocks, not values"),
    }
}

/// Encodes f32 values as 16-bit `dtype` values (BF16 or F16).
pub fn encode16(src: &[f32], dst: &mut [u16], dtype: DType) {
    assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16_from_f32(s)),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16_from_f32(s)),
        other => panic!("encode16: {other} is not a 16-bit dtype"),
    }
}

/// Decodes 16-bit `dtype` values (BF16 or F16) into f32.
pub fn decode16(src: &[u16], dst: &mut [f32], dtype: DType) {
    assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_from_bf16(s)),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_from_f16(s)),
        other => panic!("decode16: {other} is not a 16-bit dtype"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf16_from_f32(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(bf16_from_f32(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_from_f32(1.0 + 1.0 / 256.0 + 1e-6), 0x3F81);
        assert_eq!(f32_from_bf16(bf16_from_f32(-2.5)), -2.5);
        assert_eq!(f32_from_bf16(bf16_from_f32(f32::INFINITY)), f32::INFINITY);
        assert!(f32_from_bf16(bf16_from_f32(f32::NAN)).is_nan());
        // The largest finite f32 rounds up to infinity, as in PyTorch.
        assert_eq!(f32_from_bf16(bf16_from_f32(f32::MAX)), f32::INFINITY);
        // Every bf16 value survives a round trip through f32.
        for b in (0..=u16::MAX).step_by(7) {
            let x = f32_from_bf16(b);
            if !x.is_nan() {
                assert_eq!(bf16_from_f32(x), b);
            }
        }
    }

    #[test]
    fn f16_round_trip_and_range() {
        assert_eq!(round_to(0.1, DType::F16), 0.099_975_586);
        assert_eq!(round_to(65504.0, DType::F16), 65504.0);
        assert_eq!(round_to(1e6, DType::F16), f32::INFINITY);
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        for dt in [DType::BF16, DType::F16] {
            let mut enc = vec![0u16; xs.len()];
            let mut dec = vec![0f32; xs.len()];
            encode16(&xs, &mut enc, dt);
            decode16(&enc, &mut dec, dt);
            for (x, y) in xs.iter().zip(&dec) {
                assert_eq!(*y, round_to(*x, dt));
                let tol = if dt == DType::BF16 { 1.0 / 256.0 } else { 1.0 / 2048.0 };
                assert!((x - y).abs() <= tol * x.abs(), "{dt}: {x} -> {y}");
            }
        }
    }

    #[test]
    fn names_parse() {
        for dt in DType::ALL.into_iter().chain(DType::QUANTIZED) {
            assert_eq!(dt.name().parse::<DType>().unwrap(), dt);
            assert_eq!(serde_json::to_string(&dt).unwrap(), format!("\"{dt}\""));
        }
        assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::BF16);
        assert!("int3".parse::<DType>().unwrap_err().to_string().contains("valid: f32, bf16, f16, q8_0"));
    }
}
