//! Fused softmax cross-entropy (forward + backward in one pass over the
//! logits), with optional logit soft-capping.

use crate::engine::{fastmath, IGNORE_TARGET};
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    losses: &mut [f32],
    logits: &mut [f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    padded: usize,
    softcap: Option<f32>,
    grad_scale: Option<f32>,
) {
    losses[..rows]
        .par_iter_mut()
        .zip(logits[..rows * padded].par_chunks_mut(padded))
        .zip(targets[..rows].par_iter())
        .for_each(|((loss, row), &target)| {
            if target == IGNORE_TARGET {
                *loss = 0.0;
                if grad_scale.is_some() {
                    row.fill(0.0);
                }
                return;
            }
            let target = target as usize;
            assert!(target < vocab, "target {target} outside vocabulary {vocab}");
            let real = &mut row[..vocab];
            // Soft-capping is applied in place; the backward recovers its
            // derivative from the capped value: d(cap tanh(z/cap))/dz = 1 - (y/cap)^2.
            if let Some(cap) = softcap {
                for x in real.iter_mut() {
                    *x = cap * fastmath::tanh(*x / cap);
                }
            }
            let m = fastmath::max(real);
            let target_logit = real[target];
            match (grad_scale, softcap) {
                (None, _) => {
                    *loss = sum_exp(real, m).ln() + m - target_logit;
                }
                (Some(scale), None) => {
                    for x in real.iter_mut() {
                        *x = fastmath::exp(*x - m);
                    }
                    let s = fastmath::sum(real);
                    *loss = s.ln() + m - target_logit;
                    let k = scale / s;
                    for x in real.iter_mut() {
                        *x *= k;
                    }
                    real[target] -= scale;
                }
                (Some(scale), Some(cap)) => {
                    let s = sum_exp(real, m);
                    *loss = s.ln() + m - target_logit;
                    let (k, inv_cap) = (scale / s, 1.0 / cap);
                    for (j, x) in real.iter_mut().enumerate() {
                        let t = *x * inv_cap;
                        let onehot = if j == target { scale } else { 0.0 };
                        *x = (fastmath::exp(*x - m) * k - onehot) * (1.0 - t * t);
                    }
                }
            }
            if grad_scale.is_some() {
                row[vocab..].fill(0.0);
            }
        });
}

/// `sum(exp(x - m))` with independent accumulators.
fn sum_exp(x: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rem: f32 = chunks.remainder().iter().map(|&v| fastmath::exp(v - m)).sum();
    for ch in chunks {
        for i in 0..16 {
            acc[i] += fastmath::exp(ch[i] - m);
        }
    }
    acc.iter().sum::<f32>() + rem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_targets_have_no_loss_and_no_gradient() {
        let (rows, vocab, padded) = (3, 5, 8);
        let logits: Vec<f32> = (0..rows * padded).map(|i| ((i * 37) % 11) as f32 / 4.0 - 1.0).collect();
        let run = |targets: &[u32]| {
            let (mut losses, mut grads) = (vec![9.0; rows], logits.clone());
            cross_entropy(&mut losses, &mut grads, targets, rows, vocab, padded, None, Some(0.5));
            (losses, grads)
        };
        let (all_l, all_g) = run(&[1, 2, 3]);
        let (l, g) = run(&[1, IGNORE_TARGET, 3]);
        assert_eq!(l[1], 0.0);
        assert!(g[padded..2 * padded].iter().all(|&x| x == 0.0));
        assert_eq!((l[0], l[2]), (all_l[0], all_l[2]));
        assert_eq!(g[..padded], all_g[..padded]);
        assert_eq!(g[2 * padded..], all_g[2 * padded..]);
    }
}
