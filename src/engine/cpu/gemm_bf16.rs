//! bf16 matrix multiply, f32 accumulation: `out[m,n] (+)= op(a) · op(b)`
//! with both operands rounded to bfloat16 (f32 operands are rounded while
//! they are packed, as PyTorch's autocast rounds them before its bf16 GEMM).
//! Products of two bf16 values are exact in f32; only the sums round.
//!
//! Operands are packed per block into the layout the bf16 instructions
//! read: `A` as 32-row strips of bf16 rows (k contiguous), `B` as 16-column
//! strips of k-pairs (`[k/2][16][2]`, the "VNNI" layout). Packing handles
//! transposes, strides and the conversion, so one microkernel serves every
//! case. Three microkernels compute a 32 × 32 block from the packs:
//! - AMX (`tdpbf16ps`: a 16 × 16 f32 tile += 16 × 32 bf16 · 32 × 16 bf16)
//!   where the CPU has it and Linux grants the tile state (Sapphire Rapids
//!   and later Xeons);
//! - AVX512-BF16 (`vdpbf16ps`: 16 lanes of two products each, Zen 4 and
//!   Cooper Lake) when the build targets it;
//! - portable f32 code otherwise (correct, not fast).

use super::matmul::SharedMut;
use crate::engine::dtype::{bf16_from_f32, f32_from_bf16, f32_from_f16};
use crate::engine::Matmul;
use rayon::prelude::*;
use std::cell::RefCell;

/// k per packed block (a multiple of 32).
const KC: usize = 2048;
/// k per block when `A` is packed from its transpose (weight gradients,
/// k = the batch's rows): short blocks leave room for wide `B` blocks, so
/// the costly transposing pack of `A` runs once per k block, not once per
/// column block (measured 1.3-1.6x on the `shakespeare-char` gradients).
const KC_TRANSPOSED: usize = 256;
/// bf16 values per packed `B` block (1 MiB): it stays in L2 while every
/// 32-row strip of `A` passes over it.
const B_PACK: usize = 1 << 19;
/// Rows of `A` packed at once (a multiple of 32): long runs of a
/// transposed `A`'s rows, and 512 KiB of pack at most with `KC`.
const MC: usize = 128;
/// Below this many multiply-adds one thread does the whole product.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// An operand as stored: row-major with row stride `ld`.
#[derive(Clone, Copy)]
pub enum Src<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
}

/// The vector paths of [`Elem::encode_pairs`] and [`Elem::pack_a_trans_fast`]
/// for a type the AVX-512 packs read (`avx512::Lanes`), in its `impl Elem`.
macro_rules! vector_packs {
    () => {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512bf16"))]
        #[inline(always)]
        fn encode_pairs(r0: &[Self; 16], r1: Option<&[Self; 16]>, dst: &mut [u16; 32]) {
            // SAFETY: the build targets AVX512-BF16.
            unsafe { avx512::encode_pairs(r0, r1, dst) }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512bf16"))]
        fn pack_a_trans_fast(
            pack: &mut [u16],
            a: Mat<Self>,
            i0: usize,
            mr: usize,
            p0: usize,
            kc: usize,
            ka: usize,
        ) -> usize {
            // SAFETY: the build targets AVX-512F and AVX512-BF16; bounds checked inside.
            unsafe { avx512::pack_a_trans(pack, a.data, a.ld, i0, mr, p0, kc, ka) }
        }
    };
}

/// How a stored element becomes bf16 bits.
trait Elem: Copy + Send + Sync {
    fn bf16(self) -> u16;
    /// `dst[i] = src[i].bf16()`.
    #[inline(always)]
    fn encode(src: &[Self], dst: &mut [u16]) {
        dst.iter_mut().zip(src).for_each(|(d, x)| *d = x.bf16());
    }
    /// 16 columns of two k rows as 16 (k, k + 1) pairs (`r1` none: zeros).
    #[inline(always)]
    fn encode_pairs(r0: &[Self; 16], r1: Option<&[Self; 16]>, dst: &mut [u16; 32]) {
        for c in 0..16 {
            dst[2 * c] = r0[c].bf16();
            dst[2 * c + 1] = r1.map_or(0, |r| r[c].bf16());
        }
    }
    /// Packs the first rows of `op(a)` (a transposed `A`, see [`pack_a`])
    /// with vector instructions where this type has them; returns how many
    /// rows it did (the rest are packed by the portable loop).
    fn pack_a_trans_fast(
        _pack: &mut [u16],
        _a: Mat<Self>,
        _i0: usize,
        _mr: usize,
        _p0: usize,
        _kc: usize,
        _ka: usize,
    ) -> usize {
        0
    }
}
impl Elem for f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "avx512bf16"))]
    #[inline(always)]
    fn encode(src: &[f32], dst: &mut [u16]) {
        // SAFETY: the build targets AVX512-BF16.
        unsafe { avx512::encode(src, dst) }
    }
    vector_packs!();
    #[inline(always)]
    fn bf16(self) -> u16 {
        bf16_from_f32(self)
    }
}
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16(u16);
impl Elem for Bf16 {
    #[inline(always)]
    fn bf16(self) -> u16 {
        self.0
    }
    vector_packs!();
}
#[derive(Clone, Copy)]
#[repr(transparent)]
struct F16(u16);
impl Elem for F16 {
    #[inline(always)]
    fn bf16(self) -> u16 {
        bf16_from_f32(f32_from_f16(self.0))
    }
}

