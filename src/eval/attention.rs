//! What attention heads look at: for each layer and head, the entropy of its
//! attention (a few sharp targets or a broad average?) and the distribution
//! of how far back it looks.

use crate::engine::{AttnShape, Backend, Dropout};
use crate::model::{Gpt, Recompute};
use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct HeadStats {
    pub layer: usize,
    pub head: usize,
    /// Mean over queries of the attention distribution's entropy, in bits.
    pub entropy_bits: f64,
    /// Mean distance back (query position minus key position), weighted by attention.
    pub mean_distance: f64,
    /// Attention mass per distance bin (see [`distance_bins`]); sums to 1.
    pub histogram: Vec<f64>,
}

/// Distance bins: `[0, 1)`, `[1, 2)`, `[2, 4)`, `[4, 8)`, ... up to `max`.
pub fn distance_bins(max: usize) -> Vec<(usize, usize)> {
    let mut bins = vec![(0, 1)];
    let mut lo = 1;
    while lo < max {
        bins.push((lo, (2 * lo).min(max)));
        lo *= 2;
    }
    bins
}

fn bin_of(d: usize) -> usize {
    if d == 0 {
        0
    } else {
        (usize::BITS - d.leading_zeros()) as usize
    }
}

/// The attention probabilities of head `h` over window `b` (of `seq`
/// rows) of a forward pass's stored queries and keys (`qkv`, after any
/// rotation), recomputed in f64: row `t` holds query `t`'s weights on keys
/// `0..=t` (causal). Training attention keeps no probabilities.
pub fn head_attention(qkv: &[f32], shape: AttnShape, b: usize, h: usize) -> Vec<Vec<f64>> {
    let (w, hd, seq) = (shape.qkv_width(), shape.head_dim, shape.seq);
    let (qo, ko, _) = shape.offsets(h);
    let scale = 1.0 / (hd as f64).sqrt();
    let row = |t: usize| &qkv[(b * seq + t) * w..][..w];
    (0..seq)
        .map(|t| {
            let q = &row(t)[qo..qo + hd];
            let scores: Vec<f64> = (0..=t)
                .map(|t2| q.iter().zip(&row(t2)[ko..ko + hd]).map(|(&a, &k)| a as f64 * k as f64).sum::<f64>())
                .map(|s| s * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = exps.iter().sum();
            exps.into_iter().map(|e| e / z).collect()
        })
        .collect()
}

/// Attention statistics over `windows` (each `seq` tokens long), from the
/// queries and keys the forward pass stored (see [`head_attention`]).
pub fn attention_stats<B: Backend>(model: &Gpt<B>, windows: &[Vec<u32>]) -> Result<Vec<HeadStats>> {
    let (batch, seq) = (windows.len(), windows[0].len());
    let cfg = &model.cfg;
    let mut acts = model.activations(batch, seq, Recompute::None)?;
    let x: Vec<u32> = windows.iter().flatten().copied().collect();
    model.forward(&mut acts, &x, None, None, Dropout::OFF)?;
    let shape = cfg.attn_shape(batch, seq);
    let bins = distance_bins(seq);
    let mut out = Vec::new();
    for l in 0..cfg.n_layer {
        let qkv = model.be.to_host(&acts.blocks[l].qkv)?;
        for h in 0..cfg.n_head {
            let (mut entropy, mut distance) = (0.0, 0.0);
            let mut histogram = vec![0.0; bins.len()];
            for b in 0..batch {
                for (t, probs) in head_attention(&qkv, shape, b, h).iter().enumerate() {
                    for (t2, &p) in probs.iter().enumerate() {
                        if p > 0.0 {
                            entropy -= p * p.log2();
                            distance += p * (t - t2) as f64;
                            histogram[bin_of(t - t2)] += p;
                        }
                    }
                }
            }
            let queries = (batch * seq) as f64;
            histogram.iter_mut().for_each(|m| *m /= queries);
            out.push(HeadStats {
                layer: l,
                head: h,
                entropy_bits: entropy / queries,
                mean_distance: distance / queries,
                histogram,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::Cpu;
    use crate::model::ModelConfig;

    #[test]
    fn bins_and_uniform_attention() {
        assert_eq!(distance_bins(8), vec![(0, 1), (1, 2), (2, 4), (4, 8)]);
        assert_eq!((bin_of(0), bin_of(1), bin_of(3), bin_of(4), bin_of(7)), (0, 1, 2, 3, 3));
        // With all weights zero every head attends uniformly: query t spreads
        // 1/(t+1) over t+1 keys, entropy log2(t+1), mean distance t/2.
        let cfg = ModelConfig::gpt2(11, 8, 2, 2, 8);
        let zeros: Vec<Vec<f32>> =
            crate::model::params::Layout::new(&cfg).specs.iter().map(|s| vec![0.0; s.numel()]).collect();
        let model = Gpt::from_host(Cpu, cfg, &zeros).unwrap();
        let stats = attention_stats(&model, &[vec![1, 2, 3, 4, 5, 6, 7, 8]]).unwrap();
        assert_eq!(stats.len(), 4);
        let want_entropy = (0..8).map(|t| ((t + 1) as f64).log2()).sum::<f64>() / 8.0;
        for s in &stats {
            assert!((s.entropy_bits - want_entropy).abs() < 1e-5);
            assert!((s.mean_distance - 1.75).abs() < 1e-5);
            assert!((s.histogram.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        }
    }
}
