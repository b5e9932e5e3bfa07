//! Finite-difference checks of every backward kernel. Each check builds a
//! scalar `L = sum(out * r)` with a fixed random `r`, so `dL/dout = r`, and
//! compares the analytic input gradient with central differences. The checks
//! are generic over [`Backend`], so every backend runs the same proof.

use super::{Activation, AttnShape, Backend, CacheRow, Dropout};

/// Deterministic pseudo-random values in [-1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let z = super::fastmath::mix64(seed.wrapping_mul(1_000_003) ^ i as u64);
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Compares `analytic` with central differences of `loss` w.r.t. `x`
/// on a spread of coordinates.
pub fn check(name: &str, x: &mut [f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    let h = 1e-2f32;
    let n = x.len();
    let stride = (n / 40).max(1);
    let scale = analytic.iter().fold(0.0f32, |m, g| m.max(g.abs())).max(1e-3);
    for i in (0..n).step_by(stride) {
        let orig = x[i];
        x[i] = orig + h;
        let lp = loss(x);
        x[i] = orig - h;
        let lm = loss(x);
        x[i] = orig;
        let numeric = ((lp - lm) / (2.0 * h as f64)) as f32;
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= 2e-2 * scale + 1e-3 * analytic[i].abs(),
            "{name}[{i}]: analytic {} vs numeric {numeric} (scale {scale})",
            analytic[i]
        );
    }
}

pub fn check_matmul<B: Backend>(be: &B) {
    let (m, n, k) = (6, 5, 7);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut a = rand_vec(m * k, 1);
        let mut b = rand_vec(k * n, 2);
        let r = rand_vec(m * n, 3);
        let fwd = |a: &[f32], b: &[f32]| {
            let mut out = be.zeros(m * n).unwrap();
            be.matmul(&mut out, &be.upload(a).unwrap(), &be.upload(b).unwrap(), m, n, k, ta, tb, false);
            dot(&be.to_host(&out).unwrap(), &r)
        };
        // dA = R · op(B)^T, dB = op(A)^T · R, expressed with the same kernel.
        let rb = be.upload(&r).unwrap();
        let mut da = be.zeros(m * k).unwrap();
        if ta {
            // A stored [k,m]: dA_stored = op(B) · R^T  -> [k, m]
            be.matmul(&mut da, &be.upload(&b).unwrap(), &rb, k, m, n, tb, true, false);
        } else {
            be.matmul(&mut da, &rb, &be.upload(&b).unwrap(), m, k, n, false, !tb, false);
        }
        let mut db = be.zeros(k * n).unwrap();
        if tb {
            // B stored [n,k]: dB_stored = R^T · op(A) -> [n, k]
            be.matmul(&mut db, &rb, &be.upload(&a).unwrap(), n, k, m, true, ta, false);
        } else {
            be.matmul(&mut db, &be.upload(&a).unwrap(), &rb, k, n, m, !ta, false, false);
        }
        let (da, db) = (be.to_host(&da).unwrap(), be.to_host(&db).unwrap());
        let bc = b.clone();
        check("matmul dA", &mut a, &da, |a| fwd(a, &bc));
        let ac = a.clone();
        check("matmul dB", &mut b, &db, |b| fwd(&ac, b));
    }
    // bias
    let (rows, cols) = (4, 9);
    let mut bias = rand_vec(cols, 4);
    let r = rand_vec(rows * cols, 5);
    let mut dbias = be.zeros(cols).unwrap();
    be.bias_backward(&mut dbias, &be.upload(&r).unwrap(), rows, cols);
    check("bias", &mut bias, &be.to_host(&dbias).unwrap(), |b| {
        let mut out = be.zeros(rows * cols).unwrap();
        be.add_bias(&mut out, &be.upload(b).unwrap(), rows, cols);
        dot(&be.to_host(&out).unwrap(), &r)
    });
}

