//! Model hyper-parameters, saved in every checkpoint's `config.json`. The
//! defaults of the options added after the first release describe GPT-2, so
//! older checkpoints load unchanged.

use crate::engine::{Activation, AttnShape};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How positions enter the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEncoding {
    /// A trained position table added to the token embeddings (GPT-2).
    #[default]
    Learned,
    /// The fixed sine/cosine table of the original Transformer.
    Sinusoidal,
    /// Rotary embeddings applied to queries and keys (Llama).
    Rope,
    /// No position information except causality.
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm (with a bias when `bias` is on).
    #[default]
    LayerNorm,
    /// RMSNorm (never a bias).
    RmsNorm,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// GELU, tanh approximation (GPT-2).
    #[default]
    GeluTanh,
    /// GELU with the exact error function (nanoGPT, PyTorch's `nn.GELU()`).
    Gelu,
    /// SwiGLU: `silu(x W_gate) * (x W_up)` (Llama).
    Swiglu,
    /// `relu(x)^2` (modded-nanogpt, nanochat).
    Relu2,
}

impl MlpKind {
    /// The pointwise activation, for the non-gated kinds.
    pub fn activation(self) -> Option<Activation> {
        match self {
            MlpKind::GeluTanh => Some(Activation::GeluTanh),
            MlpKind::Gelu => Some(Activation::Gelu),
            MlpKind::Relu2 => Some(Activation::Relu2),
            MlpKind::Swiglu => None,
        }
    }
}

/// A decoder-only transformer. `padded_vocab` is `vocab_size` rounded up to
/// a multiple of 64 (faster matmuls); padding logits are never sampled and
/// never enter the loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub padded_vocab: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Key/value heads: fewer than `n_head` is grouped-query attention, 1 is
    /// multi-query; `None` means `n_head`.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// Biases in linear layers and LayerNorms.
    pub bias: bool,
    /// Dropout probability during training (embeddings, attention, residuals).
    pub dropout: f32,
    #[serde(default)]
    pub pos: PosEncoding,
    #[serde(default = "default_rope_base")]
    pub rope_base: f32,
    #[serde(default)]
    pub norm: NormKind,
    /// The norms' epsilon; `None`: 1e-5 for LayerNorm (PyTorch's default),
    /// 1e-6 for RMSNorm (Llama's).
    #[serde(default)]
    pub norm_eps: Option<f32>,
    /// RMS-normalise every query and key head before attention.
    #[serde(default)]
    pub qk_norm: bool,
    #[serde(default)]
    pub mlp: MlpKind,
    /// Hidden width of the MLP; `None`: 4 × n_embd, or for SwiGLU 8/3 ×
    /// n_embd rounded up to a multiple of 64 (about the same parameters).
    #[serde(default)]
    pub mlp_hidden: Option<usize>,
    /// The LM head reuses the token embedding (GPT-2) or has its own weights.
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    /// Soft-cap the logits to `(-cap, cap)` with `cap * tanh(logit / cap)`.
    #[serde(default)]
    pub logit_softcap: Option<f32>,
}

fn default_rope_base() -> f32 {
    10000.0
}

fn yes() -> bool {
    true
}

/// Upper bounds on the sizes (see [`ModelConfig::validate`]).
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_BLOCK: usize = 1 << 20;
pub const MAX_LAYERS: usize = 4096;
pub const MAX_WIDTH: usize = 1 << 16;
/// Upper bounds on batches (training's and evaluation's).
pub const MAX_BATCH: usize = 1 << 20;
pub const MAX_BATCH_TOKENS: usize = 1 << 28;
/// Micro-batches per step, batches per evaluation.
pub const MAX_REPEATS: usize = 1 << 16;

pub fn pad_vocab(v: usize) -> usize {
    v.div_ceil(64) * 64
}

