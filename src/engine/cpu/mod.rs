//! The CPU backend: `gemm` for matrix multiplies, `rayon` for everything
//! else, kernels written so that LLVM vectorises their inner loops. Every
//! reduction has a fixed order, so results do not depend on the thread count.

mod activation;
mod attention;
mod buffer;
mod embedding;
mod gemm_bf16;
mod loss;
mod matmul;
mod norm;
mod optim;
mod qmatmul;
mod rope;
mod scratch;
mod skinny;
mod store;

/// Runs a kernel that is generic over its output's [`store::Store`] type
/// on `out`'s storage: f32, or bf16 (matmul inputs kept for backward).
macro_rules! by_output {
    ($out:expr, |$o:ident| $kernel:expr) => {
        match $out {
            CpuBuf::F32(v) => {
                let $o = &mut v[..];
                $kernel
            }
            CpuBuf::BF16(v) => {
                let $o = &mut v[..];
                $kernel
            }
            other => panic!("this operation writes f32 or bf16, not {}", other.dtype()),
        }
    };
}

pub use buffer::CpuBuf;

use super::{
    fastmath, profile, Activation, AdamWStep, AttnShape, Backend, CacheRow, DType, Dropout, Matmul, Quantized,
};
use anyhow::Result;
use rayon::prelude::*;
use std::borrow::Cow;

const CHUNK: usize = 8192;

/// Simulated device failures, for testing what callers do with them.
#[cfg(test)]
pub mod faults {
    use std::cell::Cell;

    thread_local! {
        static FAIL: Cell<bool> = const { Cell::new(false) };
    }

    /// Makes this thread's downloads (`read_range`) fail until switched off.
    pub fn fail_downloads(on: bool) {
        FAIL.with(|f| f.set(on));
    }

    pub(super) fn check() -> anyhow::Result<()> {
        if FAIL.with(|f| f.get()) {
            anyhow::bail!("simulated device failure");
        }
        Ok(())
    }
}

fn matmul_name(mm: Matmul) -> String {
    let t = |x: bool| if x { 'T' } else { 'N' };
    format!("matmul {}x{}x{} {}{}", mm.m, mm.n, mm.k, t(mm.trans_a), t(mm.trans_b))
}

/// Inverted dropout on the elements `start..` of a buffer held in `c`: the
/// mask is a function of each element's index, so any chunking gives the same.
fn drop_chunk(c: &mut [f32], start: usize, drop: Dropout) {
    let scale = 1.0 / (1.0 - drop.p);
    for (i, x) in c.iter_mut().enumerate() {
        *x = if fastmath::keep(drop.seed, (start + i) as u64, drop.p) { *x * scale } else { 0.0 };
    }
}

/// The host's available memory: Linux's MemAvailable (or the cgroup's
/// limit when lower: a container's), else its physical memory.
pub fn host_memory() -> Option<u64> {
    let host = available_host_memory();
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok());
    match (host, cgroup) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

fn available_host_memory() -> Option<u64> {
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let kib: Option<u64> =
            info.lines().find_map(|l| l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?.trim().parse().ok());
        if let Some(kib) = kib {
            return Some(kib * 1024u64);
        }
    }
    // SAFETY: sysconf only reads system constants.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && size > 0).then(|| pages as u64 * size as u64)
}

fn out_of_memory<T>(len: usize) -> anyhow::Error {
    let mib = len as f64 * std::mem::size_of::<T>() as f64 / (1u64 << 20) as f64;
    anyhow::anyhow!("out of memory: cannot allocate {mib:.1} MiB")
}

/// Room for `len` values, or an error saying how much did not fit (where
/// `vec!` would abort the process).
fn allocate<T>(len: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory::<T>(len))?;
    huge_pages(v.as_mut_ptr().cast(), len * std::mem::size_of::<T>());
    Ok(v)
}

/// Numbers whose zero is all zero bits.
trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for u16 {}
impl Zeroable for u8 {}

