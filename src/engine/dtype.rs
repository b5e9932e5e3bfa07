//! Element types of engine buffers, and conversions between them.
//!
//! A buffer knows its [`DType`]; each [`super::Backend`] operation says which
//! dtypes it takes (most take f32 only: norms, softmax, the loss and the
//! optimizer accumulate in f32 whatever the model stores). 16-bit values
//! are stored as their bit patterns (`u16`), little-endian in files, as
//! safetensors and PyTorch store them. Block-quantized types (int8/int4 with
//! per-block scales) become further variants here.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    /// bfloat16: f32's exponent range with 8 bits of mantissa (PyTorch's
    /// `torch.bfloat16`); what mixed-precision training computes in.
    BF16,
    /// IEEE half precision (`torch.float16`): more mantissa, range to 65504.
    F16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
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
            _ => bail!("unknown dtype {s:?} (valid: f32, bf16, f16)"),
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
    }
}

/// Encodes f32 values as 16-bit `dtype` values (BF16 or F16).
pub fn encode16(src: &[f32], dst: &mut [u16], dtype: DType) {
    assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16_from_f32(s)),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16_from_f32(s)),
        DType::F32 => panic!("encode16: f32 is not a 16-bit dtype"),
    }
}

/// Decodes 16-bit `dtype` values (BF16 or F16) into f32.
pub fn decode16(src: &[u16], dst: &mut [f32], dtype: DType) {
    assert_eq!(src.len(), dst.len());
    match dtype {
        DType::BF16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_from_bf16(s)),
        DType::F16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_from_f16(s)),
        DType::F32 => panic!("decode16: f32 is not a 16-bit dtype"),
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
        for dt in DType::ALL {
            assert_eq!(dt.name().parse::<DType>().unwrap(), dt);
        }
        assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::BF16);
        assert!("int3".parse::<DType>().unwrap_err().to_string().contains("valid: f32, bf16, f16"));
    }
}
