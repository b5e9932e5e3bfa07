//! Writing GGUF files (see the module doc of [`super`]).

use super::super::hf::Arch;
use super::super::CheckpointConfig;
use super::{file_type, ggml_type, interleave_heads, ALIGNMENT, MAGIC, VERSION};
use crate::data::Tokenizer;
use crate::engine::dtype::{self, DType};
use crate::engine::{quant, Quantized};
use crate::model::params::Layout;
use anyhow::{bail, Result};
use std::path::Path;
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

/// One tensor: its GGUF name, our shape (`[rows, cols]` or `[n]`), its
/// type and bytes.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    data: Vec<u8>,
}

/// A parameter's values as `dt` bytes: its stored blocks when they are of
/// that type (no second rounding), else encoded from its f32 values.
pub fn encode(values: &[f32], blocks: Option<&Quantized>, dt: DType) -> Vec<u8> {
    match (blocks, dt) {
        (Some(q), _) if q.dtype == dt => q.bytes.clone(),
        (_, DType::F32) => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (_, DType::BF16 | DType::F16) => {
            let mut half = vec![0u16; values.len()];
            dtype::encode16(values, &mut half, dt);
            half.iter().flat_map(|h| h.to_le_bytes()).collect()
        }
        (_, q) => quant::quantize(q, values),
    }
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

/// Our parameters (their values, stored blocks and the types to write)
/// under llama.cpp's names.
fn tensors(
    arch: Arch,
    config: &CheckpointConfig,
    params: &[Vec<f32>],
    blocks: &[Option<Quantized>],
    types: &[DType],
) -> Vec<Tensor> {
    let cfg = &config.model;
    let layout = Layout::new(cfg);
    let (v, c) = (cfg.vocab_size, cfg.n_embd);
    let mut out = Vec::new();
    let encoded: Vec<Vec<u8>> = (0..params.len()).map(|i| encode(&params[i], blocks[i].as_ref(), types[i])).collect();
    // Rows `rows` of parameter `i`, as they are written.
    let rows = |i: usize, rows: std::ops::Range<usize>| -> (DType, Vec<u8>) {
        let (dt, cols) = (types[i], *layout.specs[i].shape.last().expect("a shape"));
        let row = dt.size_of(cols);
        (dt, encoded[i][rows.start * row..rows.end * row].to_vec())
    };
    // Every row (a vector is one).
    let all = |i: usize| rows(i, 0..layout.specs[i].numel() / layout.specs[i].shape.last().expect("a shape"));
    let mut add = |name: String, shape: Vec<usize>, (dtype, data): (DType, Vec<u8>)| {
        out.push(Tensor { name, shape, dtype, data })
    };
    let f32s = |x: &[f32]| (DType::F32, encode(x, None, DType::F32));
    add("token_embd.weight".into(), vec![v, c], rows(layout.wte, 0..v));
    if let Some(wpe) = layout.wpe {
        add("position_embd.weight".into(), vec![cfg.block_size, c], all(wpe));
    }
    // GPT-2 in llama.cpp has every bias: a bias-free model gets zeros.
    let bias = |idx: Option<usize>, n: usize| idx.map_or_else(|| f32s(&vec![0.0; n]), all);
    for (l, b) in layout.blocks.iter().enumerate() {
        let p = |s: &str| format!("blk.{l}.{s}");
        add(p("attn_norm.weight"), vec![c], all(b.ln1.w));
        add(p("ffn_norm.weight"), vec![c], all(b.ln2.w));
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
                    add(p(&format!("{n}.weight")), vec![rows, cols], all(idx.w));
                    add(p(&format!("{n}.bias")), vec![rows], bias(idx.b, rows));
                }
            }
            Arch::Llama => {
                let (hd, q, kv) = (cfg.head_dim(), cfg.n_head * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
                let heads = |(dt, w): (DType, Vec<u8>), n: usize| {
                    let row = w.len() / (n * hd);
                    (dt, interleave_heads(&w, n, hd, row, false))
                };
                add(p("attn_q.weight"), vec![q, c], heads(rows(b.qkv.w, 0..q), cfg.n_head));
                add(p("attn_k.weight"), vec![kv, c], heads(rows(b.qkv.w, q..q + kv), cfg.kv_heads()));
                add(p("attn_v.weight"), vec![kv, c], rows(b.qkv.w, q + kv..q + 2 * kv));
                add(p("attn_output.weight"), vec![c, q], all(b.proj.w));
                let h = cfg.hidden();
                add(p("ffn_gate.weight"), vec![h, c], rows(b.fc.w, 0..h));
                add(p("ffn_up.weight"), vec![h, c], rows(b.fc.w, h..2 * h));
                add(p("ffn_down.weight"), vec![c, h], all(b.fcproj.w));
            }
        }
    }
    add("output_norm.weight".into(), vec![c], all(layout.lnf.w));
    if arch == Arch::Gpt2 {
        add("output_norm.bias".into(), vec![c], bias(layout.lnf.b, c));
    }
    // A tied head is left out: llama.cpp then reads token_embd.
    if !cfg.tie_embeddings {
        add("output.weight".into(), vec![v, c], rows(layout.head, 0..v));
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

/// Writes `config` and `params` as a GGUF file (atomically), each parameter
/// as `types` says (its `blocks`, when it has them in that type, as they are).
pub fn export(
    config: &CheckpointConfig,
    (params, blocks): (&[Vec<f32>], &[Option<Quantized>]),
    types: &[DType],
    out: &Path,
    name: &str,
) -> Result<Arch> {
    let cfg = &config.model;
    let arch = Arch::of(cfg)?;
    if arch == Arch::Llama && cfg.bias {
        bail!("llama.cpp's llama architecture has no biases; this model has them");
    }
    let a = match arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
    };
    // The file is named for its blocks' weights' type (what llama.cpp shows).
    let main = types[Layout::new(cfg).blocks[0].qkv.w];
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(a.into())),
        ("general.name".into(), Meta::Str(name.into())),
        ("general.file_type".into(), Meta::U32(file_type(main))),
        ("general.quantization_version".into(), Meta::U32(2)),
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
    let tensors = tensors(arch, config, params, blocks, types);

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
        head.extend(string(&t.name));
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(ggml_type(t.dtype).to_le_bytes());
        head.extend((data.len() as u64).to_le_bytes());
        data.extend(&t.data);
        data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
    }
    head.resize(head.len().next_multiple_of(ALIGNMENT), 0);
    head.extend(data);
    crate::data::files::write_atomic(out, &head)?;
    Ok(arch)
}
