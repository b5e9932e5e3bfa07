//! Token + position embedding lookup and its scatter-add backward.

use rayon::prelude::*;

pub fn embedding_fwd(
    out: &mut [f32],
    wte: &[f32],
    wpe: &[f32],
    tokens: &[u32],
    seq: usize,
    c: usize,
    pos_offset: usize,
) {
    out[..tokens.len() * c].par_chunks_mut(c).enumerate().for_each(|(i, o)| {
        let tok = tokens[i] as usize;
        let pos = pos_offset + i % seq;
        let te = &wte[tok * c..(tok + 1) * c];
        let pe = &wpe[pos * c..(pos + 1) * c];
        for j in 0..c {
            o[j] = te[j] + pe[j];
        }
    });
}

/// Accumulates into `dwte` and `dwpe`. Parallel over column blocks with the
/// tokens visited in order: deterministic and free of write conflicts even
/// when a token repeats.
pub fn embedding_bwd(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], tokens: &[u32], seq: usize, c: usize) {
    let vocab_rows = dwte.len() / c;
    let pos_rows = dwpe.len() / c;
    let cols = c.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let blocks: Vec<usize> = (0..c).step_by(cols).collect();
    struct Ptr(*mut f32);
    // SAFETY: each task writes only columns [c0, c0+width) of every row, so
    // tasks touch disjoint memory.
    unsafe impl Sync for Ptr {}
    let (te, pe) = (Ptr(dwte.as_mut_ptr()), Ptr(dwpe.as_mut_ptr()));
    blocks.par_iter().for_each(|&c0| {
        let width = cols.min(c - c0);
        let (te, pe) = (&te, &pe);
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            let pos = i % seq;
            assert!(tok < vocab_rows && pos < pos_rows);
            let g = &dout[i * c + c0..i * c + c0 + width];
            for (j, &gj) in g.iter().enumerate() {
                unsafe {
                    *te.0.add(tok * c + c0 + j) += gj;
                    *pe.0.add(pos * c + c0 + j) += gj;
                }
            }
        }
    });
}
