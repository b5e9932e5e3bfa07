//! Autoregressive generation with a KV cache: the prompt is processed once,
//! then every new token costs a single-row forward pass.
//!
//! Learned position embeddings cap the context at `block_size`. When the
//! cache is full the window slides the way llama.cpp's context shift does:
//! the cache is rebuilt from the most recent half of the tokens, so the cost
//! of a rebuild is spread over the next `block_size / 2` tokens instead of
//! recomputing the whole context for every token as nanoGPT does.

use super::sampler::Sampler;
use crate::engine::Backend;
use crate::model::decode::KvCache;
use crate::model::Gpt;
use anyhow::{bail, Result};

pub struct Generator<'m, B: Backend> {
    model: &'m Gpt<B>,
    cache: KvCache<B>,
    pub sampler: Sampler,
    /// Every token seen so far: prompt and generated.
    pub tokens: Vec<u32>,
    /// Logits for the next position, once the last token has been fed.
    logits: Vec<f32>,
    /// The last sampled token, fed lazily so the final token of a run costs
    /// no forward pass.
    pending: Option<u32>,
}

impl<'m, B: Backend> Generator<'m, B> {
    pub fn new(model: &'m Gpt<B>, sampler: Sampler) -> Self {
        Generator {
            model,
            cache: KvCache::new(model, 1),
            sampler,
            tokens: Vec::new(),
            logits: Vec::new(),
            pending: None,
        }
    }

    /// Starts a new sequence from `prompt` (only its last `block_size` tokens
    /// fit in the context).
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            bail!("the prompt is empty: give at least one token of context");
        }
        let vocab = self.model.cfg.vocab_size as u32;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
            bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
        }
        self.tokens = prompt.to_vec();
        self.pending = None;
        let window = &prompt[prompt.len().saturating_sub(self.cache.capacity)..];
        self.cache.truncate(0, 0);
        self.logits = self.cache.forward(self.model, 0, window);
        Ok(())
    }

    /// Samples the next token and returns it.
    pub fn next_token(&mut self) -> u32 {
        assert!(!self.tokens.is_empty(), "prefill before sampling");
        if let Some(t) = self.pending.take() {
            self.feed(t);
        }
        let t = self.sampler.sample(&self.logits, &self.tokens);
        self.tokens.push(t);
        self.pending = Some(t);
        t
    }

    /// Positions currently held by the KV cache.
    pub fn cached(&self) -> usize {
        self.cache.len(0)
    }

    fn feed(&mut self, token: u32) {
        if self.cache.len(0) < self.cache.capacity {
            self.logits = self.cache.forward(self.model, 0, &[token]);
            return;
        }
        // Slide: rebuild the cache from the newest half of the context
        // (which ends with `token`).
        let keep = (self.cache.capacity / 2).max(1);
        let window = &self.tokens[self.tokens.len() - keep..];
        self.cache.truncate(0, 0);
        self.logits = self.cache.forward(self.model, 0, window);
    }
}

/// Turns a stream of byte chunks into text, holding back an incomplete
/// UTF-8 sequence until its remaining bytes arrive (a byte-level model can
/// split a character across tokens). Invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::engine::Dropout;
    use crate::generate::sampler::SamplerConfig;
    use crate::model::decode::KvCache;
    use crate::model::{Activations, ModelConfig, Recompute};

    fn gpt2_cfg() -> ModelConfig {
        ModelConfig { bias: true, ..ModelConfig::gpt2(11, 8, 2, 2, 16) }
    }

    /// Every architecture option the decoding path must handle.
    fn variants() -> Vec<ModelConfig> {
        crate::model::config::test_variants()
    }

    fn tiny_model() -> Gpt<Cpu> {
        Gpt::new(Cpu, gpt2_cfg(), 5)
    }

    /// Logits of the last position from a full forward over `ctx`.
    fn full_logits(model: &Gpt<Cpu>, ctx: &[u32]) -> Vec<f32> {
        let mut acts = Activations::<Cpu>::new(&model.be, &model.cfg, 1, ctx.len(), Recompute::None);
        model.forward(&mut acts, ctx, None, None, Dropout::OFF);
        let (pv, v) = (model.cfg.padded_vocab, model.cfg.vocab_size);
        let mut logits = acts.logits[(ctx.len() - 1) * pv..(ctx.len() - 1) * pv + v].to_vec();
        if let Some(cap) = model.cfg.logit_softcap {
            logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        logits
    }

    #[test]
    fn kv_cache_logits_match_full_recompute_for_every_architecture() {
        for cfg in variants() {
            let model = Gpt::new(Cpu, cfg.clone(), 9);
            let mut cache = KvCache::new(&model, 1);
            let ctx = [3u32, 1, 4, 1, 5, 9, 2, 6];
            // Prefill 3 tokens, then one at a time.
            let mut got = cache.forward(&model, 0, &ctx[..3]);
            for t in 3..=ctx.len() {
                let want = full_logits(&model, &ctx[..t]);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{cfg:?}: position {t}: {a} vs {b}");
                }
                if t < ctx.len() {
                    got = cache.forward(&model, 0, &ctx[t..t + 1]);
                }
            }
        }
    }

    #[test]
    fn greedy_generation_matches_full_recompute_with_sliding_window() {
        for cfg in variants() {
            let model = Gpt::new(Cpu, cfg, 5);
            let greedy = SamplerConfig::greedy();
            let mut g = Generator::new(&model, Sampler::new(greedy, 0));
            let prompt = [1u32, 2, 3];
            g.prefill(&prompt).unwrap();
            // Reference: nanoGPT-style, recompute the context window every
            // token, with the same window the generator uses after each slide.
            let mut ctx = prompt.to_vec();
            let mut window_start = 0;
            for _ in 0..30 {
                let got = g.next_token();
                let want = super::super::sampler::argmax(&full_logits(&model, &ctx[window_start..]));
                assert_eq!(got, want);
                ctx.push(got);
                if ctx.len() - window_start > model.cfg.block_size {
                    window_start = ctx.len() - model.cfg.block_size / 2;
                }
            }
            assert_eq!(g.tokens, ctx);
        }
    }

    #[test]
    fn long_prompt_is_cropped_and_bad_prompts_fail() {
        let model = tiny_model();
        let mut g = Generator::new(&model, Sampler::new(SamplerConfig::default(), 0));
        let prompt: Vec<u32> = (0..20).map(|i| i % 11).collect();
        g.prefill(&prompt).unwrap();
        assert_eq!(g.cached(), model.cfg.block_size);
        g.next_token();
        assert!(g.prefill(&[]).is_err());
        assert!(g.prefill(&[11]).unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let mut s = Utf8Stream::default();
        let crab = "🦀".as_bytes();
        assert_eq!(s.push(&crab[..1]), "");
        assert_eq!(s.push(&crab[1..3]), "");
        assert_eq!(s.push(&[crab[3], b'a']), "🦀a");
        assert_eq!(s.push(&[0xff, b'b']), "\u{fffd}b");
        assert_eq!(s.push(&crab[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
