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
