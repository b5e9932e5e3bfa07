//! Causal multi-head self-attention over a fused qkv buffer (see
//! [`AttnShape`]), with grouped-query attention when there are fewer key/value
//! heads than query heads.
//!
//! Training works one (batch, head) pair at a time, in parallel across
//! pairs (the backward pass: one (batch, key/value head) pair, so the heads
//! sharing a key/value head add their gradients in a fixed order): the
//! score, value and gradient products are small matrix multiplies
//! done by `gemm` straight on the strided q/k/v columns of `qkv` (no copies).
//! Nothing quadratic outlives a call, as in flash attention: the forward
//! pass keeps only each score row's maximum and inverse sum (`[B, H, T, 2]`),
//! and the backward pass recomputes the probabilities from them with the
//! very same operations, so they are bit-identical to the forward's. The
//! `T x T` blocks live in per-thread scratch, one per task in flight.
//! Inference with a KV cache keeps one row of scores per query at a time.

use super::matmul::{gemm_serial, SharedMut, View};
use super::scratch::with_scratch;
use super::store::Store;
use crate::engine::fastmath::{self, axpy, dot};
use crate::engine::{AttnShape, CacheRow, Dropout};
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
/// masked positions become 0. Writes each row's `(max, 1 / sum)` to `stats`.
fn causal_softmax(p: &mut [f32], stats: &mut [f32], t_len: usize) {
    for ((i, row), st) in p.chunks_exact_mut(t_len).enumerate().zip(stats.chunks_exact_mut(2)) {
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
        st[0] = m;
        st[1] = inv;
    }
}

/// [`causal_softmax`] again from its saved statistics: the same operations
/// on the same scores, so the same probabilities to the bit.
fn causal_softmax_again(p: &mut [f32], stats: &[f32], t_len: usize) {
    for ((i, row), st) in p.chunks_exact_mut(t_len).enumerate().zip(stats.chunks_exact(2)) {
        let (live, masked) = row.split_at_mut(i + 1);
        let (m, inv) = (st[0], st[1]);
        for x in live.iter_mut() {
            *x = fastmath::exp(*x - m);
        }
        for x in live.iter_mut() {
            *x *= inv;
        }
        masked.fill(0.0);
    }
}

/// Scores `scale · Q Kᵀ` of one (batch, head) block into `p` (`[T, T]`).
///
/// # Safety
/// `q` and `k` point at the head's first query and key column of one batch
/// row of `qkv` (row stride `w`), with `t_len` rows each.
unsafe fn scores(p: &mut [f32], q: *const f32, k: *const f32, t_len: usize, hd: usize, w: usize, scale: f32) {
    gemm_serial(t_len, t_len, hd, p.as_mut_ptr(), t_len, false, View::rows(q, w), View::transposed(k, w), scale);
}

/// `out` is f32 or bf16 (`u16`): a bf16 output is computed per head into
/// scratch and rounded once as it is stored.
pub fn attention_fwd<O: Store>(out: &mut [O], stats: &mut [f32], qkv: &[f32], s: AttnShape, drop: Dropout) {
    let (t_len, hd, heads, w, ow) = (s.seq, s.head_dim, s.heads, s.qkv_width(), s.q_width());
    let tt = t_len * t_len;
    assert!(out.len() >= s.batch * t_len * ow && qkv.len() >= s.batch * t_len * w);
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SharedMut(out.as_mut_ptr());
    let narrow = O::as_f32_ptr(out_ptr.0).is_none();
    let scratch_len = if drop.active() { 2 * tt } else { tt } + if narrow { t_len * hd } else { 0 };
    stats[..s.stats_len()].par_chunks_mut(2 * t_len).enumerate().for_each(|(bh, st)| {
        with_scratch(scratch_len, |scratch| {
            let (p, rest) = scratch.split_at_mut(tt);
            let (dropped, head_out) = rest.split_at_mut(if drop.active() { tt } else { 0 });
            let (b, h) = (bh / heads, bh % heads);
            let (qo, ko, vo) = s.offsets(h);
            let row0 = qkv[b * t_len * w..].as_ptr();
            let first = b * t_len * ow + h * hd;
            // SAFETY: all views stay inside this batch row of qkv and out;
            // tasks write disjoint heads.
            unsafe {
                let (q, k, v) = (row0.add(qo), row0.add(ko), row0.add(vo));
                scores(p, q, k, t_len, hd, w, scale);
                causal_softmax(p, st, t_len);
                let pd = if drop.active() {
                    apply_dropout(dropped, p, bh * tt, drop);
                    dropped.as_ptr()
                } else {
                    p.as_ptr()
                };
                let (o, ldo) = match O::as_f32_ptr(out_ptr.at(first)) {
                    Some(o) => (o, ow),
                    None => (head_out.as_mut_ptr(), hd),
                };
                gemm_serial(t_len, hd, t_len, o, ldo, false, View::rows(pd, t_len), View::rows(v, w), 1.0);
                if narrow {
                    for (i, row) in head_out.chunks_exact(hd).enumerate() {
                        O::store(std::slice::from_raw_parts_mut(out_ptr.at(first + i * ow), hd), row);
                    }
                }
            }
        })
    });
}