/// A stored matrix with row stride `ld`; `trans`: stored transposed.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    ld: usize,
    trans: bool,
}

/// Which microkernel computes the 32 × 32 blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Amx,
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
    Avx512Bf16,
    Portable,
}

/// The fastest kernel this machine runs.
pub fn best_kernel() -> Kernel {
    if amx::available() {
        return Kernel::Amx;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
    return Kernel::Avx512Bf16;
    #[allow(unreachable_code)]
    Kernel::Portable
}

/// The product of `mm` with bf16 arithmetic (see the module comment).
pub fn matmul(out: &mut [f32], a: Src, b: Src, mm: Matmul) {
    matmul_with(best_kernel(), out, a, b, mm)
}

pub fn matmul_with(kernel: Kernel, out: &mut [f32], a: Src, b: Src, mm: Matmul) {
    match (a, b) {
        (Src::F32(a), b) => with_b(kernel, out, a, b, mm),
        (Src::BF16(a), b) => with_b(kernel, out, bf16s(a), b, mm),
        (Src::F16(a), b) => with_b(kernel, out, f16s(a), b, mm),
    }
}

fn bf16s(v: &[u16]) -> &[Bf16] {
    // SAFETY: Bf16 is `repr(transparent)` over u16.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<Bf16>(), v.len()) }
}
fn f16s(v: &[u16]) -> &[F16] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<F16>(), v.len()) }
}

fn with_b<A: Elem>(kernel: Kernel, out: &mut [f32], a: &[A], b: Src, mm: Matmul) {
    match b {
        Src::F32(b) => run(kernel, out, a, b, mm),
        Src::BF16(b) => run(kernel, out, a, bf16s(b), mm),
        Src::F16(b) => run(kernel, out, a, f16s(b), mm),
    }
}

fn run<A: Elem, B: Elem>(kernel: Kernel, out: &mut [f32], a: &[A], b: &[B], mm: Matmul) {
    if !super::matmul::checked(out, a.len(), b.len(), mm) {
        return;
    }
    let Matmul { m, n, k, trans_a, trans_b, accumulate, lda, ldb, ldo, .. } = mm;
    let am = Mat { data: a, ld: lda, trans: trans_a };
    let bm = Mat { data: b, ld: ldb, trans: trans_b };
    let dst = Out { ptr: SharedMut(out.as_mut_ptr()), ld: ldo, transposed: false };
    if trans_a && !trans_b && m > n {
        // Both stored k-major (a weight gradient `dYᵀ · X`): one operand must
        // be transposed while packed, and reading a matrix across its rows
        // costs more the wider it is. Compute `outᵀ = op(b)ᵀ · op(a)ᵀ` instead,
        // which transposes the narrower one.
        let (bt, at) = (Mat { trans: true, ..bm }, Mat { trans: false, ..am });
        parallel(kernel, Out { transposed: true, ..dst }, accumulate, bt, at, n, m, k);
    } else {
        parallel(kernel, dst, accumulate, am, bm, m, n, k);
    }
}

