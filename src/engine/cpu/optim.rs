//! AdamW with decoupled weight decay, exactly as `torch.optim.AdamW`.

use crate::engine::AdamWStep;
use rayon::prelude::*;

const CHUNK: usize = 8192;

pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let bc1 = 1.0 - (s.beta1 as f64).powi(s.t as i32);
    let bc2 = 1.0 - (s.beta2 as f64).powi(s.t as i32);
    let step_size = (s.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - s.lr * s.weight_decay;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * s.grad_scale;
                m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
                v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
                let denom = v[i].sqrt() / bc2_sqrt + s.eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}
