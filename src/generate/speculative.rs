//! Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small
//! draft model proposes `k` tokens, the target model checks them all in one
//! forward pass, and each proposal `x` is kept with probability
//! `min(1, p(x) / q(x))` (p: target, q: draft, both after the sampler's
//! penalties and filters). At the first rejection a token is drawn from
//! `max(0, p - q)`, renormalised; if all are kept, one more comes from the
//! target. The output is distributed exactly as sampling from the target
//! alone; at temperature 0 it is the target's greedy output.

use super::sampler::{pick, Sampler};
use crate::engine::Backend;
use crate::model::decode::KvCache;
use crate::model::Gpt;
use anyhow::{bail, Result};
use std::sync::Arc;

/// Acceptance counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Draft tokens proposed.
    pub proposed: usize,
    /// ... and kept (also those past a stop or the length limit, which the
    /// caller drops: the counts are the decoder's work).
    pub accepted: usize,
    /// Target forward passes (each checks a whole draft).
    pub target_passes: usize,
}

impl SpecStats {
    pub fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.proposed.max(1) as f64
    }
}

/// One model's side: its cache, the context tokens not fed to it yet, and
/// (the draft's) logits after the last token it was fed.
struct Side<B: Backend> {
    model: Arc<Gpt<B>>,
    cache: KvCache<B>,
    pending: Vec<u32>,
    logits: Vec<f32>,
}

impl<B: Backend> Side<B> {
    fn new(model: Arc<Gpt<B>>) -> Result<Self> {
        let cache = KvCache::new(&model, 1)?;
        Ok(Side { model, cache, pending: Vec::new(), logits: Vec::new() })
    }

    fn catch_up(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.logits = self.cache.forward(&self.model, 0, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

pub struct Speculative<B: Backend> {
    target: Side<B>,
    draft: Side<B>,
    pub sampler: Sampler,
    k: usize,
    /// Every token so far: prompt and generated.
    pub tokens: Vec<u32>,
    pub stats: SpecStats,
}

impl<B: Backend> Speculative<B> {
    pub fn new(target: Arc<Gpt<B>>, draft: Arc<Gpt<B>>, sampler: Sampler, k: usize) -> Result<Self> {
        if target.cfg.vocab_size != draft.cfg.vocab_size {
            bail!(
                "the draft model's vocabulary ({}) differs from the target's ({})",
                draft.cfg.vocab_size,
                target.cfg.vocab_size
            );
        }
        let cap = target.cfg.block_size.min(draft.cfg.block_size);
        if k == 0 || 2 * k >= cap {
            bail!("draft tokens must be between 1 and {} (under half the block size {cap})", (cap - 1) / 2);
        }
        Ok(Speculative {
            target: Side::new(target)?,
            draft: Side::new(draft)?,
            sampler,
            k,
            tokens: Vec::new(),
            stats: SpecStats::default(),
        })
    }

    /// Starts a new sequence from `prompt`.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            bail!("the prompt is empty: give at least one token of context");
        }
        let vocab = self.target.model.cfg.vocab_size as u32;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
            bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
        }
        self.tokens = prompt.to_vec();
        self.restart_window(true);
        Ok(())
    }

    /// The smaller block size of the two models.
    fn capacity(&self) -> usize {
        self.target.cache.capacity.min(self.draft.cache.capacity)
    }

    /// Empties both caches; the newest tokens become pending: a whole fresh
    /// prompt if it leaves room for a draft, else half the window.
    fn restart_window(&mut self, fresh: bool) {
        let cap = self.capacity();
        let keep = if fresh && self.tokens.len() + self.k <= cap {
            self.tokens.len()
        } else {
            (cap / 2).min(self.tokens.len())
        };
        let window = self.tokens[self.tokens.len() - keep..].to_vec();
        for side in [&mut self.target, &mut self.draft] {
            side.cache.truncate(0, 0);
            side.pending = window.clone();
        }
    }

