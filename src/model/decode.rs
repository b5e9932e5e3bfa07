//! Incremental inference with a KV cache: each new token costs one row of
//! every matmul instead of a forward over the whole context.

use super::gpt::Gpt;
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
    qkv: B::Buf,
    atty: B::Buf,
    proj: B::Buf,
    fch: B::Buf,
    fch_gelu: B::Buf,
    last: B::Buf,
    last_ln: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> KvCache<B> {
    pub fn new(model: &Gpt<B>) -> Self {
        let be = &model.be;
        let cfg = &model.cfg;
        let (t, c) = (cfg.block_size, cfg.n_embd);
        KvCache {
            k: (0..cfg.n_layer).map(|_| be.zeros(t * c)).collect(),
            v: (0..cfg.n_layer).map(|_| be.zeros(t * c)).collect(),
            len: 0,
            capacity: t,
            x: be.zeros(t * c),
            ln: be.zeros(t * c),
            mean: be.zeros(t),
            rstd: be.zeros(t),
            qkv: be.zeros(t * 3 * c),
            atty: be.zeros(t * c),
            proj: be.zeros(t * c),
            fch: be.zeros(t * 4 * c),
            fch_gelu: be.zeros(t * 4 * c),
            last: be.zeros(c),
            last_ln: be.zeros(c),
            logits: be.zeros(cfg.padded_vocab),
        }
    }

    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Feeds `tokens` at positions `len..len + tokens.len()` and returns the
    /// logits (real vocabulary only) after the last of them.
    pub fn forward(&mut self, model: &Gpt<B>, tokens: &[u32]) -> Vec<f32> {
        let be = &model.be;
        let cfg = &model.cfg;
        let lay = &model.layout;
        let (rows, c) = (tokens.len(), cfg.n_embd);
        assert!(rows > 0 && self.len + rows <= self.capacity, "KV cache overflow");
        let p = |i: usize| &model.params[i];
        let po = |i: Option<usize>| i.map(|i| &model.params[i]);
        let linear = |out: &mut B::Buf, inp: &B::Buf, w: usize, b: Option<usize>, ic: usize, oc: usize| {
            be.matmul(out, inp, p(w), rows, oc, ic, false, true, false);
            if let Some(b) = b {
                be.add_bias(out, p(b), rows, oc);
            }
        };
        be.embedding_fwd(&mut self.x, p(lay.wte), p(lay.wpe), tokens, rows, c, self.len);
        for (l, bi) in lay.blocks.iter().enumerate() {
            be.layernorm_fwd(&mut self.ln, &mut self.mean, &mut self.rstd, &self.x, p(bi.ln1_w), po(bi.ln1_b), rows, c);
            linear(&mut self.qkv, &self.ln, bi.qkv_w, bi.qkv_b, c, 3 * c);
            be.attention_cached(
                &mut self.atty,
                &self.qkv,
                &mut self.k[l],
                &mut self.v[l],
                self.len,
                rows,
                c,
                cfg.n_head,
            );
            linear(&mut self.proj, &self.atty, bi.proj_w, bi.proj_b, c, c);
            be.add_assign(&mut self.x, &self.proj, rows * c);
            be.layernorm_fwd(&mut self.ln, &mut self.mean, &mut self.rstd, &self.x, p(bi.ln2_w), po(bi.ln2_b), rows, c);
            linear(&mut self.fch, &self.ln, bi.fc_w, bi.fc_b, c, 4 * c);
            be.gelu_fwd(&mut self.fch_gelu, &self.fch, rows * 4 * c);
            linear(&mut self.proj, &self.fch_gelu, bi.fcproj_w, bi.fcproj_b, 4 * c, c);
            be.add_assign(&mut self.x, &self.proj, rows * c);
        }
        self.len += rows;
        // Only the last position's logits are needed.
        let last = be.read_range(&self.x, (rows - 1) * c, c);
        be.write(&mut self.last, &last);
        be.layernorm_fwd(
            &mut self.last_ln,
            &mut self.mean,
            &mut self.rstd,
            &self.last,
            p(lay.lnf_w),
            po(lay.lnf_b),
            1,
            c,
        );
        be.matmul(&mut self.logits, &self.last_ln, p(lay.wte), 1, cfg.vocab_size, c, false, true, false);
        be.read_range(&self.logits, 0, cfg.vocab_size)
    }
}
