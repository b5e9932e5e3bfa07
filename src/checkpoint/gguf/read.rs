//! Reading GGUF files: `ferrite import FILE.gguf` (see [`super`]). Every
//! length and offset in the file is checked against its size before use: a
//! truncated or lying file is a one-line error, never a panic or a huge
//! allocation.

use super::super::hf::{self, Arch, Imported};
use super::super::{CheckpointConfig, FORMAT, VERSION};
use super::{from_ggml_type, interleave_heads, ALIGNMENT, MAGIC};
use crate::data::tokenizer::BpeVocab;
use crate::data::{HfTokenizer, Tokenizer};
use crate::engine::dtype::{f32_from_bf16, f32_from_f16};
use crate::engine::{quant, DType, Quantized};
use crate::model::config::pad_vocab;
use crate::model::params::Layout;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// A metadata value (the file's integer and float widths are widened).
#[derive(Clone, Debug)]
#[allow(dead_code)] // Bool's value: no key read is a bool; Debug shows it in errors
enum Meta {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

/// A tensor's entry in the file's table.
struct Entry {
    /// Dimensions as ours: outermost first.
    shape: Vec<usize>,
    dtype: DType,
    data: std::ops::Range<usize>,
}

/// Reads little-endian values off the file, checking each against its end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| anyhow!("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items of at least `min` bytes each: no more than the rest of the file holds.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u64()?;
        if n > ((self.b.len() - self.at) / min.max(1)) as u64 {
            bail!("a count of {n} runs past the end of the file: it is truncated or corrupt");
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| anyhow!("a string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Meta> {
        let int = |b: &[u8], signed: bool| -> i128 {
            let mut x = [0u8; 16];
            x[..b.len()].copy_from_slice(b);
            if signed && b[b.len() - 1] & 0x80 != 0 {
                x[b.len()..].fill(0xFF);
            }
            i128::from_le_bytes(x)
        };
        Ok(match ty {
            0 | 1 => Meta::Int(int(self.take(1)?, ty == 1)),
            2 | 3 => Meta::Int(int(self.take(2)?, ty == 3)),
            4 | 5 => Meta::Int(int(self.take(4)?, ty == 5)),
            10 | 11 => Meta::Int(int(self.take(8)?, ty == 11)),
            6 => Meta::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as f64),
            12 => Meta::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 if depth == 0 => {
                let elem = self.u32()?;
                let n = self.count(1)?;
                Meta::Array((0..n).map(|_| self.value(elem, depth + 1)).collect::<Result<_>>()?)
            }
            9 => bail!("arrays of arrays are not supported"),
            other => bail!("unknown metadata type {other}"),
        })
    }
}

/// The parsed file: metadata, and the tensors' entries by name.
struct Gguf {
    meta: HashMap<String, Meta>,
    tensors: HashMap<String, Entry>,
}

