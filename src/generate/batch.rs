//! The generation API: a continuous batch of sequences. Requests join
//! ([`Batch::add`]) and leave (finish, or [`Batch::cancel`]) between steps;
//! each [`Batch::step`] samples one token for every sequence and sends them
//! through the model together, so every weight matrix is read once per step
//! instead of once per sequence. A request with a draft model decodes
//! speculatively, beside the batch, with caches of its own.
//!
//! A sequence gets exactly the tokens it would get alone: it samples with
//! its own seeded sampler, and where the backend is batch-invariant
//! ([`Backend::batch_invariant_rows`]) its logits do not depend on the
//! other rows of a pass.

use super::request::{Event, Finish, FinishReason, Prompt, Request, SeqId, TokenLogprobs, MAX_TOP_LOGPROBS};
use super::sampler::Sampler;
use super::speculative::Speculative;
use super::text::TextStream;
use crate::data::Tokenizer;
use crate::engine::Backend;
use crate::model::decode::KvCache;
use crate::model::Gpt;
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Instant;

pub struct Batch<B: Backend> {
    model: Arc<Gpt<B>>,
    tokenizer: Arc<Tokenizer>,
    cache: KvCache<B>,
    /// The sequence decoding in each cache slot.
    slots: Vec<Option<Plain>>,
    drafted: Vec<Drafted<B>>,
    next_id: u64,
}

/// What every sequence keeps: its text and its counts.
struct Seq {
    id: SeqId,
    text: TextStream,
    prompt_tokens: usize,
    generated: usize,
    max_tokens: usize,
    joined: Instant,
    first_token: Option<Instant>,
}

/// A sequence in a cache slot.
struct Plain {
    seq: Seq,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    sampler: Sampler,
    /// Logits for the next position; none until the prompt is prefilled.
    logits: Option<Vec<f32>>,
    /// Alternatives per token when the request asked for log-probabilities.
    logprobs: Option<usize>,
}

/// A sequence decoding speculatively.
struct Drafted<B: Backend> {
    seq: Seq,
    spec: Speculative<B>,
}

impl Seq {
    /// Records a token; true when the sequence is over (then `events` holds
    /// its finish).
    fn token(&mut self, t: u32, events: &mut Vec<(SeqId, Event)>) -> bool {
        self.first_token.get_or_insert_with(Instant::now);
        self.generated += 1;
        let (text, stopped) = self.text.push(t);
        if !text.is_empty() {
            events.push((self.id, Event::Text(text)));
        }
        if stopped {
            events.push((self.id, Event::Finish(self.finish(FinishReason::Stop))));
            return true;
        }
        if self.generated >= self.max_tokens {
            self.end(FinishReason::Length, events);
            return true;
        }
        false
    }

    /// Ends the sequence: what was held back, then its finish.
    fn end(&mut self, reason: FinishReason, events: &mut Vec<(SeqId, Event)>) {
        let rest = self.text.finish();
        if !rest.is_empty() {
            events.push((self.id, Event::Text(rest)));
        }
        events.push((self.id, Event::Finish(self.finish(reason))));
    }

    fn finish(&self, reason: FinishReason) -> Finish {
        let now = Instant::now();
        Finish {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
            time_to_first_token: self.first_token.unwrap_or(now) - self.joined,
            total: now - self.joined,
            speculative: None,
        }
    }
}

impl<B: Backend> Batch<B> {
    /// A batch of up to `slots` sequences decoding together. Requests with a
    /// draft model take no slot (they have caches of their own, so the
    /// caller bounds how many it adds): a batch of 0 slots takes only those.
    pub fn new(model: Arc<Gpt<B>>, tokenizer: Arc<Tokenizer>, slots: usize) -> Result<Self> {
        if tokenizer.vocab_size() != model.cfg.vocab_size {
            bail!("the tokenizer has {} symbols but the model {}", tokenizer.vocab_size(), model.cfg.vocab_size);
        }
        // The cache checks that it fits before allocating.
        let cache = KvCache::new(&model, slots)?;
        Ok(Batch {
            model,
            tokenizer,
            cache,
            slots: (0..slots).map(|_| None).collect(),
            drafted: Vec::new(),
            next_id: 0,
        })
    }

