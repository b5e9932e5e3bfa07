//! Picking the next token from logits. The steps run in a fixed, documented
//! order: repetition, frequency and presence penalties → top-k → top-p
//! (nucleus) → min-p → temperature. Temperature 0 is greedy (argmax after
//! the penalties).

use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches
    /// `p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divides positive logits and multiplies negative ones of tokens seen
    /// recently (CTRL's penalty); 1 disables.
    pub repetition_penalty: f32,
    /// Subtracts `frequency_penalty × count` from each seen token's logit (OpenAI's).
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` from each seen token's logit once.
    pub presence_penalty: f32,
    /// How many of the latest tokens the penalties look at; 0 = all.
    pub penalty_last_n: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 200,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding, no penalties.
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, ..Self::default() }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("min-p must be in [0, 1], got {}", self.min_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bail!("repetition penalty must be a positive number, got {}", self.repetition_penalty);
        }
        for (name, v) in [("frequency", self.frequency_penalty), ("presence", self.presence_penalty)] {
            if !v.is_finite() {
                bail!("{name} penalty must be a finite number, got {v}");
            }
        }
        Ok(())
    }

    fn penalises(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }
}

/// A seeded sampler: the same seed, logits and history give the same tokens.
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: ChaCha8Rng,
    /// The candidates after the filters: `(token, probability)`, most likely first.
    dist: Vec<(u32, f64)>,
    /// Scratch: `(logit, token)` pairs.
    cand: Vec<(f32, u32)>,
    penalised: Vec<f32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, seed: u64) -> Self {
        Sampler { cfg, rng: ChaCha8Rng::seed_from_u64(seed), dist: Vec::new(), cand: Vec::new(), penalised: Vec::new() }
    }

    /// The next token, given the logits of the real vocabulary and the
    /// tokens so far (for the penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.distribution(logits, history);
        let u = self.uniform();
        pick(&self.dist, u)
    }

    /// A uniform number in [0, 1) from this sampler's stream.
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The distribution [`Self::sample`] draws from, after every step:
    /// `(token, probability)`, most likely first, probabilities summing to 1.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> &[(u32, f64)] {
        assert!(!logits.is_empty(), "no logits to sample from");
        let cfg = self.cfg;
        let logits = if cfg.penalises() {
            self.penalised.clear();
            self.penalised.extend_from_slice(logits);
            let window = if cfg.penalty_last_n == 0 {
                history
            } else {
                &history[history.len().saturating_sub(cfg.penalty_last_n)..]
            };
            apply_penalties(&mut self.penalised, window, &cfg);
            &self.penalised[..]
        } else {
            logits
        };
        self.dist.clear();
        if cfg.temperature == 0.0 {
            self.dist.push((argmax(logits), 1.0));
            return &self.dist;
        }
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        // Most likely first; ties broken by token id so the order is total.
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Top-p and min-p judge the untempered distribution of the survivors.
        if cfg.top_p < 1.0 || cfg.min_p > 0.0 {
            let probs = softmax(self.cand.iter().map(|c| c.0), 1.0);
            let mut keep = probs.len();
            if cfg.top_p < 1.0 {
                let mut acc = 0.0;
                for (i, p) in probs.iter().enumerate() {
                    acc += p;
                    if acc >= cfg.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if cfg.min_p > 0.0 {
                let floor = cfg.min_p as f64 * probs[0];
                keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
            }
            self.cand.truncate(keep);
        }
        let probs = softmax(self.cand.iter().map(|c| c.0), cfg.temperature);
        self.dist.extend(self.cand.iter().zip(probs).map(|(c, p)| (c.1, p)));
        &self.dist
    }
}

/// The token at cumulative probability `u` of a distribution.
pub fn pick(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(t, p) in dist {
        acc += p;
        if u < acc {
            return t;
        }
    }
    dist.last().expect("at least one candidate").0
}

/// Penalises the logits of tokens in `window`, in place.
fn apply_penalties(logits: &mut [f32], window: &[u32], cfg: &SamplerConfig) {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in window {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else { continue };
        if cfg.repetition_penalty != 1.0 {
            *l = if *l > 0.0 { *l / cfg.repetition_penalty } else { *l * cfg.repetition_penalty };
        }
        *l -= cfg.frequency_penalty * n as f32 + cfg.presence_penalty;
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

    fn cfg(temperature: f32, top_k: usize, top_p: f32) -> SamplerConfig {
        SamplerConfig { temperature, top_k, top_p, ..SamplerConfig::default() }
    }

    fn counts(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(cfg, 7);
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits, &[]) as usize] += 1;
        }
        c
    }

    fn kept(cfg: SamplerConfig, logits: &[f32], history: &[u32]) -> Vec<u32> {
        let mut s = Sampler::new(cfg, 0);
        let mut t: Vec<u32> = s.distribution(logits, history).iter().map(|d| d.0).collect();
        t.sort();
        t
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, 0.5, 2.9];

    #[test]
    fn greedy_is_argmax() {
        let c = counts(cfg(0.0, 0, 1.0), &LOGITS, 50);
        assert_eq!(c, vec![0, 50, 0, 0, 0]);
    }

    #[test]
    fn top_k_keeps_only_k() {
        let c = counts(cfg(1.0, 2, 1.0), &LOGITS, 2000);
        assert_eq!((c[0], c[2], c[3]), (0, 0, 0));
        assert!(c[1] > 800 && c[4] > 800, "{c:?}");
        // k larger than the vocabulary keeps everything.
        assert_eq!(kept(cfg(1.0, 99, 1.0), &LOGITS, &[]), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~ [.05, .40, .15, .03, .36]: p = 0.5 needs the top two.
        assert_eq!(kept(cfg(1.0, 0, 0.5), &LOGITS, &[]), vec![1, 4]);
        // A tiny p keeps only the most likely token; p = 1 keeps all.
        assert_eq!(kept(cfg(1.0, 0, 1e-6), &LOGITS, &[]), vec![1]);
        assert_eq!(kept(cfg(1.0, 0, 1.0), &LOGITS, &[]).len(), 5);
    }

    #[test]
    fn min_p_drops_the_unlikely() {
        // Relative to the top token (.40): .36 and .15 pass 0.3; .05 and .03 do not.
        let c = SamplerConfig { min_p: 0.3, ..cfg(1.0, 0, 1.0) };
        assert_eq!(kept(c, &LOGITS, &[]), vec![1, 2, 4]);
        let c = SamplerConfig { min_p: 1.0, ..cfg(1.0, 0, 1.0) };
        assert_eq!(kept(c, &LOGITS, &[]), vec![1]);
    }

    #[test]
    fn filters_run_in_order() {
        // top-k 3 first ([1, 4, 2]), then top-p 0.9 over those three
        // (~[.44, .40, .16]: .44 + .40 < .9 keeps all three), then min-p.
        let c = SamplerConfig { top_k: 3, top_p: 0.9, ..cfg(1.0, 0, 1.0) };
        assert_eq!(kept(c, &LOGITS, &[]), vec![1, 2, 4]);
        let c = SamplerConfig { min_p: 0.5, ..c };
        assert_eq!(kept(c, &LOGITS, &[]), vec![1, 4]);
    }

    #[test]
    fn penalties_push_down_seen_tokens() {
        let greedy = SamplerConfig::greedy();
        // Token 1 (logit 3.0) repeated: a repetition penalty of 2 makes it
        // 1.5, below token 4 (2.9).
        let c = SamplerConfig { repetition_penalty: 2.0, ..greedy };
        assert_eq!(Sampler::new(c, 0).sample(&LOGITS, &[1, 1]), 4);
        // Frequency: 0.06 per occurrence; twice -> 2.88 < 2.9, once -> 2.94.
        let c = SamplerConfig { frequency_penalty: 0.06, ..greedy };
        assert_eq!(Sampler::new(c, 0).sample(&LOGITS, &[1, 1]), 4);
        assert_eq!(Sampler::new(c, 0).sample(&LOGITS, &[1]), 1);
        // Presence: once, however often.
        let c = SamplerConfig { presence_penalty: 0.2, ..greedy };
        assert_eq!(Sampler::new(c, 0).sample(&LOGITS, &[1, 1, 1]), 4);
        // Only the last n tokens count.
        let c = SamplerConfig { presence_penalty: 0.2, penalty_last_n: 1, ..greedy };
        assert_eq!(Sampler::new(c, 0).sample(&LOGITS, &[1, 3]), 1);
        // Negative logits get more negative, not less.
        let neg = [-1.0f32, -2.0];
        let c = SamplerConfig { repetition_penalty: 3.0, ..greedy };
        assert_eq!(Sampler::new(c, 0).sample(&neg, &[0]), 1);
    }

    #[test]
    fn frequencies_follow_softmax_at_temperature() {
        let logits = [0.0f32, (2.0f32).ln()];
        let c = counts(cfg(1.0, 0, 1.0), &logits, 30_000);
        let frac = c[1] as f64 / 30_000.0;
        assert!((frac - 2.0 / 3.0).abs() < 0.015, "{frac}");
        // Temperature 2 flattens: p1 = sqrt(2) / (1 + sqrt(2)).
        let c = counts(cfg(2.0, 0, 1.0), &logits, 30_000);
        let frac = c[1] as f64 / 30_000.0;
        assert!((frac - 0.5858).abs() < 0.015, "{frac}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig::default(), seed);
            (0..50).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<u32>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let d = SamplerConfig::default();
        assert!(SamplerConfig { temperature: -1.0, ..d }.validate().is_err());
        assert!(SamplerConfig { top_p: 0.0, ..d }.validate().is_err());
        assert!(SamplerConfig { top_p: 1.5, ..d }.validate().is_err());
        assert!(SamplerConfig { min_p: 2.0, ..d }.validate().is_err());
        assert!(SamplerConfig { repetition_penalty: 0.0, ..d }.validate().is_err());
        assert!(SamplerConfig { frequency_penalty: f32::NAN, ..d }.validate().is_err());
    }
}
