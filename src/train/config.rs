//! The training configuration: presets, TOML files and `--key value`
//! overrides all resolve into one [`TrainConfig`], which holds the model's
//! [`ModelConfig`] and is written as one flat set of keys.

use crate::checkpoint::CheckpointConfig;
use crate::data::units::{parse_scaled, COUNT_SUFFIXES};
use crate::data::{OpenAiVocab, Tokenizer};
use crate::engine::DType;
use crate::model::config::{pad_vocab, MlpKind, ModelConfig, NormKind, PosEncoding};
use crate::model::Recompute;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// How the learning rate decays after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to `min_lr` at `lr_decay_iters` (nanoGPT's).
    #[default]
    Cosine,
    /// The peak rate throughout.
    Constant,
    /// Warmup-stable-decay: constant, then a final linear decay.
    Wsd,
}

/// What a step whose loss or gradient norm is not finite does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run before the update (the last checkpoint stays good).
    #[default]
    Stop,
    /// Skip the update and go on (llm.c's handling of outlier steps).
    Skip,
}

/// A training run. On the command line, in TOML files and in checkpoints it
/// is a flat set of keys (`n_layer`, `batch_size`, ...): the model's options
/// sit beside the training ones ([`TrainConfig::to_keys`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    // ---- data ----
    /// Text file to train on; empty means tiny Shakespeare from the cache.
    pub data: String,
    /// A dataset directory from `ferrite data prepare` (instead of `data`;
    /// the tokenizer and the split come from its manifest).
    pub dataset: String,
    /// `char`, `byte`, `gpt2`, `p50k_base`, `cl100k_base`, `o200k_base` or a tokenizer.json.
    pub tokenizer: String,
    /// Fraction of the corpus (from the start) used for training.
    pub train_frac: f64,
    /// Run directory: checkpoints and metrics.jsonl.
    pub out_dir: String,
    // ---- model ----
    /// The architecture. Its vocabulary is the tokenizer's, filled in when
    /// the run starts ([`TrainConfig::model_for_vocab`]).
    pub model: ModelConfig,
    /// Fine-tune: start from this checkpoint's weights (a checkpoint or run
    /// directory: its best; `ferrite import` makes one from a Hugging Face
    /// model) with a fresh optimizer at step 0. The architecture and the
    /// tokenizer are the checkpoint's; only dropout and a smaller block_size
    /// may be set.
    pub init_from: String,
    /// LoRA: train rank-`lora_rank` adapters on `lora_targets` of the
    /// `init_from` model, its weights frozen (0: train every weight). Saved
    /// as PEFT's adapter files.
    pub lora_rank: usize,
    /// The adapters' scale is lora_alpha / lora_rank.
    pub lora_alpha: f32,
    /// Dropout on the adapters' input.
    pub lora_dropout: f32,
    /// Projections to adapt, of q, k, v, o, up, down, gate (GPT-2-style
    /// models: q, k and v together, their fused c_attn).
    pub lora_targets: String,
    /// Dropout anneals linearly from `dropout` to this over the learning-rate
    /// schedule's horizon (lr_decay_iters); none = constant.
    pub dropout_final: Option<f32>,
    /// Only for benchmarks on random tokens: overrides the tokenizer's vocabulary size.
    pub vocab_size: Option<usize>,
    /// Activation recomputation: `none`, `mlp` or `block` (less memory, more compute).
    pub recompute: Recompute,
    /// Arithmetic of the matrix multiplies: `f32`, or `bf16` (mixed
    /// precision as PyTorch's autocast: f32 weights and optimizer state,
    /// matmul inputs rounded to bf16, f32 accumulation).
    pub dtype: DType,
    // ---- batch ----
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_iters: usize,
    /// Token budget instead of iterations (`200M`, `1.5B`, `50K`): sets
    /// max_iters and lr_decay_iters to the steps it takes.
    pub tokens: Option<TokenCount>,
    /// Passes over the training split instead of max_iters: one epoch is as
    /// many tokens as the split holds (batches are random windows, so it is
    /// a token count); sets max_iters and lr_decay_iters when the data is read.
    pub epochs: Option<f64>,
    // ---- optimizer and schedule ----
    pub learning_rate: f64,
    /// Floor of the decay; defaults to learning_rate / 10 (never silently 0).
    pub min_lr: Option<f64>,
    pub warmup_iters: usize,
    /// Iterations over which the decay runs; defaults to max_iters.
    pub lr_decay_iters: Option<usize>,
    pub schedule: Schedule,
    /// For `wsd`: fraction of lr_decay_iters spent in the final linear decay.
    pub decay_frac: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 disables.
    pub grad_clip: f64,
    /// A step with a non-finite loss or gradient norm: `stop` or `skip`.
    pub on_nonfinite: OnNonFinite,
    // ---- evaluation and logging ----
    pub eval_interval: usize,
    pub eval_iters: usize,
    pub log_interval: usize,
    pub seed: u64,
    /// Characters of sample printed at the end of training; 0 disables.
    pub sample_tokens: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: String::new(),
            dataset: String::new(),
            tokenizer: "char".into(),
            train_frac: 0.9,
            out_dir: "out".into(),
            // The architecture options default to the model's own defaults (GPT-2).
            model: ModelConfig::gpt2(65, 64, 4, 4, 128),
            init_from: String::new(),
            lora_rank: 0,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_targets: "q,k,v,o".into(),
            dropout_final: None,
            vocab_size: None,
            recompute: Recompute::None,
            dtype: DType::F32,
            batch_size: 12,
            grad_accum: 1,
            max_iters: 2000,
            tokens: None,
            epochs: None,
            learning_rate: 1e-3,
            min_lr: Some(1e-4),
            warmup_iters: 100,
            lr_decay_iters: None,
            schedule: Schedule::Cosine,
            decay_frac: 0.2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            on_nonfinite: OnNonFinite::Stop,
            eval_interval: 250,
            eval_iters: 20,
            log_interval: 10,
            seed: 1337,
            sample_tokens: 300,
        }
    }
}

