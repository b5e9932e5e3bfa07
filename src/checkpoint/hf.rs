//! Hugging Face model directories in and out: `GPT2LMHeadModel` and
//! `LlamaForCausalLM` (`config.json`, `model.safetensors` or shards with
//! their index, `tokenizer.json`). The architectures map onto our options;
//! anything one side cannot express is an error naming it, never a
//! silently different model.
//!
//! Weights differ only in names and layout: GPT-2 stores its linear layers
//! as `Conv1D` (`[in, out]`, transposed to our `[out, in]`), Llama splits
//! what we fuse (q/k/v, gate/up). Our rotary embeddings rotate the two
//! halves of each head as Llama's `rotate_half` does, so q and k map as
//! they are. Our vocabulary is padded to a multiple of 64: rows past the
//! HF embedding are zeros on import, and padding is dropped on export.

use super::tensors::{load_safetensors_typed, save_safetensors_as, take_tensor};
use super::{CheckpointConfig, FORMAT, VERSION};
use crate::data::{files, HfTokenizer, Tokenizer};
use crate::engine::{DType, Quantized};
use crate::model::config::{pad_vocab, MlpKind, ModelConfig, NormKind, PosEncoding};
use crate::model::params::{Layout, ParamSpec};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The two classes we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    Llama,
}

impl Arch {
    pub fn class(self) -> &'static str {
        match self {
            Arch::Gpt2 => "GPT2LMHeadModel",
            Arch::Llama => "LlamaForCausalLM",
        }
    }

    /// The class that expresses `cfg`, or an error naming the option that neither does.
    pub fn of(cfg: &ModelConfig) -> Result<Arch> {
        let unsupported = |what: &str| Err(anyhow!("{what} has no counterpart in GPT2LMHeadModel or LlamaForCausalLM"));
        if cfg.qk_norm {
            return unsupported("qk_norm");
        }
        if cfg.logit_softcap.is_some() {
            return unsupported("logit_softcap");
        }
        match (cfg.pos, cfg.norm, cfg.mlp) {
            (PosEncoding::Learned, NormKind::LayerNorm, MlpKind::GeluTanh | MlpKind::Gelu) => {
                if cfg.kv_heads() != cfg.n_head {
                    return unsupported("grouped-query attention (n_kv_head) with GPT-2's architecture");
                }
                Ok(Arch::Gpt2)
            }
            (PosEncoding::Rope, NormKind::RmsNorm, MlpKind::Swiglu) => Ok(Arch::Llama),
            (pos, norm, mlp) => {
                unsupported(&format!("the combination pos={pos:?}, norm={norm:?}, mlp={mlp:?}").to_lowercase())
            }
        }
    }
}

/// A model read from a Hugging Face directory.
pub struct Imported {
    pub arch: Arch,
    pub config: CheckpointConfig,
    pub params: Vec<Vec<f32>>,
    /// The dtype the weights were stored in (the checkpoint keeps it).
    pub stored: DType,
    /// Parameters whose blocks are kept as they are (a quantized GGUF
    /// file's; their `params` entries are then empty).
    pub blocks: Vec<Option<Quantized>>,
}

#[derive(Deserialize)]
struct Gpt2Config {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    activation_function: String,
    #[serde(default = "eps_1e5")]
    layer_norm_epsilon: f32,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
}

#[derive(Deserialize)]
struct LlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "silu")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "eps_1e6")]
    rms_norm_eps: f32,
    /// transformers 4 writes `rope_theta` and `rope_scaling`; 5 writes
    /// both into `rope_parameters`.
    rope_theta: Option<f32>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn silu() -> String {
    "silu".into()
}
fn eps_1e5() -> f32 {
    1e-5
}
fn eps_1e6() -> f32 {
    1e-6
}
fn yes() -> bool {
    true
}

/// Reads `config.json` of a Hugging Face model directory into our options.
fn read_config(dir: &Path) -> Result<(Arch, ModelConfig)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        bail!("{} has no config.json: not a Hugging Face model directory", dir.display());
    }
    let text = files::read_small_text(&path, "model config")?;
    let raw: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    config_from_json(&raw, &path.display())
}

