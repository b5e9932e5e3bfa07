//! Rotary position embedding, applied in place to the query and key heads of
//! a fused `qkv` buffer.

use crate::engine::AttnShape;
use rayon::prelude::*;

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 16;

/// Rotates each pair `(x[i], x[i + hd/2])` of every query and key head of
/// row `r` by the angles of `positions[r]` (negated when `inverse`).
pub fn rope(qkv: &mut [f32], cos: &[f32], sin: &[f32], s: AttnShape, positions: &[u32], inverse: bool) {
    let (w, hd) = (s.qkv_width(), s.head_dim);
    let half = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    qkv[..positions.len() * w].par_chunks_mut(w * ROWS_PER_TASK).enumerate().for_each(|(ti, block)| {
        for (ri, row) in block.chunks_exact_mut(w).enumerate() {
            let pos = positions[ti * ROWS_PER_TASK + ri] as usize;
            let (c, sn) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
            for head in row[..(s.heads + s.kv_heads) * hd].chunks_exact_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    let si = sign * sn[i];
                    x1[i] = a * c[i] - b * si;
                    x2[i] = b * c[i] + a * si;
                }
            }
        }
    });
}