/// Model keys that are not configuration: the vocabulary comes from the
/// tokenizer (`vocab_size` as a key is the benchmark override).
const DERIVED_MODEL_KEYS: [&str; 2] = ["vocab_size", "padded_vocab"];

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("configurations serialise to objects"),
    }
}

/// The names of the model's configuration keys.
fn model_keys() -> Vec<String> {
    object(serde_json::to_value(ModelConfig::gpt2(1, 1, 1, 1, 1)).expect("serialisable"))
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !DERIVED_MODEL_KEYS.contains(&k.as_str()))
        .collect()
}

impl TrainConfig {
    /// The flat keys: the training fields and the model's options side by side.
    pub fn to_keys(&self) -> Map<String, Value> {
        // Through text: `to_value` would widen an f32 like 0.1 to 0.10000000149011612.
        let text = serde_json::to_string(self).expect("serialisable");
        let mut map = object(serde_json::from_str(&text).expect("valid JSON"));
        let model = object(map.remove("model").expect("a model field"));
        for (k, v) in model {
            if !DERIVED_MODEL_KEYS.contains(&k.as_str()) {
                map.insert(k, v);
            }
        }
        map
    }

    /// The inverse of [`Self::to_keys`]; the vocabulary is `vocab_from`'s.
    /// Errors name the key (and, for a choice, its valid values).
    fn from_keys(mut map: Map<String, Value>, vocab_from: &ModelConfig) -> Result<TrainConfig> {
        let mut model = Map::new();
        for k in model_keys() {
            if let Some(v) = map.remove(&k) {
                model.insert(k, v);
            }
        }
        model.insert("vocab_size".into(), vocab_from.vocab_size.into());
        model.insert("padded_vocab".into(), vocab_from.padded_vocab.into());
        map.insert("model".into(), Value::Object(model));
        serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
            let path = e.path().to_string();
            let key = path.strip_prefix("model.").unwrap_or(&path).to_string();
            anyhow!("invalid value for '{key}': {}", e.inner())
        })
    }

    /// The configuration a checkpoint was trained with: its saved keys over
    /// today's defaults (a checkpoint older than a key gets its default).
    pub fn from_checkpoint(ck: &CheckpointConfig) -> Result<TrainConfig> {
        let mut map = TrainConfig::default().to_keys();
        for (k, v) in &ck.train {
            set(&mut map, k, v.clone(), "in the checkpoint")?;
        }
        TrainConfig::from_keys(map, &ck.model)
    }

    /// The model this run trains, with a tokenizer of `vocab` symbols (or
    /// the `vocab_size` override). A model that already has that vocabulary
    /// keeps its padding (an imported one may pad more than we would).
    pub fn model_for_vocab(&self, vocab: usize) -> ModelConfig {
        let vocab = self.vocab_size.unwrap_or(vocab);
        let padded = if self.model.vocab_size == vocab && self.model.padded_vocab >= vocab {
            self.model.padded_vocab
        } else {
            pad_vocab(vocab)
        };
        ModelConfig { vocab_size: vocab, padded_vocab: padded, ..self.model.clone() }
    }

    /// Tokens per optimizer update.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.model.block_size * self.grad_accum
    }
}