/// Where the product goes: row-major with row stride `ld`, or (`transposed`)
/// its transpose.
#[derive(Clone, Copy)]
struct Out {
    ptr: SharedMut,
    ld: usize,
    transposed: bool,
}

/// The product split over threads by blocks of its larger dimension.
#[allow(clippy::too_many_arguments)]
fn parallel<A: Elem, B: Elem>(
    kernel: Kernel,
    dst: Out,
    accumulate: bool,
    am: Mat<A>,
    bm: Mat<B>,
    m: usize,
    n: usize,
    k: usize,
) {
    let threads = rayon::current_num_threads();
    let split_m = m >= n;
    let dim = if split_m { m } else { n };
    let block = dim.div_ceil(threads).div_ceil(32) * 32;
    if threads == 1 || m * n * k < PARALLEL_MIN_FLOPS || block >= dim {
        serial(kernel, dst, accumulate, am, bm, (0, m), (0, n), k);
        return;
    }
    (0..dim.div_ceil(block)).into_par_iter().for_each(|i| {
        let range = (i * block, (i * block + block).min(dim));
        // Disjoint row (or column) ranges of `out` per task.
        if split_m {
            serial(kernel, dst, accumulate, am, bm, range, (0, n), k);
        } else {
            serial(kernel, dst, accumulate, am, bm, (0, m), range, k);
        }
    });
}

