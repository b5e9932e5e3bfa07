//! The GPT-2 forward and backward passes, written against [`Backend`] only.

use super::config::ModelConfig;
use super::params::{init_params, BlockIdx, Layout};
use crate::engine::fastmath::mix64;
use crate::engine::{AttnShape, Backend, Dropout, Matmul};

/// A model: configuration, parameter layout, and parameter buffers on the backend.
pub struct Gpt<B: Backend> {
    pub be: B,
    pub cfg: ModelConfig,
    pub layout: Layout,
    pub params: Vec<B::Buf>,
}

/// Per-block activations kept from forward for backward.
struct BlockActs<B: Backend> {
    ln1: B::Buf,
    ln1_mean: B::Buf,
    ln1_rstd: B::Buf,
    qkv: B::Buf,
    probs: B::Buf,
    atty: B::Buf,
    /// Residual stream after attention.
    res_attn: B::Buf,
    ln2: B::Buf,
    ln2_mean: B::Buf,
    ln2_rstd: B::Buf,
    fch: B::Buf,
    fch_gelu: B::Buf,
    /// Residual stream after the MLP: the block's output.
    res_out: B::Buf,
}

/// Every buffer one training step needs, allocated once for a (batch, seq)
/// shape and reused by every step.
pub struct Activations<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    encoded: B::Buf,
    blocks: Vec<BlockActs<B>>,
    lnf: B::Buf,
    lnf_mean: B::Buf,
    lnf_rstd: B::Buf,
    /// Logits `[N, padded_vocab]`; after a training forward, their gradient.
    pub logits: B::Buf,
    pub losses: B::Buf,
    /// Scratch for a projection's output before it joins the residual.
    proj: B::Buf,
    // Gradient scratch.
    d_res: B::Buf,
    d_c: B::Buf,
    d_c2: B::Buf,
    d_qkv: B::Buf,
    d_h: B::Buf,
    d_h2: B::Buf,
}

impl<B: Backend> Activations<B> {
    pub fn new(be: &B, cfg: &ModelConfig, batch: usize, seq: usize) -> Self {
        let n = batch * seq;
        let c = cfg.n_embd;
        let z = |len: usize| be.zeros(len);
        let blocks = (0..cfg.n_layer)
            .map(|_| BlockActs {
                ln1: z(n * c),
                ln1_mean: z(n),
                ln1_rstd: z(n),
                qkv: z(n * 3 * c),
                probs: z(batch * cfg.n_head * seq * seq),
                atty: z(n * c),
                res_attn: z(n * c),
                ln2: z(n * c),
                ln2_mean: z(n),
                ln2_rstd: z(n),
                fch: z(n * 4 * c),
                fch_gelu: z(n * 4 * c),
                res_out: z(n * c),
            })
            .collect();
        Activations {
            batch,
            seq,
            encoded: z(n * c),
            blocks,
            lnf: z(n * c),
            lnf_mean: z(n),
            lnf_rstd: z(n),
            logits: z(n * cfg.padded_vocab),
            losses: z(n),
            proj: z(n * c),
            d_res: z(n * c),
            d_c: z(n * c),
            d_c2: z(n * c),
            d_qkv: z(n * 3 * c),
            d_h: z(n * 4 * c),
            d_h2: z(n * 4 * c),
        }
    }
}

/// Dropout site seeds: one stream per (step seed, layer, site).
fn site(seed: u64, layer: usize, which: u64) -> u64 {
    mix64(seed ^ mix64((layer as u64) << 8 | which))
}

impl<B: Backend> Gpt<B> {
    /// A freshly initialised model (GPT-2 initialisation) from a seed.
    pub fn new(be: B, cfg: ModelConfig, seed: u64) -> Self {
        let layout = Layout::new(&cfg);
        let host = init_params(&layout.specs, seed);
        Self::from_host(be, cfg, &host)
    }

    pub fn from_host(be: B, cfg: ModelConfig, host: &[Vec<f32>]) -> Self {
        let layout = Layout::new(&cfg);
        assert_eq!(host.len(), layout.specs.len());
        let params = host.iter().map(|p| be.upload(p)).collect();
        Gpt { be, cfg, layout, params }
    }