pub use crate::model::config::{MAX_BATCH, MAX_BATCH_TOKENS, MAX_REPEATS};

/// Named configurations: `(name, description)`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "shakespeare-char-cpu",
        "nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters (about a minute)",
    ),
    (
        "shakespeare-char",
        "nanoGPT's baby GPT: 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, 5000 iters",
    ),
    (
        "llama-tiny",
        "shakespeare-char-cpu's size and recipe, Llama-style: RoPE, RMSNorm, SwiGLU, 2 KV heads, untied, no biases",
    ),
    ("llama-char", "the baby GPT's size and recipe, Llama-style (RoPE, RMSNorm, SwiGLU, GQA, untied)"),
    ("gpt2-small", "GPT-2 124M: 12 layers, 12 heads, 768 wide, block 1024 (124M with GPT-2's 50257-token vocabulary)"),
    (
        "dolly",
        "an instruction model on databricks-dolly-15k (prepared with --format dolly into data/dolly): GPT-2 vocabulary, 5 layers, 8 heads, 256 wide, block 192, sinusoidal, dropout 0.1, 35 epochs",
    ),
    ("tiny", "a seconds-long smoke test: 2 layers, 2 heads, 32 wide, block 32, batch 4, 50 iters"),
];

/// The vocabulary size to assume without data (`ferrite bench`, `ferrite
/// info`): the configured one, 256 for bytes, GPT-2's for the GPT-2 presets,
/// else tiny Shakespeare's 65 characters. Training takes it from the tokenizer.
pub fn reference_vocab(preset: &str, cfg: &TrainConfig) -> usize {
    match cfg.vocab_size {
        Some(v) => v,
        // A fine-tune's model (and vocabulary) is its checkpoint's.
        None if !cfg.init_from.is_empty() => cfg.model.vocab_size,
        None if preset.starts_with("gpt2") => 50257,
        None if cfg.tokenizer == "byte" => 256,
        None if OpenAiVocab::from_name(&cfg.tokenizer).is_some() => {
            OpenAiVocab::from_name(&cfg.tokenizer).unwrap().vocab_size()
        }
        None => 65,
    }
}

/// Turns a GPT-2-style configuration into its Llama-style counterpart.
fn llama(base: TrainConfig, n_kv_head: usize, mlp_hidden: usize) -> TrainConfig {
    let model = ModelConfig {
        n_kv_head: Some(n_kv_head),
        pos: PosEncoding::Rope,
        norm: NormKind::RmsNorm,
        mlp: MlpKind::Swiglu,
        mlp_hidden: Some(mlp_hidden),
        tie_embeddings: false,
        bias: false,
        ..base.model
    };
    TrainConfig { model, ..base }
}

/// `base`'s architecture with other sizes: (layers, heads, width, block).
fn sized(base: &TrainConfig, (n_layer, n_head, n_embd, block_size): (usize, usize, usize, usize)) -> ModelConfig {
    ModelConfig { n_layer, n_head, n_embd, block_size, ..base.model.clone() }
}