/// A Hugging Face `config.json` (read from `path`, named in errors) as our options.
pub(super) fn config_from_json(raw: &Value, path: &dyn std::fmt::Display) -> Result<(Arch, ModelConfig)> {
    let archs: Vec<&str> =
        raw["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let model_type = raw["model_type"].as_str().unwrap_or("");
    let arch = match (archs.first().copied(), model_type) {
        (Some("GPT2LMHeadModel" | "GPT2Model"), _) | (None, "gpt2") => Arch::Gpt2,
        (Some("LlamaForCausalLM"), _) | (None, "llama") => Arch::Llama,
        (Some(other), _) => bail!(
            "{path}: architecture {other} is not supported (ferrite imports GPT2LMHeadModel and LlamaForCausalLM)"
        ),
        (None, other) => {
            bail!("{path}: model_type {other:?} is not supported (ferrite imports gpt2 and llama)")
        }
    };
    let bad = |e: serde_json::Error| anyhow!("{path}: not a valid {} config: {e}", arch.class());
    let unsupported = |what: String| anyhow!("{path}: {what} is not supported");
    let cfg = match arch {
        Arch::Gpt2 => {
            let c: Gpt2Config = serde_json::from_value(raw.clone()).map_err(bad)?;
            let mlp = match c.activation_function.as_str() {
                "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => MlpKind::GeluTanh,
                "gelu" => MlpKind::Gelu,
                other => return Err(unsupported(format!("activation_function {other:?}"))),
            };
            if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx || c.add_cross_attention {
                return Err(unsupported(
                    "scale_attn_weights=false, scale_attn_by_inverse_layer_idx or add_cross_attention".into(),
                ));
            }
            ModelConfig {
                bias: true,
                mlp,
                mlp_hidden: c.n_inner.filter(|&h| Some(h) != c.n_embd.checked_mul(4)),
                norm_eps: Some(c.layer_norm_epsilon).filter(|&e| e != 1e-5),
                tie_embeddings: c.tie_word_embeddings,
                ..ModelConfig::gpt2(c.vocab_size, c.n_positions, c.n_layer, c.n_head, c.n_embd)
            }
        }
        Arch::Llama => {
            let c: LlamaConfig = serde_json::from_value(raw.clone()).map_err(bad)?;
            if c.hidden_act != "silu" {
                return Err(unsupported(format!("hidden_act {:?} (Llama's is silu)", c.hidden_act)));
            }
            let default_rope = |s: &Option<Value>| {
                s.as_ref().is_none_or(|s| {
                    s.is_null() || [&s["rope_type"], &s["type"]].iter().all(|t| t.is_null() || *t == "default")
                })
            };
            if !default_rope(&c.rope_scaling) || !default_rope(&c.rope_parameters) {
                let s = c.rope_scaling.as_ref().or(c.rope_parameters.as_ref()).cloned().unwrap_or_default();
                return Err(unsupported(format!("rope_scaling {s} (ferrite has plain RoPE only)")));
            }
            let theta = c.rope_parameters.as_ref().and_then(|p| p["rope_theta"].as_f64()).map(|t| t as f32);
            let rope_base = theta.or(c.rope_theta).unwrap_or(10000.0);
            if c.attention_bias != c.mlp_bias {
                return Err(unsupported("attention_bias without mlp_bias (or the reverse)".into()));
            }
            if c.head_dim.is_some_and(|d| d.checked_mul(c.num_attention_heads) != Some(c.hidden_size)) {
                return Err(unsupported("a head_dim other than hidden_size / num_attention_heads".into()));
            }
            ModelConfig {
                n_kv_head: c.num_key_value_heads.filter(|&k| k != c.num_attention_heads),
                bias: c.attention_bias,
                pos: PosEncoding::Rope,
                rope_base,
                norm: NormKind::RmsNorm,
                norm_eps: Some(c.rms_norm_eps).filter(|&e| e != 1e-6),
                mlp: MlpKind::Swiglu,
                mlp_hidden: Some(c.intermediate_size),
                tie_embeddings: c.tie_word_embeddings,
                ..ModelConfig::gpt2(
                    c.vocab_size,
                    c.max_position_embeddings,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.hidden_size,
                )
            }
        }
    };
    cfg.validate().with_context(|| format!("{path}"))?;
    Ok((arch, cfg))
}

/// `model.safetensors.index.json`: which shard holds each tensor.
pub struct ShardIndex {
    pub weight_map: Vec<(String, String)>,
}

impl ShardIndex {
    pub fn read(path: &Path) -> Result<ShardIndex> {
        let text = files::read_small_text(path, "shard index")?;
        let map: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let entries = map["weight_map"].as_object().with_context(|| format!("{} has no weight_map", path.display()))?;
        let weight_map = entries
            .iter()
            .map(|(name, shard)| match shard.as_str() {
                Some(s) if !s.contains('/') && !s.contains("..") => Ok((name.clone(), s.to_string())),
                _ => bail!("{}: shard {shard} of {name} is not a file name in the directory", path.display()),
            })
            .collect::<Result<_>>()?;
        Ok(ShardIndex { weight_map })
    }

    /// The shard files, each once, sorted.
    pub fn shards(&self) -> Vec<&str> {
        let mut shards: Vec<&str> = self.weight_map.iter().map(|(_, s)| s.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

/// Every tensor of the directory's `model.safetensors`, or of the shards its
/// `model.safetensors.index.json` lists; the dtype they are stored in.
fn read_weights(dir: &Path) -> Result<(Tensors, DType)> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return load_safetensors_typed(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        bail!("{} has neither model.safetensors nor model.safetensors.index.json", dir.display());
    }
    let shard_index = ShardIndex::read(&index)?;
    let (mut all, mut dtypes) = (Tensors::new(), Vec::new());
    for shard in shard_index.shards() {
        let (tensors, dtype) = load_safetensors_typed(&dir.join(shard))?;
        // A shard of vectors only (a last one with the final norm) says nothing of the matrices.
        if tensors.values().any(|(shape, _)| shape.len() >= 2) {
            dtypes.push(dtype);
        }
        all.extend(tensors);
    }
    for (name, shard) in &shard_index.weight_map {
        if !all.contains_key(name) {
            bail!("{}: tensor {name} is not in its shard {shard}", index.display());
        }
    }
    let stored = if dtypes.windows(2).all(|w| w[0] == w[1]) {
        dtypes.first().copied().unwrap_or(DType::F32)
    } else {
        DType::F32
    };
    Ok((all, stored))
}

/// Our tokenizer for a model directory's `tokenizer.json`: GPT-2's own
/// vocabulary becomes our built-in `gpt2` (the same tokens, encoded faster).
fn read_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        bail!("{} has no tokenizer.json (ferrite reads the fast tokenizer file)", dir.display());
    }
    Ok(Tokenizer::from_hf(HfTokenizer::from_file(&path)?))
}

/// The HF name and layout of each of our parameters.
enum Source {
    /// The same tensor (a vector, or a matrix in our layout).
    Same(String),
    /// A `Conv1D` weight, stored `[in, out]`.
    Transposed(String),
    /// Our rows are these tensors' rows, one after the other.
    Stacked(Vec<String>),
    /// An embedding or head whose rows we pad.
    Vocab(String),
    /// A bias of this width the HF model has and ours does not (zeros on
    /// export; no parameter of ours: its index is `usize::MAX`).
    ZeroBias(String, usize),
}

/// For each of our parameters, where it lives in the HF model.
fn sources(arch: Arch, cfg: &ModelConfig) -> Vec<(usize, Source)> {
    let layout = Layout::new(cfg);
    let mut out = vec![(layout.wte, Source::Vocab(name(arch, "wte")))];
    if let Some(wpe) = layout.wpe {
        out.push((wpe, Source::Same("transformer.wpe.weight".into())));
    }
    for (l, b) in layout.blocks.iter().enumerate() {
        let p = |s: &str| match arch {
            Arch::Gpt2 => format!("transformer.h.{l}.{s}"),
            Arch::Llama => format!("model.layers.{l}.{s}"),
        };
        let linear =
            |out: &mut Vec<(usize, Source)>, idx: crate::model::params::LinearIdx, w: Source, bias: Vec<String>| {
                out.push((idx.w, w));
                if let Some(bi) = idx.b {
                    out.push((bi, if bias.len() == 1 { Source::Same(bias[0].clone()) } else { Source::Stacked(bias) }));
                }
            };
        match arch {
            Arch::Gpt2 => {
                for (norm, n) in [(b.ln1, "ln_1"), (b.ln2, "ln_2")] {
                    out.push((norm.w, Source::Same(p(&format!("{n}.weight")))));
                    if let Some(bi) = norm.b {
                        out.push((bi, Source::Same(p(&format!("{n}.bias")))));
                    }
                }
                for (idx, n) in
                    [(b.qkv, "attn.c_attn"), (b.proj, "attn.c_proj"), (b.fc, "mlp.c_fc"), (b.fcproj, "mlp.c_proj")]
                {
                    linear(&mut out, idx, Source::Transposed(p(&format!("{n}.weight"))), vec![p(&format!("{n}.bias"))]);
                }
            }
            Arch::Llama => {
                out.push((b.ln1.w, Source::Same(p("input_layernorm.weight"))));
                out.push((b.ln2.w, Source::Same(p("post_attention_layernorm.weight"))));
                let proj = |s: &str| p(&format!("{s}_proj"));
                for (idx, parts) in [
                    (b.qkv, vec![proj("self_attn.q"), proj("self_attn.k"), proj("self_attn.v")]),
                    (b.proj, vec![proj("self_attn.o")]),
                    (b.fc, vec![proj("mlp.gate"), proj("mlp.up")]),
                    (b.fcproj, vec![proj("mlp.down")]),
                ] {
                    let mut w: Vec<String> = parts.iter().map(|n| format!("{n}.weight")).collect();
                    let bias = parts.iter().map(|n| format!("{n}.bias")).collect();
                    let w = if w.len() == 1 { Source::Same(w.remove(0)) } else { Source::Stacked(w) };
                    linear(&mut out, idx, w, bias);
                }
            }
        }
    }
    out.push((layout.lnf.w, Source::Same(name(arch, "lnf"))));
    if let Some(bi) = layout.lnf.b {
        out.push((bi, Source::Same("transformer.ln_f.bias".into())));
    }
    if !cfg.tie_embeddings {
        out.push((layout.head, Source::Vocab("lm_head.weight".into())));
    }
    // GPT2LMHeadModel always has biases: a bias-free model exports zeros.
    if arch == Arch::Gpt2 && !cfg.bias {
        for l in 0..cfg.n_layer {
            let c = cfg.n_embd;
            for (n, width) in [
                ("ln_1", c),
                ("ln_2", c),
                ("attn.c_attn", cfg.qkv_width()),
                ("attn.c_proj", c),
                ("mlp.c_fc", cfg.fc_width()),
                ("mlp.c_proj", c),
            ] {
                out.push((usize::MAX, Source::ZeroBias(format!("transformer.h.{l}.{n}.bias"), width)));
            }
        }
        out.push((usize::MAX, Source::ZeroBias("transformer.ln_f.bias".into(), cfg.n_embd)));
    }
    out
}

fn name(arch: Arch, what: &str) -> String {
    match (arch, what) {
        (Arch::Gpt2, "wte") => "transformer.wte.weight",
        (Arch::Llama, "wte") => "model.embed_tokens.weight",
        (Arch::Gpt2, _) => "transformer.ln_f.weight",
        (Arch::Llama, _) => "model.norm.weight",
    }
    .into()
}

/// Buffers some HF checkpoints carry that are not weights (GPT-2's causal
/// masks, Llama's rotary frequencies), and a tied head's copy.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || (cfg.tie_embeddings && name == "lm_head.weight")
}