pub fn check_layernorm<B: Backend>(be: &B, with_bias: bool) {
    let (rows, c) = (5, 24);
    let mut x = rand_vec(rows * c, 10);
    let mut w: Vec<f32> = rand_vec(c, 11).iter().map(|v| 1.0 + 0.3 * v).collect();
    let mut bias = rand_vec(c, 12);
    let r = rand_vec(rows * c, 13);
    let fwd = |x: &[f32], w: &[f32], bias: &[f32]| {
        let (mut out, mut mean, mut rstd) =
            (be.zeros(rows * c).unwrap(), be.zeros(rows).unwrap(), be.zeros(rows).unwrap());
        let bb = be.upload(bias).unwrap();
        let bopt = if with_bias { Some(&bb) } else { None };
        be.layernorm_fwd(
            &mut out,
            &mut mean,
            &mut rstd,
            &be.upload(x).unwrap(),
            &be.upload(w).unwrap(),
            bopt,
            rows,
            c,
            1e-5,
        );
        (out, mean, rstd)
    };
    let (_, mean, rstd) = fwd(&x, &w, &bias);
    let mut dx = be.upload(&vec![0.5; rows * c]).unwrap(); // accumulates onto existing values
    let (mut dw, mut db) = (be.zeros(c).unwrap(), be.zeros(c).unwrap());
    be.layernorm_bwd(
        &mut dx,
        &mut dw,
        if with_bias { Some(&mut db) } else { None },
        &be.upload(&r).unwrap(),
        &be.upload(&x).unwrap(),
        &be.upload(&w).unwrap(),
        &mean,
        &rstd,
        rows,
        c,
    );
    let dx: Vec<f32> = be.to_host(&dx).unwrap().iter().map(|v| v - 0.5).collect();
    let loss = |x: &[f32], w: &[f32], b: &[f32]| dot(&be.to_host(&fwd(x, w, b).0).unwrap(), &r);
    let (wc, bc) = (w.clone(), bias.clone());
    check("layernorm dx", &mut x, &dx, |x| loss(x, &wc, &bc));
    let xc = x.clone();
    check("layernorm dw", &mut w, &be.to_host(&dw).unwrap(), |w| loss(&xc, w, &bc));
    if with_bias {
        check("layernorm db", &mut bias, &be.to_host(&db).unwrap(), |b| loss(&xc, &wc, b));
    }
}

pub fn check_activation<B: Backend>(be: &B, act: Activation) {
    let n = 50;
    // Away from 0 for ReLU², where the derivative has a kink.
    let mut x: Vec<f32> = rand_vec(n, 20).iter().map(|v| 3.0 * v + if v.abs() < 0.05 { 0.3 } else { 0.0 }).collect();
    let r = rand_vec(n, 21);
    let mut dx = be.zeros(n).unwrap();
    be.activation_bwd(&mut dx, &be.upload(&x).unwrap(), &be.upload(&r).unwrap(), n, act);
    check(&format!("{act:?}"), &mut x, &be.to_host(&dx).unwrap(), |x| {
        let mut out = be.zeros(n).unwrap();
        be.activation_fwd(&mut out, &be.upload(x).unwrap(), n, act);
        dot(&be.to_host(&out).unwrap(), &r)
    });
}

pub fn check_swiglu<B: Backend>(be: &B) {
    let (rows, hidden) = (3, 7);
    let mut x: Vec<f32> = rand_vec(rows * 2 * hidden, 22).iter().map(|v| 2.0 * v).collect();
    let r = rand_vec(rows * hidden, 23);
    let mut dx = be.upload(&vec![5.0; rows * 2 * hidden]).unwrap(); // must be overwritten
    be.swiglu_bwd(&mut dx, &be.upload(&x).unwrap(), &be.upload(&r).unwrap(), rows, hidden);
    check("swiglu", &mut x, &be.to_host(&dx).unwrap(), |x| {
        let mut out = be.zeros(rows * hidden).unwrap();
        be.swiglu_fwd(&mut out, &be.upload(x).unwrap(), rows, hidden);
        dot(&be.to_host(&out).unwrap(), &r)
    });
}

