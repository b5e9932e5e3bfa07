//! Incremental inference with a KV cache: each new token costs one row of
//! every matmul instead of a forward pass over the whole context.

use super::gpt::{Gpt, NormStats};
use crate::engine::Backend;

/// Per-layer key/value caches plus scratch for up to `block_size` new rows.
pub struct KvCache<B: Backend> {
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    /// Number of positions currently cached.
    pub len: usize,
    pub capacity: usize,
    x: B::Buf,
    ln: B::Buf,
    mean: B::Buf,
    rstd: B::Buf,
    qkv_raw: B::Buf,
    qk_rstd: B::Buf,
    qkv: B::Buf,
    atty: B::Buf,
    proj: B::Buf,
    fc: B::Buf,
    act: B::Buf,
    last: B::Buf,
    last_ln: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> KvCache<B> {
    pub fn new(model: &Gpt<B>) -> Self {
        let be = &model.be;
        let cfg = &model.cfg;
        let (t, c, w) = (cfg.block_size, cfg.n_embd, cfg.qkv_width());
        let kv = cfg.attn_shape(1, 1).kv_width();
        KvCache {
            k: (0..cfg.n_layer).map(|_| be.zeros(t * kv)).collect(),
            v: (0..cfg.n_layer).map(|_| be.zeros(t * kv)).collect(),
            len: 0,
            capacity: t,
            x: be.zeros(t * c),
            ln: be.zeros(t * c),
            mean: be.zeros(t),
            rstd: be.zeros(t),
            qkv_raw: be.zeros(if cfg.qk_norm { t * w } else { 0 }),
            qk_rstd: be.zeros(if cfg.qk_norm { t * (cfg.n_head + cfg.kv_heads()) } else { 0 }),
            qkv: be.zeros(t * w),
            atty: be.zeros(t * c),
            proj: be.zeros(t * c),
            fc: be.zeros(t * cfg.fc_width()),
            act: be.zeros(t * cfg.hidden()),
            last: be.zeros(c),
            last_ln: be.zeros(c),
            logits: be.zeros(cfg.padded_vocab),
        }
    }

    /// Bytes of key/value cache per position (all layers).
    pub fn bytes_per_token(model: &Gpt<B>) -> usize {
        let cfg = &model.cfg;
        2 * cfg.n_layer * cfg.attn_shape(1, 1).kv_width() * std::mem::size_of::<f32>()
    }

    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Feeds `tokens` at positions `len..len + tokens.len()` and returns the
    /// logits (real vocabulary only, soft-capped if the model caps them)
    /// after the last of them.
    pub fn forward(&mut self, model: &Gpt<B>, tokens: &[u32]) -> Vec<f32> {
        let (be, cfg, lay) = (&model.be, &model.cfg, &model.layout);
        let (rows, c, w) = (tokens.len(), cfg.n_embd, cfg.qkv_width());
        assert!(rows > 0 && self.len + rows <= self.capacity, "KV cache overflow");
        let shape = cfg.attn_shape(1, rows);
        let p = |i: usize| &model.params[i];
        be.embedding_fwd(&mut self.x, p(lay.wte), model.position_table(), tokens, rows, c, self.len);
        for (l, bi) in lay.blocks.iter().enumerate() {
            model.norm(&mut self.ln, NormStats { mean: &mut self.mean, rstd: &mut self.rstd }, &self.x, bi.ln1, rows);
            if cfg.qk_norm {
                model.linear(&mut self.qkv_raw, &self.ln, bi.qkv, rows, c, w);
                be.qk_norm_fwd(&mut self.qkv, &mut self.qk_rstd, &self.qkv_raw, shape, rows);
            } else {
                model.linear(&mut self.qkv, &self.ln, bi.qkv, rows, c, w);
            }
            model.rope(&mut self.qkv, rows, rows, self.len, false);
            be.attention_cached(&mut self.atty, &self.qkv, &mut self.k[l], &mut self.v[l], self.len, shape);
            model.linear(&mut self.proj, &self.atty, bi.proj, rows, c, c);
            be.add_assign(&mut self.x, &self.proj, rows * c);
            model.norm(&mut self.ln, NormStats { mean: &mut self.mean, rstd: &mut self.rstd }, &self.x, bi.ln2, rows);
            model.linear(&mut self.fc, &self.ln, bi.fc, rows, c, cfg.fc_width());
            model.mlp_activation(&mut self.act, &self.fc, rows);
            model.linear(&mut self.proj, &self.act, bi.fcproj, rows, cfg.hidden(), c);
            be.add_assign(&mut self.x, &self.proj, rows * c);
        }
        self.len += rows;
        // Only the last position's logits are needed.
        let last = be.read_range(&self.x, (rows - 1) * c, c);
        be.write(&mut self.last, &last);
        model.norm(&mut self.last_ln, NormStats { mean: &mut self.mean, rstd: &mut self.rstd }, &self.last, lay.lnf, 1);
        model.head(&mut self.logits, &self.last_ln, 1);
        let mut logits = be.read_range(&self.logits, 0, cfg.vocab_size);
        if let Some(cap) = cfg.logit_softcap {
            logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        logits
    }
}
