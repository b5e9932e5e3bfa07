//! Causal multi-head self-attention over a fused `[B, T, 3C]` qkv buffer.
//!
//! Training stores the softmax probabilities (`[B, H, T, T]`): at the block
//! sizes we train on they are small next to the MLP activations, and the
//! backward then costs no recomputation. Inference with a KV cache uses a
//! single-pass online softmax per query, so nothing quadratic is stored.

use crate::engine::fastmath::{self, axpy, dot};
use crate::engine::{AttnShape, Dropout};
use rayon::prelude::*;

/// Global index of probability `(b, h, t, t2)`; also the dropout counter.
#[inline]
fn prob_index(s: &AttnShape, b: usize, h: usize, t: usize, t2: usize) -> usize {
    ((b * s.heads + h) * s.seq + t) * s.seq + t2
}

pub fn attention_fwd(out: &mut [f32], probs: &mut [f32], qkv: &[f32], s: AttnShape, drop: Dropout) {
    let (t_len, c, hd) = (s.seq, s.channels, s.head_dim());
    let scale = 1.0 / (hd as f32).sqrt();
    let keep_scale = 1.0 / (1.0 - drop.p);
    out[..s.batch * t_len * c]
        .par_chunks_mut(t_len * c)
        .zip(probs[..s.batch * s.heads * t_len * t_len].par_chunks_mut(s.heads * t_len * t_len))
        .enumerate()
        .for_each(|(b, (out_b, probs_b))| {
            let qkv_b = &qkv[b * t_len * 3 * c..(b + 1) * t_len * 3 * c];
            for h in 0..s.heads {
                for t in 0..t_len {
                    let q = &qkv_b[t * 3 * c + h * hd..][..hd];
                    let row = &mut probs_b[(h * t_len + t) * t_len..][..t_len];
                    for t2 in 0..=t {
                        let k = &qkv_b[t2 * 3 * c + c + h * hd..][..hd];
                        row[t2] = dot(q, k) * scale;
                    }
                    let m = fastmath::max(&row[..=t]);
                    for x in row[..=t].iter_mut() {
                        *x = fastmath::exp(*x - m);
                    }
                    let inv = 1.0 / fastmath::sum(&row[..=t]);
                    for x in row[..=t].iter_mut() {
                        *x *= inv;
                    }
                    row[t + 1..].fill(0.0);
                    let o = &mut out_b[t * c + h * hd..][..hd];
                    o.fill(0.0);
                    for t2 in 0..=t {
                        let mut p = row[t2];
                        if drop.active() {
                            let idx = prob_index(&s, b, h, t, t2) as u64;
                            p = if fastmath::keep(drop.seed, idx, drop.p) { p * keep_scale } else { 0.0 };
                        }
                        let v = &qkv_b[t2 * 3 * c + 2 * c + h * hd..][..hd];
                        axpy(o, p, v);
                    }
                }
            }
        });
}

pub fn attention_bwd(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    probs: &[f32],
    s: AttnShape,
    drop: Dropout,
) {
    let (t_len, c, hd) = (s.seq, s.channels, s.head_dim());
    let scale = 1.0 / (hd as f32).sqrt();
    let keep_scale = 1.0 / (1.0 - drop.p);
    dqkv[..s.batch * t_len * 3 * c]
        .par_chunks_mut(t_len * 3 * c)
        .enumerate()
        .for_each(|(b, dqkv_b)| {
            dqkv_b.fill(0.0);
            let qkv_b = &qkv[b * t_len * 3 * c..(b + 1) * t_len * 3 * c];
            let mut dp = vec![0.0f32; t_len];
            let mut pd = vec![0.0f32; t_len];
            let mut dq = vec![0.0f32; hd];
            for h in 0..s.heads {
                for t in 0..t_len {
                    let p = &probs[prob_index(&s, b, h, t, 0)..][..t + 1];
                    let go = &dout[(b * t_len + t) * c + h * hd..][..hd];
                    // Probabilities after dropout, and dL/d(dropped probs).
                    for t2 in 0..=t {
                        let mut mask = 1.0;
                        if drop.active() {
                            let idx = prob_index(&s, b, h, t, t2) as u64;
                            mask = if fastmath::keep(drop.seed, idx, drop.p) { keep_scale } else { 0.0 };
                        }
                        pd[t2] = p[t2] * mask;
                        let v = &qkv_b[t2 * 3 * c + 2 * c + h * hd..][..hd];
                        dp[t2] = dot(go, v) * mask;
                        let dv = &mut dqkv_b[t2 * 3 * c + 2 * c + h * hd..][..hd];
                        axpy(dv, pd[t2], go);
                    }
                    // Softmax backward: ds = p * (dp - sum(p * dp)).
                    let pdp = dot(p, &dp[..=t]);
                    dq.fill(0.0);
                    let q = &qkv_b[t * 3 * c + h * hd..][..hd];
                    for t2 in 0..=t {
                        let ds = p[t2] * (dp[t2] - pdp) * scale;
                        let k = &qkv_b[t2 * 3 * c + c + h * hd..][..hd];
                        axpy(&mut dq, ds, k);
                        let dk = &mut dqkv_b[t2 * 3 * c + c + h * hd..][..hd];
                        axpy(dk, ds, q);
                    }
                    let dqt = &mut dqkv_b[t * 3 * c + h * hd..][..hd];
                    for (d, x) in dqt.iter_mut().zip(&dq) {
                        *d += x;
                    }
                }
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    start: usize,
    rows: usize,
    c: usize,
    heads: usize,
) {
    let hd = c / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(k_cache.len() >= (start + rows) * c, "KV cache overflow");
    for i in 0..rows {
        let src = &qkv[i * 3 * c..(i + 1) * 3 * c];
        k_cache[(start + i) * c..][..c].copy_from_slice(&src[c..2 * c]);
        v_cache[(start + i) * c..][..c].copy_from_slice(&src[2 * c..]);
    }
    let (kc, vc) = (&*k_cache, &*v_cache);
    let one = |i: usize, h: usize, o: &mut [f32]| {
        let q = &qkv[i * 3 * c + h * hd..][..hd];
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        o.fill(0.0);
        for t2 in 0..=start + i {
            let sc = dot(q, &kc[t2 * c + h * hd..][..hd]) * scale;
            if sc > m {
                // New running maximum: rescale what was accumulated so far.
                let r = fastmath::exp(m - sc);
                l *= r;
                o.iter_mut().for_each(|x| *x *= r);
                m = sc;
            }
            let w = fastmath::exp(sc - m);
            l += w;
            axpy(o, w, &vc[t2 * c + h * hd..][..hd]);
        }
        let inv = 1.0 / l;
        o.iter_mut().for_each(|x| *x *= inv);
    };
    let work = rows * (start + rows) * c;
    if work < 1 << 16 {
        for i in 0..rows {
            for h in 0..heads {
                one(i, h, &mut out[i * c + h * hd..][..hd]);
            }
        }
    } else {
        out[..rows * c]
            .par_chunks_mut(hd)
            .enumerate()
            .for_each(|(j, o)| one(j / heads, j % heads, o));
    }
}
