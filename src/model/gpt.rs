//! The decoder's forward and backward passes, written against [`Backend`]
//! only. One code path covers GPT-2 and Llama-style models: the options of
//! [`ModelConfig`] pick the kernels (norm, position encoding, MLP, ...).
//! There is one block forward ([`Gpt::block_forward`]): training and
//! evaluation run it over whole windows, KV-cache inference
//! ([`super::decode`]) over new rows, with the cache as its [`Attend`].

use super::activations::{Activations, BlockActs, MlpActs, Recompute};
use super::config::{ModelConfig, NormKind, PosEncoding};
use super::lora::{Lora, LoraActs, Site};
use super::params::{init_params, BlockIdx, Layout, LinearIdx, NormIdx, ParamSpec};
use super::positions;
use crate::engine::fastmath::mix64;
use crate::engine::{AttnShape, Backend, CacheRow, DType, Dropout, Matmul, Quantized, IGNORE_TARGET};
use anyhow::Result;

/// A model: configuration, parameter layout, parameter buffers and the
/// fixed (untrained) tables some position encodings need.
pub struct Gpt<B: Backend> {
    pub be: B,
    pub cfg: ModelConfig,
    pub layout: Layout,
    pub params: Vec<B::Buf>,
    /// Arithmetic of the matrix multiplies (F32, or BF16 for mixed
    /// precision); everything else computes in f32.
    pub compute: DType,
    /// What a KV cache of this model stores its keys and values in (F32 or
    /// BF16: half the bytes each decoding step reads).
    pub kv_dtype: DType,
    /// The sinusoidal position table (`[block_size, n_embd]`).
    sinusoid: Option<B::Buf>,
    /// Rotary cos and sin tables (`[block_size, head_dim / 2]` each).
    rope: Option<(B::Buf, B::Buf)>,
    /// LoRA adapters, applied unmerged. With them the base is frozen:
    /// backward computes only the adapters' gradients.
    pub lora: Option<Lora<B::Buf>>,
}

/// Normalisation statistics buffers: mean (LayerNorm only) and 1/std.
pub struct NormStats<'a, T> {
    pub mean: &'a mut T,
    pub rstd: &'a mut T,
}

/// Where a block's queries find their keys and values.
pub enum Attend<'a, T> {
    /// The rows are whole windows (`shape.batch` sequences of `shape.seq`):
    /// causal attention within them, with this dropout on the
    /// probabilities; the softmax statistics are kept for backward.
    Window(Dropout),
    /// The rows are new positions of sequences in a KV cache (see
    /// [`Backend::attention_cached`]): their keys and values are stored
    /// there, and each query attends to its sequence's cached positions.
    Cache { k: &'a mut T, v: &'a mut T, rows: &'a [CacheRow], capacity: usize },
}

/// Dropout sites from this number on are LoRA adapters' (site
/// `LORA_SITES + adapter index`), at the adapters' own rate.
const LORA_SITES: u64 = 16;

/// This step's dropout at each site: one mask stream per (layer, site),
/// derived from the step's seed; `lora_p` at the adapters' sites.
pub(crate) fn dropout_sites(drop: Dropout, lora_p: f32) -> impl Fn(usize, u64) -> Dropout + Copy {
    move |layer, which| Dropout {
        p: if which >= LORA_SITES { lora_p } else { drop.p },
        seed: mix64(drop.seed ^ mix64((layer as u64) << 8 | which)),
    }
}

impl<B: Backend> Gpt<B> {
    /// A freshly initialised model (GPT-2 initialisation) from a seed.
    pub fn new(be: B, cfg: ModelConfig, seed: u64) -> Result<Self> {
        let layout = Layout::new(&cfg);
        let host = init_params(&layout.specs, seed);
        Self::from_host(be, cfg, &host)
    }

    pub fn from_host(be: B, cfg: ModelConfig, host: &[Vec<f32>]) -> Result<Self> {
        Self::from_host_as(be, cfg, host, DType::F32)
    }

    /// A model with its weight matrices stored as `weights` (bf16: half the
    /// memory and half the bytes each decoding step reads; a quantized
    /// dtype: quantized here, as [`super::quantize::weight_types`] says);
    /// vectors (norms, biases) stay f32. Matmuls widen bf16 weights exactly.
    pub fn from_host_as(be: B, cfg: ModelConfig, host: &[Vec<f32>], weights: DType) -> Result<Self> {
        let none = vec![None; host.len()];
        Self::from_parts(be, cfg, host, &none, weights)
    }

