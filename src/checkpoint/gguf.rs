//! GGUF files for llama.cpp: its `gpt2` architecture for GPT-2-style models
//! and `llama` for Llama-style ones, with the tokenizer inside (llama.cpp's
//! byte-level BPE, `tokenizer.ggml.model = "gpt2"`).
//!
//! The format (version 3): a header, metadata as typed key/values, a table
//! of tensors (name, dimensions innermost first, type, offset), then the
//! tensor data, each aligned to 32 bytes. All little-endian.
//!
//! Two layouts differ from ours. GPT-2's matrices are ours as they are (the
//! innermost dimension first: `[in, out]` reads as our `[out, in]`). Llama's
//! rotary embeddings in llama.cpp turn adjacent pairs of a head (`x[2i]`,
//! `x[2i+1]`) where ours (and Hugging Face's) turn its two halves (`x[i]`,
//! `x[i + d/2]`): the rows of the q and k projections are interleaved to
//! match, as llama.cpp's own converter does.

use super::hf::Arch;
use super::CheckpointConfig;
use crate::data::Tokenizer;
use crate::engine::dtype::{self, DType};
use crate::model::params::Layout;
use anyhow::{bail, Result};
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;

/// Metadata value types (GGUF's numbering).
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

impl Meta {
    fn write(&self, out: &mut Vec<u8>) {
        let (ty, body): (u32, Vec<u8>) = match self {
            Meta::U32(v) => (4, v.to_le_bytes().to_vec()),
            Meta::F32(v) => (6, v.to_le_bytes().to_vec()),
            Meta::Bool(v) => (7, vec![*v as u8]),
            Meta::Str(s) => (8, string(s)),
            Meta::Strs(v) => (9, array(8, v.len(), v.iter().flat_map(|s| string(s)).collect())),
            Meta::I32s(v) => (9, array(5, v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())),
        };
        out.extend(ty.to_le_bytes());
        out.extend(body);
    }
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn array(elem: u32, len: usize, items: Vec<u8>) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend((len as u64).to_le_bytes());
    b.extend(items);
    b
}

/// One tensor: its GGUF name, our shape (`[rows, cols]` or `[n]`), values.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The tokenizer as llama.cpp's byte-level BPE: tokens, their types, merges.
fn tokenizer_meta(tok: &Tokenizer) -> Result<Vec<(String, Meta)>> {
    let Some(eot) = tok.end_of_text() else {
        // llama.cpp would take token 11 as the end of text in its place.
        bail!(
            "the {} tokenizer has no end-of-text token, which llama.cpp's BPE vocabularies need; GGUF export takes gpt2, p50k_base or a byte-level BPE tokenizer.json",
            tok.kind()
        );
    };
    let v = tok.bpe_vocab()?;
    if !v.byte_level {
        bail!("the {} tokenizer is not byte-level: llama.cpp cannot read it", tok.kind());
    }
    let types = v.special.iter().map(|&s| if s { 3 } else { 1 }).collect();
    let merges = v.merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    Ok(vec![
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(v.tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::I32s(types)),
        ("tokenizer.ggml.merges".into(), Meta::Strs(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(eot)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(eot)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(false)),
    ])
}

/// Interleaves the two halves of each head's rows (see the module doc).
fn interleave_heads(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for part in 0..2 {
            for i in 0..half {
                let from = (h * head_dim + part * half + i) * cols;
                let to = (h * head_dim + 2 * i + part) * cols;
                out[to..to + cols].copy_from_slice(&w[from..from + cols]);
            }
        }
    }
    out
}