    /// Generates the next tokens (at least one, at most `k + 1`) and returns them.
    pub fn next_tokens(&mut self) -> Result<Vec<u32>> {
        assert!(!self.tokens.is_empty(), "prefill before sampling");
        // Room for the pending tokens and a whole draft, or slide the window.
        let cap = self.capacity();
        let need = |s: &Side<B>| s.cache.len(0) + s.pending.len() + self.k;
        if need(&self.target) > cap || need(&self.draft) > cap {
            self.restart_window(false);
        }
        self.draft.catch_up()?;
        let d0 = self.draft.cache.len(0);

        // The draft proposes k tokens, keeping each one's distribution q.
        let mut history = self.tokens.clone();
        let mut proposal = Vec::with_capacity(self.k);
        let mut q = Vec::with_capacity(self.k);
        for j in 0..self.k {
            let dist = self.sampler.distribution(&self.draft.logits, &history).to_vec();
            let x = pick(&dist, self.sampler.uniform());
            proposal.push(x);
            history.push(x);
            q.push(dist);
            if j + 1 < self.k {
                self.draft.logits = self.draft.cache.forward(&self.draft.model, 0, &[x])?;
            }
        }
        // One target pass over its pending tokens and every proposal: the
        // logits after the last pending token score the first proposal, the
        // logits after proposal j score proposal j + 1 (or the bonus token).
        let pending = std::mem::take(&mut self.target.pending);
        let t0 = self.target.cache.len(0) + pending.len();
        let fed: Vec<u32> = pending.iter().chain(&proposal).copied().collect();
        let mut after = self.target.cache.forward_from(&self.target.model, 0, &fed, pending.len() - 1)?.into_iter();
        self.stats.target_passes += 1;
        self.stats.proposed += self.k;
        let mut out = Vec::with_capacity(self.k + 1);
        let mut logits = after.next().expect("logits after the pending tokens");
        for j in 0..=self.k {
            let context: Vec<u32> = self.tokens.iter().chain(&out).copied().collect();
            let p = self.sampler.distribution(&logits, &context).to_vec();
            if j == self.k {
                // Every proposal kept: one more token from the target.
                out.push(pick(&p, self.sampler.uniform()));
                break;
            }
            let x = proposal[j];
            let (px, qx) = (prob(&p, x), prob(&q[j], x));
            if self.sampler.uniform() < px / qx {
                out.push(x);
                self.stats.accepted += 1;
                logits = after.next().expect("logits after each proposal");
                continue;
            }
            // Rejected: draw from what the target wants beyond the draft.
            let residual: Vec<(u32, f64)> =
                p.iter().map(|&(t, pt)| (t, (pt - prob(&q[j], t)).max(0.0))).filter(|r| r.1 > 0.0).collect();
            let total: f64 = residual.iter().map(|r| r.1).sum();
            let u = self.sampler.uniform();
            if total > 0.0 {
                let residual: Vec<(u32, f64)> = residual.into_iter().map(|(t, r)| (t, r / total)).collect();
                out.push(pick(&residual, u));
            } else {
                // p and q equal up to rounding: the rejection was rounding too.
                out.push(pick(&p, u));
            }
            break;
        }
        // Keep in each cache only the kept proposals; the last token is pending.
        let kept = out.len() - 1;
        self.target.cache.truncate(0, t0 + kept);
        self.draft.cache.truncate(0, d0 + kept.min(self.k - 1));
        self.target.pending = vec![out[kept]];
        self.draft.pending = out[kept.min(self.k - 1)..].to_vec();
        self.tokens.extend(&out);
        Ok(out)
    }
}

