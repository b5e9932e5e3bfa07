//! MLP activations: GELU (tanh approximation and exact), ReLU², SwiGLU.

use super::store::Store;
use crate::engine::fastmath;
use crate::engine::Activation;
use rayon::prelude::*;

const CHUNK: usize = 16384;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// One function per activation so each inner loop is a separate,
/// vectorised, branch-free loop.
#[inline(never)]
fn fwd_chunk(out: &mut [f32], inp: &[f32], act: Activation) {
    match act {
        Activation::GeluTanh => {
            for (o, &x) in out.iter_mut().zip(inp) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                *o = 0.5 * x * (1.0 + fastmath::tanh(u));
            }
        }
        Activation::Gelu => {
            for (o, &x) in out.iter_mut().zip(inp) {
                *o = 0.5 * x * (1.0 + fastmath::erf(x * FRAC_1_SQRT_2));
            }
        }
        Activation::Relu2 => {
            for (o, &x) in out.iter_mut().zip(inp) {
                let r = x.max(0.0);
                *o = r * r;
            }
        }
    }
}

#[inline(never)]
fn bwd_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32], act: Activation) {
    match act {
        Activation::GeluTanh => {
            for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
                let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
                let t = fastmath::tanh(u);
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
                *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
            }
        }
        Activation::Gelu => {
            for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
                let cdf = 0.5 * (1.0 + fastmath::erf(x * FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * fastmath::exp(-0.5 * x * x);
                *d = g * (cdf + x * pdf);
            }
        }
        Activation::Relu2 => {
            for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
                *d = g * 2.0 * x.max(0.0);
            }
        }
    }
}

pub fn activation_fwd<O: Store>(out: &mut [O], inp: &[f32], act: Activation) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| O::through_f32(o, |o| fwd_chunk(o, x, act)));
}

pub fn activation_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32], act: Activation) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, x), g)| bwd_chunk(d, x, g, act));
}

/// Rows per rayon task for the row-wise SwiGLU kernels.
fn rows_per_task(hidden: usize) -> usize {
    (CHUNK / hidden.max(1)).max(1)
}

/// `out[r] = silu(gate) * up` where `inp[r] = [gate | up]`.
pub fn swiglu_fwd<O: Store>(out: &mut [O], inp: &[f32], rows: usize, hidden: usize) {
    let per = rows_per_task(hidden);
    out[..rows * hidden]
        .par_chunks_mut(per * hidden)
        .zip(inp[..rows * 2 * hidden].par_chunks(per * 2 * hidden))
        .for_each(|(o, x)| {
            O::through_f32(o, |o| {
                for (orow, xrow) in o.chunks_exact_mut(hidden).zip(x.chunks_exact(2 * hidden)) {
                    let (gate, up) = xrow.split_at(hidden);
                    for ((o, &g), &u) in orow.iter_mut().zip(gate).zip(up) {
                        *o = g * fastmath::sigmoid(g) * u;
                    }
                }
            })
        });
}

/// Overwrites `dinp` (`[rows, 2 * hidden]`).
pub fn swiglu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32], rows: usize, hidden: usize) {
    let per = rows_per_task(hidden);
    dinp[..rows * 2 * hidden]
        .par_chunks_mut(per * 2 * hidden)
        .zip(inp[..rows * 2 * hidden].par_chunks(per * 2 * hidden))
        .zip(dout[..rows * hidden].par_chunks(per * hidden))
        .for_each(|((d, x), g)| {
            for ((drow, xrow), grow) in
                d.chunks_exact_mut(2 * hidden).zip(x.chunks_exact(2 * hidden)).zip(g.chunks_exact(hidden))
            {
                let (gate, up) = xrow.split_at(hidden);
                let (dgate, dup) = drow.split_at_mut(hidden);
                for i in 0..hidden {
                    let s = fastmath::sigmoid(gate[i]);
                    let silu = gate[i] * s;
                    dup[i] = grow[i] * silu;
                    dgate[i] = grow[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
                }
            }
        });
}
