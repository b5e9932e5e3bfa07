//! Every buffer a training step needs, allocated once for a (batch, seq)
//! shape and reused by every step, and what activation recomputation keeps.

use super::config::ModelConfig;
use super::lora::{LoraActs, LoraLayout, Site};
use crate::engine::{Backend, DType};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Activation recomputation: what the forward pass stores for the backward
/// pass and what the backward pass recomputes instead (same kernels, same
/// inputs: the gradients are bit-identical).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Store everything.
    #[default]
    None,
    /// Recompute the MLP's hidden activations (its widest buffers).
    Mlp,
    /// Store only each block's output; recompute the block in backward.
    Block,
}

/// Activations of one block, kept from forward for backward.
pub struct BlockActs<T> {
    pub ln1: T,
    pub ln1_mean: T,
    pub ln1_rstd: T,
    /// The q/k/v projection before QK-norm (empty without QK-norm).
    pub qkv_raw: T,
    pub qk_rstd: T,
    /// Queries, keys and values as attention sees them.
    pub qkv: T,
    /// Attention's softmax statistics, from which backward recomputes the
    /// probabilities (empty in incremental inference).
    pub att_stats: T,
    pub atty: T,
    /// Residual stream after attention.
    pub res_attn: T,
    pub ln2: T,
    pub ln2_mean: T,
    pub ln2_rstd: T,
}

impl<T> BlockActs<T> {
    /// Buffers for `rows` rows, with `stats` floats of attention statistics;
    /// `alloc(len, dtype)`, the buffers only matmuls read in `inputs`.
    pub fn build(
        cfg: &ModelConfig,
        rows: usize,
        stats: usize,
        inputs: DType,
        alloc: &mut impl FnMut(usize, DType) -> Result<T>,
    ) -> Result<Self> {
        let (n, c, w) = (rows, cfg.n_embd, cfg.qkv_width());
        let qk = if cfg.qk_norm { 1 } else { 0 };
        let f32 = DType::F32;
        Ok(BlockActs {
            ln1: alloc(n * c, inputs)?,
            ln1_mean: alloc(n, f32)?,
            ln1_rstd: alloc(n, f32)?,
            qkv_raw: alloc(qk * n * w, f32)?,
            qk_rstd: alloc(qk * n * (cfg.n_head + cfg.kv_heads()), f32)?,
            qkv: alloc(n * w, f32)?,
            att_stats: alloc(stats, f32)?,
            atty: alloc(n * c, inputs)?,
            res_attn: alloc(n * c, f32)?,
            ln2: alloc(n * c, inputs)?,
            ln2_mean: alloc(n, f32)?,
            ln2_rstd: alloc(n, f32)?,
        })
    }
}

/// The MLP's hidden activations: before (`fc`, f32: the activation's
/// backward reads it) and after the activation (`act`, in `inputs`).
pub struct MlpActs<T> {
    pub fc: T,
    pub act: T,
}

impl<T> MlpActs<T> {
    /// `act`: whether to allocate the activation (else an empty buffer).
    pub fn build(
        cfg: &ModelConfig,
        rows: usize,
        inputs: DType,
        act: bool,
        alloc: &mut impl FnMut(usize, DType) -> Result<T>,
    ) -> Result<Self> {
        let act_len = if act { rows * cfg.hidden() } else { 0 };
        Ok(MlpActs { fc: alloc(rows * cfg.fc_width(), DType::F32)?, act: alloc(act_len, inputs)? })
    }
}

