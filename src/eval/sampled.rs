//! The loss over random batches, as training reports it: `eval_iters`
//! batches of a split drawn from the run's seed and step, so `ferrite eval
//! --like-training` reproduces the logged numbers exactly.

use crate::data::{Dataset, Split};
use crate::engine::fastmath::derive_seed;
use crate::engine::{Backend, Dropout};
use crate::model::{Activations, Gpt};
use anyhow::Result;

/// The stream of randomness evaluation batches are drawn from (training's
/// batches and dropout use others).
pub const SEED_EVAL: u64 = 3;

/// Mean loss (no dropout) over `batches` random windows of `split`:
/// `(count, batch_size, seq)`, drawn for `(seed, step)`. `acts` must be
/// shaped `[batch_size, seq]`.
pub fn sampled_loss<B: Backend>(
    model: &Gpt<B>,
    acts: &mut Activations<B>,
    data: &Dataset,
    split: Split,
    batches: (usize, usize, usize),
    seeds: (u64, usize),
) -> Result<f64> {
    Ok(sampled_loss_sum(model, acts, data, split, batches, seeds, (0, 1))? / batches.0 as f64)
}

/// The sum of the losses of the batches `i` with `i % parts == part` of
/// [`sampled_loss`]'s (one process's share of a data-parallel evaluation).
pub fn sampled_loss_sum<B: Backend>(
    model: &Gpt<B>,
    acts: &mut Activations<B>,
    data: &Dataset,
    split: Split,
    (count, batch, seq): (usize, usize, usize),
    (seed, step): (u64, usize),
    (part, parts): (usize, usize),
) -> Result<f64> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut total = 0.0;
    for i in (part..count).step_by(parts) {
        let seed = derive_seed(seed, &[SEED_EVAL, step as u64, split as u64, i as u64]);
        data.batch(split, batch, seq, seed, &mut x, &mut y)?;
        total += model.forward(acts, &x, Some(&y), None, Dropout::OFF)?.expect("targets") as f64;
    }
    Ok(total)
}