    /// A model from host values, the parameters with `blocks` taking those
    /// as they are (a quantized checkpoint's), the other matrices stored as
    /// `weights` (see [`Self::from_host_as`]).
    pub fn from_parts(
        be: B,
        cfg: ModelConfig,
        host: &[Vec<f32>],
        blocks: &[Option<Quantized>],
        weights: DType,
    ) -> Result<Self> {
        let layout = Layout::new(&cfg);
        assert!(host.len() == layout.specs.len() && blocks.len() == host.len());
        let types = super::quantize::weight_types(&cfg, weights, None);
        let params = host
            .iter()
            .zip(blocks)
            .zip(types)
            .map(|((p, q), t)| match q {
                Some(q) => be.upload_blocks(q),
                None => be.upload_as(p, t),
            })
            .collect::<Result<_>>()?;
        let sinusoid = match cfg.pos {
            PosEncoding::Sinusoidal => Some(be.upload(&positions::sinusoidal(cfg.block_size, cfg.n_embd))?),
            _ => None,
        };
        let rope = match cfg.pos {
            PosEncoding::Rope => {
                let (cos, sin) = positions::rope_tables(cfg.block_size, cfg.head_dim(), cfg.rope_base);
                Some((be.upload(&cos)?, be.upload(&sin)?))
            }
            _ => None,
        };
        Ok(Gpt { be, cfg, layout, params, compute: DType::F32, kv_dtype: DType::F32, sinusoid, rope, lora: None })
    }

    /// Buffers for a forward (and backward) pass over `[batch, seq]`, the
    /// matmul inputs stored in the model's arithmetic (see [`Activations`]).
    pub fn activations(&self, batch: usize, seq: usize, recompute: Recompute) -> Result<Activations<B>> {
        let lora = self.lora.as_ref().map(|l| (&l.layout, l.config.dropout > 0.0));
        Activations::<B>::new(&self.be, &self.cfg, batch, seq, recompute, self.compute, lora)
    }

    /// What training updates: the adapters when there are some (the base
    /// is frozen), else every parameter.
    pub fn trainable(&mut self) -> (&[ParamSpec], &mut [B::Buf]) {
        match &mut self.lora {
            Some(l) => (&l.layout.specs, &mut l.params),
            None => (&self.layout.specs, &mut self.params),
        }
    }

    /// Zeroed gradients of [`Self::trainable`].
    pub fn zeros_like_trainable(&self) -> Result<Vec<B::Buf>> {
        let specs = self.lora.as_ref().map_or(&self.layout.specs, |l| &l.layout.specs);
        specs.iter().map(|s| self.be.zeros(s.numel())).collect()
    }

    /// The dropout rate of the adapters (0 without).
    fn lora_dropout(&self) -> f32 {
        self.lora.as_ref().map_or(0.0, |l| l.config.dropout)
    }

    pub fn params_to_host(&self) -> Result<Vec<Vec<f32>>> {
        self.params.iter().map(|p| self.be.to_host(p)).collect()
    }

    pub fn zeros_like_params(&self) -> Result<Vec<B::Buf>> {
        self.layout.specs.iter().map(|s| self.be.zeros(s.numel())).collect()
    }

    fn p(&self, i: usize) -> &B::Buf {
        &self.params[i]
    }

    /// The table added to the token embeddings, if any.
    pub(crate) fn position_table(&self) -> Option<&B::Buf> {
        match self.cfg.pos {
            PosEncoding::Learned => self.layout.wpe.map(|i| self.p(i)),
            PosEncoding::Sinusoidal => self.sinusoid.as_ref(),
            PosEncoding::Rope | PosEncoding::None => None,
        }
    }

    /// Rotates queries and keys (`inverse`: their gradients) of rows at
    /// `positions` when positions are rotary.
    pub(crate) fn rope(&self, qkv: &mut B::Buf, positions: &[u32], inverse: bool) {
        if let Some((cos, sin)) = &self.rope {
            self.be.rope(qkv, cos, sin, self.cfg.attn_shape(1, 1), positions, inverse);
        }
    }

    /// `out = inp · W^T (+ b)` for `rows` rows.
    pub(crate) fn linear(&self, out: &mut B::Buf, inp: &B::Buf, lin: LinearIdx, rows: usize, ic: usize, oc: usize) {
        self.be.matmul_strided(out, inp, self.p(lin.w), self.mm(rows, oc, ic, false, true, false));
        if let Some(b) = lin.b {
            self.be.add_bias(out, self.p(b), rows, oc);
        }
    }

    /// [`Self::linear`] for the linear at `site` of block `l`, plus its
    /// adapters: `out[:, their rows] += u Bᵀ` with `u = s · dropout(inp) Aᵀ`
    /// (kept in `la` for backward).
    #[allow(clippy::too_many_arguments)]
    fn adapted(
        &self,
        (l, site): (usize, Site),
        out: &mut B::Buf,
        inp: &B::Buf,
        lin: LinearIdx,
        (rows, ic, oc): (usize, usize, usize),
        la: &mut LoraActs<B::Buf>,
        drop: &impl Fn(usize, u64) -> Dropout,
    ) {
        self.linear(out, inp, lin, rows, ic, oc);
        let Some(lora) = &self.lora else { return };
        let (be, r) = (&self.be, lora.layout.rank);
        for &i in lora.layout.at(l, site) {
            let ad = &lora.layout.adapters[i];
            let d = drop(l, LORA_SITES + i as u64);
            let x = self.dropped(&mut la.x, inp, rows * ic, d);
            be.matmul_strided(&mut la.u[i], x, &lora.params[ad.a], self.mm(rows, r, ic, false, true, false));
            be.scale(&mut la.u[i], rows * r, lora.config.scale());
            let mm = self.mm(rows, ad.rows, r, false, true, true).strides(r, r, oc).offsets(0, 0, ad.row0);
            be.matmul_strided(out, &la.u[i], &lora.params[ad.b], mm);
        }
    }