/// Imports a Hugging Face model directory.
pub fn import(dir: &Path) -> Result<Imported> {
    let (arch, mut model) = read_config(dir)?;
    let tokenizer = read_tokenizer(dir)?;
    let tok_vocab = tokenizer.vocab_size();
    if tok_vocab > model.vocab_size {
        bail!("{}: tokenizer.json has {tok_vocab} tokens but the model only {}", dir.display(), model.vocab_size);
    }
    // Rows past the tokenizer's vocabulary (some models pad) become our padding.
    let hf_vocab = model.vocab_size;
    model.vocab_size = tok_vocab;
    model.padded_vocab = pad_vocab(hf_vocab);
    let (mut tensors, stored) = read_weights(dir)?;
    // GPT-2's own files name the base model's tensors without `transformer.`.
    if arch == Arch::Gpt2 && !tensors.contains_key("transformer.wte.weight") {
        tensors = tensors
            .into_iter()
            .map(|(k, v)| if k == "lm_head.weight" { (k, v) } else { (format!("transformer.{k}"), v) })
            .collect();
    }
    let specs = Layout::new(&model).specs;
    let mut params: Vec<Option<Vec<f32>>> = vec![None; specs.len()];
    let file = dir.display().to_string();
    let mut take = |name: &str, shape: &[usize]| take_tensor(&mut tensors, name, shape, &file);
    for (idx, src) in sources(arch, &model) {
        let Some(spec) = specs.get(idx) else { continue };
        let c = model.n_embd;
        let data = match &src {
            Source::Same(n) => take(n, &spec.shape)?,
            Source::ZeroBias(..) => continue,
            Source::Transposed(n) => {
                transpose(&take(n, &[spec.shape[1], spec.shape[0]])?, spec.shape[1], spec.shape[0])
            }
            Source::Vocab(n) => {
                let mut rows = take(n, &[hf_vocab, c])?;
                rows.resize(spec.numel(), 0.0);
                rows
            }
            Source::Stacked(names) => {
                let widths = stacked_widths(&model, spec, names.len());
                let inner: Vec<usize> = spec.shape[1..].to_vec();
                let mut all = Vec::with_capacity(spec.numel());
                for (n, rows) in names.iter().zip(widths) {
                    let shape: Vec<usize> = std::iter::once(rows).chain(inner.iter().copied()).collect();
                    all.extend(take(n, &shape)?);
                }
                all
            }
        };
        params[idx] = Some(data);
    }
    let mut left: Vec<String> = tensors.into_keys().filter(|k| !ignorable(k, &model)).collect();
    left.sort();
    if let Some(first) = left.first() {
        bail!("{}: {} tensor(s) this {} does not have, e.g. {first}", dir.display(), left.len(), arch.class());
    }
    let params = params.into_iter().map(|p| p.expect("every parameter has a source")).collect();
    let config = CheckpointConfig {
        format: FORMAT.into(),
        version: VERSION,
        model,
        tokenizer,
        train: Default::default(),
        chat_template: None,
        adapter: None,
    };
    let blocks = vec![None; specs.len()];
    Ok(Imported { arch, config, params, stored, blocks })
}