/// Probability of `t` under a `(token, probability)` list.
fn prob(dist: &[(u32, f64)], t: u32) -> f64 {
    dist.iter().find(|d| d.0 == t).map_or(0.0, |d| d.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::generate::sampler::argmax;
    use crate::generate::SamplerConfig;
    use crate::model::config::test_variants;
    use crate::model::ModelConfig;

    fn models() -> (Arc<Gpt<Cpu>>, Arc<Gpt<Cpu>>) {
        let target_cfg = ModelConfig { block_size: 32, ..test_variants().remove(1) };
        let draft_cfg = ModelConfig { n_layer: 1, n_embd: 8, n_head: 2, n_kv_head: None, ..target_cfg.clone() };
        (Arc::new(Gpt::new(Cpu, target_cfg, 1).unwrap()), Arc::new(Gpt::new(Cpu, draft_cfg, 2).unwrap()))
    }

    #[test]
    fn greedy_output_is_the_targets_greedy_output() {
        let (target, draft) = models();
        let mut cache = KvCache::new(&target, 1).unwrap();
        let mut logits = cache.forward(&target, 0, &[1, 2, 3]).unwrap();
        let want: Vec<u32> = (0..25)
            .map(|_| {
                let t = argmax(&logits);
                logits = cache.forward(&target, 0, &[t]).unwrap();
                t
            })
            .collect();
        for k in [1, 3, 5] {
            let mut s =
                Speculative::new(target.clone(), draft.clone(), Sampler::new(SamplerConfig::greedy(), 0), k).unwrap();
            s.prefill(&[1, 2, 3]).unwrap();
            while s.tokens.len() < 3 + 25 {
                s.next_tokens().unwrap();
            }
            assert_eq!(&s.tokens[3..28], &want[..], "k = {k}");
        }
        // A draft that is the target itself is always right: k + 1 tokens
        // per target pass.
        let mut s =
            Speculative::new(target.clone(), target.clone(), Sampler::new(SamplerConfig::default(), 5), 4).unwrap();
        s.prefill(&[1, 2, 3]).unwrap();
        for _ in 0..4 {
            assert_eq!(s.next_tokens().unwrap().len(), 5);
        }
        assert_eq!((s.stats.accepted, s.stats.proposed, s.stats.target_passes), (16, 16, 4));
    }

    /// Exact distribution of the first two generated tokens when sampling
    /// from the target alone.
    fn exact_two_tokens(target: &Gpt<Cpu>, cfg: SamplerConfig, prompt: &[u32]) -> (Vec<f64>, Vec<f64>) {
        let v = target.cfg.vocab_size;
        let mut sampler = Sampler::new(cfg, 0);
        let mut cache = KvCache::new(target, 1).unwrap();
        let p0 = sampler.distribution(&cache.forward(target, 0, prompt).unwrap(), prompt).to_vec();
        let (mut first, mut second) = (vec![0.0; v], vec![0.0; v]);
        for &(x, px) in &p0 {
            first[x as usize] = px;
            cache.truncate(0, prompt.len());
            let ctx: Vec<u32> = prompt.iter().copied().chain([x]).collect();
            for &(y, py) in sampler.distribution(&cache.forward(target, 0, &[x]).unwrap(), &ctx) {
                second[y as usize] += px * py;
            }
        }
        (first, second)
    }

    #[test]
    fn sampling_follows_the_target_distribution() {
        let (target, draft) = models();
        let cfg = SamplerConfig { temperature: 1.3, top_k: 0, repetition_penalty: 1.3, ..SamplerConfig::default() };
        let prompt = [4u32, 2];
        let (first, second) = exact_two_tokens(&target, cfg, &prompt);
        let runs = 6000;
        let v = target.cfg.vocab_size;
        let (mut c1, mut c2) = (vec![0usize; v], vec![0usize; v]);
        for seed in 0..runs {
            let mut s = Speculative::new(target.clone(), draft.clone(), Sampler::new(cfg, seed), 2).unwrap();
            s.prefill(&prompt).unwrap();
            while s.tokens.len() < prompt.len() + 2 {
                s.next_tokens().unwrap();
            }
            c1[s.tokens[2] as usize] += 1;
            c2[s.tokens[3] as usize] += 1;
        }
        // Pearson's chi-square against the exact distributions; 10 degrees of
        // freedom, critical value 29.6 at p = 0.001.
        for (name, counts, exact) in [("first", &c1, &first), ("second", &c2, &second)] {
            let chi2: f64 = counts
                .iter()
                .zip(exact.iter())
                .filter(|(_, &p)| p > 0.0)
                .map(|(&c, &p)| (c as f64 - p * runs as f64).powi(2) / (p * runs as f64))
                .sum();
            assert!(chi2 < 29.6, "{name} token: chi2 {chi2:.1}, counts {counts:?}, exact {exact:?}");
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        let (target, draft) = models();
        let s = |k| Speculative::new(target.clone(), draft.clone(), Sampler::new(SamplerConfig::greedy(), 0), k).err();
        assert!(s(0).is_some() && s(16).is_some() && s(15).is_none());
        let other = Gpt::new(Cpu, ModelConfig { vocab_size: 12, ..draft.cfg.clone() }, 0).unwrap();
        assert!(Speculative::new(target.clone(), Arc::new(other), Sampler::new(SamplerConfig::greedy(), 0), 2).is_err());
    }
}