pub fn preset(name: &str) -> Result<TrainConfig> {
    let base = TrainConfig::default();
    Ok(match name {
        // nanoGPT's recipes, down to its exact (erf) GELU.
        "shakespeare-char-cpu" => TrainConfig {
            out_dir: "out/shakespeare-char-cpu".into(),
            lr_decay_iters: Some(2000),
            model: ModelConfig { mlp: MlpKind::Gelu, ..base.model.clone() },
            ..base
        },
        "shakespeare-char" => TrainConfig {
            out_dir: "out/shakespeare-char".into(),
            model: ModelConfig { dropout: 0.2, mlp: MlpKind::Gelu, ..sized(&base, (6, 6, 384, 256)) },
            batch_size: 64,
            max_iters: 5000,
            lr_decay_iters: Some(5000),
            eval_iters: 200,
            ..base
        },
        // Grouped-query attention shrinks the attention weights; a wider
        // SwiGLU gives them back, so the parameter counts match the GPT-2 presets.
        "llama-tiny" => {
            TrainConfig { out_dir: "out/llama-tiny".into(), ..llama(preset("shakespeare-char-cpu")?, 2, 384) }
        }
        "llama-char" => TrainConfig { out_dir: "out/llama-char".into(), ..llama(preset("shakespeare-char")?, 2, 1216) },
        // Our Dolly users' v3 recipe: batch 1 x 16 accumulation steps, the
        // loss on the responses only (the prepared dataset's mask).
        "dolly" => TrainConfig {
            out_dir: "out/dolly".into(),
            dataset: "data/dolly".into(),
            tokenizer: "gpt2".into(),
            model: ModelConfig {
                pos: PosEncoding::Sinusoidal,
                dropout: 0.1,
                mlp_hidden: Some(1024),
                ..sized(&base, (5, 8, 256, 192))
            },
            recompute: Recompute::Block,
            batch_size: 1,
            grad_accum: 16,
            epochs: Some(35.0),
            learning_rate: 1.5e-4,
            min_lr: Some(1e-5),
            warmup_iters: 1500,
            eval_interval: 1000,
            eval_iters: 200,
            ..base
        },
        "gpt2-small" => TrainConfig {
            out_dir: "out/gpt2-small".into(),
            tokenizer: "byte".into(),
            model: ModelConfig { bias: true, ..sized(&base, (12, 12, 768, 1024)) },
            batch_size: 8,
            max_iters: 10000,
            learning_rate: 6e-4,
            min_lr: Some(6e-5),
            warmup_iters: 200,
            beta2: 0.95,
            eval_iters: 50,
            ..base
        },
        "tiny" => TrainConfig {
            out_dir: "out/tiny".into(),
            model: sized(&base, (2, 2, 32, 32)),
            batch_size: 4,
            max_iters: 50,
            warmup_iters: 5,
            eval_interval: 25,
            eval_iters: 4,
            log_interval: 5,
            sample_tokens: 100,
            ..base
        },
        _ => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            bail!("unknown preset '{name}' (available: {})", names.join(", "))
        }
    })
}

/// Types a command-line value by the key's current value: text for text keys
/// (so `--data 2024` is a file name and `--pos none` a choice), else integer,
/// float, bool, `none` (unset) or, failing those, text (an error later).
fn typed(raw: &str, current: &Value) -> Value {
    match current {
        Value::String(_) => Value::String(raw.to_string()),
        _ => parse_value(raw),
    }
}

/// Parses a value: integer, float, bool, `none`, else a string.
fn parse_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "none" | "null" => Value::Null,
        _ => Value::String(s.to_string()),
    }
}

/// A number of tokens, written as an integer or with a K, M or B suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TokenCount(pub u64);

impl std::str::FromStr for TokenCount {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match parse_scaled(s, COUNT_SUFFIXES) {
            Some(n) if n >= 1.0 => Ok(TokenCount(n.round() as u64)),
            _ => Err(format!("{s:?} is not a token count (like 200M, 1.5B or 50000)")),
        }
    }
}

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("{other} is not a token count"))),
        }
    }
}

/// Short names accepted for some keys: `(alias, key)`.
pub const ALIASES: &[(&str, &str)] = &[("out", "out_dir"), ("lr", "learning_rate"), ("iters", "max_iters")];

/// Normalises `n-layer` / `n_layer` / `out` to a field name.
pub fn field_name(key: &str) -> String {
    let k = key.trim_start_matches('-').replace('-', "_");
    match ALIASES.iter().find(|(alias, _)| *alias == k) {
        Some((_, target)) => target.to_string(),
        None => k,
    }
}

