//! The CPU backend: `gemm` for matrix multiplies, `rayon` for everything
//! else, kernels written so that LLVM vectorises their inner loops. Every
//! reduction has a fixed order, so results do not depend on the thread count.

mod activation;
mod attention;
mod embedding;
mod loss;
mod matmul;
mod norm;
mod optim;
mod rope;
mod scratch;
mod skinny;

use super::{fastmath, profile, Activation, AdamWStep, AttnShape, Backend, CacheRow, Dropout, Matmul};
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

fn out_of_memory(len: usize) -> anyhow::Error {
    anyhow::anyhow!("out of memory: cannot allocate {:.1} MiB", len as f64 * 4.0 / (1u64 << 20) as f64)
}

/// Room for `len` floats, or an error saying how much did not fit (where
/// `vec!` would abort the process).
fn allocate(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory(len))?;
    Ok(v)
}

/// `len` zeros from zeroed memory, as `vec![0.0; len]` does: the pages are
/// touched only when written, so a large KV cache costs memory only for the
/// positions it holds.
fn zeroed(len: usize) -> Result<Vec<f32>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| out_of_memory(len))?;
    // SAFETY: the layout has a non-zero size; a non-null result is `len`
    // zeroed f32s (0.0 is all zero bits) from the global allocator with
    // exactly the layout a `Vec<f32>` of capacity `len` frees.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<f32>();
        if ptr.is_null() {
            return Err(out_of_memory(len));
        }
        Ok(Vec::from_raw_parts(ptr, len, len))
    }
}