/// Buffers of a training step over `[batch, seq]` tokens. Generic over the
/// buffer type so the same code that allocates them also counts them
/// ([`activation_bytes`]).
///
/// The buffers that only matmuls read (norm outputs, attention's output,
/// the MLP's activation) are stored in `inputs`: the model's matmul
/// arithmetic. In bf16 training that halves them at no cost in accuracy:
/// the bf16 matmul rounds its operands to bf16 anyway (the same rounding),
/// so the products are the ones f32 storage gives, to the bit. Everything
/// else a backward kernel reads (residual stream, pre-activations, q/k/v,
/// statistics) stays f32, as do the gradients.
pub struct Acts<T> {
    pub batch: usize,
    pub seq: usize,
    pub recompute: Recompute,
    pub inputs: DType,
    /// Each token's position (`t` of `[b, t]`), on the host.
    pub positions: Vec<u32>,
    pub encoded: T,
    /// Each block's output (the residual stream), always kept.
    pub outputs: Vec<T>,
    /// One per block, or a single one reused by every block (`Block`).
    pub blocks: Vec<BlockActs<T>>,
    /// One per block, or a single one reused by every block (`Mlp`, `Block`).
    pub mlps: Vec<MlpActs<T>>,
    /// With a frozen base and no adapter on the MLP's down projection,
    /// backward never reads the MLP's activation: this one buffer serves
    /// every block's forward (swapped in), and `mlps` hold none.
    pub shared_act: Option<T>,
    pub lnf: T,
    pub lnf_mean: T,
    pub lnf_rstd: T,
    /// Logits `[N, padded_vocab]`; after a training forward, their gradient.
    pub logits: T,
    pub losses: T,
    /// A projection's output before it joins the residual stream.
    pub proj: T,
    // Gradient scratch.
    pub d_res: T,
    pub d_c: T,
    pub d_c2: T,
    pub d_qkv: T,
    pub d_qkv2: T,
    pub d_h: T,
    pub d_h2: T,
    /// The adapters' scratch (empty buffers without adapters).
    pub lora: LoraActs<T>,
}

/// Activations on a backend.
pub type Activations<B> = Acts<<B as Backend>::Buf>;

impl<T> Acts<T> {
    /// Lays out every buffer, creating each with `alloc(len, dtype)`.
    pub fn build(
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        recompute: Recompute,
        inputs: DType,
        lora: Option<(&LoraLayout, bool)>,
        mut alloc: impl FnMut(usize, DType) -> Result<T>,
    ) -> Result<Self> {
        let n = batch * seq;
        let (c, w) = (cfg.n_embd, cfg.qkv_width());
        let qk = if cfg.qk_norm { 1 } else { 0 };
        let stored_blocks = if recompute == Recompute::Block { 1 } else { cfg.n_layer };
        let stored_mlps = if recompute == Recompute::None { cfg.n_layer } else { 1 };
        let stats = cfg.attn_shape(batch, seq).stats_len();
        let blocks =
            (0..stored_blocks).map(|_| BlockActs::build(cfg, n, stats, inputs, &mut alloc)).collect::<Result<_>>()?;
        // A frozen base's backward reads the MLP's activation only for adapters on `down`.
        let act_read = lora.is_none_or(|(l, _)| l.adapters.iter().any(|a| a.site == Site::FcProj));
        let share = !act_read && stored_mlps > 1;
        let mlps =
            (0..stored_mlps).map(|_| MlpActs::build(cfg, n, inputs, !share, &mut alloc)).collect::<Result<_>>()?;
        let shared_act = if share { Some(alloc(n * cfg.hidden(), inputs)?) } else { None };
        let lnf = alloc(n * c, inputs)?;
        let lora = LoraActs::build(cfg, lora, n, &mut alloc)?;
        let mut alloc = |len| alloc(len, DType::F32);
        Ok(Acts {
            batch,
            seq,
            recompute,
            inputs,
            // Filled by `new`: counting the buffers must not allocate.
            positions: Vec::new(),
            encoded: alloc(n * c)?,
            outputs: (0..cfg.n_layer).map(|_| alloc(n * c)).collect::<Result<_>>()?,
            blocks,
            mlps,
            shared_act,
            lnf,
            lnf_mean: alloc(n)?,
            lnf_rstd: alloc(n)?,
            logits: alloc(n * cfg.padded_vocab)?,
            losses: alloc(n)?,
            proj: alloc(n * c)?,
            d_res: alloc(n * c)?,
            d_c: alloc(n * c)?,
            d_c2: alloc(n * c)?,
            d_qkv: alloc(n * w)?,
            d_qkv2: alloc(qk * n * w)?,
            d_h: alloc(n * cfg.hidden())?,
            d_h2: alloc(n * cfg.fc_width())?,
            lora,
        })
    }

