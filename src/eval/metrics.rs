//! Loss, perplexity, bits per token and per byte, and next-token accuracy
//! over a whole token stream.

use crate::engine::{Backend, Dropout};
use crate::model::{Activations, Gpt, Recompute};
use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    /// Predictions scored.
    pub tokens: usize,
    /// Mean cross-entropy, nats per token.
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    /// Bits per UTF-8 byte of the predicted text: comparable across tokenizers.
    pub bits_per_byte: f64,
    /// Fraction of positions where the target is the most likely token.
    pub top1: f64,
    /// ... among the five most likely.
    pub top5: f64,
}

/// Scores every next-token prediction in `tokens` (up to `max_tokens`),
/// in consecutive non-overlapping windows of the model's block size,
/// `batch` windows per forward pass. `token_bytes[t]` is token `t`'s length
/// in bytes.
pub fn evaluate<B: Backend>(
    model: &Gpt<B>,
    tokens: &[u32],
    token_bytes: &[usize],
    batch: usize,
    max_tokens: Option<usize>,
) -> Result<EvalReport> {
    let block = model.cfg.block_size;
    let targets = (tokens.len().saturating_sub(1)).min(max_tokens.unwrap_or(usize::MAX));
    let starts: Vec<usize> = (0..targets).step_by(block).collect();
    let (full, tail): (Vec<usize>, Vec<usize>) = starts.into_iter().partition(|&s| s + block <= targets);
    let mut sums = Sums::default();
    let mut acts = model.activations(batch, block, Recompute::None)?;
    for group in full.chunks(batch) {
        if group.len() < batch {
            // The last, smaller group of full windows.
            let mut a = model.activations(group.len(), block, Recompute::None)?;
            score(model, &mut a, tokens, group, block, token_bytes, &mut sums)?;
        } else {
            score(model, &mut acts, tokens, group, block, token_bytes, &mut sums)?;
        }
    }
    if let Some(&s) = tail.first() {
        let len = targets - s;
        let mut a = model.activations(1, len, Recompute::None)?;
        score(model, &mut a, tokens, &[s], len, token_bytes, &mut sums)?;
    }
    Ok(sums.report())
}

#[derive(Default)]
struct Sums {
    tokens: usize,
    nats: f64,
    bytes: usize,
    top1: usize,
    top5: usize,
}

impl Sums {
    fn report(&self) -> EvalReport {
        if self.tokens == 0 {
            return EvalReport::default();
        }
        let loss = self.nats / self.tokens as f64;
        let ln2 = std::f64::consts::LN_2;
        EvalReport {
            tokens: self.tokens,
            loss,
            perplexity: loss.exp(),
            bits_per_token: loss / ln2,
            bits_per_byte: self.nats / ln2 / self.bytes.max(1) as f64,
            top1: self.top1 as f64 / self.tokens as f64,
            top5: self.top5 as f64 / self.tokens as f64,
        }
    }
}

/// One forward pass over windows starting at `starts`, `seq` tokens each.
fn score<B: Backend>(
    model: &Gpt<B>,
    acts: &mut Activations<B>,
    tokens: &[u32],
    starts: &[usize],
    seq: usize,
    token_bytes: &[usize],
    sums: &mut Sums,
) -> Result<()> {
    let x: Vec<u32> = starts.iter().flat_map(|&s| tokens[s..s + seq].iter().copied()).collect();
    let y: Vec<u32> = starts.iter().flat_map(|&s| tokens[s + 1..s + 1 + seq].iter().copied()).collect();
    model.forward(acts, &x, Some(&y), None, Dropout::OFF)?;
    let be = &model.be;
    let (v, pv) = (model.cfg.vocab_size, model.cfg.padded_vocab);
    let losses = be.to_host(&acts.losses)?;
    let logits = be.read_range(&acts.logits, 0, y.len() * pv)?;
    for (i, &t) in y.iter().enumerate() {
        let row = &logits[i * pv..i * pv + v];
        let target = row[t as usize];
        // Rank of the target: how many tokens are strictly more likely.
        let above = row.iter().filter(|&&l| l > target).count();
        sums.top1 += (above == 0) as usize;
        sums.top5 += (above < 5) as usize;
        sums.nats += losses[i] as f64;
        sums.bytes += token_bytes[t as usize];
    }
    sums.tokens += y.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::model::ModelConfig;

    #[test]
    fn windows_cover_every_prediction_once() {
        let model = Gpt::new(Cpu, ModelConfig::gpt2(11, 8, 1, 2, 8), 1).unwrap();
        let tokens: Vec<u32> = (0..30).map(|i| (i * 7 % 11) as u32).collect();
        let bytes = vec![1; 11];
        let all = evaluate(&model, &tokens, &bytes, 2, None).unwrap();
        assert_eq!(all.tokens, 29);
        // Batching does not change the numbers.
        let one = evaluate(&model, &tokens, &bytes, 1, None).unwrap();
        assert!((all.loss - one.loss).abs() < 1e-6);
        // An untrained model is near chance: loss ~ ln(11), top-5 ~ 5/11.
        assert!((all.loss - 11f64.ln()).abs() < 0.5, "{}", all.loss);
        assert!((all.bits_per_byte - all.bits_per_token).abs() < 1e-12);
        assert_eq!(evaluate(&model, &tokens, &bytes, 2, Some(10)).unwrap().tokens, 10);
        // Two-byte tokens halve the bits per byte.
        let two = evaluate(&model, &tokens, &[2; 11], 2, None).unwrap();
        assert!((two.bits_per_byte * 2.0 - all.bits_per_token).abs() < 1e-9);
    }
}