fn parse(b: &[u8]) -> Result<Gguf> {
    let mut r = Reader { b, at: 0 };
    if r.take(4).ok() != Some(&MAGIC[..]) {
        bail!("not a GGUF file (it does not start with \"GGUF\")");
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (2 and 3 are)");
    }
    let (n_tensors, n_meta) = (r.count(24)?, r.count(13)?);
    let mut meta = HashMap::new();
    for _ in 0..n_meta {
        let key = r.string()?;
        let ty = r.u32()?;
        let v = r.value(ty, 0).with_context(|| format!("metadata {key}"))?;
        meta.insert(key, v);
    }
    let align = match meta.get("general.alignment") {
        Some(Meta::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() && *a <= 1 << 20 => *a as usize,
        Some(other) => bail!("general.alignment {other:?} is not a power of two"),
        None => ALIGNMENT,
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let dims = r.u32()? as usize;
        if dims == 0 || dims > 4 {
            bail!("tensor {name} has {dims} dimensions (1 to 4 are allowed)");
        }
        let mut shape: Vec<usize> = (0..dims).map(|_| r.u64().map(|d| d as usize)).collect::<Result<_>>()?;
        shape.reverse();
        let ty = r.u32()?;
        let dtype = from_ggml_type(ty).with_context(|| {
            format!("tensor {name} is of GGML type {ty}, which ferrite does not read (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K)")
        })?;
        let offset = r.u64()?;
        infos.push((name, shape, dtype, offset));
    }
    let start = r.at.next_multiple_of(align);
    let mut tensors = HashMap::new();
    for (name, shape, dtype, offset) in infos {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n > 0);
        let cols = *shape.last().expect("dims > 0");
        let Some(numel) = numel.filter(|_| cols % dtype.block_len() == 0) else {
            bail!("tensor {name} of shape {shape:?} does not divide into {dtype} blocks of {}", dtype.block_len());
        };
        let size = numel.checked_mul(dtype.block_bytes()).map(|b| b / dtype.block_len());
        let range = size
            .and_then(|s| start.checked_add(offset as usize).map(|a| a..a.saturating_add(s)))
            .filter(|r| r.end <= b.len() && r.start >= start)
            .with_context(|| format!("tensor {name}'s data runs past the end of the file: it is truncated"))?;
        if tensors.insert(name.clone(), Entry { shape, dtype, data: range }).is_some() {
            bail!("tensor {name} is listed twice");
        }
    }
    Ok(Gguf { meta, tensors })
}

impl Gguf {
    fn int(&self, key: &str) -> Result<Option<usize>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(Meta::Int(v)) if *v >= 0 && *v <= u32::MAX as i128 => Ok(Some(*v as usize)),
            Some(other) => bail!("{key} is {other:?}, not a count"),
        }
    }
    fn need(&self, key: &str) -> Result<usize> {
        self.int(key)?.with_context(|| format!("the file has no {key}"))
    }
    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(Meta::Float(v)) => Ok(Some(*v)),
            Some(Meta::Int(v)) => Ok(Some(*v as f64)),
            Some(other) => bail!("{key} is {other:?}, not a number"),
        }
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(Meta::Str(s)) => Ok(Some(s)),
            Some(other) => bail!("{key} is {other:?}, not a string"),
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.meta.get(key) {
            Some(Meta::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Meta::Str(s) => Ok(s.clone()),
                    _ => bail!("{key} holds something other than strings"),
                })
                .collect(),
            _ => bail!("the file has no {key} (an array of strings)"),
        }
    }
}

