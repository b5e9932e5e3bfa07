//! GELU with the tanh approximation (GPT-2's `gelu_new`).

use crate::engine::fastmath;
use rayon::prelude::*;

const CHUNK: usize = 4096;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;

pub fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                *o = 0.5 * x * (1.0 + fastmath::tanh(u));
            }
        });
}

pub fn gelu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, x), g)| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                let t = fastmath::tanh(u);
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
                *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
            }
        });
}
