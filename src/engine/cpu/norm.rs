//! Normalisation: LayerNorm and RMSNorm (epsilon from the model), and the
//! per-head RMS normalisation of queries and keys (QK-norm).

use super::store::Store;
use crate::engine::{fastmath, AttnShape};
use rayon::prelude::*;

/// Rows per rayon task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd<O: Store>(
    out: &mut [O],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    c: usize,
    eps: f32,
) {
    out[..rows * c]
        .par_chunks_mut(c * ROWS_PER_TASK)
        .zip(mean[..rows].par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd[..rows].par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(ti, ((o, mu), rs))| {
            O::through_f32(o, |o| layernorm_rows(o, mu, rs, &inp[ti * ROWS_PER_TASK * c..], weight, bias, c, eps))
        });
}

/// [`layernorm_fwd`] of the rows of `out` (the first rows of `inp`).
fn layernorm_rows(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    c: usize,
    eps: f32,
) {
    for (ri, orow) in out.chunks_exact_mut(c).enumerate() {
        let x = &inp[ri * c..(ri + 1) * c];
        let m = fastmath::sum(x) / c as f32;
        let s = 1.0 / (fastmath::sum_sq_dev(x, m) / c as f32 + eps).sqrt();
        match bias {
            Some(b) => {
                for i in 0..c {
                    orow[i] = (x[i] - m) * s * weight[i] + b[i];
                }
            }
            None => {
                for i in 0..c {
                    orow[i] = (x[i] - m) * s * weight[i];
                }
            }
        }
        mean[ri] = m;
        rstd[ri] = s;
    }
}

/// Row blocks of the backward pass. Each block sums its own parameter
/// gradients, then the blocks are added in order: a fixed count, so the
/// result never depends on the thread count.
const ROW_BLOCKS: usize = 32;

/// `dinp += ...`, `dweight += ...`, `dbias += ...`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    let block_rows = rows.div_ceil(ROW_BLOCKS).max(1);
    let blocks = rows.div_ceil(block_rows);
    // Per block: dweight partial sums, then dbias partial sums.
    let mut partial = vec![0.0f32; blocks * 2 * c];
    let w = &weight[..c];
    dinp[..rows * c].par_chunks_mut(block_rows * c).zip(partial.par_chunks_mut(2 * c)).enumerate().for_each(
        |(bi, (d, part))| {
            let (pw, pb) = part.split_at_mut(c);
            for (ri, drow) in d.chunks_exact_mut(c).enumerate() {
                let r = bi * block_rows + ri;
                let x = &inp[r * c..(r + 1) * c];
                let g = &dout[r * c..(r + 1) * c];
                let (m, s) = (mean[r], rstd[r]);
                // sum(g * w) and sum(g * w * normalised x).
                let sum_dn = fastmath::dot(g, w);
                let sum_dn_n = (fastmath::dot3(g, w, x) - m * sum_dn) * s;
                let (mdn, mdnn) = (sum_dn / c as f32, sum_dn_n / c as f32);
                for i in 0..c {
                    let norm = (x[i] - m) * s;
                    drow[i] += (g[i] * w[i] - mdn - norm * mdnn) * s;
                    pw[i] += g[i] * norm;
                    pb[i] += g[i];
                }
            }
        },
    );
    let mut dbias = dbias;
    for part in partial.chunks_exact(2 * c) {
        fastmath::add_to(&mut dweight[..c], &part[..c]);
        if let Some(db) = dbias.as_deref_mut() {
            fastmath::add_to(&mut db[..c], &part[c..]);
        }
    }
}

/// QK-norm's epsilon (Llama's RMSNorm default).
pub const QK_EPS: f32 = 1e-6;

/// `1 / sqrt(mean(x^2) + eps)`.
#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (fastmath::sum_sq_dev(x, 0.0) / x.len() as f32 + eps).sqrt()
}