/// Rows of each part of a stacked parameter: q/k/v (or their biases) or gate/up.
fn stacked_widths(cfg: &ModelConfig, spec: &ParamSpec, parts: usize) -> Vec<usize> {
    if parts == 3 {
        let (q, kv) = (cfg.n_head * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
        vec![q, kv, kv]
    } else {
        vec![spec.shape[0] / 2; 2]
    }
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Writes `config` and `params` as a Hugging Face model directory (atomic:
/// a temporary directory renamed into place), weights stored as `dtype`.
pub fn export(config: &CheckpointConfig, params: &[Vec<f32>], dtype: DType, out: &Path) -> Result<Arch> {
    if dtype.is_quantized() {
        bail!("Hugging Face directories hold f32, bf16 or f16 weights, not {dtype}: give --dtype, or export --format gguf");
    }
    let cfg = &config.model;
    let arch = Arch::of(cfg)?;
    let tokenizer_json = config.tokenizer.to_hf_json()?;
    let specs = Layout::new(cfg).specs;
    let (v, c) = (cfg.vocab_size, cfg.n_embd);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (idx, src) in sources(arch, cfg) {
        match src {
            Source::Same(n) => tensors.push((n, specs[idx].shape.clone(), params[idx].clone())),
            Source::ZeroBias(n, width) => tensors.push((n, vec![width], vec![0.0; width])),
            Source::Transposed(n) => {
                let s = &specs[idx].shape;
                tensors.push((n, vec![s[1], s[0]], transpose(&params[idx], s[0], s[1])));
            }
            Source::Vocab(n) => tensors.push((n, vec![v, c], params[idx][..v * c].to_vec())),
            Source::Stacked(names) => {
                let spec = &specs[idx];
                let inner: usize = spec.shape[1..].iter().product();
                let (mut at, widths) = (0, stacked_widths(cfg, spec, names.len()));
                for (n, rows) in names.into_iter().zip(widths) {
                    let shape: Vec<usize> = std::iter::once(rows).chain(spec.shape[1..].iter().copied()).collect();
                    tensors.push((n, shape, params[idx][at..at + rows * inner].to_vec()));
                    at += rows * inner;
                }
            }
        }
    }
    let views: Vec<(String, Vec<usize>, &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), &d[..])).collect();
    let hf_config = hf_config(arch, config, dtype);
    let eot = config.tokenizer.end_of_text();
    let generation = json!({"bos_token_id": eot, "eos_token_id": eot});
    let eot_text = eot.map(|id| String::from_utf8_lossy(&config.tokenizer.decode_bytes(&[id])).to_string());
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        "clean_up_tokenization_spaces": false,
        "eos_token": eot_text,
        "bos_token": eot_text,
    });
    super::write_atomically(out, |tmp| {
        save_safetensors_as(&tmp.join("model.safetensors"), &views, dtype)?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&hf_config)?)?;
        std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&generation)?)?;
        std::fs::write(tmp.join("tokenizer.json"), &tokenizer_json)?;
        std::fs::write(tmp.join("tokenizer_config.json"), serde_json::to_string_pretty(&tokenizer_config)?)?;
        Ok(())
    })?;
    Ok(arch)
}

