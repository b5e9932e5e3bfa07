//! Fused softmax cross-entropy (forward + backward in one pass over the logits).

use crate::engine::fastmath;
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    losses: &mut [f32],
    logits: &mut [f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    padded: usize,
    grad_scale: Option<f32>,
) {
    losses[..rows]
        .par_iter_mut()
        .zip(logits[..rows * padded].par_chunks_mut(padded))
        .zip(targets[..rows].par_iter())
        .for_each(|((loss, row), &target)| {
            let target = target as usize;
            assert!(target < vocab, "target {target} outside vocabulary {vocab}");
            let real = &mut row[..vocab];
            let m = fastmath::max(real);
            let target_logit = real[target];
            match grad_scale {
                None => {
                    let mut acc = [0.0f32; 16];
                    let chunks = real.chunks_exact(16);
                    let rem: f32 = chunks.remainder().iter().map(|&x| fastmath::exp(x - m)).sum();
                    for ch in chunks {
                        for i in 0..16 {
                            acc[i] += fastmath::exp(ch[i] - m);
                        }
                    }
                    let s = acc.iter().sum::<f32>() + rem;
                    *loss = s.ln() + m - target_logit;
                }
                Some(scale) => {
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
                    row[vocab..].fill(0.0);
                }
            }
        });
}
