//! Token (+ position) embedding lookup and its scatter-add backward.

use super::CpuBuf;
use rayon::prelude::*;

/// The tables may be of any dtype (bf16 weights for inference).
pub fn embedding_fwd(out: &mut [f32], wte: &CpuBuf, wpe: Option<&CpuBuf>, tokens: &[u32], positions: &[u32], c: usize) {
    assert_eq!(tokens.len(), positions.len());
    out[..tokens.len() * c].par_chunks_mut(c).enumerate().for_each(|(i, o)| {
        wte.row_into(tokens[i] as usize, o, false);
        if let Some(wpe) = wpe {
            wpe.row_into(positions[i] as usize, o, true);
        }
    });
}

/// Accumulates into `dwte` (and `dwpe`). Parallel over column blocks with
/// the tokens visited in order: deterministic and free of write conflicts
/// even when a token repeats.
pub fn embedding_bwd(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    positions: &[u32],
    c: usize,
) {
    let vocab_rows = dwte.len() / c;
    let cols = c.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let blocks: Vec<usize> = (0..c).step_by(cols).collect();
    struct Ptr(*mut f32);
    // SAFETY: each task writes only columns [c0, c0+width) of every row, so
    // tasks touch disjoint memory.
    unsafe impl Sync for Ptr {}
    let pos_rows = dwpe.as_ref().map_or(0, |p| p.len() / c);
    let te = Ptr(dwte.as_mut_ptr());
    let pe = dwpe.map(|p| Ptr(p.as_mut_ptr()));
    for &tok in tokens {
        assert!((tok as usize) < vocab_rows, "token {tok} outside the embedding table");
    }
    assert_eq!(tokens.len(), positions.len());
    assert!(pe.is_none() || positions.iter().all(|&p| (p as usize) < pos_rows), "position outside the table");
    blocks.par_iter().for_each(|&c0| {
        let width = cols.min(c - c0);
        let (te, pe) = (&te, &pe);
        for (i, &tok) in tokens.iter().enumerate() {
            let (tok, pos) = (tok as usize, positions[i] as usize);
            let g = &dout[i * c + c0..i * c + c0 + width];
            for (j, &gj) in g.iter().enumerate() {
                // SAFETY: in bounds by the asserts above; disjoint columns per task.
                unsafe {
                    *te.0.add(tok * c + c0 + j) += gj;
                    if let Some(pe) = pe {
                        *pe.0.add(pos * c + c0 + j) += gj;
                    }
                }
            }
        }
    });
}