    pub fn params_to_host(&self) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| self.be.to_host(p)).collect()
    }

    pub fn zeros_like_params(&self) -> Vec<B::Buf> {
        self.layout.specs.iter().map(|s| self.be.zeros(s.numel())).collect()
    }

    fn p(&self, i: usize) -> &B::Buf {
        &self.params[i]
    }
    fn p_opt(&self, i: Option<usize>) -> Option<&B::Buf> {
        i.map(|i| &self.params[i])
    }

    /// `out = inp · W^T (+ b)` for `rows` rows.
    fn linear(&self, out: &mut B::Buf, inp: &B::Buf, w: usize, b: Option<usize>, rows: usize, ic: usize, oc: usize) {
        self.be.matmul(out, inp, self.p(w), rows, oc, ic, false, true, false);
        if let Some(b) = b {
            self.be.add_bias(out, self.p(b), rows, oc);
        }
    }

    /// Forward pass over `tokens` (`[batch, seq]`). With `targets`, writes
    /// per-position losses and returns their mean; with `grad_scale` too, the
    /// logits buffer is replaced by the loss gradient, ready for [`Self::backward`].
    /// `dropout_seed` selects this step's dropout masks (ignored when
    /// `train` is false or dropout is 0).
    pub fn forward(
        &self,
        acts: &mut Activations<B>,
        tokens: &[u32],
        targets: Option<&[u32]>,
        grad_scale: Option<f32>,
        train: bool,
        dropout_seed: u64,
    ) -> Option<f32> {
        let be = &self.be;
        let cfg = &self.cfg;
        let (bsz, t) = (acts.batch, acts.seq);
        let (n, c) = (bsz * t, cfg.n_embd);
        assert_eq!(tokens.len(), n, "tokens must be batch x seq");
        let p = if train { cfg.dropout } else { 0.0 };
        let drop = |layer: usize, which: u64| Dropout { p, seed: site(dropout_seed, layer, which) };
        let shape = AttnShape { batch: bsz, seq: t, channels: c, heads: cfg.n_head };

        be.embedding_fwd(&mut acts.encoded, self.p(self.layout.wte), self.p(self.layout.wpe), tokens, t, c, 0);
        be.dropout(&mut acts.encoded, drop(cfg.n_layer, 0));
        for (l, bi) in self.layout.blocks.iter().enumerate() {
            let (prev, rest) = acts.blocks.split_at_mut(l);
            let a = &mut rest[0];
            let input = if l == 0 { &acts.encoded } else { &prev[l - 1].res_out };
            be.layernorm_fwd(
                &mut a.ln1,
                &mut a.ln1_mean,
                &mut a.ln1_rstd,
                input,
                self.p(bi.ln1_w),
                self.p_opt(bi.ln1_b),
                n,
                c,
            );
            self.linear(&mut a.qkv, &a.ln1, bi.qkv_w, bi.qkv_b, n, c, 3 * c);
            be.attention_fwd(&mut a.atty, &mut a.probs, &a.qkv, shape, drop(l, 1));
            self.linear(&mut acts.proj, &a.atty, bi.proj_w, bi.proj_b, n, c, c);
            be.dropout(&mut acts.proj, drop(l, 2));
            be.add(&mut a.res_attn, input, &acts.proj, n * c);
            be.layernorm_fwd(
                &mut a.ln2,
                &mut a.ln2_mean,
                &mut a.ln2_rstd,
                &a.res_attn,
                self.p(bi.ln2_w),
                self.p_opt(bi.ln2_b),
                n,
                c,
            );
            self.linear(&mut a.fch, &a.ln2, bi.fc_w, bi.fc_b, n, c, 4 * c);
            be.gelu_fwd(&mut a.fch_gelu, &a.fch, n * 4 * c);
            self.linear(&mut acts.proj, &a.fch_gelu, bi.fcproj_w, bi.fcproj_b, n, 4 * c, c);
            be.dropout(&mut acts.proj, drop(l, 3));
            be.add(&mut a.res_out, &a.res_attn, &acts.proj, n * c);
        }
        let last = &acts.blocks[cfg.n_layer - 1].res_out;
        be.layernorm_fwd(
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            last,
            self.p(self.layout.lnf_w),
            self.p_opt(self.layout.lnf_b),
            n,
            c,
        );
        // Tied LM head: logits = lnf · wte^T, for the real vocabulary only
        // (the padding columns are never read, so never computed).
        let head = Matmul::new(n, cfg.vocab_size, c, false, true, false).strides(c, c, cfg.padded_vocab);
        be.matmul_strided(&mut acts.logits, &acts.lnf, self.p(self.layout.wte), head);
        let targets = targets?;
        be.cross_entropy(&mut acts.losses, &mut acts.logits, targets, n, cfg.vocab_size, cfg.padded_vocab, grad_scale);
        let losses = be.to_host(&acts.losses);
        Some((losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32)
    }

    /// Backward pass after a training forward; accumulates into `grads`.
    pub fn backward(&self, acts: &mut Activations<B>, grads: &mut [B::Buf], tokens: &[u32], dropout_seed: u64) {
        let be = &self.be;
        let cfg = &self.cfg;
        let (bsz, t) = (acts.batch, acts.seq);
        let (n, c) = (bsz * t, cfg.n_embd);
        let p = cfg.dropout;
        let drop = |layer: usize, which: u64| Dropout { p, seed: site(dropout_seed, layer, which) };
        let shape = AttnShape { batch: bsz, seq: t, channels: c, heads: cfg.n_head };
        let lay = &self.layout;

        // LM head: d lnf = dlogits · wte ; d wte += dlogits^T · lnf, over the
        // real vocabulary (the padding columns' gradient is zero).
        let (v, pv) = (cfg.vocab_size, cfg.padded_vocab);
        be.matmul_strided(
            &mut acts.d_c,
            &acts.logits,
            self.p(lay.wte),
            Matmul::new(n, c, v, false, false, false).strides(pv, c, c),
        );
        be.matmul_strided(
            &mut grads[lay.wte],
            &acts.logits,
            &acts.lnf,
            Matmul::new(v, c, n, true, false, true).strides(pv, c, c),
        );
        be.fill(&mut acts.d_res, 0.0);
        let last = &acts.blocks[cfg.n_layer - 1].res_out;
        let (dw, db) = two_mut(grads, lay.lnf_w, lay.lnf_b);
        be.layernorm_bwd(
            &mut acts.d_res,
            dw,
            db,
            &acts.d_c,
            last,
            self.p(lay.lnf_w),
            &acts.lnf_mean,
            &acts.lnf_rstd,
            n,
            c,
        );

        for l in (0..cfg.n_layer).rev() {
            let bi: &BlockIdx = &lay.blocks[l];
            let (prev, rest) = acts.blocks.split_at(l);
            let a = &rest[0];
            let input = if l == 0 { &acts.encoded } else { &prev[l - 1].res_out };

            // MLP residual branch: res_out = res_attn + drop(fcproj(gelu(fc(ln2)))).
            let d_branch = if p > 0.0 {
                be.copy(&mut acts.d_c2, &acts.d_res);
                be.dropout(&mut acts.d_c2, drop(l, 3));
                &acts.d_c2
            } else {
                &acts.d_res
            };
            self.linear_backward(&mut acts.d_h, grads, d_branch, &a.fch_gelu, bi.fcproj_w, bi.fcproj_b, n, 4 * c, c);
            be.gelu_bwd(&mut acts.d_h2, &a.fch, &acts.d_h, n * 4 * c);
            self.linear_backward(&mut acts.d_c, grads, &acts.d_h2, &a.ln2, bi.fc_w, bi.fc_b, n, c, 4 * c);
            let (dw, db) = two_mut(grads, bi.ln2_w, bi.ln2_b);
            be.layernorm_bwd(
                &mut acts.d_res,
                dw,
                db,
                &acts.d_c,
                &a.res_attn,
                self.p(bi.ln2_w),
                &a.ln2_mean,
                &a.ln2_rstd,
                n,
                c,
            );

            // Attention residual branch: res_attn = input + drop(proj(attn(qkv(ln1)))).
            let d_branch = if p > 0.0 {
                be.copy(&mut acts.d_c2, &acts.d_res);
                be.dropout(&mut acts.d_c2, drop(l, 2));
                &acts.d_c2
            } else {
                &acts.d_res
            };
            self.linear_backward(&mut acts.d_c, grads, d_branch, &a.atty, bi.proj_w, bi.proj_b, n, c, c);
            be.attention_bwd(&mut acts.d_qkv, &acts.d_c, &a.qkv, &a.probs, shape, drop(l, 1));
            self.linear_backward(&mut acts.d_c, grads, &acts.d_qkv, &a.ln1, bi.qkv_w, bi.qkv_b, n, c, 3 * c);
            let (dw, db) = two_mut(grads, bi.ln1_w, bi.ln1_b);
            be.layernorm_bwd(
                &mut acts.d_res,
                dw,
                db,
                &acts.d_c,
                input,
                self.p(bi.ln1_w),
                &a.ln1_mean,
                &a.ln1_rstd,
                n,
                c,
            );
        }
        be.dropout(&mut acts.d_res, drop(cfg.n_layer, 0));
        let (dwte, dwpe) = two_mut(grads, lay.wte, Some(lay.wpe));
        be.embedding_bwd(dwte, dwpe.expect("wpe"), &acts.d_res, tokens, t, c);
    }

    /// Backward of [`Self::linear`]: `dinp = dout · W` (overwritten),
    /// `dW += dout^T · inp`, `db += colsum(dout)`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dinp: &mut B::Buf,
        grads: &mut [B::Buf],
        dout: &B::Buf,
        inp: &B::Buf,
        w: usize,
        b: Option<usize>,
        rows: usize,
        ic: usize,
        oc: usize,
    ) {
        let be = &self.be;
        be.matmul(dinp, dout, self.p(w), rows, ic, oc, false, false, false);
        be.matmul(&mut grads[w], dout, inp, oc, ic, rows, true, false, true);
        if let Some(b) = b {
            be.bias_backward(&mut grads[b], dout, rows, oc);
        }
    }
}

/// Two distinct mutable elements of a slice (the second optional).
pub fn two_mut<T>(v: &mut [T], i: usize, j: Option<usize>) -> (&mut T, Option<&mut T>) {
    match j {
        None => (&mut v[i], None),
        Some(j) => {
            assert_ne!(i, j);
            if i < j {
                let (a, b) = v.split_at_mut(j);
                (&mut a[i], Some(&mut b[0]))
            } else {
                let (a, b) = v.split_at_mut(i);
                (&mut b[0], Some(&mut a[j]))
            }
        }
    }
}