/// `len` zeros from zeroed memory, as `vec![0.0; len]` does: the pages are
/// touched only when written, so a large KV cache costs memory only for the
/// positions it holds.
fn zeroed<T: Zeroable>(len: usize) -> Result<Vec<T>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| out_of_memory::<T>(len))?;
    // SAFETY: the layout has a non-zero size; a non-null result is `len`
    // zeroed values (zero is all zero bits for a `Zeroable`) from the global
    // allocator with exactly the layout a `Vec<T>` of capacity `len` frees.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return Err(out_of_memory::<T>(len));
        }
        huge_pages(ptr.cast(), layout.size());
        Ok(Vec::from_raw_parts(ptr, len, len))
    }
}

/// Asks Linux to back a large buffer with 2 MiB pages (where transparent
/// huge pages are on `madvise`, as on most distributions): kernels that walk
/// a matrix down its columns (a transposed operand, the rows of a KV cache)
/// touch a new 4 KiB page every row, and the page walks cost more than the
/// arithmetic. A hint: nothing changes where it is refused.
fn huge_pages(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside the allocation just made; the
            // advice changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

/// The CPU backend. Buffers are [`CpuBuf`]s: vectors of f32 or 16-bit values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn batch_invariant_rows(&self) -> Option<usize> {
        skinny::BATCH_INVARIANT.then_some(*skinny::ROWS.end())
    }
    fn available_memory(&self) -> Option<u64> {
        host_memory()
    }
    fn attention_scratch_bytes(&self, shape: AttnShape) -> usize {
        // Each thread's task holds up to three `T x T` blocks (backward with dropout).
        rayon::current_num_threads() * 3 * shape.seq * shape.seq * 4
    }

    fn zeros_as(&self, len: usize, dtype: DType) -> Result<CpuBuf> {
        Ok(match dtype {
            DType::F32 => CpuBuf::F32(zeroed(len)?),
            DType::BF16 => CpuBuf::BF16(zeroed(len)?),
            DType::F16 => CpuBuf::F16(zeroed(len)?),
            // Zero bytes are blocks of zero scale: zeros.
            q => CpuBuf::Blocks(q, zeroed(q.size_of(len))?),
        })
    }
    fn upload_blocks(&self, blocks: &Quantized) -> Result<CpuBuf> {
        let mut v = allocate(blocks.bytes.len())?;
        v.extend_from_slice(&blocks.bytes);
        Ok(CpuBuf::Blocks(blocks.dtype, v))
    }
    fn upload_as(&self, data: &[f32], dtype: DType) -> Result<CpuBuf> {
        if dtype == DType::F32 {
            let mut v = allocate(data.len())?;
            v.extend_from_slice(data);
            return Ok(CpuBuf::F32(v));
        }
        // Zeroed pages are only mapped, so the values are written once.
        let mut buf = self.zeros_as(data.len(), dtype)?;
        match &mut buf {
            CpuBuf::BF16(v) | CpuBuf::F16(v) => v
                .par_chunks_mut(CHUNK)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(d, s)| super::dtype::encode16(s, d, dtype)),
            CpuBuf::Blocks(_, v) => v.copy_from_slice(&super::quant::quantize(dtype, data)),
            CpuBuf::F32(_) => unreachable!("f32 returned above"),
        }
        Ok(buf)
    }
    fn dtype(&self, buf: &CpuBuf) -> DType {
        buf.dtype()
    }
    fn to_host(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        self.read_range(buf, 0, buf.len())
    }
    fn view<'a>(&self, buf: &'a CpuBuf) -> Result<Cow<'a, [f32]>> {
        match buf {
            CpuBuf::F32(v) => Ok(Cow::Borrowed(v)),
            _ => Ok(Cow::Owned(self.to_host(buf)?)),
        }
    }
    fn read_range(&self, buf: &CpuBuf, offset: usize, len: usize) -> Result<Vec<f32>> {
        #[cfg(test)]
        faults::check()?;
        let mut out = allocate::<f32>(len)?;
        buf.read_f32_into(offset, len, &mut out);
        Ok(out)
    }
    fn write(&self, buf: &mut CpuBuf, data: &[f32]) -> Result<()> {
        buf.write_f32(data);
        Ok(())
    }
    fn len(&self, buf: &CpuBuf) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut CpuBuf, value: f32) {
        profile::time(
            || "fill".into(),
            || {
                buf.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
            },
        )
    }
    fn copy(&self, dst: &mut CpuBuf, src: &CpuBuf) {
        profile::time(
            || "copy".into(),
            || match (dst, src) {
                (CpuBuf::F32(d), CpuBuf::F32(s)) => {
                    d.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s))
                }
                (CpuBuf::BF16(d), CpuBuf::BF16(s)) | (CpuBuf::F16(d), CpuBuf::F16(s)) => {
                    d.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s))
                }
                (CpuBuf::Blocks(a, d), CpuBuf::Blocks(b, s)) if a == b => d.copy_from_slice(s),
                (d, s) => panic!("copy: {} into {}: the dtypes must match", s.dtype(), d.dtype()),
            },
        )
    }

    fn add(&self, out: &mut CpuBuf, a: &CpuBuf, b: &CpuBuf, n: usize) {
        profile::time(
            || "residual add".into(),
            || {
                out[..n].par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(
                    |((o, a), b)| {
                        for i in 0..o.len() {
                            o[i] = a[i] + b[i];
                        }
                    },
                );
            },
        )
    }
    fn add_assign(&self, dst: &mut CpuBuf, src: &CpuBuf, n: usize) {
        profile::time(
            || "add_assign".into(),
            || {
                dst[..n].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
                    for i in 0..d.len() {
                        d[i] += s[i];
                    }
                });
            },
        )
    }
    fn sum_squares(&self, buf: &CpuBuf) -> Result<f64> {
        profile::time(
            || "grad norm".into(),
            || {
                // Per-chunk partial sums combined in order: deterministic.
                let partial: Vec<f64> = buf.par_chunks(CHUNK).map(fastmath::sum_squares_f64).collect();
                Ok(partial.iter().sum())
            },
        )
    }
    fn dropout(&self, buf: &mut CpuBuf, drop: Dropout) {
        profile::time(
            || "dropout".into(),
            || {
                if !drop.active() {
                    return;
                }
                buf.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| drop_chunk(c, ci * CHUNK, drop));
            },
        )
    }

    fn dropout_from(&self, dst: &mut CpuBuf, src: &CpuBuf, n: usize, drop: Dropout) {
        profile::time(
            || "dropout".into(),
            || {
                dst[..n].par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| {
                    let start = ci * CHUNK;
                    match src {
                        CpuBuf::F32(v) => c.copy_from_slice(&v[start..start + c.len()]),
                        CpuBuf::BF16(v) | CpuBuf::F16(v) => {
                            super::dtype::decode16(&v[start..start + c.len()], c, src.dtype())
                        }
                        CpuBuf::Blocks(..) => panic!("dropout_from: {} is a weights-only dtype", src.dtype()),
                    }
                    if drop.active() {
                        drop_chunk(c, start, drop);
                    }
                });
            },
        )
    }
    fn scale(&self, buf: &mut CpuBuf, n: usize, factor: f32) {
        profile::time(
            || "scale".into(),
            || buf[..n].par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= factor)),
        )
    }

    fn matmul_strided(&self, out: &mut CpuBuf, a: &CpuBuf, b: &CpuBuf, mm: Matmul) {
        profile::time(
            || matmul_name(mm),
            || {
                matmul::matmul_any(out, a, b, mm);
            },
        )
    }
    fn add_bias(&self, out: &mut CpuBuf, bias: &CpuBuf, rows: usize, cols: usize) {
        profile::time(
            || "bias".into(),
            || {
                matmul::add_bias(out, bias, rows, cols);
            },
        )
    }
    fn bias_backward(&self, dbias: &mut CpuBuf, dout: &CpuBuf, rows: usize, cols: usize) {
        profile::time(
            || "bias backward".into(),
            || {
                matmul::bias_backward(dbias, dout, rows, cols);
            },
        )
    }

    fn embedding_fwd(
        &self,
        out: &mut CpuBuf,
        wte: &CpuBuf,
        wpe: Option<&CpuBuf>,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    ) {
        profile::time(
            || "embedding".into(),
            || {
                embedding::embedding_fwd(out, wte, wpe, tokens, positions, channels);
            },
        )
    }
    fn embedding_bwd(
        &self,
        dwte: &mut CpuBuf,
        dwpe: Option<&mut CpuBuf>,
        dout: &CpuBuf,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    ) {
        profile::time(
            || "embedding backward".into(),
            || {
                embedding::embedding_bwd(dwte, dwpe.map(|w| &mut w[..]), dout, tokens, positions, channels);
            },
        )
    }

    fn layernorm_fwd(
        &self,
        out: &mut CpuBuf,
        mean: &mut CpuBuf,
        rstd: &mut CpuBuf,
        inp: &CpuBuf,
        weight: &CpuBuf,
        bias: Option<&CpuBuf>,
        rows: usize,
        channels: usize,
        eps: f32,
    ) {
        profile::time(
            || "layernorm".into(),
            || {
                let bias = bias.map(|b| &b[..]);
                by_output!(out, |o| norm::layernorm_fwd(o, mean, rstd, inp, weight, bias, rows, channels, eps));
            },
        )
    }
    fn layernorm_bwd(
        &self,
        dinp: &mut CpuBuf,
        dweight: &mut CpuBuf,
        dbias: Option<&mut CpuBuf>,
        dout: &CpuBuf,
        inp: &CpuBuf,
        weight: &CpuBuf,
        mean: &CpuBuf,
        rstd: &CpuBuf,
        rows: usize,
        channels: usize,
    ) {
        profile::time(
            || "layernorm backward".into(),
            || {
                norm::layernorm_bwd(
                    dinp,
                    dweight,
                    dbias.map(|b| &mut b[..]),
                    dout,
                    inp,
                    weight,
                    mean,
                    rstd,
                    rows,
                    channels,
                );
            },
        )
    }
    fn rmsnorm_fwd(
        &self,
        out: &mut CpuBuf,
        rstd: &mut CpuBuf,
        inp: &CpuBuf,
        weight: &CpuBuf,
        rows: usize,
        channels: usize,
        eps: f32,
    ) {
        profile::time(
            || "rmsnorm".into(),
            || {
                by_output!(out, |o| norm::rmsnorm_fwd(o, rstd, inp, weight, rows, channels, eps));
            },
        )
    }
    fn rmsnorm_bwd(
        &self,
        dinp: &mut CpuBuf,
        dweight: &mut CpuBuf,
        dout: &CpuBuf,
        inp: &CpuBuf,
        weight: &CpuBuf,
        rstd: &CpuBuf,
        rows: usize,
        channels: usize,
    ) {
        profile::time(
            || "rmsnorm backward".into(),
            || {
                norm::rmsnorm_bwd(dinp, dweight, dout, inp, weight, rstd, rows, channels);
            },
        )
    }
    fn qk_norm_fwd(&self, out: &mut CpuBuf, rstd: &mut CpuBuf, qkv: &CpuBuf, shape: AttnShape, rows: usize) {
        profile::time(
            || "qk-norm".into(),
            || {
                norm::qk_norm_fwd(out, rstd, qkv, shape, rows);
            },
        )
    }
    fn qk_norm_bwd(
        &self,
        dqkv: &mut CpuBuf,
        dout: &CpuBuf,
        qkv: &CpuBuf,
        rstd: &CpuBuf,
        shape: AttnShape,
        rows: usize,
    ) {
        profile::time(
            || "qk-norm backward".into(),
            || {
                norm::qk_norm_bwd(dqkv, dout, qkv, rstd, shape, rows);
            },
        )
    }

    fn rope(&self, qkv: &mut CpuBuf, cos: &CpuBuf, sin: &CpuBuf, shape: AttnShape, positions: &[u32], inverse: bool) {
        profile::time(
            || if inverse { "rope backward" } else { "rope" }.into(),
            || {
                rope::rope(qkv, cos, sin, shape, positions, inverse);
            },
        )
    }

    fn activation_fwd(&self, out: &mut CpuBuf, inp: &CpuBuf, n: usize, act: Activation) {
        profile::time(
            || format!("{act:?}"),
            || {
                by_output!(out, |o| activation::activation_fwd(&mut o[..n], &inp[..n], act));
            },
        )
    }
    fn activation_bwd(&self, dinp: &mut CpuBuf, inp: &CpuBuf, dout: &CpuBuf, n: usize, act: Activation) {
        profile::time(
            || format!("{act:?} backward"),
            || {
                activation::activation_bwd(&mut dinp[..n], &inp[..n], &dout[..n], act);
            },
        )
    }
    fn swiglu_fwd(&self, out: &mut CpuBuf, inp: &CpuBuf, rows: usize, hidden: usize) {
        profile::time(
            || "swiglu".into(),
            || {
                by_output!(out, |o| activation::swiglu_fwd(o, inp, rows, hidden));
            },
        )
    }
    fn swiglu_bwd(&self, dinp: &mut CpuBuf, inp: &CpuBuf, dout: &CpuBuf, rows: usize, hidden: usize) {
        profile::time(
            || "swiglu backward".into(),
            || {
                activation::swiglu_bwd(dinp, inp, dout, rows, hidden);
            },
        )
    }

    fn attention_fwd(&self, out: &mut CpuBuf, stats: &mut CpuBuf, qkv: &CpuBuf, shape: AttnShape, drop: Dropout) {
        profile::time(
            || "attention".into(),
            || {
                by_output!(out, |o| attention::attention_fwd(o, stats, qkv, shape, drop));
            },
        )
    }
    fn attention_bwd(
        &self,
        dqkv: &mut CpuBuf,
        dout: &CpuBuf,
        qkv: &CpuBuf,
        stats: &CpuBuf,
        shape: AttnShape,
        drop: Dropout,
    ) {
        profile::time(
            || "attention backward".into(),
            || {
                attention::attention_bwd(dqkv, dout, qkv, stats, shape, drop);
            },
        )
    }
    fn attention_cached(
        &self,
        out: &mut CpuBuf,
        qkv: &CpuBuf,
        k_cache: &mut CpuBuf,
        v_cache: &mut CpuBuf,
        rows: &[CacheRow],
        capacity: usize,
        shape: AttnShape,
    ) {
        profile::time(
            || "attention (cached)".into(),
            || match (k_cache, v_cache) {
                (CpuBuf::F32(k), CpuBuf::F32(v)) => attention::attention_cached(out, qkv, k, v, rows, capacity, shape),
                (CpuBuf::BF16(k), CpuBuf::BF16(v)) => {
                    attention::attention_cached(out, qkv, k, v, rows, capacity, shape)
                }
                (k, v) => {
                    panic!("attention_cached: caches must both be f32 or bf16, not {} and {}", k.dtype(), v.dtype())
                }
            },
        )
    }

    fn cross_entropy(
        &self,
        losses: &mut CpuBuf,
        logits: &mut CpuBuf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) {
        profile::time(
            || "cross-entropy".into(),
            || {
                loss::cross_entropy(losses, logits, targets, rows, vocab, padded_vocab, softcap, grad_scale);
            },
        )
    }

    fn adamw(&self, param: &mut CpuBuf, grad: &CpuBuf, m: &mut CpuBuf, v: &mut CpuBuf, step: AdamWStep) {
        profile::time(
            || "adamw".into(),
            || {
                optim::adamw(param, grad, m, v, step);
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failure_is_an_error() {
        for len in [usize::MAX / 8, 1 << 60] {
            let err = Cpu.zeros(len).unwrap_err().to_string();
            assert!(err.contains("out of memory"), "{err}");
        }
        assert_eq!(Cpu.zeros(5).unwrap(), CpuBuf::F32(vec![0.0; 5]));
        assert!(Cpu.zeros(0).unwrap().is_empty());
    }
}
