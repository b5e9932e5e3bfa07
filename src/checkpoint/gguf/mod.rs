//! GGUF files, llama.cpp's format: written for its `gpt2` architecture
//! (GPT-2-style models) and `llama` (Llama-style ones) with the tokenizer
//! inside ([`write`]), and read back from any file of those architectures
//! whose tokenizer is byte-level BPE ([`read`]: `ferrite import FILE.gguf`).
//!
//! The format (version 3): a header, metadata as typed key/values, a table
//! of tensors (name, dimensions innermost first, type, offset), then the
//! tensor data, each aligned to 32 bytes (`general.alignment`). All
//! little-endian. Tensor types are GGML's: f32, f16, bf16 and the
//! block-quantized Q8_0, Q4_0, Q4_K (and Q6_K, read only), whose blocks
//! are ours byte for byte ([`crate::engine::quant`]).
//!
//! Two layouts differ from ours. GPT-2's matrices are ours as they are (the
//! innermost dimension first: `[in, out]` reads as our `[out, in]`). Llama's
//! rotary embeddings in llama.cpp turn adjacent pairs of a head (`x[2i]`,
//! `x[2i+1]`) where ours (and Hugging Face's) turn its two halves (`x[i]`,
//! `x[i + d/2]`): the rows of the q and k projections are interleaved to
//! match, as llama.cpp's own converter does, and back on import.

mod read;
mod write;

pub use read::import;
pub use write::{caveats, export};

use crate::engine::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;

/// GGML's number for a tensor type.
fn ggml_type(dt: DType) -> u32 {
    match dt {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 8,
        DType::Q4_K => 12,
        DType::Q6_K => 14,
        DType::BF16 => 30,
    }
}

/// The tensor type GGML numbers `t`, if ferrite reads it.
fn from_ggml_type(t: u32) -> Option<DType> {
    [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K]
        .into_iter()
        .find(|&d| ggml_type(d) == t)
}

/// `general.file_type` for a file whose weights are mostly `dt`.
fn file_type(dt: DType) -> u32 {
    match dt {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        // MOSTLY_Q4_K_M: Q4_K with some tensors kept wider (our head).
        DType::Q4_K => 15,
        DType::Q6_K => 18,
        DType::BF16 => 32,
    }
}

/// Interleaves the two halves of each head's rows (see the module doc);
/// `inverse` undoes it. Rows are `row` bytes each.
fn interleave_heads(w: &[u8], heads: usize, head_dim: usize, row: usize, inverse: bool) -> Vec<u8> {
    let half = head_dim / 2;
    let mut out = vec![0u8; w.len()];
    for h in 0..heads {
        for part in 0..2 {
            for i in 0..half {
                let (ours, theirs) = ((h * head_dim + part * half + i) * row, (h * head_dim + 2 * i + part) * row);
                let (from, to) = if inverse { (theirs, ours) } else { (ours, theirs) };
                out[to..to + row].copy_from_slice(&w[from..from + row]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_pairs_the_halves_of_each_head() {
        // Two heads of 4 rows (one byte each): halves (a0 a1 | b0 b1) become a0 b0 a1 b1.
        let w: Vec<u8> = (0..8).collect();
        let mixed = interleave_heads(&w, 2, 4, 1, false);
        assert_eq!(mixed, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(interleave_heads(&mixed, 2, 4, 1, true), w);
        for dt in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K] {
            assert_eq!(from_ggml_type(ggml_type(dt)), Some(dt));
        }
    }
}