/// An f32 as the f64 of its shortest decimal form (1e-5, not 9.9999997e-6).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn hf_config(arch: Arch, config: &CheckpointConfig, dtype: DType) -> Value {
    let m = &config.model;
    let (eps, theta, drop) = (short(m.norm_eps()), short(m.rope_base), short(m.dropout));
    let eot = config.tokenizer.end_of_text();
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        q => unreachable!("export refuses {q}"),
    };
    match arch {
        Arch::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": m.vocab_size,
            "n_positions": m.block_size,
            "n_ctx": m.block_size,
            "n_embd": m.n_embd,
            "n_layer": m.n_layer,
            "n_head": m.n_head,
            "n_inner": m.hidden(),
            "activation_function": if m.mlp == MlpKind::Gelu { "gelu" } else { "gelu_new" },
            "layer_norm_epsilon": eps,
            "resid_pdrop": drop, "embd_pdrop": drop, "attn_pdrop": drop,
            "tie_word_embeddings": m.tie_embeddings,
            "bos_token_id": eot, "eos_token_id": eot,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }),
        Arch::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": m.vocab_size,
            "hidden_size": m.n_embd,
            "intermediate_size": m.hidden(),
            "num_hidden_layers": m.n_layer,
            "num_attention_heads": m.n_head,
            "num_key_value_heads": m.kv_heads(),
            "head_dim": m.head_dim(),
            "hidden_act": "silu",
            "max_position_embeddings": m.block_size,
            "rms_norm_eps": eps,
            "rope_theta": theta,
            "rope_scaling": null,
            "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
            "attention_bias": m.bias,
            "mlp_bias": m.bias,
            "attention_dropout": drop,
            "tie_word_embeddings": m.tie_embeddings,
            "bos_token_id": eot, "eos_token_id": eot,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }),
    }
}