    /// An adapter's input: `inp` itself, or through dropout in `scratch`.
    fn dropped<'a>(&self, scratch: &'a mut B::Buf, inp: &'a B::Buf, n: usize, d: Dropout) -> &'a B::Buf {
        if d.active() {
            self.be.dropout_from(scratch, inp, n, d);
            scratch
        } else {
            inp
        }
    }

    /// Backward of the adapters of [`Self::adapted`] given `dout`: their
    /// gradients into `grads` (the adapters'), their share of the input's
    /// gradient added to `dinp`.
    #[allow(clippy::too_many_arguments)]
    fn adapters_backward(
        &self,
        (l, site): (usize, Site),
        dinp: &mut B::Buf,
        grads: &mut [B::Buf],
        dout: &B::Buf,
        inp: &B::Buf,
        (rows, ic, oc): (usize, usize, usize),
        la: &mut LoraActs<B::Buf>,
        drop: &impl Fn(usize, u64) -> Dropout,
    ) {
        let Some(lora) = &self.lora else { return };
        let (be, r) = (&self.be, lora.layout.rank);
        for &i in lora.layout.at(l, site) {
            let ad = &lora.layout.adapters[i];
            // dB += dout[:, rows]ᵀ · u ; g = s · dout[:, rows] · B.
            let mm = self.mm(ad.rows, r, rows, true, false, true).strides(oc, r, r).offsets(ad.row0, 0, 0);
            be.matmul_strided(&mut grads[ad.b], dout, &la.u[i], mm);
            let mm = self.mm(rows, r, ad.rows, false, false, false).strides(oc, r, r).offsets(ad.row0, 0, 0);
            be.matmul_strided(&mut la.g, dout, &lora.params[ad.b], mm);
            be.scale(&mut la.g, rows * r, lora.config.scale());
            // dA += gᵀ · dropout(inp) ; dinp += dropout(g · A).
            let d = drop(l, LORA_SITES + i as u64);
            let x = self.dropped(&mut la.x, inp, rows * ic, d);
            be.matmul_strided(&mut grads[ad.a], &la.g, x, self.mm(r, ic, rows, true, false, true));
            if d.active() {
                be.matmul_strided(&mut la.x, &la.g, &lora.params[ad.a], self.mm(rows, ic, r, false, false, false));
                be.dropout(&mut la.x, d);
                be.add_assign(dinp, &la.x, rows * ic);
            } else {
                be.matmul_strided(dinp, &la.g, &lora.params[ad.a], self.mm(rows, ic, r, false, false, true));
            }
        }
    }

    /// A contiguous matmul in the model's arithmetic.
    fn mm(&self, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, accumulate: bool) -> Matmul {
        Matmul::new(m, n, k, trans_a, trans_b, accumulate).compute(self.compute)
    }

    /// LayerNorm or RMSNorm over `rows` rows of `n_embd`.
    pub(crate) fn norm(&self, out: &mut B::Buf, stats: NormStats<B::Buf>, inp: &B::Buf, idx: NormIdx, rows: usize) {
        let (be, c) = (&self.be, self.cfg.n_embd);
        match self.cfg.norm {
            NormKind::LayerNorm => be.layernorm_fwd(
                out,
                stats.mean,
                stats.rstd,
                inp,
                self.p(idx.w),
                idx.b.map(|b| self.p(b)),
                rows,
                c,
                self.cfg.norm_eps(),
            ),
            NormKind::RmsNorm => be.rmsnorm_fwd(out, stats.rstd, inp, self.p(idx.w), rows, c, self.cfg.norm_eps()),
        }
    }

    /// The MLP's activation: `act = f(fc)`.
    pub(crate) fn mlp_activation(&self, act: &mut B::Buf, fc: &B::Buf, rows: usize) {
        let hidden = self.cfg.hidden();
        match self.cfg.mlp.activation() {
            Some(a) => self.be.activation_fwd(act, fc, rows * hidden, a),
            None => self.be.swiglu_fwd(act, fc, rows, hidden),
        }
    }

    /// Logits of the real vocabulary (`ldo = padded_vocab`; the padding
    /// columns are never read, so never computed).
    pub(crate) fn head(&self, logits: &mut B::Buf, x: &B::Buf, rows: usize) {
        let (c, v, pv) = (self.cfg.n_embd, self.cfg.vocab_size, self.cfg.padded_vocab);
        let mm = self.mm(rows, v, c, false, true, false).strides(c, c, pv);
        self.be.matmul_strided(logits, x, self.p(self.layout.head), mm);
    }

    /// Token (and position) embeddings of `tokens` at `positions` into `out`,
    /// then the embedding dropout.
    pub(crate) fn embed(&self, out: &mut B::Buf, tokens: &[u32], positions: &[u32], drop: Dropout) {
        let wte = self.p(self.layout.wte);
        self.be.embedding_fwd(out, wte, self.position_table(), tokens, positions, self.cfg.n_embd);
        self.be.dropout(out, dropout_sites(drop, 0.0)(self.cfg.n_layer, 0));
    }