/// The CPU backend. Buffers are plain `Vec<f32>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;

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

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        zeroed(len)
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        let mut v = allocate(data.len())?;
        v.extend_from_slice(data);
        Ok(v)
    }
    fn to_host(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        self.upload(buf)
    }
    fn view<'a>(&self, buf: &'a Vec<f32>) -> Result<Cow<'a, [f32]>> {
        Ok(Cow::Borrowed(buf))
    }
    fn read_range(&self, buf: &Vec<f32>, offset: usize, len: usize) -> Result<Vec<f32>> {
        #[cfg(test)]
        faults::check()?;
        self.upload(&buf[offset..offset + len])
    }
    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        buf[..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut Vec<f32>, value: f32) {
        profile::time(
            || "fill".into(),
            || {
                buf.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
            },
        )
    }
    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) {
        profile::time(
            || "copy".into(),
            || {
                dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
            },
        )
    }

    fn add(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, n: usize) {
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
    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>, n: usize) {
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
    fn sum_squares(&self, buf: &Vec<f32>) -> Result<f64> {
        profile::time(
            || "grad norm".into(),
            || {
                // Per-chunk partial sums combined in order: deterministic.
                let partial: Vec<f64> = buf.par_chunks(CHUNK).map(fastmath::sum_squares_f64).collect();
                Ok(partial.iter().sum())
            },
        )
    }
    fn dropout(&self, buf: &mut Vec<f32>, drop: Dropout) {
        profile::time(
            || "dropout".into(),
            || {
                if !drop.active() {
                    return;
                }
                let scale = 1.0 / (1.0 - drop.p);
                buf.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| {
                    for (i, x) in c.iter_mut().enumerate() {
                        let idx = (ci * CHUNK + i) as u64;
                        *x = if fastmath::keep(drop.seed, idx, drop.p) { *x * scale } else { 0.0 };
                    }
                });
            },
        )
    }

    fn matmul_strided(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, mm: Matmul) {
        profile::time(
            || matmul_name(mm),
            || {
                matmul::matmul(out, a, b, mm);
            },
        )
    }
    fn add_bias(&self, out: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, cols: usize) {
        profile::time(
            || "bias".into(),
            || {
                matmul::add_bias(out, bias, rows, cols);
            },
        )
    }
    fn bias_backward(&self, dbias: &mut Vec<f32>, dout: &Vec<f32>, rows: usize, cols: usize) {
        profile::time(
            || "bias backward".into(),
            || {
                matmul::bias_backward(dbias, dout, rows, cols);
            },
        )
    }

    fn embedding_fwd(
        &self,
        out: &mut Vec<f32>,
        wte: &Vec<f32>,
        wpe: Option<&Vec<f32>>,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    ) {
        profile::time(
            || "embedding".into(),
            || {
                embedding::embedding_fwd(out, wte, wpe.map(|w| &w[..]), tokens, positions, channels);
            },
        )
    }
    fn embedding_bwd(
        &self,
        dwte: &mut Vec<f32>,
        dwpe: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
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
        out: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        rows: usize,
        channels: usize,
    ) {
        profile::time(
            || "layernorm".into(),
            || {
                norm::layernorm_fwd(out, mean, rstd, inp, weight, bias.map(|b| &b[..]), rows, channels);
            },
        )
    }
    fn layernorm_bwd(
        &self,
        dinp: &mut Vec<f32>,
        dweight: &mut Vec<f32>,
        dbias: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
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
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        channels: usize,
    ) {
        profile::time(
            || "rmsnorm".into(),
            || {
                norm::rmsnorm_fwd(out, rstd, inp, weight, rows, channels);
            },
        )
    }
    fn rmsnorm_bwd(
        &self,
        dinp: &mut Vec<f32>,
        dweight: &mut Vec<f32>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        rstd: &Vec<f32>,
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
    fn qk_norm_fwd(&self, out: &mut Vec<f32>, rstd: &mut Vec<f32>, qkv: &Vec<f32>, shape: AttnShape, rows: usize) {
        profile::time(
            || "qk-norm".into(),
            || {
                norm::qk_norm_fwd(out, rstd, qkv, shape, rows);
            },
        )
    }
    fn qk_norm_bwd(
        &self,
        dqkv: &mut Vec<f32>,
        dout: &Vec<f32>,
        qkv: &Vec<f32>,
        rstd: &Vec<f32>,
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

    fn rope(
        &self,
        qkv: &mut Vec<f32>,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        shape: AttnShape,
        positions: &[u32],
        inverse: bool,
    ) {
        profile::time(
            || if inverse { "rope backward" } else { "rope" }.into(),
            || {
                rope::rope(qkv, cos, sin, shape, positions, inverse);
            },
        )
    }

    fn activation_fwd(&self, out: &mut Vec<f32>, inp: &Vec<f32>, n: usize, act: Activation) {
        profile::time(
            || format!("{act:?}"),
            || {
                activation::activation_fwd(&mut out[..n], &inp[..n], act);
            },
        )
    }
    fn activation_bwd(&self, dinp: &mut Vec<f32>, inp: &Vec<f32>, dout: &Vec<f32>, n: usize, act: Activation) {
        profile::time(
            || format!("{act:?} backward"),
            || {
                activation::activation_bwd(&mut dinp[..n], &inp[..n], &dout[..n], act);
            },
        )
    }
    fn swiglu_fwd(&self, out: &mut Vec<f32>, inp: &Vec<f32>, rows: usize, hidden: usize) {
        profile::time(
            || "swiglu".into(),
            || {
                activation::swiglu_fwd(out, inp, rows, hidden);
            },
        )
    }
    fn swiglu_bwd(&self, dinp: &mut Vec<f32>, inp: &Vec<f32>, dout: &Vec<f32>, rows: usize, hidden: usize) {
        profile::time(
            || "swiglu backward".into(),
            || {
                activation::swiglu_bwd(dinp, inp, dout, rows, hidden);
            },
        )
    }

    fn attention_fwd(&self, out: &mut Vec<f32>, stats: &mut Vec<f32>, qkv: &Vec<f32>, shape: AttnShape, drop: Dropout) {
        profile::time(
            || "attention".into(),
            || {
                attention::attention_fwd(out, stats, qkv, shape, drop);
            },
        )
    }
    fn attention_bwd(
        &self,
        dqkv: &mut Vec<f32>,
        dout: &Vec<f32>,
        qkv: &Vec<f32>,
        stats: &Vec<f32>,
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
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        rows: &[CacheRow],
        capacity: usize,
        shape: AttnShape,
    ) {
        profile::time(
            || "attention (cached)".into(),
            || {
                attention::attention_cached(out, qkv, k_cache, v_cache, rows, capacity, shape);
            },
        )
    }

    fn cross_entropy(
        &self,
        losses: &mut Vec<f32>,
        logits: &mut Vec<f32>,
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

    fn adamw(&self, param: &mut Vec<f32>, grad: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, step: AdamWStep) {
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
        assert_eq!(Cpu.zeros(5).unwrap(), vec![0.0; 5]);
        assert!(Cpu.zeros(0).unwrap().is_empty());
    }
}
