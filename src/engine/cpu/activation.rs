//! GELU with the tanh approximation (GPT-2's `gelu_new`).

use crate::engine::fastmath;
use rayon::prelude::*;

const CHUNK: usize = 16384;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;

#[inline(never)]
fn gelu_fwd_chunk(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
        *o = 0.5 * x * (1.0 + fastmath::tanh(u));
    }
}

#[inline(never)]
fn gelu_bwd_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
        let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
        let t = fastmath::tanh(u);
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
        *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

pub fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| gelu_fwd_chunk(o, x));
}

pub fn gelu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, x), g)| gelu_bwd_chunk(d, x, g));
}