thread_local! {
    static PACK_A: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

fn grow(v: &mut Vec<u16>, len: usize) -> &mut [u16] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

/// Rows `rows.0..rows.1` and columns `cols.0..cols.1` of the output, on
/// this thread.
#[allow(clippy::too_many_arguments)]
fn serial<A: Elem, B: Elem>(
    kernel: Kernel,
    dst: Out,
    accumulate: bool,
    a: Mat<A>,
    b: Mat<B>,
    rows: (usize, usize),
    cols: (usize, usize),
    k: usize,
) {
    let tiles = (kernel == Kernel::Amx).then(amx::Tiles::load);
    PACK_A.with(|pa| {
        PACK_B.with(|pb| {
            let (mut pa, mut pb) = (pa.borrow_mut(), pb.borrow_mut());
            let mut c = [0.0f32; 32 * 32];
            let kc_block = if a.trans { KC_TRANSPOSED } else { KC };
            for p0 in (0..k).step_by(kc_block) {
                let kc = kc_block.min(k - p0);
                let kp = kc.div_ceil(32) * 32;
                // A pack stride that is a multiple of 4 KiB puts every row
                // in one L1 set: such strides get one cache line more.
                let pad = |stride: usize| if (2 * stride).is_multiple_of(4096) { stride + 32 } else { stride };
                let (ka, kb) = (pad(kp), pad(16 * kp));
                let add = accumulate || p0 > 0;
                let nc_max = (B_PACK / kb / 2).max(1) * 32;
                for j0 in (cols.0..cols.1).step_by(nc_max) {
                    let nc = nc_max.min(cols.1 - j0);
                    let np = nc.div_ceil(32) * 32;
                    let bpack = grow(&mut pb, np / 16 * kb);
                    pack_b(bpack, b, p0, kc, kp, kb, j0, nc);
                    for p_i in (rows.0..rows.1).step_by(MC) {
                        let mc = MC.min(rows.1 - p_i);
                        let panel = grow(&mut pa, mc.div_ceil(32) * 32 * ka);
                        pack_a(panel, a, p_i, mc, p0, kc, kp, ka);
                        for s0 in (0..mc).step_by(32) {
                            let (i0, mr) = (p_i + s0, 32.min(mc - s0));
                            let apack = &panel[s0 * ka..(s0 + 32) * ka];
                            for jj in (0..np).step_by(32) {
                                let bstrips = &bpack[jj / 16 * kb..(jj / 16 + 2) * kb];
                                match kernel {
                                    // SAFETY: the tiles are configured (`tiles`),
                                    // the packs hold 32 rows/columns of `kp`.
                                    Kernel::Amx => unsafe { amx::block(&mut c, apack, bstrips, (kp, ka, kb)) },
                                    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
                                    Kernel::Avx512Bf16 => unsafe {
                                        avx512::block(&mut c, apack, bstrips, (kp, ka, kb))
                                    },
                                    Kernel::Portable => portable_block(&mut c, apack, bstrips, (kp, ka, kb)),
                                }
                                write_block(dst, add, &c, (i0, mr), (j0 + jj, 32.min(nc - jj)));
                            }
                        }
                    }
                }
            }
        })
    });
    drop(tiles);
}

/// Rows `i0..i0 + mr`, columns `j0..j0 + nr` of the product from a
/// 32 × 32 block `c` (`add`: added to what is there).
fn write_block(dst: Out, add: bool, c: &[f32; 1024], (i0, mr): (usize, usize), (j0, nr): (usize, usize)) {
    if dst.transposed {
        for col in 0..nr {
            for r in 0..mr {
                // SAFETY: the element is this task's and inside `out` (`run` checked it).
                unsafe {
                    let o = dst.ptr.at((j0 + col) * dst.ld + i0 + r);
                    *o = if add { *o + c[r * 32 + col] } else { c[r * 32 + col] };
                }
            }
        }
        return;
    }
    for r in 0..mr {
        // SAFETY: row i0 + r and columns j0.. are this task's and inside
        // `out` (checked by `run`).
        let o = unsafe { std::slice::from_raw_parts_mut(dst.ptr.at((i0 + r) * dst.ld + j0), nr) };
        let cr = &c[r * 32..r * 32 + nr];
        if add {
            o.iter_mut().zip(cr).for_each(|(o, c)| *o += c);
        } else {
            o.copy_from_slice(cr);
        }
    }
}

/// Rows `i0..i0 + mr` of `op(a)` (zero-padded to a multiple of 32), k
/// from `p0` (`kc` real, zero-padded to `kp`): `pack[r * ka + kk]` (row
/// stride `ka >= kp`), so each 32-row strip is `32 * ka` consecutive values.
#[allow(clippy::too_many_arguments)]
fn pack_a<A: Elem>(pack: &mut [u16], a: Mat<A>, i0: usize, mr: usize, p0: usize, kc: usize, kp: usize, ka: usize) {
    if !mr.is_multiple_of(32) || kc < kp {
        pack.fill(0);
    }
    if a.trans {
        // Stored [k, m]: each k is a contiguous run of rows. Transposed
        // through a 32 × 32 tile, so both sides move in whole cache lines
        // (after the rows a vector path took).
        let done = A::pack_a_trans_fast(pack, a, i0, mr, p0, kc, ka);
        let mut tile = [[0u16; 32]; 32];
        for k0 in (0..kc).step_by(32) {
            let kn = 32.min(kc - k0);
            for s0 in (done..mr).step_by(32) {
                let rows = 32.min(mr - s0);
                for (kk, t) in tile.iter_mut().enumerate().take(kn) {
                    let src = &a.data[(p0 + k0 + kk) * a.ld + i0 + s0..][..rows];
                    for (d, &x) in t.iter_mut().zip(src) {
                        *d = x.bf16();
                    }
                }
                for r in 0..rows {
                    let dst = &mut pack[(s0 + r) * ka + k0..][..kn];
                    for (kk, d) in dst.iter_mut().enumerate() {
                        *d = tile[kk][r];
                    }
                }
            }
        }
    } else {
        for r in 0..mr {
            A::encode(&a.data[(i0 + r) * a.ld + p0..][..kc], &mut pack[r * ka..][..kc]);
        }
    }
}

/// Columns `j0..j0 + nc` of `op(b)` (zero-padded to a multiple of 32), k
/// from `p0`: 16-column strips of k-pairs, element `(kk, c)` at
/// `(c / 16) * kb + (kk / 2) * 32 + (c % 16) * 2 + kk % 2` (strip stride
/// `kb >= 16 * kp`).
#[allow(clippy::too_many_arguments)]
fn pack_b<B: Elem>(pack: &mut [u16], b: Mat<B>, p0: usize, kc: usize, kp: usize, kb: usize, j0: usize, nc: usize) {
    if !nc.is_multiple_of(32) || kc < kp {
        pack.fill(0);
    }
    let at = |kk: usize, c: usize| (c / 16) * kb + (kk / 2) * 32 + (c % 16) * 2 + kk % 2;
    if b.trans {
        // Stored [n, k] (a weight in `x · Wᵀ`): each column is contiguous in k.
        for c in 0..nc {
            let src = &b.data[(j0 + c) * b.ld + p0..][..kc];
            let base = at(0, c);
            for (kk, &x) in src.iter().enumerate() {
                pack[base + (kk / 2) * 32 + kk % 2] = x.bf16();
            }
        }
    } else {
        // Stored [k, n]: two k rows at a time fill whole 64-byte pair rows.
        for kk in (0..kc).step_by(2) {
            let r0 = &b.data[(p0 + kk) * b.ld + j0..][..nc];
            let r1 = (kk + 1 < kc).then(|| &b.data[(p0 + kk + 1) * b.ld + j0..][..nc]);
            for c0 in (0..nc).step_by(16) {
                let cn = 16.min(nc - c0);
                let dst = &mut pack[at(kk, c0)..][..32];
                if cn == 16 {
                    let first: &[B; 16] = r0[c0..c0 + 16].try_into().expect("16 columns");
                    let second: Option<&[B; 16]> = r1.map(|r| r[c0..c0 + 16].try_into().expect("16 columns"));
                    B::encode_pairs(first, second, dst.try_into().expect("32 values"));
                    continue;
                }
                for c in 0..cn {
                    dst[2 * c] = r0[c0 + c].bf16();
                }
                if let Some(r1) = r1 {
                    for c in 0..cn {
                        dst[2 * c + 1] = r1[c0 + c].bf16();
                    }
                }
            }
        }
    }
}

/// `c[32 × 32] = apack · bstrips` in plain f32 arithmetic.
fn portable_block(c: &mut [f32; 1024], apack: &[u16], bstrips: &[u16], (kp, ka, kb): (usize, usize, usize)) {
    c.fill(0.0);
    for r in 0..32 {
        let arow = &apack[r * ka..][..kp];
        let crow = &mut c[r * 32..][..32];
        for half in 0..2 {
            let strip = &bstrips[half * kb..][..16 * kp];
            let acc = &mut crow[half * 16..][..16];
            for p in 0..kp / 2 {
                let (a0, a1) = (f32_from_bf16(arow[2 * p]), f32_from_bf16(arow[2 * p + 1]));
                let bp = &strip[p * 32..][..32];
                for col in 0..16 {
                    acc[col] += a0 * f32_from_bf16(bp[2 * col]) + a1 * f32_from_bf16(bp[2 * col + 1]);
                }
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod avx512 {
    use std::arch::x86_64::*;

    /// `dst[i] = bf16(src[i])`, 16 at a time (the same rounding as
    /// `bf16_from_f32`).
    ///
    /// # Safety
    /// AVX512-BF16.
    #[inline]
    pub unsafe fn encode(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), std::mem::transmute::<__m256bh, __m256i>(v));
            i += 16;
        }
        for t in i..n {
            dst[t] = super::bf16_from_f32(src[t]);
        }
    }

    /// A stored element type the vector packs read 16 at a time.
    pub(super) trait Lanes: super::Elem {
        /// 16 values from `p` as bf16 bits in the low halves of 16 lanes.
        ///
        /// # Safety
        /// AVX512-BF16; 16 values readable at `p`.
        unsafe fn load16(p: *const Self) -> __m512i;
    }
    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512i {
            // Rounds as `bf16_from_f32` does.
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(p));
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(v))
        }
    }
    impl Lanes for super::Bf16 {
        #[inline(always)]
        unsafe fn load16(p: *const super::Bf16) -> __m512i {
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))
        }
    }

    /// [`super::Elem::encode_pairs`] with vector instructions.
    ///
    /// # Safety
    /// AVX512-BF16.
    #[inline]
    pub(super) unsafe fn encode_pairs<T: Lanes>(r0: &[T; 16], r1: Option<&[T; 16]>, dst: &mut [u16; 32]) {
        let lo = T::load16(r0.as_ptr());
        let hi = match r1 {
            Some(r1) => _mm512_slli_epi32::<16>(T::load16(r1.as_ptr())),
            None => _mm512_setzero_si512(),
        };
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), _mm512_or_si512(lo, hi));
    }

    /// The vector path of [`super::pack_a`] for a transposed `A`: two k
    /// rows of 16 columns become 16 (k, k + 1) bf16 pairs (rounded as
    /// `bf16_from_f32` rounds), scattered to their 16 pack rows in one
    /// instruction. Returns how many of the `mr` rows it packed (a multiple of 16).
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn pack_a_trans<T: Lanes>(
        pack: &mut [u16],
        a: &[T],
        lda: usize,
        i0: usize,
        mr: usize,
        p0: usize,
        kc: usize,
        ka: usize,
    ) -> usize {
        let rows = mr / 16 * 16;
        let pairs = kc / 2;
        if rows == 0 || pairs == 0 || ka / 2 * 16 > i32::MAX as usize {
            return 0;
        }
        assert!(pack.len() >= (rows - 1) * ka + kc && a.len() >= (p0 + 2 * pairs - 1) * lda + i0 + rows);
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((ka / 2) as i32),
        );
        // Pairs outer: each pair of source rows is read once, start to end,
        // and the pack rows written meanwhile (128 cache lines) stay in L1.
        for p in 0..pairs {
            let (row0, row1) = (a.as_ptr().add((p0 + 2 * p) * lda + i0), a.as_ptr().add((p0 + 2 * p + 1) * lda + i0));
            for s0 in (0..rows).step_by(16) {
                let lo = T::load16(row0.add(s0));
                let hi = _mm512_slli_epi32::<16>(T::load16(row1.add(s0)));
                let base = pack.as_mut_ptr().add(s0 * ka).cast::<i32>();
                _mm512_i32scatter_epi32::<4>(base.add(p), idx, _mm512_or_si512(lo, hi));
            }
        }
        // An odd last k: its values with a zero partner (the padding).
        if kc % 2 == 1 {
            let kk = kc - 1;
            for r in 0..rows {
                pack[r * ka + kk] = a[(p0 + kk) * lda + i0 + r].bf16();
                pack[r * ka + kk + 1] = 0;
            }
        }
        rows
    }

    /// `c[32 × 32] = apack · bstrips` with `vdpbf16ps`, 8 rows at a time
    /// (16 accumulators of 16 lanes).
    ///
    /// # Safety
    /// `apack` holds 32 rows of `kp` at stride `ka`, `bstrips` two strips
    /// of `16 * kp` at stride `kb`.
    pub unsafe fn block(c: &mut [f32; 1024], apack: &[u16], bstrips: &[u16], (kp, ka, kb): (usize, usize, usize)) {
        assert!(apack.len() >= 31 * ka + kp && bstrips.len() >= kb + 16 * kp);
        let (a, b) = (apack.as_ptr(), bstrips.as_ptr());
        for r0 in (0..32).step_by(8) {
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            for p in 0..kp / 2 {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 32).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(kb + p * 32).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = a.add((r0 + r) * ka + 2 * p).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(c.as_mut_ptr().add((r0 + r) * 32), acc[0]);
                _mm512_storeu_ps(c.as_mut_ptr().add((r0 + r) * 32 + 16), acc[1]);
            }
        }
    }
}