/// Our parameters under llama.cpp's names.
fn tensors(arch: Arch, config: &CheckpointConfig, params: &[Vec<f32>]) -> Vec<Tensor> {
    let cfg = &config.model;
    let layout = Layout::new(cfg);
    let (v, c) = (cfg.vocab_size, cfg.n_embd);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, data: Vec<f32>| out.push(Tensor { name, shape, data });
    let zeros = |n: usize| vec![0.0; n];
    add("token_embd.weight".into(), vec![v, c], params[layout.wte][..v * c].to_vec());
    if let Some(wpe) = layout.wpe {
        add("position_embd.weight".into(), vec![cfg.block_size, c], params[wpe].clone());
    }
    // GPT-2 in llama.cpp has every bias: a bias-free model gets zeros.
    let bias = |idx: Option<usize>, n: usize| idx.map_or_else(|| zeros(n), |i| params[i].clone());
    for (l, b) in layout.blocks.iter().enumerate() {
        let p = |s: &str| format!("blk.{l}.{s}");
        add(p("attn_norm.weight"), vec![c], params[b.ln1.w].clone());
        add(p("ffn_norm.weight"), vec![c], params[b.ln2.w].clone());
        match arch {
            Arch::Gpt2 => {
                add(p("attn_norm.bias"), vec![c], bias(b.ln1.b, c));
                add(p("ffn_norm.bias"), vec![c], bias(b.ln2.b, c));
                for (idx, n, rows, cols) in [
                    (b.qkv, "attn_qkv", cfg.qkv_width(), c),
                    (b.proj, "attn_output", c, c),
                    (b.fc, "ffn_up", cfg.fc_width(), c),
                    (b.fcproj, "ffn_down", c, cfg.hidden()),
                ] {
                    add(p(&format!("{n}.weight")), vec![rows, cols], params[idx.w].clone());
                    add(p(&format!("{n}.bias")), vec![rows], bias(idx.b, rows));
                }
            }
            Arch::Llama => {
                let (hd, q, kv) = (cfg.head_dim(), cfg.n_head * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
                let w = &params[b.qkv.w];
                add(p("attn_q.weight"), vec![q, c], interleave_heads(&w[..q * c], cfg.n_head, hd, c));
                add(p("attn_k.weight"), vec![kv, c], interleave_heads(&w[q * c..(q + kv) * c], cfg.kv_heads(), hd, c));
                add(p("attn_v.weight"), vec![kv, c], w[(q + kv) * c..].to_vec());
                add(p("attn_output.weight"), vec![c, q], params[b.proj.w].clone());
                let (h, fc) = (cfg.hidden(), &params[b.fc.w]);
                add(p("ffn_gate.weight"), vec![h, c], fc[..h * c].to_vec());
                add(p("ffn_up.weight"), vec![h, c], fc[h * c..].to_vec());
                add(p("ffn_down.weight"), vec![c, h], params[b.fcproj.w].clone());
            }
        }
    }
    add("output_norm.weight".into(), vec![c], params[layout.lnf.w].clone());
    if arch == Arch::Gpt2 {
        add("output_norm.bias".into(), vec![c], bias(layout.lnf.b, c));
    }
    // A tied head is left out: llama.cpp then reads token_embd.
    if !cfg.tie_embeddings {
        add("output.weight".into(), vec![v, c], params[layout.head][..v * c].to_vec());
    }
    out
}

/// Things about a model llama.cpp computes differently, for the user.
pub fn caveats(config: &CheckpointConfig) -> Vec<String> {
    let mut notes = Vec::new();
    if config.model.mlp == crate::model::config::MlpKind::Gelu {
        notes.push(
            "this model uses the exact (erf) GELU; llama.cpp's gpt2 computes the tanh approximation, so its logits differ slightly"
                .to_string(),
        );
    }
    notes
}

/// Writes `config` and `params` as a GGUF file (atomically), matrices in
/// `dtype`, vectors in f32.
pub fn export(config: &CheckpointConfig, params: &[Vec<f32>], dtype: DType, out: &Path, name: &str) -> Result<Arch> {
    let cfg = &config.model;
    let arch = Arch::of(cfg)?;
    if arch == Arch::Llama && cfg.bias {
        bail!("llama.cpp's llama architecture has no biases; this model has them");
    }
    let a = match arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
    };
    let file_type = match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 32,
    };
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(a.into())),
        ("general.name".into(), Meta::Str(name.into())),
        ("general.file_type".into(), Meta::U32(file_type)),
        ("general.alignment".into(), Meta::U32(ALIGNMENT as u32)),
        (format!("{a}.context_length"), Meta::U32(cfg.block_size as u32)),
        (format!("{a}.embedding_length"), Meta::U32(cfg.n_embd as u32)),
        (format!("{a}.block_count"), Meta::U32(cfg.n_layer as u32)),
        (format!("{a}.feed_forward_length"), Meta::U32(cfg.hidden() as u32)),
        (format!("{a}.attention.head_count"), Meta::U32(cfg.n_head as u32)),
    ];
    match arch {
        Arch::Gpt2 => meta.push((format!("{a}.attention.layer_norm_epsilon"), Meta::F32(cfg.norm_eps()))),
        Arch::Llama => meta.extend([
            (format!("{a}.attention.head_count_kv"), Meta::U32(cfg.kv_heads() as u32)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Meta::F32(cfg.norm_eps())),
            (format!("{a}.rope.freq_base"), Meta::F32(cfg.rope_base)),
            (format!("{a}.rope.dimension_count"), Meta::U32(cfg.head_dim() as u32)),
            (format!("{a}.vocab_size"), Meta::U32(cfg.vocab_size as u32)),
        ]),
    }
    meta.extend(tokenizer_meta(&config.tokenizer)?);
    let tensors = tensors(arch, config, params);

    let mut head = Vec::new();
    head.extend(MAGIC);
    head.extend(VERSION.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in &meta {
        head.extend(string(key));
        value.write(&mut head);
    }
    let mut data = Vec::new();
    for t in &tensors {
        // Vectors stay f32 (llama.cpp's converter keeps them so).
        let dt = if t.shape.len() == 1 { DType::F32 } else { dtype };
        head.extend(string(&t.name));
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        let ggml_type: u32 = match dt {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 30,
        };
        head.extend(ggml_type.to_le_bytes());
        head.extend((data.len() as u64).to_le_bytes());
        match dt {
            DType::F32 => data.extend(t.data.iter().flat_map(|x| x.to_le_bytes())),
            _ => {
                let mut half = vec![0u16; t.data.len()];
                dtype::encode16(&t.data, &mut half, dt);
                data.extend(half.iter().flat_map(|h| h.to_le_bytes()));
            }
        }
        data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
    }
    head.resize(head.len().next_multiple_of(ALIGNMENT), 0);
    head.extend(data);
    crate::data::files::write_atomic(out, &head)?;
    Ok(arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_pairs_the_halves_of_each_head() {
        // Two heads of 4 rows (one column): halves (a0 a1 | b0 b1) become a0 b0 a1 b1.
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(interleave_heads(&w, 2, 4, 1), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