pub fn check_rmsnorm<B: Backend>(be: &B) {
    let (rows, c) = (5, 24);
    let mut x = rand_vec(rows * c, 14);
    let mut w: Vec<f32> = rand_vec(c, 15).iter().map(|v| 1.0 + 0.3 * v).collect();
    let r = rand_vec(rows * c, 16);
    let fwd = |x: &[f32], w: &[f32]| {
        let (mut out, mut rstd) = (be.zeros(rows * c).unwrap(), be.zeros(rows).unwrap());
        be.rmsnorm_fwd(&mut out, &mut rstd, &be.upload(x).unwrap(), &be.upload(w).unwrap(), rows, c, 1e-6);
        (out, rstd)
    };
    let (_, rstd) = fwd(&x, &w);
    let mut dx = be.upload(&vec![0.5; rows * c]).unwrap(); // accumulates onto existing values
    let mut dw = be.zeros(c).unwrap();
    be.rmsnorm_bwd(
        &mut dx,
        &mut dw,
        &be.upload(&r).unwrap(),
        &be.upload(&x).unwrap(),
        &be.upload(&w).unwrap(),
        &rstd,
        rows,
        c,
    );
    let dx: Vec<f32> = be.to_host(&dx).unwrap().iter().map(|v| v - 0.5).collect();
    let wc = w.clone();
    check("rmsnorm dx", &mut x, &dx, |x| dot(&be.to_host(&fwd(x, &wc).0).unwrap(), &r));
    let xc = x.clone();
    check("rmsnorm dw", &mut w, &be.to_host(&dw).unwrap(), |w| dot(&be.to_host(&fwd(&xc, w).0).unwrap(), &r));
}

/// A grouped-query shape: 4 query heads sharing 2 key/value heads.
const GQA: AttnShape = AttnShape { batch: 2, seq: 5, heads: 4, kv_heads: 2, head_dim: 4 };

pub fn check_qk_norm<B: Backend>(be: &B) {
    let s = GQA;
    let rows = s.batch * s.seq;
    let n = rows * s.qkv_width();
    let mut x = rand_vec(n, 17);
    let r = rand_vec(n, 18);
    let fwd = |x: &[f32]| {
        let (mut out, mut rstd) = (be.zeros(n).unwrap(), be.zeros(rows * (s.heads + s.kv_heads)).unwrap());
        be.qk_norm_fwd(&mut out, &mut rstd, &be.upload(x).unwrap(), s, rows);
        (out, rstd)
    };
    let (_, rstd) = fwd(&x);
    let mut dx = be.upload(&vec![9.0; n]).unwrap(); // must be overwritten
    be.qk_norm_bwd(&mut dx, &be.upload(&r).unwrap(), &be.upload(&x).unwrap(), &rstd, s, rows);
    check("qk-norm", &mut x, &be.to_host(&dx).unwrap(), |x| dot(&be.to_host(&fwd(x).0).unwrap(), &r));
}

pub fn check_rope<B: Backend>(be: &B) {
    let s = GQA;
    let rows = s.batch * s.seq;
    let n = rows * s.qkv_width();
    let (cos, sin) = crate::model::positions::rope_tables(s.seq + 3, s.head_dim, 100.0);
    let (cos, sin) = (be.upload(&cos).unwrap(), be.upload(&sin).unwrap());
    let mut x = rand_vec(n, 19);
    let r = rand_vec(n, 24);
    // The backward is the inverse rotation applied to the output gradient.
    let positions: Vec<u32> = (0..rows as u32).map(|r| 3 + r % s.seq as u32).collect();
    let mut dx = be.upload(&r).unwrap();
    be.rope(&mut dx, &cos, &sin, s, &positions, true);
    check("rope", &mut x, &be.to_host(&dx).unwrap(), |x| {
        let mut y = be.upload(x).unwrap();
        be.rope(&mut y, &cos, &sin, s, &positions, false);
        dot(&be.to_host(&y).unwrap(), &r)
    });
}

pub fn check_attention<B: Backend>(be: &B, s: AttnShape, drop: Dropout) {
    let n = s.batch * s.seq * s.qkv_width();
    let on = s.batch * s.seq * s.q_width();
    let mut qkv = rand_vec(n, 30);
    let r = rand_vec(on, 31);
    let fwd = |qkv: &[f32]| {
        let mut out = be.zeros(on).unwrap();
        let mut stats = be.zeros(s.stats_len()).unwrap();
        be.attention_fwd(&mut out, &mut stats, &be.upload(qkv).unwrap(), s, drop);
        (out, stats)
    };
    let (_, stats) = fwd(&qkv);
    let mut dqkv = be.upload(&vec![9.0; n]).unwrap(); // must be overwritten
    be.attention_bwd(&mut dqkv, &be.upload(&r).unwrap(), &be.upload(&qkv).unwrap(), &stats, s, drop);
    check("attention", &mut qkv, &be.to_host(&dqkv).unwrap(), |q| dot(&be.to_host(&fwd(q).0).unwrap(), &r));
}