    /// One block's forward pass from `input` into `out`, over the rows of
    /// `shape` (`batch * seq` of them) at `positions`. `drop` gives the
    /// dropout of each site (off for inference).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_forward(
        &self,
        l: usize,
        input: &B::Buf,
        a: &mut BlockActs<B::Buf>,
        m: &mut MlpActs<B::Buf>,
        la: &mut LoraActs<B::Buf>,
        proj: &mut B::Buf,
        out: &mut B::Buf,
        (shape, positions): (AttnShape, &[u32]),
        attend: Attend<B::Buf>,
        drop: impl Fn(usize, u64) -> Dropout,
    ) {
        let (be, cfg) = (&self.be, &self.cfg);
        let bi: &BlockIdx = &self.layout.blocks[l];
        let (n, c, w) = (shape.batch * shape.seq, cfg.n_embd, cfg.qkv_width());

        self.norm(&mut a.ln1, NormStats { mean: &mut a.ln1_mean, rstd: &mut a.ln1_rstd }, input, bi.ln1, n);
        if cfg.qk_norm {
            self.adapted((l, Site::Qkv), &mut a.qkv_raw, &a.ln1, bi.qkv, (n, c, w), la, &drop);
            be.qk_norm_fwd(&mut a.qkv, &mut a.qk_rstd, &a.qkv_raw, shape, n);
        } else {
            self.adapted((l, Site::Qkv), &mut a.qkv, &a.ln1, bi.qkv, (n, c, w), la, &drop);
        }
        self.rope(&mut a.qkv, positions, false);
        match attend {
            Attend::Window(d) => be.attention_fwd(&mut a.atty, &mut a.att_stats, &a.qkv, shape, d),
            Attend::Cache { k, v, rows, capacity } => {
                be.attention_cached(&mut a.atty, &a.qkv, k, v, rows, capacity, shape)
            }
        }
        self.adapted((l, Site::Proj), proj, &a.atty, bi.proj, (n, c, c), la, &drop);
        be.dropout(proj, drop(l, 2));
        be.add(&mut a.res_attn, input, proj, n * c);

        self.norm(&mut a.ln2, NormStats { mean: &mut a.ln2_mean, rstd: &mut a.ln2_rstd }, &a.res_attn, bi.ln2, n);
        self.adapted((l, Site::Fc), &mut m.fc, &a.ln2, bi.fc, (n, c, cfg.fc_width()), la, &drop);
        self.mlp_activation(&mut m.act, &m.fc, n);
        self.adapted((l, Site::FcProj), proj, &m.act, bi.fcproj, (n, cfg.hidden(), c), la, &drop);
        be.dropout(proj, drop(l, 3));
        be.add(out, &a.res_attn, proj, n * c);
    }

    /// Forward pass over `tokens` (`[batch, seq]`). With `targets`, writes
    /// per-position losses and returns their mean (downloading them: a
    /// device failure surfaces here); with `grad_scale` too, the
    /// logits buffer is replaced by the loss gradient, ready for
    /// [`Self::backward`]. `drop` is this step's dropout rate and seed
    /// ([`Dropout::OFF`] to evaluate).
    pub fn forward(
        &self,
        acts: &mut Activations<B>,
        tokens: &[u32],
        targets: Option<&[u32]>,
        grad_scale: Option<f32>,
        drop: Dropout,
    ) -> Result<Option<f32>> {
        let (be, cfg) = (&self.be, &self.cfg);
        let (bsz, t) = (acts.batch, acts.seq);
        let n = bsz * t;
        assert_eq!(tokens.len(), n, "tokens must be batch x seq");
        // Adapters drop out in training forwards only (those with a gradient to come).
        let dropout = dropout_sites(drop, if grad_scale.is_some() { self.lora_dropout() } else { 0.0 });

        self.embed(&mut acts.encoded, tokens, &acts.positions, drop);
        let shape = cfg.attn_shape(bsz, t);
        for l in 0..cfg.n_layer {
            let (bs, ms) = (acts.block_slot(l), acts.mlp_slot(l));
            let (prev, rest) = acts.outputs.split_at_mut(l);
            let input = if l == 0 { &acts.encoded } else { &prev[l - 1] };
            let (a, m) = (&mut acts.blocks[bs], &mut acts.mlps[ms]);
            let attend = Attend::Window(dropout(l, 1));
            let (la, proj, positions) = (&mut acts.lora, &mut acts.proj, &acts.positions);
            if let Some(shared) = &mut acts.shared_act {
                std::mem::swap(shared, &mut m.act);
            }
            self.block_forward(l, input, a, m, la, proj, &mut rest[0], (shape, positions), attend, dropout);
            if let Some(shared) = &mut acts.shared_act {
                std::mem::swap(shared, &mut m.act);
            }
        }
        let last = &acts.outputs[cfg.n_layer - 1];
        self.norm(
            &mut acts.lnf,
            NormStats { mean: &mut acts.lnf_mean, rstd: &mut acts.lnf_rstd },
            last,
            self.layout.lnf,
            n,
        );
        self.head(&mut acts.logits, &acts.lnf, n);
        let Some(targets) = targets else { return Ok(None) };
        be.cross_entropy(
            &mut acts.losses,
            &mut acts.logits,
            targets,
            n,
            cfg.vocab_size,
            cfg.padded_vocab,
            cfg.logit_softcap,
            grad_scale,
        );
        let losses = be.to_host(&acts.losses)?;
        // The mean over the targets trained on (all, unless some are ignored).
        let counted = targets[..n].iter().filter(|&&t| t != IGNORE_TARGET).count().max(1);
        Ok(Some((losses[..n].iter().map(|&x| x as f64).sum::<f64>() / counted as f64) as f32))
    }

    /// Backward pass after a training forward with the same `drop`;
    /// accumulates into `grads`, the gradients of [`Self::trainable`] (with
    /// adapters, theirs only: the base's weight gradients are never formed).
    pub fn backward(&self, acts: &mut Activations<B>, grads: &mut [B::Buf], tokens: &[u32], drop: Dropout) {
        let (be, cfg, lay) = (&self.be, &self.cfg, &self.layout);
        let (bsz, t) = (acts.batch, acts.seq);
        let (n, c) = (bsz * t, cfg.n_embd);
        let dropout = dropout_sites(drop, self.lora_dropout());
        let frozen = self.lora.is_some();

        // LM head: d lnf = dlogits · W ; dW += dlogits^T · lnf, over the real
        // vocabulary (the padding columns' gradient is zero).
        let (v, pv) = (cfg.vocab_size, cfg.padded_vocab);
        be.matmul_strided(
            &mut acts.d_c,
            &acts.logits,
            self.p(lay.head),
            self.mm(n, c, v, false, false, false).strides(pv, c, c),
        );
        if !frozen {
            be.matmul_strided(
                &mut grads[lay.head],
                &acts.logits,
                &acts.lnf,
                self.mm(v, c, n, true, false, true).strides(pv, c, c),
            );
        }
        be.fill(&mut acts.d_res, 0.0);
        let last = &acts.outputs[cfg.n_layer - 1];
        let stats = (&acts.lnf_mean, &acts.lnf_rstd);
        self.norm_backward(&mut acts.d_res, (grads, &mut acts.lora), &acts.d_c, last, lay.lnf, stats, n);

        for l in (0..cfg.n_layer).rev() {
            let (bs, ms) = (acts.block_slot(l), acts.mlp_slot(l));
            let (prev, rest) = acts.outputs.split_at_mut(l);
            let input = if l == 0 { &acts.encoded } else { &prev[l - 1] };
            let (a, m) = (&mut acts.blocks[bs], &mut acts.mlps[ms]);
            match acts.recompute {
                // Rewrites the block's output with the same values.
                Recompute::Block => {
                    let (shape, attend) = (cfg.attn_shape(bsz, t), Attend::Window(dropout(l, 1)));
                    self.block_forward(
                        l,
                        input,
                        a,
                        m,
                        &mut acts.lora,
                        &mut acts.proj,
                        &mut rest[0],
                        (shape, &acts.positions),
                        attend,
                        dropout,
                    )
                }
                Recompute::Mlp => {
                    let shape = (n, c, cfg.fc_width());
                    self.adapted((l, Site::Fc), &mut m.fc, &a.ln2, lay.blocks[l].fc, shape, &mut acts.lora, &dropout);
                    self.mlp_activation(&mut m.act, &m.fc, n);
                }
                Recompute::None => {}
            }
            let g = BlockGrads {
                d_res: &mut acts.d_res,
                d_c: &mut acts.d_c,
                d_c2: &mut acts.d_c2,
                d_qkv: &mut acts.d_qkv,
                d_qkv2: &mut acts.d_qkv2,
                d_h: &mut acts.d_h,
                d_h2: &mut acts.d_h2,
            };
            self.block_backward(l, input, a, m, g, (grads, &mut acts.lora), (bsz, t, &acts.positions), dropout);
        }
        if !frozen {
            be.dropout(&mut acts.d_res, dropout(cfg.n_layer, 0));
            let (dwte, dwpe) = two_mut(grads, lay.wte, lay.wpe);
            be.embedding_bwd(dwte, dwpe, &acts.d_res, tokens, &acts.positions, c);
        }
    }

    /// One block's backward pass: `g.d_res` holds dL/d(output) and becomes
    /// dL/d(input).
    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        l: usize,
        input: &B::Buf,
        a: &BlockActs<B::Buf>,
        m: &MlpActs<B::Buf>,
        g: BlockGrads<B::Buf>,
        (grads, la): (&mut [B::Buf], &mut LoraActs<B::Buf>),
        (batch, seq, positions): (usize, usize, &[u32]),
        drop: impl Fn(usize, u64) -> Dropout,
    ) {
        let (be, cfg) = (&self.be, &self.cfg);
        let bi = &self.layout.blocks[l];
        let (n, c, w, hidden) = (batch * seq, cfg.n_embd, cfg.qkv_width(), cfg.hidden());
        let shape = cfg.attn_shape(batch, seq);

        // MLP residual branch: out = res_attn + drop(fcproj(act(fc(ln2)))).
        let d_branch = self.through_dropout(g.d_c2, g.d_res, drop(l, 3));
        self.linear_backward((l, Site::FcProj), g.d_h, (grads, la), d_branch, &m.act, bi.fcproj, (n, hidden, c), &drop);
        match cfg.mlp.activation() {
            Some(act) => be.activation_bwd(g.d_h2, &m.fc, g.d_h, n * hidden, act),
            None => be.swiglu_bwd(g.d_h2, &m.fc, g.d_h, n, hidden),
        }
        let shape_fc = (n, c, cfg.fc_width());
        self.linear_backward((l, Site::Fc), g.d_c, (grads, la), g.d_h2, &a.ln2, bi.fc, shape_fc, &drop);
        self.norm_backward(g.d_res, (grads, la), g.d_c, &a.res_attn, bi.ln2, (&a.ln2_mean, &a.ln2_rstd), n);

        // Attention residual branch: res_attn = input + drop(proj(attn(qkv(ln1)))).
        let d_branch = self.through_dropout(g.d_c2, g.d_res, drop(l, 2));
        self.linear_backward((l, Site::Proj), g.d_c, (grads, la), d_branch, &a.atty, bi.proj, (n, c, c), &drop);
        be.attention_bwd(g.d_qkv, g.d_c, &a.qkv, &a.att_stats, shape, drop(l, 1));
        self.rope(g.d_qkv, positions, true);
        let d_qkv = if cfg.qk_norm {
            be.qk_norm_bwd(g.d_qkv2, g.d_qkv, &a.qkv_raw, &a.qk_rstd, shape, n);
            &*g.d_qkv2
        } else {
            &*g.d_qkv
        };
        self.linear_backward((l, Site::Qkv), g.d_c, (grads, la), d_qkv, &a.ln1, bi.qkv, (n, c, w), &drop);
        self.norm_backward(g.d_res, (grads, la), g.d_c, input, bi.ln1, (&a.ln1_mean, &a.ln1_rstd), n);
    }

    /// The gradient of a residual branch: `d_res` through the branch's
    /// dropout (a copy in `scratch`), or `d_res` itself without dropout.
    fn through_dropout<'a>(&self, scratch: &'a mut B::Buf, d_res: &'a B::Buf, drop: Dropout) -> &'a B::Buf {
        if drop.active() {
            self.be.copy(scratch, d_res);
            self.be.dropout(scratch, drop);
            scratch
        } else {
            d_res
        }
    }

    /// Backward of [`Self::norm`]: accumulates into `dinp` and the norm's
    /// gradients (a frozen base's go to scratch in `la`).
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        dinp: &mut B::Buf,
        (grads, la): (&mut [B::Buf], &mut LoraActs<B::Buf>),
        dout: &B::Buf,
        inp: &B::Buf,
        idx: NormIdx,
        (mean, rstd): (&B::Buf, &B::Buf),
        rows: usize,
    ) {
        let (be, c) = (&self.be, self.cfg.n_embd);
        let (dw, db) = if self.lora.is_some() {
            (&mut la.frozen_w, idx.b.map(|_| &mut la.frozen_b))
        } else {
            two_mut(grads, idx.w, idx.b)
        };
        match self.cfg.norm {
            NormKind::LayerNorm => be.layernorm_bwd(dinp, dw, db, dout, inp, self.p(idx.w), mean, rstd, rows, c),
            NormKind::RmsNorm => be.rmsnorm_bwd(dinp, dw, dout, inp, self.p(idx.w), rstd, rows, c),
        }
    }

    /// Backward of [`Self::adapted`]: `dinp = dout · W` (overwritten) plus
    /// the adapters' share; `dW += dout^T · inp`, `db += colsum(dout)`
    /// unless the base is frozen; the adapters' gradients.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        at: (usize, Site),
        dinp: &mut B::Buf,
        (grads, la): (&mut [B::Buf], &mut LoraActs<B::Buf>),
        dout: &B::Buf,
        inp: &B::Buf,
        lin: LinearIdx,
        (rows, ic, oc): (usize, usize, usize),
        drop: &impl Fn(usize, u64) -> Dropout,
    ) {
        let be = &self.be;
        be.matmul_strided(dinp, dout, self.p(lin.w), self.mm(rows, ic, oc, false, false, false));
        if self.lora.is_some() {
            self.adapters_backward(at, dinp, grads, dout, inp, (rows, ic, oc), la, drop);
            return;
        }
        be.matmul_strided(&mut grads[lin.w], dout, inp, self.mm(oc, ic, rows, true, false, true));
        if let Some(b) = lin.b {
            be.bias_backward(&mut grads[b], dout, rows, oc);
        }
    }
}

