//! Incremental inference with a KV cache: each new token costs one row of
//! every matmul instead of a forward pass over the whole context. The cache
//! holds several sequences ("slots"), so a batch of sequences decodes
//! together: one row per sequence through every matmul, each row attending
//! to its own sequence. The blocks run the model's one block forward
//! ([`Gpt::block_forward`]) with the cache as their attention's context.

use super::activations::{BlockActs, MlpActs};
use super::config::ModelConfig;
use super::gpt::{Attend, Gpt, NormStats};
use super::lora::{LoraActs, LoraLayout};
use crate::engine::device::check_fits;
use crate::engine::{Backend, CacheRow, DType, Dropout};
use anyhow::Result;

pub struct KvCache<B: Backend> {
    bufs: Buffers<B::Buf>,
    /// Positions held by each slot.
    lens: Vec<usize>,
    /// Positions per slot: the model's block size.
    pub capacity: usize,
}

/// A cache's buffers, laid out by one function ([`Buffers::build`]) that
/// allocates them or, with a counting `alloc`, sizes them.
struct Buffers<T> {
    /// Per layer: `[slots, capacity, kv_width]`.
    k: Vec<T>,
    v: Vec<T>,
    /// The residual stream into and out of a block (swapped after each).
    x: T,
    y: T,
    /// One block's scratch, reused by every block.
    block: BlockActs<T>,
    mlp: MlpActs<T>,
    lora: LoraActs<T>,
    proj: T,
    /// The rows whose logits are wanted, gathered.
    last: T,
    last_ln: T,
    mean: T,
    rstd: T,
    logits: T,
}

impl<T> Buffers<T> {
    /// `alloc(len, dtype)`: the keys and values in `kv`, the rest f32;
    /// scratch for `lora`'s adapters.
    fn build(
        cfg: &ModelConfig,
        slots: usize,
        kv: DType,
        lora: Option<&LoraLayout>,
        mut alloc: impl FnMut(usize, DType) -> Result<T>,
    ) -> Result<Self> {
        let (cap, c, width) = (cfg.block_size, cfg.n_embd, cfg.attn_shape(1, 1).kv_width());
        // Scratch rows: a whole prompt of one sequence, or one row per
        // sequence; none for a cache of no sequences.
        let rows = if slots == 0 { 0 } else { cap.max(slots) };
        let k = (0..cfg.n_layer).map(|_| alloc(slots * cap * width, kv)).collect::<Result<_>>()?;
        let v = (0..cfg.n_layer).map(|_| alloc(slots * cap * width, kv)).collect::<Result<_>>()?;
        // Decoding's matmuls take f32 rows (the mat-vec kernels read them).
        let block = BlockActs::build(cfg, rows, 0, DType::F32, &mut alloc)?;
        let mlp = MlpActs::build(cfg, rows, DType::F32, true, &mut alloc)?;
        let lora = LoraActs::build(cfg, lora.map(|l| (l, false)), rows, &mut alloc)?;
        let mut alloc = |len: usize| alloc(len, DType::F32);
        Ok(Buffers {
            k,
            v,
            x: alloc(rows * c)?,
            y: alloc(rows * c)?,
            block,
            mlp,
            lora,
            proj: alloc(rows * c)?,
            last: alloc(rows * c)?,
            last_ln: alloc(rows * c)?,
            mean: alloc(rows)?,
            rstd: alloc(rows)?,
            logits: alloc(rows * cfg.padded_vocab)?,
        })
    }
}

/// Bytes a cache for `slots` sequences of a model takes (keys and values
/// in `kv`, with its scratch rows).
pub fn cache_bytes(cfg: &ModelConfig, slots: usize, kv: DType) -> usize {
    let mut bytes = 0;
    Buffers::build(cfg, slots, kv, None, |len, dtype| {
        bytes += len * dtype.bytes();
        Ok(())
    })
    .expect("counting cannot fail");
    bytes
}