pub fn check_cross_entropy<B: Backend>(be: &B, softcap: Option<f32>) {
    let (rows, vocab, padded) = (4, 10, 16);
    let mut logits: Vec<f32> = rand_vec(rows * padded, 40).iter().map(|v| 4.0 * v).collect();
    let targets = [3u32, 0, 9, 3];
    let scale = 0.25;
    let loss = |l: &[f32]| {
        let mut losses = be.zeros(rows).unwrap();
        be.cross_entropy(&mut losses, &mut be.upload(l).unwrap(), &targets, rows, vocab, padded, softcap, None);
        be.to_host(&losses).unwrap().iter().map(|&v| v as f64 * scale as f64).sum::<f64>()
    };
    let mut grad = be.upload(&logits).unwrap();
    let mut losses = be.zeros(rows).unwrap();
    be.cross_entropy(&mut losses, &mut grad, &targets, rows, vocab, padded, softcap, Some(scale));
    let grad = be.to_host(&grad).unwrap();
    for r in 0..rows {
        assert!(grad[r * padded + vocab..(r + 1) * padded].iter().all(|&g| g == 0.0));
    }
    check("cross_entropy", &mut logits, &grad, loss);
}

pub fn check_embedding<B: Backend>(be: &B, with_positions: bool) {
    let (vocab, block, c, seq) = (7, 6, 5, 4);
    let tokens = [1u32, 3, 1, 6, 0, 1, 2, 1]; // repeats on purpose
    let positions: Vec<u32> = (0..tokens.len() as u32).map(|i| i % seq as u32).collect();
    let mut wte = rand_vec(vocab * c, 50);
    let mut wpe = rand_vec(block * c, 51);
    let r = rand_vec(tokens.len() * c, 52);
    let fwd = |wte: &[f32], wpe: &[f32]| {
        let mut out = be.zeros(tokens.len() * c).unwrap();
        let wpe = be.upload(wpe).unwrap();
        be.embedding_fwd(&mut out, &be.upload(wte).unwrap(), with_positions.then_some(&wpe), &tokens, &positions, c);
        dot(&be.to_host(&out).unwrap(), &r)
    };
    let (mut dwte, mut dwpe) = (be.zeros(vocab * c).unwrap(), be.zeros(block * c).unwrap());
    be.embedding_bwd(&mut dwte, with_positions.then_some(&mut dwpe), &be.upload(&r).unwrap(), &tokens, &positions, c);
    let wpec = wpe.clone();
    check("embedding wte", &mut wte, &be.to_host(&dwte).unwrap(), |w| fwd(w, &wpec));
    if with_positions {
        let wtec = wte.clone();
        check("embedding wpe", &mut wpe, &be.to_host(&dwpe).unwrap(), |w| fwd(&wtec, w));
    }
}

