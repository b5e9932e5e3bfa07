//! Matrix multiply through the `gemm` crate, which reaches the fp32 peak of
//! the host; bias helpers.

use super::gemm_bf16::{self, Src};
use super::{qmatmul, skinny, CpuBuf};
use crate::engine::{fastmath, DType, Matmul};
use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds, splitting across threads costs more than it
/// saves (inside the rayon pool a fork-join costs a few microseconds; a
/// single-row product of a 128-wide model is about that much work).
const PARALLEL_MIN_FLOPS: usize = 1 << 15;
/// Row/column blocks handed to threads are multiples of this (the gemm
/// microkernel's tile edge), so no thread gets a ragged tile in the middle.
const SPLIT_ALIGN: usize = 16;

/// The product of `mm` on operands of any dtype: bf16 arithmetic through
/// [`gemm_bf16`]; f32 arithmetic on f32 operands through [`matmul`], on
/// 16-bit ones by widening them to f32 first.
pub fn matmul_any(out: &mut [f32], a: &CpuBuf, b: &CpuBuf, mm: Matmul) {
    // Operand blocks that start inside their buffers: slice, then multiply
    // the slices as whole operands.
    let [oa, ob, oo] = mm.offsets;
    let (out, mm) = (&mut out[oo..], Matmul { offsets: [0; 3], ..mm });
    fn src(x: &CpuBuf, off: usize) -> Src<'_> {
        match x {
            CpuBuf::F32(v) => Src::F32(&v[off..]),
            CpuBuf::BF16(v) => Src::BF16(&v[off..]),
            CpuBuf::F16(v) => Src::F16(&v[off..]),
            CpuBuf::Blocks(..) => panic!("matmul: {} weights take f32 arithmetic, not bf16", x.dtype()),
        }
    }
    match (mm.compute, a, b) {
        // Block-quantized weights: `x · Wᵀ` on the blocks, whatever the rows.
        (_, CpuBuf::F32(a), CpuBuf::Blocks(dt, bytes)) if !mm.trans_a && mm.trans_b => {
            let Matmul { m, n, k, lda, ldb, ldo, accumulate, .. } = mm;
            assert!(ldb == k && ob % k == 0, "matmul: {dt} weights are whole rows of whole blocks");
            let a = &a[oa..];
            if checked(out, a.len(), b.len() - ob, mm) {
                qmatmul::matmul_nt_q(out, a, &bytes[dt.size_of(ob)..], *dt, (m, n, k), lda, ldo, accumulate);
            }
        }
        (DType::BF16, a, b) => gemm_bf16::matmul(out, src(a, oa), src(b, ob), mm),
        (_, CpuBuf::F32(a), CpuBuf::F32(b)) => matmul(out, &a[oa..], &b[ob..], mm),
        // Decoding with 16-bit weights: a few rows against `Wᵀ`.
        (_, CpuBuf::F32(a), b @ (CpuBuf::BF16(_) | CpuBuf::F16(_)))
            if !mm.trans_a && mm.trans_b && skinny::ROWS.contains(&mm.m) =>
        {
            let (CpuBuf::BF16(bits) | CpuBuf::F16(bits)) = b else { unreachable!("matched above") };
            let (a, bits) = (&a[oa..], &bits[ob..]);
            if checked(out, a.len(), bits.len(), mm) {
                let Matmul { m, n, k, lda, ldb, ldo, accumulate, .. } = mm;
                skinny::matmul_nt_16(out, a, bits, b.dtype(), m, n, k, lda, ldb, ldo, accumulate);
            }
        }
        (_, a, b) => {
            fn wide(x: &CpuBuf, off: usize) -> std::borrow::Cow<'_, [f32]> {
                match x {
                    CpuBuf::F32(v) => std::borrow::Cow::Borrowed(&v[off..]),
                    _ => std::borrow::Cow::Owned(x.read_f32(off, x.len() - off)),
                }
            }
            matmul(out, &wide(a, oa), &wide(b, ob), mm)
        }
    }
}