/// The file's metadata as a Hugging Face `config.json`, for the one reader of model options.
fn hf_config(g: &Gguf, arch: Arch, vocab: usize) -> Result<Json> {
    let a = match arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
    };
    let key = |k: &str| format!("{a}.{k}");
    let (c, heads) = (g.need(&key("embedding_length"))?, g.need(&key("attention.head_count"))?);
    let tied = !g.tensors.contains_key("output.weight");
    Ok(match arch {
        Arch::Gpt2 => json!({
            "model_type": "gpt2",
            "vocab_size": vocab,
            "n_positions": g.need(&key("context_length"))?,
            "n_embd": c,
            "n_layer": g.need(&key("block_count"))?,
            "n_head": heads,
            "n_inner": g.need(&key("feed_forward_length"))?,
            "layer_norm_epsilon": g.float(&key("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
            "tie_word_embeddings": tied,
        }),
        Arch::Llama => {
            let head_dim = c / heads.max(1);
            if let Some(d) = g.int(&key("rope.dimension_count"))?.filter(|&d| d != head_dim) {
                bail!("rope.dimension_count {d} is not the head size {head_dim}: partial rotary embeddings are not supported");
            }
            if let Some(t) = g.str(&key("rope.scaling.type"))?.filter(|t| *t != "none") {
                bail!("rope scaling {t:?} is not supported (ferrite has plain RoPE only)");
            }
            json!({
                "model_type": "llama",
                "vocab_size": vocab,
                "hidden_size": c,
                "intermediate_size": g.need(&key("feed_forward_length"))?,
                "num_hidden_layers": g.need(&key("block_count"))?,
                "num_attention_heads": heads,
                "num_key_value_heads": g.int(&key("attention.head_count_kv"))?.unwrap_or(heads),
                "max_position_embeddings": g.need(&key("context_length"))?,
                "rms_norm_eps": g.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
                "rope_theta": g.float(&key("rope.freq_base"))?.unwrap_or(10000.0),
                "tie_word_embeddings": tied,
            })
        }
    })
}

/// The file's tokenizer: llama.cpp's byte-level BPE (`gpt2` model, GPT-2's pre-tokenizer).
fn tokenizer(g: &Gguf) -> Result<Tokenizer> {
    match g.str("tokenizer.ggml.model")? {
        Some("gpt2") => {}
        Some("llama") => bail!(
            "its tokenizer is SentencePiece (tokenizer.ggml.model = \"llama\"), which ferrite does not read; it reads byte-level BPE (\"gpt2\")"
        ),
        Some(other) => bail!("its tokenizer model {other:?} is not supported (ferrite reads byte-level BPE, \"gpt2\")"),
        None => bail!("the file has no tokenizer (tokenizer.ggml.model)"),
    }
    if let Some(pre) = g.str("tokenizer.ggml.pre")?.filter(|p| !matches!(*p, "gpt-2" | "default")) {
        bail!("its pre-tokenizer {pre:?} is not supported (ferrite splits text as GPT-2 does: \"gpt-2\")");
    }
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let types: Vec<i128> = match g.meta.get("tokenizer.ggml.token_type") {
        Some(Meta::Array(a)) => a.iter().map(|v| if let Meta::Int(i) = v { *i } else { 1 }).collect(),
        _ => vec![1; tokens.len()],
    };
    let merges = match g.meta.get("tokenizer.ggml.merges") {
        Some(_) => g.strings("tokenizer.ggml.merges")?,
        None => vec![],
    };
    let merges = merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .context("a merge is not two tokens separated by a space")?;
    // Control (3) and user-defined (4) tokens are matched whole, as specials.
    let special = (0..tokens.len()).map(|i| matches!(types.get(i), Some(3 | 4))).collect();
    let v = BpeVocab { tokens, merges, special, byte_level: true };
    let hf = HfTokenizer::without_gaps(v.build(true)?)?;
    Ok(Tokenizer::from_hf(hf))
}

/// A tensor's data in one of our parameters: rows of it, in our order.
struct Part<'a> {
    name: &'a str,
    shape: Vec<usize>,
    /// Rotary rows to turn from llama.cpp's pairs back into halves (heads).
    heads: Option<usize>,
}

