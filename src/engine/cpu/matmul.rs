//! Matrix multiply through the `gemm` crate, which reaches the fp32 peak of
//! the host; bias helpers.

use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds, splitting across threads costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `out[m,n] (+)= op(a)[m,k] · op(b)[k,n]`, row-major storage.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert!(out.len() >= m * n, "matmul: out too small");
    assert!(a.len() >= m * k, "matmul: a too small");
    assert!(b.len() >= k * n, "matmul: b too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of each operand as gemm sees it: a is
    // [m,k] or, transposed, stored [k,m]; b is [k,n] or stored [n,k].
    let (a_cs, a_rs) = if trans_a { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let threads = rayon::current_num_threads();
    let par =
        if m * n * k >= PARALLEL_MIN_FLOPS && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the asserts above guarantee every index gemm touches is in bounds;
    // `out` does not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
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

/// `dbias += column sums of dout`; parallel over column blocks so the
/// summation order (and hence the result) never depends on the thread count.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    const BLOCK: usize = 64;
    dbias[..cols].par_chunks_mut(BLOCK).enumerate().for_each(|(bi, db)| {
        let c0 = bi * BLOCK;
        let mut acc = vec![0.0f32; db.len()];
        for r in 0..rows {
            let row = &dout[r * cols + c0..r * cols + c0 + db.len()];
            for (a, x) in acc.iter_mut().zip(row) {
                *a += x;
            }
        }
        for (d, a) in db.iter_mut().zip(&acc) {
            *d += a;
        }
    });
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
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(&a, &b, m, n, k, ta, tb);
                let mut out = vec![1.0; m * n];
                matmul(&mut out, &a, &b, m, n, k, ta, tb, false);
                for (x, y) in out.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "ta={ta} tb={tb}");
                }
                matmul(&mut out, &a, &b, m, n, k, ta, tb, true);
                for (x, y) in out.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-4, "accumulate ta={ta} tb={tb}");
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