/// Gradient scratch of a block's backward pass.
struct BlockGrads<'a, T> {
    d_res: &'a mut T,
    d_c: &'a mut T,
    d_c2: &'a mut T,
    d_qkv: &'a mut T,
    d_qkv2: &'a mut T,
    d_h: &'a mut T,
    d_h2: &'a mut T,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::engine::gradcheck::{check, rand_vec};
    use crate::model::config::test_variants;

    const B: usize = 2;
    const T: usize = 5;

    fn batch(cfg: &ModelConfig) -> (Vec<u32>, Vec<u32>) {
        let v = cfg.vocab_size as u64;
        let tok = |seed: u64| (0..(B * T) as u64).map(|i| (mix64(seed ^ i) % v) as u32).collect();
        (tok(1), tok(2))
    }

    /// A model with large random weights, so its gradients are big enough
    /// for finite differences in f32.
    fn random_model(cfg: ModelConfig) -> Gpt<Cpu> {
        let layout = Layout::new(&cfg);
        let host: Vec<Vec<f32>> = layout
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = rand_vec(s.numel(), 100 + i as u64);
                if s.shape.len() == 1 && s.name.ends_with("weight") {
                    r.iter().map(|x| 1.0 + 0.3 * x).collect()
                } else {
                    r.iter().map(|x| 0.4 * x).collect()
                }
            })
            .collect();
        Gpt::from_host(Cpu, cfg, &host).unwrap()
    }

    fn grads(model: &Gpt<Cpu>, recompute: Recompute, drop: Dropout) -> Vec<Vec<f32>> {
        let (x, y) = batch(&model.cfg);
        let mut acts = model.activations(B, T, recompute).unwrap();
        let mut g = model.zeros_like_params().unwrap();
        model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap();
        model.backward(&mut acts, &mut g, &x, drop);
        g.iter().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        for cfg in test_variants() {
            let mut model = random_model(cfg.clone());
            let analytic = grads(&model, Recompute::None, Dropout::OFF);
            let (x, y) = batch(&cfg);
            let mut acts = model.activations(B, T, Recompute::None).unwrap();
            for (i, grad) in analytic.iter().enumerate() {
                let name = format!("{:?} {}", cfg.pos, model.layout.specs[i].name);
                let mut p = model.params[i].clone();
                check(&name, &mut p, grad, |v| {
                    model.params[i].copy_from_slice(v);
                    // Summed (not mean) loss, as the gradient above (scale 1).
                    model.forward(&mut acts, &x, Some(&y), None, Dropout::OFF).unwrap().unwrap() as f64 * (B * T) as f64
                });
                model.params[i] = p;
            }
        }
    }

    #[test]
    fn bf16_matmuls_stay_close_to_f32() {
        for cfg in test_variants() {
            let mut model = Gpt::new(Cpu, cfg.clone(), 3).unwrap();
            let (x, y) = batch(&cfg);
            let run = |model: &Gpt<Cpu>| {
                let mut acts = model.activations(B, T, Recompute::None).unwrap();
                let loss = model.forward(&mut acts, &x, Some(&y), None, Dropout::OFF).unwrap().unwrap();
                (loss, grads(model, Recompute::None, Dropout::OFF))
            };
            let (loss32, g32) = run(&model);
            model.compute = DType::BF16;
            let (loss16, g16) = run(&model);
            assert!(((loss16 - loss32) / loss32).abs() < 1e-2, "{:?}: loss {loss16} vs {loss32}", cfg.pos);
            let (a, b): (Vec<f32>, Vec<f32>) = (g32.concat(), g16.concat());
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (norm(&a) * norm(&b));
            assert!(cos > 0.999, "{:?}: gradient cosine {cos}", cfg.pos);
            assert_ne!(a, b, "bf16 arithmetic changed nothing: not wired in");
        }
    }

    #[test]
    fn bf16_stored_matmul_inputs_give_the_same_gradients_to_the_bit() {
        // The bf16 matmul rounds its operands as the bf16 stores do.
        for cfg in test_variants() {
            let mut model = Gpt::new(Cpu, ModelConfig { dropout: 0.2, ..cfg.clone() }, 5).unwrap();
            model.compute = DType::BF16;
            let (x, y) = batch(&cfg);
            let drop = Dropout { p: 0.2, seed: 3 };
            let run = |inputs: DType, recompute: Recompute| {
                let mut acts = Activations::<Cpu>::new(&model.be, &model.cfg, B, T, recompute, inputs, None).unwrap();
                assert_eq!(acts.blocks[0].ln1.dtype(), inputs);
                let mut g = model.zeros_like_params().unwrap();
                let loss = model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap();
                model.backward(&mut acts, &mut g, &x, drop);
                (loss, g.iter().map(|b| b.to_vec()).collect::<Vec<_>>())
            };
            let wide = run(DType::F32, Recompute::None);
            for recompute in [Recompute::None, Recompute::Mlp, Recompute::Block] {
                assert_eq!(run(DType::BF16, recompute), wide, "{:?} {recompute:?}", cfg.pos);
            }
        }
    }

    fn scaled(v: Vec<f32>, by: f32) -> Vec<f32> {
        v.into_iter().map(|x| x * by).collect()
    }

    /// A model whose adapters (every target, rank 2) have large random
    /// weights, B included (fresh ones have B = 0).
    fn lora_model(cfg: ModelConfig, dropout: f32) -> Gpt<Cpu> {
        let targets = crate::model::lora::Naming::of(&cfg).targets().to_vec();
        lora_model_on(cfg, dropout, targets)
    }

    fn lora_model_on(cfg: ModelConfig, dropout: f32, targets: Vec<crate::model::lora::Target>) -> Gpt<Cpu> {
        use crate::model::lora::{LoraConfig, LoraLayout};
        let mut model = random_model(cfg.clone());
        let lc = LoraConfig { rank: 2, alpha: 3.0, dropout, targets, layers: None, rslora: false };
        let layout = LoraLayout::new(&cfg, &lc).unwrap();
        let w =
            layout.specs.iter().enumerate().map(|(i, s)| scaled(rand_vec(s.numel(), 900 + i as u64), 0.3)).collect();
        model.attach_lora(lc, Some(w), 0).unwrap();
        model
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        for cfg in test_variants() {
            for p in [0.0, 0.3] {
                let mut model = lora_model(cfg.clone(), p);
                let drop = Dropout { p: 0.0, seed: 5 };
                let (x, y) = batch(&cfg);
                let mut acts = model.activations(B, T, Recompute::None).unwrap();
                let mut g = model.zeros_like_trainable().unwrap();
                model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap();
                model.backward(&mut acts, &mut g, &x, drop);
                let n = model.lora.as_ref().unwrap().params.len();
                assert_eq!(g.len(), n, "gradients only for the adapters");
                for (i, grad) in g.iter().enumerate() {
                    let name = format!("{:?} p={p} {}", cfg.pos, model.lora.as_ref().unwrap().layout.specs[i].name);
                    let mut w = model.lora.as_ref().unwrap().params[i].clone();
                    check(&name, &mut w, grad, |v| {
                        model.lora.as_mut().unwrap().params[i].copy_from_slice(v);
                        // A training forward (grad_scale given): the adapters' dropout masks as above.
                        model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap().unwrap() as f64
                            * (B * T) as f64
                    });
                    model.lora.as_mut().unwrap().params[i] = w;
                }
            }
        }
    }

    #[test]
    fn lora_recompute_is_bit_identical_and_merging_matches_unmerged() {
        for cfg in test_variants() {
            let model = lora_model(ModelConfig { dropout: 0.2, ..cfg.clone() }, 0.25);
            let drop = Dropout { p: 0.2, seed: 11 };
            let run = |recompute| {
                let mut acts = model.activations(B, T, recompute).unwrap();
                let mut g = model.zeros_like_trainable().unwrap();
                let (x, y) = batch(&cfg);
                model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap();
                model.backward(&mut acts, &mut g, &x, drop);
                g.iter().map(|b| b.to_vec()).collect::<Vec<_>>()
            };
            let none = run(Recompute::None);
            assert_eq!(none, run(Recompute::Mlp), "{:?}", cfg.pos);
            assert_eq!(none, run(Recompute::Block), "{:?}", cfg.pos);
            // Evaluation: no dropout anywhere, adapters unmerged vs folded in.
            let logits = |m: &Gpt<Cpu>| {
                let mut acts = m.activations(B, T, Recompute::None).unwrap();
                m.forward(&mut acts, &batch(&cfg).0, None, None, Dropout::OFF).unwrap();
                acts.logits.to_vec()
            };
            let merged = Gpt::from_host(Cpu, model.cfg.clone(), &model.merged_params().unwrap()).unwrap();
            let (a, b) = (logits(&model), logits(&merged));
            assert_ne!(a, logits(&random_model(cfg.clone())), "the adapters changed nothing");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{:?}: unmerged {x} vs merged {y}", cfg.pos);
            }
        }
    }

    #[test]
    fn without_an_adapter_on_down_the_mlp_activation_is_one_shared_buffer() {
        use crate::model::activations::activation_bytes_with;
        use crate::model::lora::Target;
        for cfg in test_variants() {
            let model = lora_model_on(ModelConfig { dropout: 0.1, ..cfg.clone() }, 0.2, vec![Target::O]);
            let drop = Dropout { p: 0.1, seed: 3 };
            let run = |recompute| {
                let mut acts = model.activations(B, T, recompute).unwrap();
                assert_eq!(acts.shared_act.is_some(), recompute == Recompute::None);
                let mut g = model.zeros_like_trainable().unwrap();
                let (x, y) = batch(&cfg);
                model.forward(&mut acts, &x, Some(&y), Some(1.0), drop).unwrap();
                model.backward(&mut acts, &mut g, &x, drop);
                g.iter().map(|b| b.to_vec()).collect::<Vec<_>>()
            };
            // The same gradients as when every block keeps its activation (recompute mlp rebuilds it).
            assert_eq!(run(Recompute::None), run(Recompute::Mlp), "{:?}", cfg.pos);
            let layout = &model.lora.as_ref().unwrap().layout;
            let shape = (B, T, Recompute::None, DType::F32);
            let (frozen, full) =
                (activation_bytes_with(&cfg, shape, Some((layout, false))), activation_bytes_with(&cfg, shape, None));
            assert!(frozen < full - (cfg.n_layer - 2) * B * T * cfg.hidden() * 4, "{frozen} vs {full}");
        }
    }

    #[test]
    fn recompute_gives_bit_identical_gradients() {
        for cfg in test_variants() {
            let model = Gpt::new(Cpu, ModelConfig { dropout: 0.2, ..cfg }, 7).unwrap();
            let drop = Dropout { p: 0.2, seed: 11 };
            let none = grads(&model, Recompute::None, drop);
            assert_eq!(none, grads(&model, Recompute::Mlp, drop));
            assert_eq!(none, grads(&model, Recompute::Block, drop));
        }
    }
}
