//! Model hyper-parameters, saved in every checkpoint's `config.json`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A GPT-2 style decoder. `padded_vocab` is `vocab_size` rounded up to a
/// multiple of 64 (faster matmuls); padding logits are never sampled and
/// never enter the loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub padded_vocab: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Biases in linear layers and LayerNorms.
    pub bias: bool,
    /// Dropout probability during training (embeddings, attention, residuals).
    pub dropout: f32,
}

pub fn pad_vocab(v: usize) -> usize {
    v.div_ceil(64) * 64
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            bail!("vocab_size, block_size, n_layer and n_head must all be positive");
        }
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            bail!("n_embd ({}) must be a positive multiple of n_head ({})", self.n_embd, self.n_head);
        }
        if self.padded_vocab < self.vocab_size {
            bail!("padded_vocab ({}) is smaller than vocab_size ({})", self.padded_vocab, self.vocab_size);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameter count (the tied LM head counted once, padding rows included).
    pub fn num_params(&self) -> usize {
        super::params::param_specs(self).iter().map(|s| s.numel()).sum()
    }

    /// Training FLOPs per token: 6 per weight of every matmul (forward 2,
    /// backward 4) plus the attention score and value products, 6·2·L·T·C
    /// halved for causality is not taken: like PaLM's and nanoGPT's MFU
    /// estimate we count the full T×T products.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let (l, c) = (self.n_layer as f64, self.n_embd as f64);
        let matmul_weights = l * 12.0 * c * c + self.padded_vocab as f64 * c;
        6.0 * matmul_weights + 12.0 * l * c * seq as f64
    }
}