impl ModelConfig {
    /// GPT-2 with the given sizes; the other options at their defaults.
    pub fn gpt2(vocab_size: usize, block_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> ModelConfig {
        ModelConfig {
            vocab_size,
            padded_vocab: pad_vocab(vocab_size),
            block_size,
            n_layer,
            n_head,
            n_embd,
            n_kv_head: None,
            bias: false,
            dropout: 0.0,
            pos: PosEncoding::Learned,
            rope_base: default_rope_base(),
            norm: NormKind::LayerNorm,
            norm_eps: None,
            qk_norm: false,
            mlp: MlpKind::GeluTanh,
            mlp_hidden: None,
            tie_embeddings: true,
            logit_softcap: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            bail!("vocab_size, block_size, n_layer and n_head must all be positive");
        }
        // Far beyond any model this engine can run, and small enough that no
        // size computed from them overflows.
        let limits = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("padded_vocab", self.padded_vocab, MAX_VOCAB),
            ("block_size", self.block_size, MAX_BLOCK),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_embd", self.n_embd, MAX_WIDTH),
            ("mlp_hidden", self.mlp_hidden.unwrap_or(0), 4 * MAX_WIDTH),
        ];
        for (name, v, max) in limits {
            if v > max {
                bail!("{name} must be at most {max}, got {v}");
            }
        }
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            bail!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head);
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_head.is_multiple_of(kv) {
            bail!("n_kv_head ({kv}) must divide n_head ({})", self.n_head);
        }
        if self.padded_vocab < self.vocab_size {
            bail!("padded_vocab ({}) is smaller than vocab_size ({})", self.padded_vocab, self.vocab_size);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        if self.pos == PosEncoding::Rope && !self.head_dim().is_multiple_of(2) {
            bail!("rotary embeddings need an even head size, got {}", self.head_dim());
        }
        if !(self.rope_base > 1.0 && self.rope_base.is_finite()) {
            bail!("rope_base must be a finite number above 1, got {}", self.rope_base);
        }
        if let Some(eps) = self.norm_eps {
            if !(eps > 0.0 && eps < 1.0) {
                bail!("norm_eps must be in (0, 1), got {eps}");
            }
        }
        if self.mlp_hidden == Some(0) {
            bail!("mlp_hidden must be at least 1");
        }
        if let Some(cap) = self.logit_softcap {
            if !(cap > 0.0 && cap.is_finite()) {
                bail!("logit_softcap must be a positive number, got {cap}");
            }
        }
        Ok(())
    }

    pub fn norm_eps(&self) -> f32 {
        self.norm_eps.unwrap_or(match self.norm {
            NormKind::LayerNorm => 1e-5,
            NormKind::RmsNorm => 1e-6,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The attention shape of a `[batch, seq]` batch.
    pub fn attn_shape(&self, batch: usize, seq: usize) -> AttnShape {
        AttnShape { batch, seq, heads: self.n_head, kv_heads: self.kv_heads(), head_dim: self.head_dim() }
    }

    /// Width of the fused q/k/v projection.
    pub fn qkv_width(&self) -> usize {
        self.attn_shape(1, 1).qkv_width()
    }

    /// Hidden width of the MLP (after the activation).
    pub fn hidden(&self) -> usize {
        self.mlp_hidden.unwrap_or(match self.mlp {
            MlpKind::Swiglu => (8 * self.n_embd / 3).div_ceil(64) * 64,
            _ => 4 * self.n_embd,
        })
    }

    /// Width of the MLP's first projection: gate and up together for SwiGLU.
    pub fn fc_width(&self) -> usize {
        match self.mlp {
            MlpKind::Swiglu => 2 * self.hidden(),
            _ => self.hidden(),
        }
    }

    /// Parameter count (a tied LM head counted once, padding rows included).
    pub fn num_params(&self) -> usize {
        super::params::param_specs(self).iter().map(|s| s.numel()).sum()
    }

    /// Weights that multiply every token's activations: all matrices but the
    /// embedding tables (lookups), with the LM head over the real vocabulary.
    pub fn matmul_params(&self) -> usize {
        let c = self.n_embd;
        let per_layer = c * self.qkv_width() + c * c + c * self.fc_width() + self.hidden() * c;
        self.n_layer * per_layer + self.vocab_size * c
    }

    /// Attention FLOPs per token at context `seq` for one forward pass: the
    /// score and value products, 2 · 2 · n_layer · seq · n_embd (counted over
    /// the full `seq x seq` square, as nanoGPT's and PaLM's estimates do).
    pub fn attn_flops_per_token(&self, seq: usize) -> f64 {
        4.0 * (self.n_layer * seq * self.n_head * self.head_dim()) as f64
    }

    /// Training FLOPs per token: 6 per matmul weight (forward 2, backward 4)
    /// plus three times the forward attention products: the standard 6N +
    /// attention estimate. Model FLOPs, as MFU counts them: the scores that
    /// attention's backward recomputes (instead of storing) are not counted.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        6.0 * self.matmul_params() as f64 + 3.0 * self.attn_flops_per_token(seq)
    }
}

/// Small configurations covering every architecture option, for tests.
#[cfg(test)]
pub fn test_variants() -> Vec<ModelConfig> {
    let gpt2 = ModelConfig { bias: true, ..ModelConfig::gpt2(11, 8, 2, 2, 16) };
    let llama = ModelConfig {
        n_head: 4,
        n_kv_head: Some(2),
        bias: false,
        pos: PosEncoding::Rope,
        norm: NormKind::RmsNorm,
        mlp: MlpKind::Swiglu,
        tie_embeddings: false,
        ..gpt2.clone()
    };
    vec![
        gpt2.clone(),
        llama.clone(),
        ModelConfig { n_kv_head: Some(1), qk_norm: true, logit_softcap: Some(2.0), mlp: MlpKind::Relu2, ..llama },
        ModelConfig { pos: PosEncoding::Sinusoidal, mlp: MlpKind::Gelu, mlp_hidden: Some(24), ..gpt2.clone() },
        ModelConfig { pos: PosEncoding::None, bias: false, ..gpt2 },
    ]
}