    /// Sequences not finished yet.
    pub fn active(&self) -> usize {
        self.slots.iter().flatten().count() + self.drafted.len()
    }

    /// Slots a request without a draft can join.
    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Adds a request; it starts with the next step. Bad requests (an empty
    /// or unencodable prompt, tokens outside the vocabulary, bad sampling
    /// settings or draft) and a full batch are errors.
    pub fn add(&mut self, req: Request<B>) -> Result<SeqId> {
        req.sampling.validate()?;
        let tokens = match req.prompt {
            Prompt::Text(text) => self.tokenizer.encode(&text).context("cannot encode the prompt")?,
            Prompt::Tokens(tokens) => tokens,
        };
        if tokens.is_empty() {
            bail!("the prompt is empty: give at least one token of context");
        }
        let vocab = self.model.cfg.vocab_size as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
        }
        let id = SeqId(self.next_id);
        let seq = Seq {
            id,
            text: TextStream::new(self.tokenizer.clone(), &req.stop),
            prompt_tokens: tokens.len(),
            generated: 0,
            max_tokens: req.max_tokens,
            joined: Instant::now(),
            first_token: None,
        };
        let sampler = Sampler::new(req.sampling, req.seed);
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            bail!("at most {MAX_TOP_LOGPROBS} alternatives per token");
        }
        if let Some(draft) = req.draft {
            if req.logprobs.is_some() {
                bail!("log-probabilities are not available with a draft model");
            }
            let mut spec = Speculative::new(self.model.clone(), draft.model, sampler, draft.tokens)?;
            spec.prefill(&tokens)?;
            self.drafted.push(Drafted { seq, spec });
        } else {
            let Some(slot) = self.slots.iter().position(|s| s.is_none()) else {
                bail!("the batch is full: {} sequences are decoding", self.slots.len());
            };
            self.cache.truncate(slot, 0);
            self.slots[slot] = Some(Plain { seq, tokens, sampler, logits: None, logprobs: req.logprobs });
        }
        self.next_id += 1;
        Ok(id)
    }

    /// Stops a sequence and frees its slot. Returns the text it was holding
    /// back (an incomplete character, a possible start of a stop sequence)
    /// and its finish (reason `Cancelled`); none if no such sequence is
    /// decoding.
    pub fn cancel(&mut self, id: SeqId) -> Option<(String, Finish)> {
        let mut events = Vec::new();
        if let Some(slot) = self.slots.iter().position(|s| s.as_ref().is_some_and(|p| p.seq.id == id)) {
            let mut plain = self.slots[slot].take().expect("found");
            self.cache.truncate(slot, 0);
            plain.seq.end(FinishReason::Cancelled, &mut events);
        } else if let Some(i) = self.drafted.iter().position(|d| d.seq.id == id) {
            let mut d = self.drafted.remove(i);
            d.seq.end(FinishReason::Cancelled, &mut events);
            d.attach_stats(&mut events);
        }
        let mut held = String::new();
        for (_, event) in events {
            match event {
                Event::Text(t) => held.push_str(&t),
                Event::Token(_) => {}
                Event::Finish(f) => return Some((held, f)),
            }
        }
        None
    }

    /// One step: prefills the sequences that joined, then gives every
    /// sequence its next token (a speculative one up to `draft tokens + 1`).
    /// Returns the events, in slot order; a finished sequence's slot is free
    /// for the next [`Self::add`]. If the device fails, every sequence
    /// still decoding finishes with the error.
    pub fn step(&mut self) -> Vec<(SeqId, Event)> {
        let mut events = Vec::new();
        if let Err(e) = self.try_step(&mut events) {
            let reason = FinishReason::Error(format!("{e:#}"));
            for slot in 0..self.slots.len() {
                if let Some(mut p) = self.slots[slot].take() {
                    self.cache.truncate(slot, 0);
                    p.seq.end(reason.clone(), &mut events);
                }
            }
            for mut d in self.drafted.drain(..) {
                d.seq.end(reason.clone(), &mut events);
            }
        }
        events
    }

    fn try_step(&mut self, events: &mut Vec<(SeqId, Event)>) -> Result<()> {
        self.prefill()?;
        let cap = self.cache.capacity;
        let mut feed = Vec::new();
        for slot in 0..self.slots.len() {
            let Some(p) = self.slots[slot].as_mut() else { continue };
            if p.seq.generated >= p.seq.max_tokens {
                p.seq.end(FinishReason::Length, events);
                self.slots[slot] = None;
                continue;
            }
            let logits = p.logits.as_ref().expect("prefilled");
            let t = p.sampler.sample(logits, &p.tokens);
            if let Some(n) = p.logprobs {
                events.push((p.seq.id, Event::Token(token_logprobs(logits, t, n))));
            }
            p.tokens.push(t);
            if p.seq.token(t, events) {
                self.slots[slot] = None;
            } else if self.cache.len(slot) < cap {
                feed.push((slot, t));
            } else {
                // Full: rebuild this sequence's cache from its newest half
                // (llama.cpp's context shift), so the rebuild's cost is
                // spread over the next `block_size / 2` tokens.
                let keep = (cap / 2).max(1);
                self.cache.truncate(slot, 0);
                let window = &p.tokens[p.tokens.len() - keep..];
                p.logits = Some(self.cache.forward(&self.model, slot, window)?);
            }
        }
        if !feed.is_empty() {
            for (&(slot, _), logits) in feed.iter().zip(self.cache.step(&self.model, &feed)?) {
                self.slots[slot].as_mut().expect("fed").logits = Some(logits);
            }
        }
        let mut i = 0;
        while i < self.drafted.len() {
            if self.drafted[i].step(events)? {
                self.drafted.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Prefills the prompts of the sequences that joined since the last
    /// step (their last `block_size` tokens), several per forward pass.
    fn prefill(&mut self) -> Result<()> {
        let cap = self.cache.capacity;
        let waiting: Vec<(usize, &[u32])> = self
            .slots
            .iter()
            .enumerate()
            // (A request for no tokens finishes without a forward pass.)
            .filter_map(|(i, s)| {
                s.as_ref().filter(|p| p.logits.is_none() && p.seq.max_tokens > 0).map(|p| (i, &p.tokens[..]))
            })
            .map(|(i, t)| (i, &t[t.len().saturating_sub(cap)..]))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let slots: Vec<usize> = waiting.iter().map(|w| w.0).collect();
        let logits = self.cache.prefill_many(&self.model, &waiting)?;
        for (slot, l) in slots.into_iter().zip(logits) {
            self.slots[slot].as_mut().expect("waiting").logits = Some(l);
        }
        Ok(())
    }
}

impl<B: Backend> Drafted<B> {
    /// One speculative round; true when the sequence is over.
    fn step(&mut self, events: &mut Vec<(SeqId, Event)>) -> Result<bool> {
        let start = events.len();
        let over = if self.seq.generated >= self.seq.max_tokens {
            self.seq.end(FinishReason::Length, events);
            true
        } else {
            self.spec.next_tokens()?.into_iter().any(|t| self.seq.token(t, events))
        };
        if over {
            self.attach_stats(&mut events[start..]);
        }
        Ok(over)
    }

    /// Puts the acceptance counts into the finish among `events`.
    fn attach_stats(&self, events: &mut [(SeqId, Event)]) {
        if let Some((_, Event::Finish(f))) = events.last_mut() {
            f.speculative = Some(self.spec.stats);
        }
    }
}

/// `token`'s log-probability under `logits` (a log-softmax in f64) and the
/// `n` most likely tokens' (ties: the lower id first).
fn token_logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: usize| (logits[i] as f64 - log_sum) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        order.truncate(n);
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    }
    TokenLogprobs {
        token,
        logprob: lp(token as usize),
        top: order.into_iter().take(n).map(|i| (i as u32, lp(i))).collect(),
    }
}