#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd<O: Store>(
    out: &mut [O],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    c: usize,
    eps: f32,
) {
    let w = &weight[..c];
    out[..rows * c]
        .par_chunks_mut(c * ROWS_PER_TASK)
        .zip(rstd[..rows].par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(ti, (o, rs))| {
            O::through_f32(o, |o| {
                for (ri, orow) in o.chunks_exact_mut(c).enumerate() {
                    let r = ti * ROWS_PER_TASK + ri;
                    let x = &inp[r * c..(r + 1) * c];
                    let s = inv_rms(x, eps);
                    for ((o, &xi), &wi) in orow.iter_mut().zip(x).zip(w) {
                        *o = xi * s * wi;
                    }
                    rs[ri] = s;
                }
            })
        });
}

/// `dinp += ...`, `dweight += ...`; row blocks with partial sums as in
/// [`layernorm_bwd`].
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    let block_rows = rows.div_ceil(ROW_BLOCKS).max(1);
    let blocks = rows.div_ceil(block_rows);
    let mut partial = vec![0.0f32; blocks * c];
    let w = &weight[..c];
    dinp[..rows * c].par_chunks_mut(block_rows * c).zip(partial.par_chunks_mut(c)).enumerate().for_each(
        |(bi, (d, pw))| {
            for (ri, drow) in d.chunks_exact_mut(c).enumerate() {
                let r = bi * block_rows + ri;
                let x = &inp[r * c..(r + 1) * c];
                let g = &dout[r * c..(r + 1) * c];
                let s = rstd[r];
                // mean(g * w * x_hat), x_hat = x * s
                let m = fastmath::dot3(g, w, x) * s / c as f32;
                for i in 0..c {
                    let xh = x[i] * s;
                    drow[i] += s * (g[i] * w[i] - xh * m);
                    pw[i] += g[i] * xh;
                }
            }
        },
    );
    for pw in partial.chunks_exact(c) {
        fastmath::add_to(&mut dweight[..c], pw);
    }
}

/// QK-norm forward: copies `qkv` rows and RMS-normalises each query and key
/// head in the copy.
pub fn qk_norm_fwd(out: &mut [f32], rstd: &mut [f32], qkv: &[f32], s: AttnShape, rows: usize) {
    let (w, hd, heads) = (s.qkv_width(), s.head_dim, s.heads + s.kv_heads);
    out[..rows * w].par_chunks_mut(w).zip(rstd[..rows * heads].par_chunks_mut(heads)).enumerate().for_each(
        |(r, (orow, rs))| {
            let x = &qkv[r * w..(r + 1) * w];
            orow.copy_from_slice(x);
            for (h, seg) in orow[..heads * hd].chunks_exact_mut(hd).enumerate() {
                let inv = inv_rms(seg, QK_EPS);
                seg.iter_mut().for_each(|v| *v *= inv);
                rs[h] = inv;
            }
        },
    );
}

/// QK-norm backward: overwrites `dqkv`.
pub fn qk_norm_bwd(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], rstd: &[f32], s: AttnShape, rows: usize) {
    let (w, hd, heads) = (s.qkv_width(), s.head_dim, s.heads + s.kv_heads);
    dqkv[..rows * w].par_chunks_mut(w).enumerate().for_each(|(r, drow)| {
        let (x, g) = (&qkv[r * w..(r + 1) * w], &dout[r * w..(r + 1) * w]);
        drow.copy_from_slice(g);
        for h in 0..heads {
            let span = h * hd..(h + 1) * hd;
            let (xs, gs, inv) = (&x[span.clone()], &g[span.clone()], rstd[r * heads + h]);
            // y = x * inv; dx = inv * (g - y * mean(g * y))
            let m = fastmath::dot(gs, xs) * inv * inv / hd as f32;
            for ((d, &gi), &xi) in drow[span].iter_mut().zip(gs).zip(xs) {
                *d = inv * (gi - xi * m);
            }
        }
    });
}
