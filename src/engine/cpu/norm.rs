//! LayerNorm forward and backward (eps 1e-5, as PyTorch's default).

use crate::engine::fastmath;
use rayon::prelude::*;

pub const EPS: f32 = 1e-5;
/// Rows per rayon task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    c: usize,
) {
    out[..rows * c]
        .par_chunks_mut(c * ROWS_PER_TASK)
        .zip(mean[..rows].par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd[..rows].par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(ti, ((o, mu), rs))| {
            for (ri, orow) in o.chunks_exact_mut(c).enumerate() {
                let r = ti * ROWS_PER_TASK + ri;
                let x = &inp[r * c..(r + 1) * c];
                let m = fastmath::sum(x) / c as f32;
                let s = 1.0 / (fastmath::sum_sq_dev(x, m) / c as f32 + EPS).sqrt();
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
                mu[ri] = m;
                rs[ri] = s;
            }
        });
}

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
    // Input gradient: rows are independent.
    dinp[..rows * c].par_chunks_mut(c * ROWS_PER_TASK).enumerate().for_each(|(ti, d)| {
        for (ri, drow) in d.chunks_exact_mut(c).enumerate() {
            let r = ti * ROWS_PER_TASK + ri;
            let x = &inp[r * c..(r + 1) * c];
            let g = &dout[r * c..(r + 1) * c];
            let (m, s) = (mean[r], rstd[r]);
            // sum(g * w) and sum(g * w * normalised x).
            let sum_dn = fastmath::dot(g, &weight[..c]);
            let sum_dn_n = (fastmath::dot3(g, &weight[..c], x) - m * sum_dn) * s;
            let (mdn, mdnn) = (sum_dn / c as f32, sum_dn_n / c as f32);
            for i in 0..c {
                let norm = (x[i] - m) * s;
                drow[i] += (g[i] * weight[i] - mdn - norm * mdnn) * s;
            }
        }
    });
    // Parameter gradients: parallel over column blocks, rows summed in order,
    // so the result does not depend on the thread count.
    const COLS: usize = 32;
    let param_grad = |c0: usize, dw: &mut [f32], mut db: Option<&mut [f32]>| {
        for r in 0..rows {
            let (m, s) = (mean[r], rstd[r]);
            let base = r * c + c0;
            for j in 0..dw.len() {
                let g = dout[base + j];
                dw[j] += g * (inp[base + j] - m) * s;
                if let Some(db) = db.as_deref_mut() {
                    db[j] += g;
                }
            }
        }
    };
    match dbias {
        Some(db) => dweight[..c]
            .par_chunks_mut(COLS)
            .zip(db[..c].par_chunks_mut(COLS))
            .enumerate()
            .for_each(|(bi, (dw, db))| param_grad(bi * COLS, dw, Some(db))),
        None => dweight[..c].par_chunks_mut(COLS).enumerate().for_each(|(bi, dw)| param_grad(bi * COLS, dw, None)),
    }
}