/// Runs one request to its end, handing each text piece to `on_text`;
/// returns its finish (a device failure is an error). The simplest use of
/// [`Batch`]: one slot.
pub fn complete<B: Backend>(
    model: &Arc<Gpt<B>>,
    tokenizer: &Arc<Tokenizer>,
    req: Request<B>,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Finish> {
    // A request with a draft needs no slot in the batch's own cache.
    let slots = if req.draft.is_some() { 0 } else { 1 };
    let mut batch = Batch::new(model.clone(), tokenizer.clone(), slots)?;
    batch.add(req)?;
    loop {
        for (_, event) in batch.step() {
            match event {
                Event::Text(text) => on_text(&text)?,
                Event::Token(_) => {}
                Event::Finish(Finish { reason: FinishReason::Error(e), .. }) => bail!("{e}"),
                Event::Finish(f) => return Ok(f),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::generate::request::Draft;
    use crate::generate::sampler::{argmax, SamplerConfig};
    use crate::model::config::test_variants;
    use crate::model::decode::full_logits;
    use crate::model::params::Layout;
    use crate::model::ModelConfig;

    /// Eleven characters for the eleven-token test models.
    fn chars() -> Arc<Tokenizer> {
        Arc::new(Tokenizer::char_from_corpus("abcdefghijk"))
    }

    fn request(prompt: &[u32], sampling: SamplerConfig, seed: u64, max_tokens: usize) -> Request<Cpu> {
        Request { sampling, seed, ..Request::new(Prompt::Tokens(prompt.to_vec()), max_tokens) }
    }

    /// The tokens a request gets when it runs alone.
    fn alone(model: &Arc<Gpt<Cpu>>, tok: &Arc<Tokenizer>, req: Request<Cpu>) -> (Vec<u32>, Finish) {
        let mut text = String::new();
        let finish = complete(model, tok, req, |t| {
            text.push_str(t);
            Ok(())
        })
        .unwrap();
        (tok.encode(&text).unwrap(), finish)
    }

    #[test]
    fn logprobs_come_with_every_token_and_change_no_token() {
        let model = Arc::new(Gpt::new(Cpu, test_variants()[0].clone(), 4).unwrap());
        let tok = chars();
        let prompt = [1u32, 2, 3];
        // Within the context, where the full forward is the reference.
        let n = model.cfg.block_size - prompt.len();
        let (plain, _) = alone(&model, &tok, request(&prompt, SamplerConfig::default(), 9, n));
        let mut batch = Batch::new(model.clone(), tok.clone(), 2).unwrap();
        batch.add(Request { logprobs: Some(3), ..request(&prompt, SamplerConfig::default(), 9, n) }).unwrap();
        let (mut infos, mut text) = (Vec::new(), String::new());
        'run: for _ in 0..100 {
            for (_, e) in batch.step() {
                match e {
                    Event::Token(t) => infos.push(t),
                    Event::Text(t) => text.push_str(&t),
                    Event::Finish(_) => break 'run,
                }
            }
        }
        assert_eq!(tok.encode(&text).unwrap(), plain);
        assert_eq!(infos.iter().map(|i| i.token).collect::<Vec<_>>(), plain);
        let mut ctx = prompt.to_vec();
        for info in &infos {
            let logits = full_logits(&model, &ctx);
            let log_sum = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            let want = |t: u32| (logits[t as usize] as f64 - log_sum) as f32;
            assert!((info.logprob - want(info.token)).abs() < 1e-4, "{} vs {}", info.logprob, want(info.token));
            assert_eq!(info.top.len(), 3);
            for w in info.top.windows(2) {
                assert!(w[0].1 >= w[1].1, "{:?}", info.top);
            }
            assert!(info.top.iter().all(|&(t, lp)| (lp - want(t)).abs() < 1e-4));
            assert!(info.logprob <= info.top[0].1 + 1e-6);
            ctx.push(info.token);
        }
        assert!(batch.add(Request { logprobs: Some(21), ..request(&prompt, SamplerConfig::default(), 9, 2) }).is_err());
    }

    type Outputs = std::collections::HashMap<SeqId, (String, Option<Finish>)>;

    /// One step of a batch, its events collected per sequence.
    fn step(batch: &mut Batch<Cpu>, out: &mut Outputs) {
        for (id, e) in batch.step() {
            let entry = out.entry(id).or_default();
            match e {
                Event::Text(t) => entry.0.push_str(&t),
                Event::Token(_) => {}
                Event::Finish(f) => entry.1 = Some(f),
            }
        }
    }

    /// Runs a batch to its end.
    fn drain(batch: &mut Batch<Cpu>, out: &mut Outputs) {
        while batch.active() > 0 {
            step(batch, out);
        }
    }

    #[test]
    fn greedy_generation_matches_full_recompute_with_sliding_window() {
        let tok = chars();
        for cfg in test_variants() {
            let model = Arc::new(Gpt::new(Cpu, cfg, 5).unwrap());
            let prompt = [1u32, 2, 3];
            let (got, finish) = alone(&model, &tok, request(&prompt, SamplerConfig::greedy(), 0, 30));
            assert_eq!((finish.reason, finish.prompt_tokens, finish.completion_tokens), (FinishReason::Length, 3, 30));
            // Reference: nanoGPT-style, recompute the context window every
            // token, with the same window the batch uses after each slide.
            let mut ctx = prompt.to_vec();
            let mut window_start = 0;
            for &t in &got {
                assert_eq!(t, argmax(&full_logits(&model, &ctx[window_start..])));
                ctx.push(t);
                if ctx.len() - window_start > model.cfg.block_size {
                    window_start = ctx.len() - model.cfg.block_size / 2;
                }
            }
        }
    }

    #[test]
    fn long_prompt_is_cropped_and_bad_prompts_fail() {
        let (model, tok) = (Arc::new(Gpt::new(Cpu, test_variants().remove(0), 5).unwrap()), chars());
        let mut batch = Batch::new(model.clone(), tok.clone(), 1).unwrap();
        let prompt: Vec<u32> = (0..20).map(|i| i % 11).collect();
        batch.add(request(&prompt, SamplerConfig::default(), 0, 5)).unwrap();
        batch.prefill().unwrap();
        assert_eq!(batch.cache.len(0), model.cfg.block_size);
        assert!(batch.add(request(&[1], SamplerConfig::default(), 0, 5)).unwrap_err().to_string().contains("full"));
        let mut batch = Batch::new(model.clone(), tok.clone(), 1).unwrap();
        assert!(batch.add(request(&[], SamplerConfig::default(), 0, 5)).unwrap_err().to_string().contains("empty"));
        assert!(batch.add(request(&[11], SamplerConfig::default(), 0, 5)).unwrap_err().to_string().contains("outside"));
        let bad = SamplerConfig { top_p: 0.0, ..SamplerConfig::default() };
        assert!(batch.add(request(&[1], bad, 0, 5)).is_err());
        let text = Request::new(Prompt::Text("abz".into()), 5);
        assert!(batch.add(text).is_err(), "z is not in the vocabulary");
        assert!(Batch::new(model, Arc::new(Tokenizer::Byte), 1).is_err(), "tokenizer of another size");
    }

    /// Sequences that finish at different steps, and one that joins while
    /// others are decoding: each gets exactly the tokens it gets alone.
    #[test]
    fn a_continuous_batch_gives_each_sequence_its_tokens_alone() {
        let tok = chars();
        let sampling = SamplerConfig { temperature: 1.0, top_k: 0, ..SamplerConfig::default() };
        for cfg in test_variants() {
            let model = Arc::new(Gpt::new(Cpu, cfg, 3).unwrap());
            // Different lengths, one longer than the block size (8), and
            // enough new tokens that every sequence slides at least once.
            let prompts: Vec<Vec<u32>> = vec![vec![1], vec![2, 3, 4], (0..11).map(|i| i % 11).collect(), vec![5, 5]];
            let max = [20, 7, 13, 20];
            let req = |i: usize| request(&prompts[i], sampling, 11 + i as u64, max[i]);
            let mut batch = Batch::new(model.clone(), tok.clone(), 3).unwrap();
            let mut ids: Vec<SeqId> = (0..3).map(|i| batch.add(req(i)).unwrap()).collect();
            let mut out = Outputs::new();
            for _ in 0..5 {
                step(&mut batch, &mut out);
            }
            assert!(batch.add(req(3)).is_err(), "all three slots are busy");
            // After the 7th step the second sequence is done; the fourth joins.
            for _ in 5..7 {
                step(&mut batch, &mut out);
            }
            assert_eq!(batch.free_slots(), 1);
            ids.push(batch.add(req(3)).unwrap());
            drain(&mut batch, &mut out);
            for (i, id) in ids.iter().enumerate() {
                let (want, want_finish) = alone(&model, &tok, req(i));
                let (text, finish) = &out[id];
                assert_eq!(tok.encode(text).unwrap(), want, "sequence {i}");
                let finish = finish.as_ref().expect("finished");
                assert_eq!((finish.completion_tokens, &finish.reason), (max[i], &FinishReason::Length));
                assert_eq!(want_finish.completion_tokens, max[i]);
            }
        }
    }

    #[test]
    fn cancelling_frees_the_slot() {
        let (model, tok) = (Arc::new(Gpt::new(Cpu, test_variants().remove(1), 3).unwrap()), chars());
        let mut batch = Batch::new(model.clone(), tok.clone(), 1).unwrap();
        let a = batch.add(request(&[1, 2], SamplerConfig::default(), 1, 50)).unwrap();
        batch.step();
        batch.step();
        let (_, finish) = batch.cancel(a).expect("a was decoding");
        assert_eq!((finish.reason, finish.completion_tokens), (FinishReason::Cancelled, 2));
        assert_eq!((batch.active(), batch.free_slots()), (0, 1));
        assert!(batch.cancel(a).is_none());
        // The freed slot serves the next request as if it were new.
        let b = batch.add(request(&[3], SamplerConfig::default(), 2, 12)).unwrap();
        let mut out = Outputs::new();
        drain(&mut batch, &mut out);
        let (want, _) = alone(&model, &tok, request(&[3], SamplerConfig::default(), 2, 12));
        assert_eq!(tok.encode(&out[&b].0).unwrap(), want);
    }

    #[test]
    fn a_device_failure_finishes_every_sequence_with_the_error() {
        let (model, tok) = (Arc::new(Gpt::new(Cpu, test_variants().remove(0), 3).unwrap()), chars());
        let mut batch = Batch::new(model, tok, 2).unwrap();
        let ids = [0, 1].map(|i| batch.add(request(&[1 + i], SamplerConfig::default(), i as u64, 20)).unwrap());
        batch.step();
        crate::engine::cpu::faults::fail_downloads(true);
        let events = batch.step();
        crate::engine::cpu::faults::fail_downloads(false);
        for id in ids {
            let finish = events.iter().find_map(|(i, e)| match e {
                Event::Finish(f) if *i == id => Some(f),
                _ => None,
            });
            let reason = finish.expect("a finish for each sequence").reason.clone();
            assert_eq!(reason, FinishReason::Error("simulated device failure".into()));
        }
        assert_eq!((batch.active(), batch.free_slots()), (0, 2));
        batch.add(request(&[1], SamplerConfig::default(), 0, 3)).unwrap();
        let mut out = Outputs::new();
        drain(&mut batch, &mut out);
        assert!(out.values().all(|o| o.1.as_ref().unwrap().reason == FinishReason::Length));
        // `complete` reports it as an error, not as a finished request.
        let (model, tok) = (batch.model.clone(), batch.tokenizer.clone());
        crate::engine::cpu::faults::fail_downloads(true);
        let result = complete(&model, &tok, request(&[1], SamplerConfig::default(), 0, 3), |_| Ok(()));
        crate::engine::cpu::faults::fail_downloads(false);
        assert!(result.unwrap_err().to_string().contains("simulated device failure"));
    }

    #[test]
    fn a_request_for_no_tokens_finishes_at_once() {
        let (model, tok) = (Arc::new(Gpt::new(Cpu, test_variants().remove(0), 3).unwrap()), chars());
        let (tokens, finish) = alone(&model, &tok, request(&[1, 2], SamplerConfig::default(), 0, 0));
        assert!(tokens.is_empty());
        assert_eq!((finish.reason, finish.prompt_tokens, finish.completion_tokens), (FinishReason::Length, 2, 0));
    }

    /// A one-layer model that writes a fixed cycle of bytes greedily: token
    /// `t` is followed by `next(t)` (one-hot embeddings, a head that maps
    /// each one to its successor, every block weight zero).
    fn scripted(cycle: &[u8]) -> Arc<Gpt<Cpu>> {
        let cfg = ModelConfig { tie_embeddings: false, ..ModelConfig::gpt2(256, 64, 1, 1, 256) };
        let layout = Layout::new(&cfg);
        let params = layout
            .specs
            .iter()
            .map(|s| {
                let mut p =
                    vec![
                        if s.name.ends_with("ln_1.weight") || s.name.ends_with("ln_2.weight") { 1.0 } else { 0.0 };
                        s.numel()
                    ];
                if s.name == "transformer.ln_f.weight" {
                    p.fill(1.0);
                }
                if s.name == "transformer.wte.weight" {
                    (0..256).for_each(|t| p[t * 256 + t] = 1.0);
                }
                if s.name == "lm_head.weight" {
                    for (i, &b) in cycle.iter().enumerate() {
                        let next = cycle[(i + 1) % cycle.len()] as usize;
                        p[next * 256 + b as usize] = 10.0;
                    }
                }
                p
            })
            .collect::<Vec<_>>();
        Arc::new(Gpt::from_host(Cpu, cfg, &params).unwrap())
    }

    #[test]
    fn text_is_whole_characters_and_stops_across_tokens() {
        let cycle: Vec<u8> = [b"a".as_slice(), "🦀".as_bytes(), b"END"].concat();
        // Cancelled after two of the crab's bytes: they are given back, as U+FFFD.
        let (model, tok) = (scripted(&cycle), Arc::new(Tokenizer::Byte));
        let mut batch = Batch::new(model.clone(), tok.clone(), 1).unwrap();
        let id = batch.add(request(b"a".map(u32::from).as_slice(), SamplerConfig::greedy(), 0, 9)).unwrap();
        assert!(batch.step().is_empty() && batch.step().is_empty(), "half a character shows nothing");
        let (held, finish) = batch.cancel(id).unwrap();
        assert_eq!((held.as_str(), finish.completion_tokens), ("\u{fffd}", 2));
        let mut pieces = Vec::new();
        let req = |stop: &[&str], max| Request {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ..request(b"a".map(u32::from).as_slice(), SamplerConfig::greedy(), 0, max)
        };
        // The crab's four bytes come one token at a time; it shows whole.
        let f = complete(&model, &tok, req(&[], 5), |t| {
            pieces.push(t.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces.concat(), "🦀E");
        assert!(pieces.contains(&"🦀".to_string()), "{pieces:?}");
        assert_eq!((f.reason, f.completion_tokens), (FinishReason::Length, 5));
        // "ND" arrives as two tokens: nothing of it is shown.
        pieces.clear();
        let f = complete(&model, &tok, req(&["ND"], 50), |t| {
            pieces.push(t.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!((pieces.concat().as_str(), f.reason, f.completion_tokens), ("🦀E", FinishReason::Stop, 7));
        // A stop that starts but never completes is shown at the end.
        pieces.clear();
        complete(&model, &tok, req(&["DX"], 8), |t| {
            pieces.push(t.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces.concat(), "🦀ENDa");
        // Cut inside a character: its bytes so far show as U+FFFD.
        pieces.clear();
        complete(&model, &tok, req(&[], 2), |t| {
            pieces.push(t.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces.concat(), "\u{fffd}");
    }

    #[test]
    fn a_drafted_request_gives_the_targets_greedy_text() {
        let tok = chars();
        let target_cfg = ModelConfig { block_size: 32, ..test_variants().remove(1) };
        let draft_cfg = ModelConfig { n_layer: 1, n_embd: 8, n_head: 2, n_kv_head: None, ..target_cfg.clone() };
        let (target, draft) =
            (Arc::new(Gpt::new(Cpu, target_cfg, 1).unwrap()), Arc::new(Gpt::new(Cpu, draft_cfg, 2).unwrap()));
        let plain = |max| request(&[1, 2, 3], SamplerConfig::greedy(), 0, max);
        let (want, _) = alone(&target, &tok, plain(25));
        let drafted = Request { draft: Some(Draft { model: draft, tokens: 3 }), ..plain(25) };
        let (got, finish) = alone(&target, &tok, drafted);
        assert_eq!(got, want);
        assert_eq!(finish.completion_tokens, 25);
        assert!(finish.speculative.is_some_and(|s| s.target_passes > 0));
        // The target as its own draft is always right: 4 tokens a pass.
        let own = Request { draft: Some(Draft { model: target.clone(), tokens: 3 }), ..plain(25) };
        let (got, finish) = alone(&target, &tok, own);
        assert_eq!(got, want);
        let stats = finish.speculative.expect("speculative stats");
        assert_eq!((stats.accepted, stats.proposed, stats.target_passes), (21, 21, 7));
    }

    /// Logits, not just tokens: a batch step gives each sequence what it
    /// gets alone, to the bit where the backend is batch-invariant. 70
    /// sequences: more rows than one invariant pass holds, so the prefill
    /// and the step are both split into passes.
    #[test]
    fn a_batch_step_gives_each_sequence_its_own_logits() {
        for cfg in test_variants() {
            let model = Gpt::new(Cpu, cfg, 5).unwrap();
            let prompts: Vec<Vec<u32>> = (0..70u32).map(|i| (0..1 + i % 3).map(|t| (i + t) % 11).collect()).collect();
            let mut batch = KvCache::new(&model, prompts.len()).unwrap();
            let slots: Vec<(usize, &[u32])> = prompts.iter().enumerate().map(|(i, p)| (i, &p[..])).collect();
            batch.prefill_many(&model, &slots).unwrap();
            let next: Vec<(usize, u32)> = (0..prompts.len()).map(|i| (i, (i % 11) as u32)).collect();
            let together = batch.step(&model, &next).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let mut one = KvCache::new(&model, 1).unwrap();
                one.forward(&model, 0, p).unwrap();
                let alone = one.forward(&model, 0, &[next[i].1]).unwrap();
                if Cpu.batch_invariant_rows().is_some() {
                    assert_eq!(alone, together[i], "sequence {i}");
                } else {
                    assert!(alone.iter().zip(&together[i]).all(|(a, b)| (a - b).abs() < 1e-4), "sequence {i}");
                }
            }
        }
    }
}