/// `p` with rows in llama.cpp's rotary order, for `heads` heads.
fn rotary(p: Part<'_>, heads: usize) -> Part<'_> {
    Part { heads: Some(heads), ..p }
}

/// Imports a GGUF file of llama.cpp's `gpt2` or `llama` architecture.
pub fn import(path: &Path) -> Result<Imported> {
    let file = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {file}"))?;
    let g = parse(&bytes).map_err(|e| anyhow!("{file}: {e}"))?;
    let arch = match g.str("general.architecture").map_err(|e| anyhow!("{file}: {e}"))? {
        Some("gpt2") => Arch::Gpt2,
        Some("llama") => Arch::Llama,
        Some(other) => bail!("{file}: architecture {other:?} is not supported (ferrite runs gpt2 and llama)"),
        None => bail!("{file}: no general.architecture"),
    };
    let tokenizer = tokenizer(&g).map_err(|e| anyhow!("{file}: {e}"))?;
    let embd = g.tensors.get("token_embd.weight").with_context(|| format!("{file}: no token_embd.weight"))?;
    let file_vocab = embd.shape[0];
    let tok_vocab = tokenizer.vocab_size();
    if tok_vocab > file_vocab {
        bail!("{file}: the tokenizer has {tok_vocab} tokens but the embeddings only {file_vocab} rows");
    }
    let (_, mut model) =
        hf::config_from_json(&hf_config(&g, arch, file_vocab).map_err(|e| anyhow!("{file}: {e}"))?, &file)?;
    model.vocab_size = tok_vocab;
    model.padded_vocab = pad_vocab(file_vocab);
    let layout = Layout::new(&model);
    let (c, v) = (model.n_embd, file_vocab);
    let (hd, q, kv, h) =
        (model.head_dim(), model.n_head * model.head_dim(), model.kv_heads() * model.head_dim(), model.hidden());
    let part = |name: &'static str, shape: Vec<usize>| Part { name, shape, heads: None };
    // Where each of our parameters comes from.
    let mut sources: Vec<(usize, Vec<Part>)> = vec![(layout.wte, vec![part("token_embd.weight", vec![v, c])])];
    if let Some(wpe) = layout.wpe {
        sources.push((wpe, vec![part("position_embd.weight", vec![model.block_size, c])]));
    }
    let names: Vec<Vec<String>> = (0..model.n_layer)
        .map(|l| {
            [
                "attn_norm.weight",
                "attn_norm.bias",
                "ffn_norm.weight",
                "ffn_norm.bias",
                "attn_qkv.weight",
                "attn_qkv.bias",
                "attn_output.weight",
                "attn_output.bias",
                "ffn_up.weight",
                "ffn_up.bias",
                "ffn_down.weight",
                "ffn_down.bias",
                "attn_q.weight",
                "attn_k.weight",
                "attn_v.weight",
                "ffn_gate.weight",
            ]
            .iter()
            .map(|s| format!("blk.{l}.{s}"))
            .collect()
        })
        .collect();
    for (l, b) in layout.blocks.iter().enumerate() {
        let n = |i: usize, shape: Vec<usize>| Part { name: &names[l][i], shape, heads: None };
        sources.push((b.ln1.w, vec![n(0, vec![c])]));
        sources.push((b.ln2.w, vec![n(2, vec![c])]));
        if let (Some(b1), Some(b2)) = (b.ln1.b, b.ln2.b) {
            sources.push((b1, vec![n(1, vec![c])]));
            sources.push((b2, vec![n(3, vec![c])]));
        }
        match arch {
            Arch::Gpt2 => {
                for (idx, wi, rows, cols) in [
                    (b.qkv, 4, model.qkv_width(), c),
                    (b.proj, 6, c, c),
                    (b.fc, 8, model.fc_width(), c),
                    (b.fcproj, 10, c, h),
                ] {
                    sources.push((idx.w, vec![n(wi, vec![rows, cols])]));
                    if let Some(bias) = idx.b {
                        sources.push((bias, vec![n(wi + 1, vec![rows])]));
                    }
                }
            }
            Arch::Llama => {
                sources.push((
                    b.qkv.w,
                    vec![
                        rotary(n(12, vec![q, c]), model.n_head),
                        rotary(n(13, vec![kv, c]), model.kv_heads()),
                        n(14, vec![kv, c]),
                    ],
                ));
                sources.push((b.proj.w, vec![n(6, vec![c, q])]));
                sources.push((b.fc.w, vec![n(15, vec![h, c]), n(8, vec![h, c])]));
                sources.push((b.fcproj.w, vec![n(10, vec![c, h])]));
            }
        }
    }
    sources.push((layout.lnf.w, vec![part("output_norm.weight", vec![c])]));
    if let Some(bias) = layout.lnf.b {
        sources.push((bias, vec![part("output_norm.bias", vec![c])]));
    }
    if !model.tie_embeddings {
        sources.push((layout.head, vec![part("output.weight", vec![v, c])]));
    }

    let n = layout.specs.len();
    let (mut params, mut blocks, mut float_types) = (vec![vec![]; n], vec![None; n], vec![]);
    let mut used = std::collections::HashSet::new();
    for (idx, parts) in &sources {
        let spec = &layout.specs[*idx];
        let mut entries = vec![];
        for p in parts {
            let e = g.tensors.get(p.name).with_context(|| format!("{file}: no tensor {}", p.name))?;
            if e.shape != p.shape {
                bail!("{file}: tensor {} has shape {:?}, expected {:?}", p.name, e.shape, p.shape);
            }
            used.insert(p.name);
            entries.push((p, e));
        }
        let dt = entries[0].1.dtype;
        let kept =
            DType::QUANTIZED.contains(&dt) && entries.iter().all(|(_, e)| e.dtype == dt) && spec.shape.len() == 2;
        if kept {
            // Whole rows of blocks, concatenated (and reordered) as they are.
            let mut all = Vec::with_capacity(dt.size_of(spec.numel()));
            for (p, e) in &entries {
                let data = &bytes[e.data.clone()];
                match p.heads {
                    Some(heads) => all.extend(interleave_heads(data, heads, hd, dt.size_of(c), true)),
                    None => all.extend_from_slice(data),
                }
            }
            // Padding rows of the vocabulary: zero bytes are zero blocks.
            all.resize(dt.size_of(spec.numel()), 0);
            let q = Quantized { dtype: dt, bytes: all };
            if let Some(i) = q.to_f32().iter().position(|x| !x.is_finite()) {
                bail!("{file}: tensor {} holds a non-finite value at index {i}", entries[0].0.name);
            }
            blocks[*idx] = Some(q);
        } else {
            // Floats (or Q6_K, or parts of mixed types): widened to f32.
            let mut all = Vec::with_capacity(spec.numel());
            for (p, e) in &entries {
                let values = widen(&bytes[e.data.clone()], e.dtype);
                match p.heads {
                    Some(heads) => {
                        let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                        let back = interleave_heads(&raw, heads, hd, 4 * c, true);
                        all.extend(back.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
                    }
                    None => all.extend(values),
                }
                if e.shape.len() == 2 {
                    float_types.push(e.dtype);
                }
            }
            if let Some(i) = all.iter().position(|x| !x.is_finite()) {
                bail!("{file}: tensor {} holds {} at index {i}", entries[0].0.name, all[i]);
            }
            all.resize(spec.numel(), 0.0);
            params[*idx] = all;
        }
    }
    let mut left: Vec<&String> = g.tensors.keys().filter(|k| !used.contains(k.as_str())).collect();
    left.sort();
    if let Some(first) = left.first() {
        bail!("{file}: {} tensor(s) this {} does not have, e.g. {first}", left.len(), arch.class());
    }
    // Float matrices keep their 16-bit type when they share one.
    let stored = match float_types.split_first() {
        Some((first, rest)) if !first.is_quantized() && rest.iter().all(|d| d == first) => *first,
        _ => DType::F32,
    };
    let config = CheckpointConfig {
        format: FORMAT.into(),
        version: VERSION,
        model,
        tokenizer,
        train: Default::default(),
        chat_template: None,
        adapter: None,
    };
    Ok(Imported { arch, config, params, stored, blocks })
}

/// A tensor's values as f32.
fn widen(b: &[u8], dt: DType) -> Vec<f32> {
    match dt {
        DType::F32 => b.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        DType::F16 => b.chunks_exact(2).map(|b| f32_from_f16(u16::from_le_bytes([b[0], b[1]]))).collect(),
        DType::BF16 => b.chunks_exact(2).map(|b| f32_from_bf16(u16::from_le_bytes([b[0], b[1]]))).collect(),
        q => {
            let mut out = vec![0.0; b.len() / q.block_bytes() * q.block_len()];
            quant::dequantize(q, b, &mut out);
            out
        }
    }
}