pub fn check_dropout<B: Backend>(be: &B) {
    // Dropout is linear with a fixed mask: its backward is the same call.
    let n = 64;
    let drop = Dropout { p: 0.3, seed: 7 };
    let mut x = rand_vec(n, 60);
    let r = rand_vec(n, 61);
    let mut g = be.upload(&r).unwrap();
    be.dropout(&mut g, drop);
    check("dropout", &mut x, &be.to_host(&g).unwrap(), |x| {
        let mut b = be.upload(x).unwrap();
        be.dropout(&mut b, drop);
        dot(&be.to_host(&b).unwrap(), &r)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::{Cpu, CpuBuf};
    use crate::engine::dtype::round_to;
    use crate::engine::DType;

    #[test]
    fn matmul_and_bias() {
        check_matmul(&Cpu);
    }
    #[test]
    fn layernorm() {
        check_layernorm(&Cpu, true);
        check_layernorm(&Cpu, false);
    }
    #[test]
    fn activations() {
        for act in [Activation::GeluTanh, Activation::Gelu, Activation::Relu2] {
            check_activation(&Cpu, act);
        }
        check_swiglu(&Cpu);
    }
    #[test]
    fn rmsnorm_and_qk_norm() {
        check_rmsnorm(&Cpu);
        check_qk_norm(&Cpu);
    }
    #[test]
    fn rope() {
        check_rope(&Cpu);
    }
    #[test]
    fn attention() {
        let mha = AttnShape { batch: 2, seq: 5, heads: 2, kv_heads: 2, head_dim: 4 };
        let mqa = AttnShape { kv_heads: 1, ..GQA };
        for s in [mha, GQA, mqa] {
            check_attention(&Cpu, s, Dropout::OFF);
            check_attention(&Cpu, s, Dropout { p: 0.25, seed: 3 });
        }
    }
    #[test]
    fn cross_entropy() {
        check_cross_entropy(&Cpu, None);
        check_cross_entropy(&Cpu, Some(3.0));
    }
    #[test]
    fn embedding() {
        check_embedding(&Cpu, true);
        check_embedding(&Cpu, false);
    }
    #[test]
    fn dropout() {
        check_dropout(&Cpu);
    }

    #[test]
    fn cached_attention_matches_training_attention() {
        let be = Cpu;
        for (kv_heads, dtype) in [(3, DType::F32), (1, DType::F32), (3, DType::BF16), (1, DType::BF16)] {
            // Two sequences in one cache (slots 0 and 1), fed differently.
            let s = AttnShape { batch: 2, seq: 7, heads: 3, kv_heads, head_dim: 4 };
            let (w, ow, kvw, cap) = (s.qkv_width(), s.q_width(), s.kv_width(), 8);
            let qkv = rand_vec(s.batch * s.seq * w, 70);
            // What a cache of `dtype` holds: keys and values rounded to it.
            let mut rounded = qkv.clone();
            for row in rounded.chunks_exact_mut(w) {
                row[ow..].iter_mut().for_each(|x| *x = round_to(*x, dtype));
            }
            let mut want = be.zeros(s.batch * s.seq * ow).unwrap();
            let mut stats = be.zeros(s.stats_len()).unwrap();
            be.attention_fwd(&mut want, &mut stats, &rounded.into(), s, Dropout::OFF);
            let mut kc = be.zeros_as(2 * cap * kvw, dtype).unwrap();
            let mut vc = be.zeros_as(2 * cap * kvw, dtype).unwrap();
            let mut got = vec![0.0; s.batch * s.seq * ow];
            let row = |b: usize, t: usize| b * s.seq + t;
            // Prefill 4 rows of sequence 0 and 2 of sequence 1 in one call...
            let prefill: Vec<(usize, usize)> = (0..4).map(|t| (0, t)).chain((0..2).map(|t| (1, t))).collect();
            let run = |kc: &mut CpuBuf, vc: &mut CpuBuf, got: &mut Vec<f32>, batch: &[(usize, usize)]| {
                let q: Vec<f32> =
                    batch.iter().flat_map(|&(b, t)| qkv[row(b, t) * w..(row(b, t) + 1) * w].to_vec()).collect();
                let rows: Vec<CacheRow> = batch.iter().map(|&(b, t)| CacheRow { slot: b, pos: t }).collect();
                let mut out = be.zeros(batch.len() * ow).unwrap();
                be.attention_cached(&mut out, &q.into(), kc, vc, &rows, cap, s);
                for (i, &(b, t)) in batch.iter().enumerate() {
                    got[row(b, t) * ow..(row(b, t) + 1) * ow].copy_from_slice(&out[i * ow..(i + 1) * ow]);
                }
            };
            run(&mut kc, &mut vc, &mut got, &prefill);
            // ...then decode both together, one row each, until each is done.
            for step in 0..5 {
                let batch: Vec<(usize, usize)> =
                    [(0, 4 + step), (1, 2 + step)].into_iter().filter(|&(_, t)| t < s.seq).collect();
                run(&mut kc, &mut vc, &mut got, &batch);
            }
            assert_eq!(be.dtype(&kc), dtype);
            for (a, b) in got.iter().zip(want.iter()) {
                assert!((a - b).abs() < 1e-5, "{dtype}: {a} vs {b}");
            }
        }
    }
}