/// Overwrites `dqkv`.
pub fn attention_bwd(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], stats: &[f32], s: AttnShape, drop: Dropout) {
    let (t_len, hd, heads, w, ow) = (s.seq, s.head_dim, s.heads, s.qkv_width(), s.q_width());
    let tt = t_len * t_len;
    assert!(dqkv.len() >= s.batch * t_len * w && dout.len() >= s.batch * t_len * ow);
    assert!(stats.len() >= s.stats_len());
    let scale = 1.0 / (hd as f32).sqrt();
    let keep_scale = 1.0 / (1.0 - drop.p);
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    // One task per (batch, key/value head): its query heads run in order, so
    // their contributions to the shared dK and dV add up deterministically.
    (0..s.batch * s.kv_heads).into_par_iter().for_each(|bg| {
        with_scratch(if drop.active() { 3 * tt } else { 2 * tt }, |scratch| {
            let (p, rest) = scratch.split_at_mut(tt);
            let (dp, dropped) = rest.split_at_mut(tt);
            let (b, g) = (bg / s.kv_heads, bg % s.kv_heads);
            for h in g * s.group()..(g + 1) * s.group() {
                let bh = b * heads + h;
                let first = h == g * s.group();
                let (qo, ko, vo) = s.offsets(h);
                let row0 = qkv[b * t_len * w..].as_ptr();
                let go = dout[b * t_len * ow + h * hd..].as_ptr();
                let drow0 = dqkv_ptr.at(b * t_len * w);
                // SAFETY: as in the forward pass; this task alone writes the
                // gradient columns of key/value head g and of its query heads.
                unsafe {
                    let (q, k, v) = (row0.add(qo), row0.add(ko), row0.add(vo));
                    let (dq, dk, dv) = (drow0.add(qo), drow0.add(ko), drow0.add(vo));
                    scores(p, q, k, t_len, hd, w, scale);
                    causal_softmax_again(p, &stats[bh * 2 * t_len..][..2 * t_len], t_len);
                    let pd = if drop.active() {
                        apply_dropout(dropped, p, bh * tt, drop);
                        dropped.as_ptr()
                    } else {
                        p.as_ptr()
                    };
                    // d(dropped probs) = dO · V^T ; dV (+)= dropped^T · dO.
                    gemm_serial(
                        t_len,
                        t_len,
                        hd,
                        dp.as_mut_ptr(),
                        t_len,
                        false,
                        View::rows(go, ow),
                        View::transposed(v, w),
                        1.0,
                    );
                    gemm_serial(t_len, hd, t_len, dv, w, !first, View::transposed(pd, t_len), View::rows(go, ow), 1.0);
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
                    // dQ = dS · K ; dK (+)= dS^T · Q.
                    gemm_serial(t_len, hd, t_len, dq, w, false, View::rows(dp.as_ptr(), t_len), View::rows(k, w), 1.0);
                    gemm_serial(
                        t_len,
                        hd,
                        t_len,
                        dk,
                        w,
                        !first,
                        View::transposed(dp.as_ptr(), t_len),
                        View::rows(q, w),
                        1.0,
                    );
                }
            }
        })
    });
}

/// Inference over a multi-sequence cache (see `Backend::attention_cached`).
#[allow(clippy::too_many_arguments)]
/// What a KV cache stores: f32, or bf16 bits (half the bytes to stream
/// per decoding step, which is memory-bound).
pub trait CacheElem: Store {
    fn dot(q: &[f32], k: &[Self]) -> f32;
    fn axpy(y: &mut [f32], a: f32, v: &[Self]);
}

impl CacheElem for f32 {
    #[inline(always)]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, v: &[f32]) {
        axpy(y, a, v)
    }
}

impl CacheElem for u16 {
    #[inline(always)]
    fn dot(q: &[f32], k: &[u16]) -> f32 {
        fastmath::dot_bf16(q, k)
    }
    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, v: &[u16]) {
        fastmath::axpy_bf16(y, a, v)
    }
}