/// Intel AMX through inline assembly (its intrinsics are not stable Rust).
mod amx {
    use std::sync::OnceLock;

    /// Whether the CPU has AMX-BF16 and the kernel lets this process use
    /// the tile registers (Linux 5.16+ asks for it: `arch_prctl`).
    /// `FERRITE_NO_AMX=1` turns it off (to compare kernels).
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            {
                if std::env::var_os("FERRITE_NO_AMX").is_some_and(|v| v != "0") {
                    return false;
                }
                let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
                let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
                if !(amx_bf16 && amx_tile) {
                    return false;
                }
                const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
                const XFEATURE_XTILEDATA: libc::c_long = 18;
                // SAFETY: asks the kernel for a permission; no memory is passed.
                unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
            }
            #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
            false
        })
    }

    /// The tile configuration of this thread while it lives: eight tiles of
    /// 16 rows × 64 bytes (C: tmm0–3, A: tmm4–5, B: tmm6–7).
    pub struct Tiles;

    impl Tiles {
        pub fn load() -> Tiles {
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette 1
            for t in 0..8 {
                cfg[16 + 2 * t] = 64; // bytes per row
                cfg[48 + t] = 16; // rows
            }
            // SAFETY: only called when `available()`; cfg is a valid palette-1 config.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly));
            }
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releases this thread's tile state.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("tilerelease", options(nostack, nomem));
            }
        }
    }

    /// `c[32 × 32] = apack · bstrips` with `tdpbf16ps` on 2 × 2 tiles.
    ///
    /// # Safety
    /// Tiles configured by [`Tiles::load`] on this thread; `apack` holds 32
    /// rows of `kp` (a multiple of 32), `bstrips` two strips of `16 * kp`.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn block(c: &mut [f32; 1024], apack: &[u16], bstrips: &[u16], (kp, ka, kb): (usize, usize, usize)) {
        use std::arch::asm;
        assert!(apack.len() >= 31 * ka + kp && bstrips.len() >= kb + 16 * kp && kp.is_multiple_of(32));
        let (a, b) = (apack.as_ptr(), bstrips.as_ptr());
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        for q in 0..kp / 32 {
            // A tiles: rows 0–15 and 16–31, k q*32.. (row stride kp bf16);
            // B tiles: k-pairs q*16.. of each strip (64-byte rows).
            // Each product issues as soon as its two tiles are in, so the
            // later loads overlap the earlier products.
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(q * 32),
                a1 = in(reg) a.add(16 * ka + q * 32),
                b0 = in(reg) b.add(q * 16 * 32),
                b1 = in(reg) b.add(kb + q * 16 * 32),
                sa = in(reg) ka * 2,
                sb = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        let p = c.as_mut_ptr();
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) p,
            c1 = in(reg) p.add(16),
            c2 = in(reg) p.add(16 * 32),
            c3 = in(reg) p.add(16 * 32 + 16),
            s = in(reg) 128usize,
            options(nostack),
        );
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn block(_: &mut [f32; 1024], _: &[u16], _: &[u16], _: (usize, usize, usize)) {
        unreachable!("AMX is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dtype::round_to;
    use crate::engine::gradcheck::rand_vec;
    use crate::engine::DType;

    fn kernels() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Portable];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        ks.push(Kernel::Avx512Bf16);
        if amx::available() {
            ks.push(Kernel::Amx);
        }
        ks
    }

    /// The product of the bf16-rounded operands in f64.
    fn reference(a: &[f32], b: &[f32], mm: Matmul) -> Vec<f64> {
        let r = |x: f32| round_to(x, DType::BF16) as f64;
        let mut out = vec![0.0; mm.m * mm.n];
        for i in 0..mm.m {
            for j in 0..mm.n {
                let mut s = 0.0;
                for kk in 0..mm.k {
                    let av = if mm.trans_a { a[kk * mm.lda + i] } else { a[i * mm.lda + kk] };
                    let bv = if mm.trans_b { b[j * mm.ldb + kk] } else { b[kk * mm.ldb + j] };
                    s += r(av) * r(bv);
                }
                out[i * mm.n + j] = s;
            }
        }
        out
    }

    fn check(kernel: Kernel, m: usize, n: usize, k: usize, ta: bool, tb: bool, acc: bool) {
        let mm = Matmul::new(m, n, k, ta, tb, acc);
        let mm = mm.strides(mm.lda + 3, mm.ldb + 1, n + 2);
        let (a_rows, b_rows) = (if ta { k } else { m }, if tb { n } else { k });
        let a = rand_vec(a_rows * mm.lda, 1);
        let b = rand_vec(b_rows * mm.ldb, 2);
        let want = reference(&a, &b, mm);
        let mut out = vec![0.5f32; m * mm.ldo];
        // Also from bf16 storage: the same rounded values.
        let ab: Vec<u16> = a.iter().map(|&x| bf16_from_f32(x)).collect();
        let bb: Vec<u16> = b.iter().map(|&x| bf16_from_f32(x)).collect();
        let (a16, b16) = (Src::BF16(&ab), Src::BF16(&bb));
        let pairs = [(Src::F32(&a), Src::F32(&b)), (a16, Src::F32(&b)), (Src::F32(&a), b16), (a16, b16)];
        for (i, (sa, sb)) in pairs.into_iter().enumerate() {
            out.iter_mut().for_each(|x| *x = 0.5);
            matmul_with(kernel, &mut out, sa, sb, mm);
            for r in 0..m {
                for c in 0..mm.ldo {
                    let got = out[r * mm.ldo + c] as f64;
                    if c >= n {
                        assert_eq!(got, 0.5, "wrote outside the block");
                        continue;
                    }
                    let w = want[r * n + c] + if acc { 0.5 } else { 0.0 };
                    // f32 sums of k exact products: relative to sqrt(k).
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                    assert!((got - w).abs() <= tol, "{kernel:?} src {i} {m}x{n}x{k} ta={ta} tb={tb}: {got} vs {w}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_rounded_product() {
        for kernel in kernels() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for acc in [false, true] {
                    check(kernel, 37, 45, 70, ta, tb, acc);
                    // Taller than wide: a weight gradient's swapped operands.
                    check(kernel, 70, 37, 45, ta, tb, acc);
                }
            }
            // Several k blocks, ragged edges everywhere.
            check(kernel, 33, 17, KC + 45, false, true, false);
            // Several column blocks, and the threaded split.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            pool.install(|| {
                check(kernel, 130, 300, 64, false, true, true);
                check(kernel, 40, 2 * (B_PACK / 64) + 70, 64, false, false, false);
                check(kernel, 20, 300, 96, true, false, false);
            });
        }
    }

    #[test]
    fn f16_operands_are_rounded_to_bf16() {
        let (m, n, k) = (3, 5, 7);
        let a = rand_vec(m * k, 4);
        let b = rand_vec(n * k, 5);
        let a16: Vec<u16> = a.iter().map(|&x| crate::engine::dtype::f16_from_f32(x)).collect();
        let a_as_f16: Vec<f32> = a16.iter().map(|&x| f32_from_f16(x)).collect();
        let mm = Matmul::new(m, n, k, false, true, false);
        let (mut x, mut y) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_with(Kernel::Portable, &mut x, Src::F16(&a16), Src::F32(&b), mm);
        matmul_with(Kernel::Portable, &mut y, Src::F32(&a_as_f16), Src::F32(&b), mm);
        assert_eq!(x, y);
    }
}