    /// Index of block `l`'s stored activations.
    pub fn block_slot(&self, l: usize) -> usize {
        if self.recompute == Recompute::Block {
            0
        } else {
            l
        }
    }

    /// Index of block `l`'s MLP activations.
    pub fn mlp_slot(&self, l: usize) -> usize {
        if self.recompute == Recompute::None {
            l
        } else {
            0
        }
    }
}

impl<T> Acts<T> {
    /// Allocates the buffers on a backend, matmul inputs in `inputs` (see
    /// [`Acts`]; `Gpt::activations` picks the model's arithmetic), with
    /// scratch for `lora`'s adapters (and their dropout).
    pub fn new<B: Backend<Buf = T>>(
        be: &B,
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        recompute: Recompute,
        inputs: DType,
        lora: Option<(&LoraLayout, bool)>,
    ) -> Result<Self> {
        let alloc = |len, dtype| be.zeros_as(len, dtype);
        let mut acts = Acts::build(cfg, batch, seq, recompute, inputs, lora, alloc)?;
        acts.positions = (0..batch * seq).map(|i| (i % seq) as u32).collect();
        Ok(acts)
    }
}

/// Bytes all the activation buffers take, matmul inputs in `inputs`.
pub fn activation_bytes(cfg: &ModelConfig, batch: usize, seq: usize, recompute: Recompute, inputs: DType) -> usize {
    activation_bytes_with(cfg, (batch, seq, recompute, inputs), None)
}

/// [`activation_bytes`] of a LoRA run (a frozen base) with these adapters.
pub fn activation_bytes_with(
    cfg: &ModelConfig,
    (batch, seq, recompute, inputs): (usize, usize, Recompute, DType),
    lora: Option<(&LoraLayout, bool)>,
) -> usize {
    let mut total = 0;
    let counted = Acts::build(cfg, batch, seq, recompute, inputs, lora, |len, dtype| {
        total += len * dtype.bytes();
        Ok(())
    });
    counted.expect("counting cannot fail");
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recompute_stores_less() {
        let cfg = ModelConfig::gpt2(65, 64, 4, 4, 128);
        let [none, mlp, block] =
            [Recompute::None, Recompute::Mlp, Recompute::Block].map(|r| activation_bytes(&cfg, 12, 64, r, DType::F32));
        assert!(none > mlp && mlp > block, "{none} {mlp} {block}");
        // Recomputing the MLP saves its two hidden buffers in all but one block.
        assert_eq!(none - mlp, 4 * 3 * 12 * 64 * (4 * 128 + 4 * 128));
    }

    #[test]
    fn activations_grow_linearly_with_the_context() {
        // Attention keeps row statistics, not `T x T` probabilities.
        let cfg = ModelConfig::gpt2(65, 4096, 4, 4, 128);
        for r in [Recompute::None, Recompute::Mlp, Recompute::Block] {
            for dt in [DType::F32, DType::BF16] {
                assert_eq!(activation_bytes(&cfg, 2, 2048, r, dt), 2 * activation_bytes(&cfg, 2, 1024, r, dt));
            }
        }
    }

    #[test]
    fn bf16_matmul_inputs_halve_their_buffers() {
        // Per block: ln1, attention output, ln2 (n x c each) and the MLP's
        // activation (n x 4c), plus the final norm's output, at 2 bytes less.
        let cfg = ModelConfig::gpt2(65, 64, 4, 4, 128);
        let (n, c) = (12 * 64, 128);
        let f32 = activation_bytes(&cfg, 12, 64, Recompute::None, DType::F32);
        let bf16 = activation_bytes(&cfg, 12, 64, Recompute::None, DType::BF16);
        assert_eq!(f32 - bf16, 2 * (4 * n * 7 * c + n * c));
    }
}