pub fn attention_cached<E: CacheElem>(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &mut [E],
    v_cache: &mut [E],
    rows: &[CacheRow],
    capacity: usize,
    s: AttnShape,
) {
    let (hd, w, kvw, ow) = (s.head_dim, s.qkv_width(), s.kv_width(), s.q_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let at = |r: &CacheRow| (r.slot * capacity + r.pos) * kvw;
    for (i, r) in rows.iter().enumerate() {
        assert!(r.pos < capacity && k_cache.len() >= at(r) + kvw, "KV cache overflow");
        let src = &qkv[i * w..(i + 1) * w];
        E::store(&mut k_cache[at(r)..][..kvw], &src[ow..ow + kvw]);
        E::store(&mut v_cache[at(r)..][..kvw], &src[ow + kvw..]);
    }
    let (kc, vc) = (&*k_cache, &*v_cache);
    // One task: a row's heads `h0..h1`. It walks the row's cached positions
    // in order, reading each position's keys (then values) once for all its
    // heads: a sequential stream through the cache, which is larger than the
    // weights when many sequences decode together. A head's result does not
    // depend on which task computes it (same order of operations).
    let task = |i: usize, h0: usize, h1: usize, o: &mut [f32]| {
        let r = rows[i];
        let n = r.pos + 1;
        let cache = r.slot * capacity * kvw;
        let q = &qkv[i * w..][..ow];
        with_scratch((h1 - h0) * n, |scores| {
            for t2 in 0..n {
                let keys = &kc[cache + t2 * kvw..][..kvw];
                for h in h0..h1 {
                    let g = h / s.group();
                    scores[(h - h0) * n + t2] = E::dot(&q[h * hd..][..hd], &keys[g * hd..][..hd]) * scale;
                }
            }
            for p in scores.chunks_exact_mut(n) {
                let m = fastmath::max(p);
                for sc in p.iter_mut() {
                    *sc = fastmath::exp(*sc - m);
                }
                let inv = 1.0 / fastmath::sum(p);
                p.iter_mut().for_each(|x| *x *= inv);
            }
            o.fill(0.0);
            for t2 in 0..n {
                let values = &vc[cache + t2 * kvw..][..kvw];
                for h in h0..h1 {
                    let g = h / s.group();
                    E::axpy(&mut o[(h - h0) * hd..][..hd], scores[(h - h0) * n + t2], &values[g * hd..][..hd]);
                }
            }
        })
    };
    let m = rows.len();
    let work: usize = rows.iter().map(|r| r.pos + 1).sum::<usize>() * ow;
    if work < 1 << 16 {
        for i in 0..m {
            task(i, 0, s.heads, &mut out[i * ow..][..ow]);
        }
        return;
    }
    // Whole rows per task when there are enough rows to keep every thread
    // busy; otherwise rows split into blocks of heads.
    let splits = (2 * rayon::current_num_threads()).div_ceil(m).min(s.heads);
    let per_task = s.heads.div_ceil(splits);
    out[..m * ow].par_chunks_mut(ow).enumerate().for_each(|(i, row)| {
        row.par_chunks_mut(per_task * hd).enumerate().for_each(|(b, o)| {
            let h0 = b * per_task;
            task(i, h0, h0 + o.len() / hd, o);
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::rand_vec;

    /// Rows long enough for the parallel paths: one row alone (its heads
    /// split across tasks) and the same row among others (whole rows per
    /// task) give bit-identical outputs, equal to a plain softmax attention.
    /// (The serial path for little work: `gradcheck`'s cached attention test.)
    #[test]
    fn cached_rows_agree_alone_and_together() {
        let s = AttnShape { batch: 1, seq: 1, heads: 6, kv_heads: 2, head_dim: 64 };
        let (w, ow, kvw, cap, slots) = (s.qkv_width(), s.q_width(), s.kv_width(), 300, 8);
        let (mut kc, mut vc) = (rand_vec(slots * cap * kvw, 1), rand_vec(slots * cap * kvw, 2));
        let qkv = rand_vec(slots * w, 3);
        let rows: Vec<CacheRow> = (0..slots).map(|i| CacheRow { slot: i, pos: 250 + i }).collect();
        let mut together = vec![0.0; slots * ow];
        attention_cached(&mut together, &qkv, &mut kc, &mut vc, &rows, cap, s);
        for (i, r) in rows.iter().enumerate() {
            let mut alone = vec![0.0; ow];
            attention_cached(&mut alone, &qkv[i * w..][..w], &mut kc, &mut vc, &[*r], cap, s);
            assert_eq!(alone, together[i * ow..][..ow]);
            for h in 0..s.heads {
                let (g, hd) = (h / s.group(), s.head_dim);
                let q = &qkv[i * w + h * hd..][..hd];
                let at = |t: usize| (r.slot * cap + t) * kvw + g * hd;
                let scores: Vec<f64> = (0..=r.pos)
                    .map(|t| (0..hd).map(|d| (q[d] * kc[at(t) + d]) as f64).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let want: f64 = (0..=r.pos).map(|t| e[t] / z * vc[at(t) + d] as f64).sum();
                    assert!((together[i * ow + h * hd + d] as f64 - want).abs() < 1e-4, "row {i} head {h}");
                }
            }
        }
    }
}