impl<B: Backend> KvCache<B> {
    /// A cache for `slots` sequences of up to `block_size` positions each;
    /// an error, before anything is allocated, if it cannot fit.
    pub fn new(model: &Gpt<B>, slots: usize) -> Result<Self> {
        let cfg = &model.cfg;
        let what = format!("a KV cache for {slots} sequences of {} tokens", cfg.block_size);
        let kv = model.kv_dtype;
        check_fits(cache_bytes(cfg, slots, kv), model.be.available_memory(), &what, "decode fewer sequences at once")?;
        let lora = model.lora.as_ref().map(|l| &l.layout);
        let bufs = Buffers::build(cfg, slots, kv, lora, |len, dtype| model.be.zeros_as(len, dtype))?;
        Ok(KvCache { bufs, lens: vec![0; slots], capacity: cfg.block_size })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Positions sequence `slot` holds.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Forgets all but the first `len` positions of `slot` (0: empty it).
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = self.lens[slot].min(len);
    }

    /// Feeds `tokens` to sequence `slot` at its next positions and returns
    /// the logits after the last of them.
    pub fn forward(&mut self, model: &Gpt<B>, slot: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = self.sequence_rows(slot, tokens.len());
        Ok(self.run(model, tokens, &rows, &[tokens.len() - 1])?.pop().expect("one row of logits"))
    }

    /// Like [`Self::forward`], but returns the logits after each of
    /// `tokens[first..]` (speculative decoding checks a whole draft in one pass).
    pub fn forward_from(&mut self, model: &Gpt<B>, slot: usize, tokens: &[u32], first: usize) -> Result<Vec<Vec<f32>>> {
        let rows = self.sequence_rows(slot, tokens.len());
        let want: Vec<usize> = (first..tokens.len()).collect();
        self.run(model, tokens, &rows, &want)
    }

    /// One decoding step of a batch: one `(slot, token)` per sequence, all
    /// through the model together. Returns each sequence's next logits.
    pub fn step(&mut self, model: &Gpt<B>, batch: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<CacheRow> = batch.iter().map(|&(slot, _)| CacheRow { slot, pos: self.lens[slot] }).collect();
        let mut seen = vec![false; self.slots()];
        for r in &rows {
            assert!(!std::mem::replace(&mut seen[r.slot], true), "slot {} twice in one step", r.slot);
        }
        let tokens: Vec<u32> = batch.iter().map(|b| b.1).collect();
        let all: Vec<usize> = (0..batch.len()).collect();
        self.run(model, &tokens, &rows, &all)
    }

