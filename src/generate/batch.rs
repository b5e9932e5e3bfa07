//! Batch generation: many prompts decoded together. Each step sends one
//! token per unfinished sequence through the model as one batch, so every
//! weight matrix is read once per step instead of once per sequence.

use super::sampler::{Sampler, SamplerConfig};
use crate::engine::Backend;
use crate::model::decode::KvCache;
use crate::model::Gpt;
use anyhow::{bail, Result};

/// One sequence of a batch: its tokens so far (prompt, then generated) and
/// how many of them are generated.
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub generated: usize,
    pub done: bool,
}

/// Generates up to `max_new` tokens for each prompt, sequence `i` sampling
/// with `Sampler::new(cfg, seeds[i])`: the same tokens as generating each
/// prompt alone with [`super::Generator`] and that seed. `stop(i, token)`
/// ends sequence `i` after a token (stop sequences, end-of-text).
pub fn generate_batch<B: Backend>(
    model: &Gpt<B>,
    prompts: &[Vec<u32>],
    cfg: SamplerConfig,
    seeds: &[u64],
    max_new: usize,
    mut stop: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Sequence>> {
    assert_eq!(prompts.len(), seeds.len());
    let vocab = model.cfg.vocab_size as u32;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {} is empty: give at least one token of context", i + 1);
        }
        if let Some(&bad) = p.iter().find(|&&t| t >= vocab) {
            bail!("prompt {}: token {bad} is outside the model's vocabulary of {vocab}", i + 1);
        }
    }
    let n = prompts.len();
    let mut cache = KvCache::new(model, n);
    let cap = cache.capacity;
    let mut samplers: Vec<Sampler> = seeds.iter().map(|&s| Sampler::new(cfg, s)).collect();
    let mut seqs: Vec<Sequence> =
        prompts.iter().map(|p| Sequence { tokens: p.clone(), generated: 0, done: max_new == 0 }).collect();
    // Prefill each prompt's last `block_size` tokens into its own slot,
    // several prompts per forward pass.
    let windows: Vec<(usize, &[u32])> =
        prompts.iter().enumerate().map(|(i, p)| (i, &p[p.len().saturating_sub(cap)..])).collect();
    let mut logits = cache.prefill_many(model, &windows);
    loop {
        let mut batch = Vec::new();
        for (i, seq) in seqs.iter_mut().enumerate().filter(|(_, s)| !s.done) {
            let t = samplers[i].sample(&logits[i], &seq.tokens);
            seq.tokens.push(t);
            seq.generated += 1;
            if seq.generated >= max_new || stop(i, t) {
                seq.done = true;
            } else if cache.len(i) < cap {
                batch.push((i, t));
            } else {
                // Full: rebuild this sequence's cache from its newest half,
                // as the single-sequence generator does.
                let keep = (cap / 2).max(1);
                cache.truncate(i, 0);
                logits[i] = cache.forward(model, i, &seq.tokens[seq.tokens.len() - keep..]);
            }
        }
        if seqs.iter().all(|s| s.done) {
            return Ok(seqs);
        }
        if !batch.is_empty() {
            for (&(i, _), l) in batch.iter().zip(cache.step(model, &batch)) {
                logits[i] = l;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::generate::Generator;
    use crate::model::config::test_variants;

    #[test]
    fn batch_gives_the_same_tokens_as_one_by_one() {
        for cfg in test_variants() {
            let model = Gpt::new(Cpu, cfg, 3);
            // Different lengths, one longer than the block size (8), and
            // enough new tokens that every sequence slides at least once.
            let prompts: Vec<Vec<u32>> = vec![vec![1], vec![2, 3, 4], (0..11).map(|i| i % 11).collect(), vec![5, 5]];
            let seeds = [11, 12, 13, 14];
            let sampling = SamplerConfig { temperature: 1.0, top_k: 0, ..SamplerConfig::default() };
            let batch = generate_batch(&model, &prompts, sampling, &seeds, 20, |_, _| false).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let mut g = Generator::new(&model, Sampler::new(sampling, seeds[i]));
                g.prefill(p).unwrap();
                let alone: Vec<u32> = (0..20).map(|_| g.next_token()).collect();
                assert_eq!(&batch[i].tokens[p.len()..], &alone[..], "sequence {i}");
            }
        }
    }

    /// Logits, not just tokens: a batch step gives each sequence what it
    /// gets alone, to the bit where the backend is batch-invariant. 70
    /// sequences: more rows than one invariant pass holds, so the prefill
    /// and the step are both split into passes.
    #[test]
    fn a_batch_step_gives_each_sequence_its_own_logits() {
        for cfg in test_variants() {
            let model = Gpt::new(Cpu, cfg, 5);
            let prompts: Vec<Vec<u32>> = (0..70u32).map(|i| (0..1 + i % 3).map(|t| (i + t) % 11).collect()).collect();
            let mut batch = KvCache::new(&model, prompts.len());
            let slots: Vec<(usize, &[u32])> = prompts.iter().enumerate().map(|(i, p)| (i, &p[..])).collect();
            batch.prefill_many(&model, &slots);
            let next: Vec<(usize, u32)> = (0..prompts.len()).map(|i| (i, (i % 11) as u32)).collect();
            let together = batch.step(&model, &next);
            for (i, p) in prompts.iter().enumerate() {
                let mut one = KvCache::new(&model, 1);
                one.forward(&model, 0, p);
                let alone = one.forward(&model, 0, &[next[i].1]);
                if Cpu.batch_invariant_rows().is_some() {
                    assert_eq!(alone, together[i], "sequence {i}");
                } else {
                    assert!(alone.iter().zip(&together[i]).all(|(a, b)| (a - b).abs() < 1e-4), "sequence {i}");
                }
            }
        }
    }

    #[test]
    fn stop_ends_only_its_sequence() {
        let model = Gpt::new(Cpu, test_variants().remove(0), 3);
        let prompts = vec![vec![1], vec![2]];
        let out = generate_batch(&model, &prompts, SamplerConfig::greedy(), &[0, 0], 6, |i, _| i == 0).unwrap();
        assert_eq!((out[0].generated, out[1].generated), (1, 6));
        assert!(generate_batch(&model, &[vec![]], SamplerConfig::greedy(), &[0], 3, |_, _| false).is_err());
    }
}