/// Checks that operands of `a_len` and `b_len` elements and `out` hold the
/// product `mm` describes (panics otherwise: a caller's bug), and does the
/// products with nothing to sum (`k == 0`). Returns whether work remains.
pub fn checked(out: &mut [f32], a_len: usize, b_len: usize, mm: Matmul) -> bool {
    let Matmul { m, n, k, trans_a, trans_b, accumulate, lda, ldb, ldo, .. } = mm;
    if m == 0 || n == 0 {
        return false;
    }
    // Extent of a stored matrix of `rows` rows of which `cols` are used.
    let extent = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
    assert!(ldo >= n && out.len() >= extent(m, n, ldo), "matmul: out too small");
    if k == 0 {
        if !accumulate {
            out.chunks_mut(ldo).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return false;
    }
    // a is [m,k] or, transposed, stored [k,m]; b is [k,n] or stored [n,k].
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(lda >= a_cols && a_len >= extent(a_rows, a_cols, lda), "matmul: a too small");
    assert!(ldb >= b_cols && b_len >= extent(b_rows, b_cols, ldb), "matmul: b too small");
    true
}

/// `out[m,n] (+)= op(a)[m,k] · op(b)[k,n]` in f32, row-major storage with
/// the row strides of `mm`.
///
/// Threads split the larger output dimension into contiguous blocks and run
/// one single-threaded gemm each. Measured against gemm's own rayon mode on
/// 2 cores, this is as fast on large products and up to 1.4x faster on the
/// small and transposed (weight-gradient) ones a training step is made of.
pub fn matmul(out: &mut [f32], a: &[f32], b: &[f32], mm: Matmul) {
    if !checked(out, a.len(), b.len(), mm) {
        return;
    }
    let Matmul { m, n, k, trans_a, trans_b, accumulate, lda, ldb, ldo, .. } = mm;
    if !trans_a && trans_b && skinny::ROWS.contains(&m) {
        skinny::matmul_nt(out, a, b, m, n, k, lda, ldb, ldo, accumulate);
        return;
    }
    let av = if trans_a { View::transposed(a.as_ptr(), lda) } else { View::rows(a.as_ptr(), lda) };
    let bv = if trans_b { View::transposed(b.as_ptr(), ldb) } else { View::rows(b.as_ptr(), ldb) };
    let threads = rayon::current_num_threads();
    let split_m = m >= n;
    let dim = if split_m { m } else { n };
    let block = dim.div_ceil(threads).div_ceil(SPLIT_ALIGN) * SPLIT_ALIGN;
    if threads == 1 || m * n * k < PARALLEL_MIN_FLOPS || block >= dim {
        // SAFETY: the asserts above bound every index gemm touches; `out`
        // does not alias `a` or `b` (distinct borrows).
        unsafe { gemm_serial(m, n, k, out.as_mut_ptr(), ldo, accumulate, av, bv, 1.0) };
        return;
    }
    let dst = SharedMut(out.as_mut_ptr());
    let (av, bv) = (SharedView(av), SharedView(bv));
    (0..dim.div_ceil(block)).into_par_iter().for_each(|i| {
        let (start, len) = (i * block, block.min(dim - i * block));
        let (av, bv) = (av.get(), bv.get());
        // SAFETY: as above; the blocks write disjoint rows (or columns) of `out`.
        unsafe {
            if split_m {
                gemm_serial(len, n, k, dst.at(start * ldo), ldo, accumulate, av.offset_rows(start), bv, 1.0);
            } else {
                gemm_serial(m, len, k, dst.at(start), ldo, accumulate, av, bv.offset_cols(start), 1.0);
            }
        }
    });
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub struct SharedMut<T = f32>(pub *mut T);
// SAFETY: only used by kernels whose tasks write disjoint elements.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}
impl<T> SharedMut<T> {
    /// A method, not a field access, so closures capture the whole wrapper.
    pub fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// A read-only [`View`] shared by tasks.
#[derive(Clone, Copy)]
struct SharedView(View);
// SAFETY: the view is only read.
unsafe impl Send for SharedView {}
unsafe impl Sync for SharedView {}
impl SharedView {
    fn get(self) -> View {
        self.0
    }
}

/// A strided matrix view for [`gemm_serial`]: element `(i, j)` is at
/// `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Row-major with row stride `rs`.
    pub fn rows(ptr: *const f32, rs: usize) -> View {
        View { ptr, rs: rs as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with row stride `rs`.
    pub fn transposed(ptr: *const f32, rs: usize) -> View {
        View { ptr, rs: 1, cs: rs as isize }
    }
    /// The view starting at row `i`.
    pub fn offset_rows(self, i: usize) -> View {
        View { ptr: self.ptr.wrapping_offset(i as isize * self.rs), ..self }
    }
    /// The view starting at column `j`.
    pub fn offset_cols(self, j: usize) -> View {
        View { ptr: self.ptr.wrapping_offset(j as isize * self.cs), ..self }
    }
}

/// Single-threaded `dst[m,n] (+)= scale * a[m,k] · b[k,n]` on strided views:
/// the building block of kernels that are themselves parallel over
/// independent problems (attention heads), where `dst` is a row-major view
/// with row stride `dst_rs`.
///
/// # Safety
/// Every element the views address must be valid, and `dst` must not
/// overlap `a`, `b`, or anything another thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0f32,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

pub fn add_bias(out: &mut [f32], bias: &[f32], rows: usize, cols: usize) {
    out[..rows * cols].par_chunks_mut(cols * 64).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(cols) {
            for (o, b) in row.iter_mut().zip(bias) {
                *o += b;
            }
        }
    });
}

/// `dbias += column sums of dout`. Blocks of rows sum into their own
/// partials, added in block order afterwards: a fixed block count, so the
/// result never depends on the thread count.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    const ROW_BLOCKS: usize = 32;
    let block_rows = rows.div_ceil(ROW_BLOCKS).max(1);
    let blocks = rows.div_ceil(block_rows);
    let mut partial = vec![0.0f32; blocks * cols];
    partial.par_chunks_mut(cols).zip(dout[..rows * cols].par_chunks(block_rows * cols)).for_each(|(acc, block)| {
        for row in block.chunks_exact(cols) {
            fastmath::add_to(acc, row);
        }
    });
    for acc in partial.chunks_exact(cols) {
        fastmath::add_to(&mut dbias[..cols], acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for kk in 0..k {
                    let av = if ta { a[kk * m + i] } else { a[i * k + kk] };
                    let bv = if tb { b[j * k + kk] } else { b[kk * n + j] };
                    s += av * bv;
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    #[test]
    fn all_transposes_match_naive() {
        check_shape(37, 29, 53);
    }

    #[test]
    fn threaded_splits_match_naive() {
        // Big enough to split: by rows (m > n) and by columns, ragged blocks.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            check_shape(131, 70, 97);
            check_shape(45, 150, 77);
        });
    }

    fn check_shape(m: usize, n: usize, k: usize) {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(&a, &b, m, n, k, ta, tb);
                let mut out = vec![1.0; m * n];
                matmul(&mut out, &a, &b, Matmul::new(m, n, k, ta, tb, false));
                for (x, y) in out.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "ta={ta} tb={tb}");
                }
                matmul(&mut out, &a, &b, Matmul::new(m, n, k, ta, tb, true));
                for (x, y) in out.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-4, "accumulate ta={ta} tb={tb}");
                }
            }
        }
    }

    #[test]
    fn strided_blocks_match_naive_and_leave_the_rest() {
        let (m, n, k) = (19, 23, 29);
        for ta in [false, true] {
            for tb in [false, true] {
                let mm = Matmul::new(m, n, k, ta, tb, false);
                let (lda, ldb, ldo) = (mm.lda + 5, mm.ldb + 7, n + 2);
                let (a_rows, b_rows) = (if ta { k } else { m }, if tb { n } else { k });
                let a: Vec<f32> = (0..a_rows * lda).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
                let b: Vec<f32> = (0..b_rows * ldb).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
                // The same matrices, packed contiguously.
                let pack = |x: &[f32], rows: usize, cols: usize, ld: usize| -> Vec<f32> {
                    (0..rows).flat_map(|r| x[r * ld..r * ld + cols].to_vec()).collect()
                };
                let want = naive(&pack(&a, a_rows, mm.lda, lda), &pack(&b, b_rows, mm.ldb, ldb), m, n, k, ta, tb);
                let mut out = vec![7.0; m * ldo];
                matmul(&mut out, &a, &b, mm.strides(lda, ldb, ldo));
                for r in 0..m {
                    for c in 0..ldo {
                        let got = out[r * ldo + c];
                        if c < n {
                            assert!((got - want[r * n + c]).abs() < 1e-4, "ta={ta} tb={tb}");
                        } else {
                            assert_eq!(got, 7.0, "wrote outside the block");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bias_grad_is_column_sum() {
        let (rows, cols) = (5, 70);
        let dout: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut db = vec![1.0; cols];
        bias_backward(&mut db, &dout, rows, cols);
        for (c, &got) in db.iter().enumerate() {
            let want: f32 = 1.0 + (0..rows).map(|r| (r * cols + c) as f32).sum::<f32>();
            assert_eq!(got, want);
        }
    }
}
