//! Which parameters of a quantized model are stored in which dtype.
//!
//! Vectors (norms, biases) and a learned position table stay f32: they are
//! a sliver of the bytes, and llama.cpp keeps them so. The other matrices
//! take the target type, except the LM head (the token embeddings too when
//! tied), which by default stays at 8 bits under a 4-bit target: it is the
//! weight whose errors reach the logits most directly (llama.cpp keeps it
//! in 6-bit Q6_K for the same reason). A matrix whose rows are not whole
//! blocks of the type falls back: Q4_K (256-value super-blocks) to Q4_0,
//! a 32-value type to f32.

use super::config::ModelConfig;
use super::params::Layout;
use crate::engine::{quant, DType};

/// The head's default dtype under a target of `to`.
pub fn default_head(to: DType) -> DType {
    match to {
        DType::Q4_0 | DType::Q4_K => DType::Q8_0,
        other => other,
    }
}

/// `want`, or what a row of `cols` values can hold instead.
pub fn fitting(want: DType, cols: usize) -> DType {
    match want {
        w if !w.is_quantized() || quant::fits(w, cols) => w,
        DType::Q4_K => fitting(DType::Q4_0, cols),
        _ => DType::F32,
    }
}

/// Each parameter's dtype, in layout order, for weights of `to` (a float
/// dtype or a quantized one) and a head of `head` (default: [`default_head`]).
pub fn weight_types(cfg: &ModelConfig, to: DType, head: Option<DType>) -> Vec<DType> {
    let layout = Layout::new(cfg);
    let head = head.unwrap_or(default_head(to));
    layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| match s.shape[..] {
            [_] => DType::F32,
            _ if Some(i) == layout.wpe => {
                if to.is_quantized() {
                    DType::F32
                } else {
                    to
                }
            }
            [.., cols] => fitting(if i == layout.head { head } else { to }, cols),
            [] => DType::F32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    #[test]
    fn vectors_stay_f32_the_head_keeps_8_bits_and_misfits_fall_back() {
        let cfg = ModelConfig::gpt2(65, 32, 1, 2, 64);
        let layout = Layout::new(&cfg);
        let types = weight_types(&cfg, DType::Q4_K, None);
        for (i, (s, t)) in layout.specs.iter().zip(&types).enumerate() {
            match s.shape.len() {
                1 => assert_eq!(*t, DType::F32, "{}", s.name),
                _ if Some(i) == layout.wpe => assert_eq!(*t, DType::F32),
                _ if i == layout.head => assert_eq!(*t, DType::Q8_0),
                // 64 or 256 columns: 64 is no whole Q4_K super-block.
                _ if s.shape[1] % 256 == 0 => assert_eq!(*t, DType::Q4_K, "{}", s.name),
                _ => assert_eq!(*t, DType::Q4_0, "{}", s.name),
            }
        }
        assert_eq!(fitting(DType::Q8_0, 48), DType::F32);
        assert_eq!(weight_types(&cfg, DType::BF16, None)[layout.head], DType::BF16);
        assert_eq!(weight_types(&cfg, DType::Q8_0, Some(DType::F16))[layout.head], DType::F16);
    }
}
