//! Picking the next token from logits. The filters run in a fixed order:
//! top-k, then top-p (nucleus), then temperature; temperature 0 is greedy.

use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches
    /// `p`; 1 disables.
    pub top_p: f32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.8, top_k: 200, top_p: 1.0 }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// A seeded sampler: the same seed and logits give the same tokens.
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: ChaCha8Rng,
    /// Scratch: (logit, token) pairs of the candidates.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, seed: u64) -> Self {
        Sampler { cfg, rng: ChaCha8Rng::seed_from_u64(seed), cand: Vec::new() }
    }

    /// The next token, given the logits of the real vocabulary.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "no logits to sample from");
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        // Most likely first; ties broken by token id so the order is total.
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        if self.cfg.top_p < 1.0 {
            // Nucleus over the untempered distribution of the survivors.
            let probs = softmax(self.cand.iter().map(|c| c.0), 1.0);
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        let probs = softmax(self.cand.iter().map(|c| c.0), self.cfg.temperature);
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (p, c) in probs.iter().zip(&self.cand) {
            acc += p;
            if u < acc {
                return c.1;
            }
        }
        self.cand.last().expect("at least one candidate").1
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax of `logits / temperature` in f64.
fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f64> {
    let t = temperature as f64;
    let m = logits.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.map(|l| ((l as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(cfg, 7);
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits) as usize] += 1;
        }
        c
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, 0.5, 2.9];

    #[test]
    fn greedy_is_argmax() {
        let c = counts(SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0 }, &LOGITS, 50);
        assert_eq!(c, vec![0, 50, 0, 0, 0]);
    }

    #[test]
    fn top_k_keeps_only_k() {
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 2, top_p: 1.0 }, &LOGITS, 2000);
        assert_eq!((c[0], c[2], c[3]), (0, 0, 0));
        assert!(c[1] > 800 && c[4] > 800, "{c:?}");
        // k larger than the vocabulary keeps everything.
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 99, top_p: 1.0 }, &LOGITS, 4000);
        assert!(c.iter().all(|&x| x > 0), "{c:?}");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~ [.05, .40, .15, .03, .36]: p = 0.5 needs the top two.
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.5 }, &LOGITS, 2000);
        assert_eq!((c[0], c[2], c[3]), (0, 0, 0), "{c:?}");
        // A tiny p keeps only the most likely token.
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1e-6 }, &LOGITS, 100);
        assert_eq!(c[1], 100);
    }

    #[test]
    fn frequencies_follow_softmax_at_temperature() {
        let logits = [0.0f32, (2.0f32).ln()];
        let c = counts(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0 }, &logits, 30_000);
        let frac = c[1] as f64 / 30_000.0;
        assert!((frac - 2.0 / 3.0).abs() < 0.015, "{frac}");
        // Temperature 2 flattens: p1 = sqrt(2) / (1 + sqrt(2)).
        let c = counts(SamplerConfig { temperature: 2.0, top_k: 0, top_p: 1.0 }, &logits, 30_000);
        let frac = c[1] as f64 / 30_000.0;
        assert!((frac - 0.5858).abs() < 0.015, "{frac}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let cfg = SamplerConfig::default();
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg, 3);
            (0..50).map(|_| s.sample(&LOGITS)).collect()
        };
        let mut s = Sampler::new(cfg, 3);
        let b: Vec<u32> = (0..50).map(|_| s.sample(&LOGITS)).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(SamplerConfig { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { top_p: 1.5, ..Default::default() }.validate().is_err());
    }
}