/// The keys of a configuration file: TOML, or YAML for a `.yaml`/`.yml`
/// file (the same flat keys either way).
fn file_keys(path: &Path) -> Result<Vec<(String, Value)>> {
    let text = crate::data::files::read_small_text(path, "config file")?;
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let pairs: Vec<(String, Value)> = if yaml {
        let map: Map<String, Value> = match serde_yaml_ng::from_str::<Option<Map<String, Value>>>(&text) {
            Ok(map) => map.unwrap_or_default(),
            Err(e) => bail!("config file {} is not a YAML mapping of keys: {e}", path.display()),
        };
        map.into_iter().collect()
    } else {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow!("config file {} is not valid TOML: {}", path.display(), e.message()))?;
        let mut pairs = Vec::new();
        for (k, v) in table {
            if let toml::Value::Float(f) = v {
                if !f.is_finite() {
                    bail!("{} must be a finite number, got {f} in {}", field_name(&k), path.display());
                }
            }
            pairs.push((k, serde_json::to_value(v)?));
        }
        pairs
    };
    Ok(pairs)
}

/// Applies a TOML or YAML file and then `(key, value)` overrides from the
/// command line on top of `base`, rejecting unknown keys and ill-typed
/// values with the key's name.
pub fn resolve(base: &TrainConfig, file: Option<&Path>, overrides: &[(String, String)]) -> Result<TrainConfig> {
    let mut map = base.to_keys();
    if let Some(path) = file {
        for (k, v) in file_keys(path)? {
            set(&mut map, &field_name(&k), v, &format!("in {}", path.display()))?;
        }
    }
    for (k, raw) in overrides {
        let key = field_name(k);
        let v = typed(raw, map.get(&key).unwrap_or(&Value::Null));
        set(&mut map, &key, v, "on the command line")?;
        // An explicit iteration count replaces an earlier token budget
        // (a resumed run's, or a preset's).
        if key == "max_iters" {
            for budget in ["tokens", "epochs"] {
                if !overrides.iter().any(|(k, _)| field_name(k) == budget) {
                    map.insert(budget.into(), Value::Null);
                }
            }
        }
    }
    let mut cfg = TrainConfig::from_keys(map, &base.model)?;
    if let Some(TokenCount(tokens)) = cfg.tokens {
        let per_step = cfg.tokens_per_step().max(1) as u64;
        cfg.max_iters = tokens.div_ceil(per_step) as usize;
        cfg.lr_decay_iters = Some(cfg.max_iters);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn set(map: &mut Map<String, Value>, key: &str, v: Value, whence: &str) -> Result<()> {
    if !map.contains_key(key) {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let keys: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        bail!("unknown config key '{key}' {whence} (known keys: {})", keys.join(", "));
    }
    map.insert(key.to_string(), v);
    Ok(())
}

impl TrainConfig {
    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.learning_rate / 10.0)
    }

    pub fn lr_decay_iters(&self) -> usize {
        self.lr_decay_iters.unwrap_or(self.max_iters)
    }

    /// Dropout rate for update `step`: constant, or annealed linearly to
    /// `dropout_final` at `lr_decay_iters` (held after). Tied to the
    /// schedule's horizon, not to max_iters, so that extending a run with
    /// `--resume --max-iters` does not change the rates already used.
    pub fn dropout_at(&self, step: usize) -> f32 {
        match self.dropout_final {
            None => self.model.dropout,
            Some(end) => {
                let frac = (step as f32 / self.lr_decay_iters().max(1) as f32).min(1.0);
                self.model.dropout + (end - self.model.dropout) * frac
            }
        }
    }

    /// Sets the step count of an `epochs` budget over `train_tokens`.
    pub fn apply_epochs(&mut self, train_tokens: usize) {
        if let Some(epochs) = self.epochs {
            let per_step = self.tokens_per_step().max(1) as f64;
            self.max_iters = ((epochs * train_tokens as f64 / per_step).ceil() as usize).max(1);
            self.lr_decay_iters = Some(self.max_iters);
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.tokens.is_some() && self.epochs.is_some() {
            bail!("give tokens or epochs, not both");
        }
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e <= 1e6) {
                bail!("epochs must be a positive number (at most 1e6), got {e}");
            }
        }
        let m = &self.model;
        let positive = [
            ("n_layer", m.n_layer),
            ("n_head", m.n_head),
            ("n_embd", m.n_embd),
            ("block_size", m.block_size),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_iters", self.eval_iters),
            ("eval_interval", self.eval_interval),
            ("log_interval", self.log_interval),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            bail!("n_embd ({}) must be divisible by n_head ({})", m.n_embd, m.n_head);
        }
        m.validate()?;
        if self.dtype == DType::F16 {
            bail!("dtype f16 is for stored weights (`ferrite convert`); training computes in f32 or bf16");
        }
        // Bounds that keep every count of a step far from overflowing; the
        // memory a run needs is checked against the machine before it starts.
        let big = [
            ("batch_size", self.batch_size, MAX_BATCH),
            ("grad_accum", self.grad_accum, MAX_REPEATS),
            ("eval_iters", self.eval_iters, MAX_REPEATS),
        ];
        for (name, v, max) in big {
            if v > max {
                bail!("{name} must be at most {max}, got {v}");
            }
        }
        if self.batch_size * m.block_size > MAX_BATCH_TOKENS {
            bail!(
                "batch_size x block_size is {} tokens per forward pass, more than {MAX_BATCH_TOKENS}; use grad_accum for larger batches",
                self.batch_size * m.block_size
            );
        }
        if self.vocab_size.is_some_and(|v| v > crate::model::config::MAX_VOCAB) {
            bail!("vocab_size must be at most {}", crate::model::config::MAX_VOCAB);
        }
        if !self.data.is_empty() && !self.dataset.is_empty() {
            bail!("give --data (a text file) or --dataset (a prepared dataset), not both");
        }
        let t = self.tokenizer.as_str();
        if !matches!(t, "char" | "byte") && OpenAiVocab::from_name(t).is_none() && !Path::new(t).is_file() {
            bail!("tokenizer must be one of {} or the path of a tokenizer.json, got '{t}'", Tokenizer::NAMES);
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            bail!("learning_rate must be positive, got {}", self.learning_rate);
        }
        let min_lr = self.min_lr();
        if !(0.0..=self.learning_rate).contains(&min_lr) {
            bail!("min_lr must be between 0 and learning_rate ({}), got {min_lr}", self.learning_rate);
        }
        if !(self.train_frac > 0.0 && self.train_frac < 1.0) {
            bail!("train_frac must be strictly between 0 and 1, got {}", self.train_frac);
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} must be in [0, 1), got {b}");
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 || self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            bail!("eps must be positive; weight_decay and grad_clip must not be negative");
        }
        if !(0.0..=1.0).contains(&self.decay_frac) {
            bail!("decay_frac must be in [0, 1], got {}", self.decay_frac);
        }
        let floats = [
            ("learning_rate", self.learning_rate),
            ("min_lr", self.min_lr()),
            ("train_frac", self.train_frac),
            ("decay_frac", self.decay_frac),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
            ("dropout", m.dropout as f64),
        ];
        if let Some(d) = self.dropout_final {
            if !(0.0..1.0).contains(&d) {
                bail!("dropout_final must be in [0, 1), got {d}");
            }
        }
        if let Some((name, v)) = floats.iter().find(|(_, v)| !v.is_finite()) {
            bail!("{name} must be a finite number, got {v}");
        }
        if self.vocab_size == Some(0) {
            bail!("vocab_size must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let base = preset("shakespeare-char-cpu").unwrap();
        let o = pairs(&[("n-layer", "2"), ("learning_rate", "3e-4"), ("bias", "true"), ("out", "x")]);
        let cfg = resolve(&base, None, &o).unwrap();
        assert_eq!((cfg.model.n_layer, cfg.learning_rate, cfg.model.bias, cfg.out_dir.as_str()), (2, 3e-4, true, "x"));
        let o = pairs(&[("n-layers", "2")]);
        assert!(resolve(&base, None, &o).unwrap_err().to_string().contains("unknown config key 'n_layers'"));
        let o = pairs(&[("batch-size", "-3")]);
        assert!(resolve(&base, None, &o).unwrap_err().to_string().contains("batch_size"));
        let o = pairs(&[("dropout", "1.5")]);
        assert!(resolve(&base, None, &o).is_err());
        let o = pairs(&[("min-lr", "none")]);
        assert_eq!(resolve(&base, None, &o).unwrap().min_lr, None);
        // Text keys take the text as it is: a file named 2024, the `none` choices.
        let o = pairs(&[("data", "2024"), ("pos", "none"), ("recompute", "none"), ("n_kv_head", "2")]);
        let cfg = resolve(&base, None, &o).unwrap();
        assert_eq!(
            (cfg.data.as_str(), cfg.model.pos, cfg.recompute, cfg.model.n_kv_head),
            ("2024", PosEncoding::None, Recompute::None, Some(2))
        );
        let err = resolve(&base, None, &pairs(&[("pos", "rotary")])).unwrap_err().to_string();
        assert!(err.contains("'pos'") && err.contains("rope"), "{err}");
        // A choice names its valid values.
        let err = resolve(&base, None, &pairs(&[("schedule", "linear")])).unwrap_err().to_string();
        assert!(err.contains("'schedule'") && err.contains("cosine") && err.contains("wsd"), "{err}");
        assert!(preset("nope").unwrap_err().to_string().contains("unknown preset"));
        // An explicit iteration count replaces a preset's epochs.
        let dolly = preset("dolly").unwrap();
        assert_eq!(dolly.epochs, Some(35.0));
        let cfg = resolve(&dolly, None, &pairs(&[("max_iters", "10")])).unwrap();
        assert_eq!((cfg.epochs, cfg.max_iters), (None, 10));
        // Token budgets: suffixes, spaces, and what is not a count.
        for (text, n) in [("200M", 200_000_000), (" 1.5B", 1_500_000_000), ("50000", 50_000)] {
            assert_eq!(text.parse::<TokenCount>(), Ok(TokenCount(n)));
        }
        assert!("0.4".parse::<TokenCount>().is_err() && "many".parse::<TokenCount>().is_err());
    }

    #[test]
    fn toml_file_applies() {
        let dir = std::env::temp_dir().join(format!("ferrite-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "n_embd = 64\nlearning_rate = 1\nschedule = \"wsd\"\n").unwrap();
        let cfg = resolve(&TrainConfig::default(), Some(&f), &[]).unwrap();
        assert_eq!((cfg.model.n_embd, cfg.learning_rate, cfg.schedule), (64, 1.0, Schedule::Wsd));
        std::fs::write(&f, "typo_key = 3\n").unwrap();
        assert!(resolve(&TrainConfig::default(), Some(&f), &[]).is_err());
        std::fs::write(&f, "weight_decay = nan\n").unwrap();
        let err = resolve(&TrainConfig::default(), Some(&f), &[]).unwrap_err().to_string();
        assert!(err.contains("weight_decay must be a finite number"), "{err}");
        // YAML: the same keys give the same configuration.
        let (t, y) = (dir.join("same.toml"), dir.join("same.yaml"));
        std::fs::write(&t, "n_embd = 64\nlearning_rate = 3e-4\nschedule = \"wsd\"\nmin_lr = 1e-5\ndata = \"2024\"\n")
            .unwrap();
        std::fs::write(
            &y,
            "# comments too\nn_embd: 64\nlearning_rate: 3.0e-4\nschedule: wsd\nmin_lr: 1.0e-5\ndata: \"2024\"\n",
        )
        .unwrap();
        let (from_toml, from_yaml) =
            (resolve(&TrainConfig::default(), Some(&t), &[]), resolve(&TrainConfig::default(), Some(&y), &[]));
        assert_eq!(from_yaml.unwrap(), from_toml.unwrap());
        for bad in ["typo_key: 3\n", "weight_decay: .nan\n", "- a list\n", "n_embd: [1, 2\n"] {
            std::fs::write(&y, bad).unwrap();
            assert!(resolve(&TrainConfig::default(), Some(&y), &[]).is_err(), "{bad}");
        }
        std::fs::write(&y, "").unwrap();
        assert_eq!(
            resolve(&TrainConfig::default(), Some(&y), &[]).unwrap(),
            resolve(&TrainConfig::default(), None, &[]).unwrap()
        );
    }

    #[test]
    fn min_lr_defaults_to_a_tenth_never_zero() {
        let cfg = TrainConfig { min_lr: None, learning_rate: 6e-4, ..TrainConfig::default() };
        assert!((cfg.min_lr() - 6e-5).abs() < 1e-12);
    }
}