    /// Feeds several sequences their prompts (`(slot, tokens)`, each at most
    /// `capacity` tokens) in as few forward passes as the scratch allows, and
    /// returns each one's logits after its last token.
    pub fn prefill_many(&mut self, model: &Gpt<B>, prompts: &[(usize, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let max_rows = self.capacity.max(self.slots());
        let mut out = Vec::with_capacity(prompts.len());
        let mut i = 0;
        while i < prompts.len() {
            // As many whole prompts as fit in one pass.
            let (mut tokens, mut rows, mut want) = (Vec::new(), Vec::new(), Vec::new());
            while i < prompts.len() && (tokens.is_empty() || tokens.len() + prompts[i].1.len() <= max_rows) {
                let (slot, p) = prompts[i];
                assert!(!p.is_empty() && p.len() <= self.capacity, "a prompt must hold 1 to capacity tokens");
                rows.extend(self.sequence_rows(slot, p.len()));
                tokens.extend_from_slice(p);
                want.push(tokens.len() - 1);
                i += 1;
            }
            out.extend(self.run(model, &tokens, &rows, &want)?);
        }
        Ok(out)
    }

    fn sequence_rows(&self, slot: usize, n: usize) -> Vec<CacheRow> {
        (0..n).map(|i| CacheRow { slot, pos: self.lens[slot] + i }).collect()
    }

    /// Runs `tokens` (row `i` at `rows[i]`) through the model, appending
    /// their keys and values to the cache; returns the logits (real
    /// vocabulary, soft-capped if the model caps them) of the rows in `want`
    /// (ascending). Passes hold at most the backend's batch-invariant row
    /// count, so no row's logits depend on which rows went with it.
    fn run(&mut self, model: &Gpt<B>, tokens: &[u32], rows: &[CacheRow], want: &[usize]) -> Result<Vec<Vec<f32>>> {
        assert!(want.windows(2).all(|p| p[0] < p[1]), "wanted rows ascend");
        let per_pass = model.be.batch_invariant_rows().unwrap_or(usize::MAX).max(1);
        if tokens.len() <= per_pass {
            return self.pass(model, tokens, rows, want);
        }
        let mut out = Vec::with_capacity(want.len());
        for start in (0..tokens.len()).step_by(per_pass) {
            let end = (start + per_pass).min(tokens.len());
            let here: Vec<usize> = want.iter().filter(|&&r| (start..end).contains(&r)).map(|&r| r - start).collect();
            out.extend(self.pass(model, &tokens[start..end], &rows[start..end], &here)?);
        }
        Ok(out)
    }

    /// One forward pass of [`Self::run`].
    fn pass(&mut self, model: &Gpt<B>, tokens: &[u32], rows: &[CacheRow], want: &[usize]) -> Result<Vec<Vec<f32>>> {
        let (be, cfg, lay) = (&model.be, &model.cfg, &model.layout);
        let (n, c) = (tokens.len(), cfg.n_embd);
        assert!(n > 0 && n <= self.capacity.max(self.slots()), "too many rows for the cache's scratch");
        assert!(rows.iter().all(|r| r.pos < self.capacity), "KV cache overflow");
        let positions: Vec<u32> = rows.iter().map(|r| r.pos as u32).collect();
        let shape = cfg.attn_shape(1, n);
        let off = crate::model::gpt::dropout_sites(Dropout::OFF, 0.0);
        let b = &mut self.bufs;
        model.embed(&mut b.x, tokens, &positions, Dropout::OFF);
        for l in 0..cfg.n_layer {
            let attend = Attend::Cache { k: &mut b.k[l], v: &mut b.v[l], rows, capacity: self.capacity };
            let (a, m) = (&mut b.block, &mut b.mlp);
            model.block_forward(l, &b.x, a, m, &mut b.lora, &mut b.proj, &mut b.y, (shape, &positions), attend, off);
            std::mem::swap(&mut b.x, &mut b.y);
        }
        for r in rows {
            self.lens[r.slot] = self.lens[r.slot].max(r.pos + 1);
        }
        if want.is_empty() {
            return Ok(Vec::new());
        }
        // The final norm and the head only for the rows whose logits are wanted.
        let gathered: Vec<f32> = if want.len() == n && want.iter().enumerate().all(|(i, &r)| i == r) {
            be.read_range(&b.x, 0, n * c)?
        } else {
            let rows = want.iter().map(|&r| be.read_range(&b.x, r * c, c)).collect::<Result<Vec<_>>>()?;
            rows.concat()
        };
        let m = want.len();
        be.write(&mut b.last, &gathered)?;
        model.norm(&mut b.last_ln, NormStats { mean: &mut b.mean, rstd: &mut b.rstd }, &b.last, lay.lnf, m);
        model.head(&mut b.logits, &b.last_ln, m);
        let (v, pv) = (cfg.vocab_size, cfg.padded_vocab);
        let all = be.read_range(&b.logits, 0, m * pv)?;
        Ok(all
            .chunks_exact(pv)
            .map(|row| {
                let mut logits = row[..v].to_vec();
                if let Some(cap) = cfg.logit_softcap {
                    logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                }
                logits
            })
            .collect())
    }
}

/// Logits of the last position from a full forward over `ctx` (what the
/// cache must reproduce), for tests.
#[cfg(test)]
pub(crate) fn full_logits<B: Backend>(model: &Gpt<B>, ctx: &[u32]) -> Vec<f32> {
    use super::Recompute;
    let mut acts = model.activations(1, ctx.len(), Recompute::None).unwrap();
    model.forward(&mut acts, ctx, None, None, Dropout::OFF).unwrap();
    let (pv, v) = (model.cfg.padded_vocab, model.cfg.vocab_size);
    let mut logits = model.be.read_range(&acts.logits, (ctx.len() - 1) * pv, v).unwrap();
    if let Some(cap) = model.cfg.logit_softcap {
        logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;

    #[test]
    fn kv_cache_logits_match_full_recompute_for_every_architecture() {
        for cfg in crate::model::config::test_variants() {
            let model = Gpt::new(Cpu, cfg.clone(), 9).unwrap();
            let mut cache = KvCache::new(&model, 1).unwrap();
            let ctx = [3u32, 1, 4, 1, 5, 9, 2, 6];
            // Prefill 3 tokens, then one at a time.
            let mut got = cache.forward(&model, 0, &ctx[..3]).unwrap();
            for t in 3..=ctx.len() {
                let want = full_logits(&model, &ctx[..t]);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{cfg:?}: position {t}: {a} vs {b}");
                }
                if t < ctx.len() {
                    got = cache.forward(&model, 0, &ctx[t..t + 1]).unwrap();
                }
            }
        }
    }
}
