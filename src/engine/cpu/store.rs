//! Where a kernel's f32 results go. An f32 buffer takes them as they are; a
//! bf16 buffer (`u16` bit patterns) takes them rounded to nearest even, the
//! same rounding the bf16 matmul applies to its operands, so a matmul input
//! stored in bf16 gives the very products it gave stored in f32.

use super::scratch::with_scratch;
use crate::engine::dtype::{encode16, DType};

pub trait Store: Copy + Send + Sync + 'static {
    /// `dst = src`, rounded to this type.
    fn store(dst: &mut [Self], src: &[f32]);

    /// Runs `f` on `dst.len()` f32 values, then stores them in `dst`: an
    /// f32 buffer is written in place, a 16-bit one through per-thread
    /// scratch (so the full-width values never exist as a whole buffer).
    fn through_f32(dst: &mut [Self], f: impl FnOnce(&mut [f32]));

    /// The pointer as an f32 pointer, for kernels that write f32 results
    /// straight into place (`None`: store through scratch).
    fn as_f32_ptr(p: *mut Self) -> Option<*mut f32>;
}

impl Store for f32 {
    #[inline(always)]
    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src)
    }
    #[inline(always)]
    fn through_f32(dst: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(dst)
    }
    fn as_f32_ptr(p: *mut f32) -> Option<*mut f32> {
        Some(p)
    }
}

/// bf16 bit patterns.
impl Store for u16 {
    #[inline(always)]
    fn store(dst: &mut [u16], src: &[f32]) {
        encode16(src, dst, DType::BF16)
    }
    fn through_f32(dst: &mut [u16], f: impl FnOnce(&mut [f32])) {
        with_scratch(dst.len(), |wide| {
            f(wide);
            Self::store(dst, wide)
        })
    }
    fn as_f32_ptr(_: *mut u16) -> Option<*mut f32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dtype::round_to;

    #[test]
    fn bf16_stores_round_like_the_matmul_operands() {
        let xs: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.0371).collect();
        let mut half = vec![0u16; xs.len()];
        u16::through_f32(&mut half, |w| w.copy_from_slice(&xs));
        for (x, &h) in xs.iter().zip(&half) {
            assert_eq!(crate::engine::dtype::f32_from_bf16(h), round_to(*x, DType::BF16));
        }
        let mut full = vec![0f32; xs.len()];
        f32::through_f32(&mut full, |w| w.copy_from_slice(&xs));
        assert_eq!(full, xs);
    }
}
