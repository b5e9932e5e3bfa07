//! Causal multi-head self-attention over a fused `[B, T, 3C]` qkv buffer.
//!
//! Training works one (batch, head) pair at a time, in parallel across
//! pairs: the score, value and gradient products are small matrix multiplies
//! done by `gemm` straight on the strided q/k/v columns of `qkv` (no copies),
//! and the softmax probabilities (`[B, H, T, T]`) are kept for backward so it
//! needs no recomputation. Inference with a KV cache uses a single-pass
//! online softmax per query, so nothing quadratic is stored.

use super::matmul::{gemm_serial, SharedMut, View};
use super::scratch::with_scratch;
use crate::engine::fastmath::{self, axpy, dot};
use crate::engine::{AttnShape, Dropout};
use rayon::prelude::*;

/// Multiplies the probabilities of one (batch, head) block `[T, T]` by the
/// dropout mask into `dst` (the mask is a pure function of the global index).
fn apply_dropout(dst: &mut [f32], probs: &[f32], first_index: usize, drop: Dropout) {
    let keep_scale = 1.0 / (1.0 - drop.p);
    for (i, (d, &p)) in dst.iter_mut().zip(probs).enumerate() {
        let kept = fastmath::keep(drop.seed, (first_index + i) as u64, drop.p);
        *d = if kept { p * keep_scale } else { 0.0 };
    }
}

/// Row `i` of a causal score matrix becomes its softmax over `0..=i`; the
/// masked positions become 0.
fn causal_softmax(p: &mut [f32], t_len: usize) {
    for (i, row) in p.chunks_exact_mut(t_len).enumerate() {
        let (live, masked) = row.split_at_mut(i + 1);
        let m = fastmath::max(live);
        for x in live.iter_mut() {
            *x = fastmath::exp(*x - m);
        }
        let inv = 1.0 / fastmath::sum(live);
        for x in live.iter_mut() {
            *x *= inv;
        }
        masked.fill(0.0);
    }
}

pub fn attention_fwd(out: &mut [f32], probs: &mut [f32], qkv: &[f32], s: AttnShape, drop: Dropout) {
    let (t_len, c, hd, heads) = (s.seq, s.channels, s.head_dim(), s.heads);
    let tt = t_len * t_len;
    assert!(out.len() >= s.batch * t_len * c && qkv.len() >= s.batch * t_len * 3 * c);
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SharedMut(out.as_mut_ptr());
    probs[..s.batch * heads * tt].par_chunks_mut(tt).enumerate().for_each(|(bh, p)| {
        with_scratch(if drop.active() { tt } else { 0 }, |dropped| {
            let (b, h) = (bh / heads, bh % heads);
            let q = qkv[b * t_len * 3 * c + h * hd..].as_ptr();
            // SAFETY: all views stay inside this batch row of qkv, out and
            // this task's own probability block; tasks write disjoint heads.
            unsafe {
                let (k, v) = (q.add(c), q.add(2 * c));
                gemm_serial(
                    t_len,
                    t_len,
                    hd,
                    p.as_mut_ptr(),
                    t_len,
                    false,
                    View::rows(q, 3 * c),
                    View::transposed(k, 3 * c),
                    scale,
                );
                causal_softmax(p, t_len);
                let pd = if drop.active() {
                    apply_dropout(dropped, p, bh * tt, drop);
                    dropped.as_ptr()
                } else {
                    p.as_ptr()
                };
                let o = out_ptr.at(b * t_len * c + h * hd);
                gemm_serial(t_len, hd, t_len, o, c, false, View::rows(pd, t_len), View::rows(v, 3 * c), 1.0);
            }
        })
    });
}

/// Overwrites `dqkv`.
pub fn attention_bwd(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], probs: &[f32], s: AttnShape, drop: Dropout) {
    let (t_len, c, hd, heads) = (s.seq, s.channels, s.head_dim(), s.heads);
    let tt = t_len * t_len;
    assert!(dqkv.len() >= s.batch * t_len * 3 * c && dout.len() >= s.batch * t_len * c);
    assert!(probs.len() >= s.batch * heads * tt);
    let scale = 1.0 / (hd as f32).sqrt();
    let keep_scale = 1.0 / (1.0 - drop.p);
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    (0..s.batch * heads).into_par_iter().for_each(|bh| {
        with_scratch(if drop.active() { 2 * tt } else { tt }, |scratch| {
            let (dp, dropped) = scratch.split_at_mut(tt);
            let (b, h) = (bh / heads, bh % heads);
            let p = &probs[bh * tt..(bh + 1) * tt];
            let q = qkv[b * t_len * 3 * c + h * hd..].as_ptr();
            let go = dout[b * t_len * c + h * hd..].as_ptr();
            let dq = dqkv_ptr.at(b * t_len * 3 * c + h * hd);
            // SAFETY: as in the forward pass; this task writes only head h's
            // q/k/v gradient columns of batch row b.
            unsafe {
                let (k, v) = (q.add(c), q.add(2 * c));
                let (dk, dv) = (dq.add(c), dq.add(2 * c));
                let pd = if drop.active() {
                    apply_dropout(dropped, p, bh * tt, drop);
                    dropped.as_ptr()
                } else {
                    p.as_ptr()
                };
                // d(dropped probs) = dO · V^T ; dV = dropped^T · dO.
                gemm_serial(
                    t_len,
                    t_len,
                    hd,
                    dp.as_mut_ptr(),
                    t_len,
                    false,
                    View::rows(go, c),
                    View::transposed(v, 3 * c),
                    1.0,
                );
                gemm_serial(t_len, hd, t_len, dv, 3 * c, false, View::transposed(pd, t_len), View::rows(go, c), 1.0);
                // Through dropout, then softmax: dS = P * (dP - sum(P * dP)), scaled.
                for (i, (dp_row, p_row)) in dp.chunks_exact_mut(t_len).zip(p.chunks_exact(t_len)).enumerate() {
                    if drop.active() {
                        for (j, d) in dp_row[..=i].iter_mut().enumerate() {
                            let idx = (bh * tt + i * t_len + j) as u64;
                            *d *= if fastmath::keep(drop.seed, idx, drop.p) { keep_scale } else { 0.0 };
                        }
                    }
                    let pdp = dot(&p_row[..=i], &dp_row[..=i]);
                    for (d, &pv) in dp_row[..=i].iter_mut().zip(&p_row[..=i]) {
                        *d = pv * (*d - pdp) * scale;
                    }
                    dp_row[i + 1..].fill(0.0);
                }
                // dQ = dS · K ; dK = dS^T · Q.
                gemm_serial(
                    t_len,
                    hd,
                    t_len,
                    dq,
                    3 * c,
                    false,
                    View::rows(dp.as_ptr(), t_len),
                    View::rows(k, 3 * c),
                    1.0,
                );
                gemm_serial(
                    t_len,
                    hd,
                    t_len,
                    dk,
                    3 * c,
                    false,
                    View::transposed(dp.as_ptr(), t_len),
                    View::rows(q, 3 * c),
                    1.0,
                );
            }
        })
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
        out[..rows * c].par_chunks_mut(hd).enumerate().for_each(|(j, o)| one(j / heads, j % heads, o));
    }
}
