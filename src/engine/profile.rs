//! A [`Backend`] decorator that times every operation, for
//! `ferrite bench --profile`: where a training step spends its time.
//! (Synchronous backends only: a GPU backend would need events.)

use super::{Activation, AdamWStep, AttnShape, Backend, CacheRow, Dropout, Matmul};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Profiled<B: Backend> {
    pub inner: B,
    totals: Mutex<HashMap<String, (Duration, u64)>>,
}

impl<B: Backend> Profiled<B> {
    pub fn new(inner: B) -> Self {
        Profiled { inner, totals: Mutex::new(HashMap::new()) }
    }

    fn time<R>(&self, name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed();
        let mut totals = self.totals.lock().expect("profile lock");
        let e = totals.entry(name()).or_default();
        e.0 += dt;
        e.1 += 1;
        r
    }

    pub fn reset(&self) {
        self.totals.lock().expect("profile lock").clear();
    }

    /// `(operation, total time, calls)`, slowest first.
    pub fn report(&self) -> Vec<(String, Duration, u64)> {
        let mut v: Vec<_> =
            self.totals.lock().expect("profile lock").iter().map(|(k, v)| (k.clone(), v.0, v.1)).collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.1));
        v
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Buf = B::Buf;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn batch_invariant_rows(&self) -> Option<usize> {
        self.inner.batch_invariant_rows()
    }
    fn zeros(&self, len: usize) -> B::Buf {
        self.inner.zeros(len)
    }
    fn upload(&self, data: &[f32]) -> B::Buf {
        self.inner.upload(data)
    }
    fn to_host(&self, buf: &B::Buf) -> Vec<f32> {
        self.time(|| "to_host".into(), || self.inner.to_host(buf))
    }
    fn view<'a>(&self, buf: &'a B::Buf) -> Cow<'a, [f32]> {
        self.inner.view(buf)
    }
    fn read_range(&self, buf: &B::Buf, offset: usize, len: usize) -> Vec<f32> {
        self.inner.read_range(buf, offset, len)
    }
    fn write(&self, buf: &mut B::Buf, data: &[f32]) {
        self.inner.write(buf, data)
    }
    fn len(&self, buf: &B::Buf) -> usize {
        self.inner.len(buf)
    }
    fn fill(&self, buf: &mut B::Buf, value: f32) {
        self.time(|| "fill".into(), || self.inner.fill(buf, value))
    }
    fn copy(&self, dst: &mut B::Buf, src: &B::Buf) {
        self.time(|| "copy".into(), || self.inner.copy(dst, src))
    }
    fn add(&self, out: &mut B::Buf, a: &B::Buf, b: &B::Buf, n: usize) {
        self.time(|| "residual add".into(), || self.inner.add(out, a, b, n))
    }
    fn add_assign(&self, dst: &mut B::Buf, src: &B::Buf, n: usize) {
        self.time(|| "add_assign".into(), || self.inner.add_assign(dst, src, n))
    }
    fn sum_squares(&self, buf: &B::Buf) -> f64 {
        self.time(|| "grad norm".into(), || self.inner.sum_squares(buf))
    }
    fn dropout(&self, buf: &mut B::Buf, drop: Dropout) {
        self.time(|| "dropout".into(), || self.inner.dropout(buf, drop))
    }
    fn matmul_strided(&self, out: &mut B::Buf, a: &B::Buf, b: &B::Buf, mm: Matmul) {
        let name = || {
            let t = |x: bool| if x { 'T' } else { 'N' };
            format!("matmul {}x{}x{} {}{}", mm.m, mm.n, mm.k, t(mm.trans_a), t(mm.trans_b))
        };
        self.time(name, || self.inner.matmul_strided(out, a, b, mm))
    }
    fn add_bias(&self, out: &mut B::Buf, bias: &B::Buf, rows: usize, cols: usize) {
        self.time(|| "bias".into(), || self.inner.add_bias(out, bias, rows, cols))
    }
    fn bias_backward(&self, dbias: &mut B::Buf, dout: &B::Buf, rows: usize, cols: usize) {
        self.time(|| "bias backward".into(), || self.inner.bias_backward(dbias, dout, rows, cols))
    }
    fn embedding_fwd(
        &self,
        out: &mut B::Buf,
        wte: &B::Buf,
        wpe: Option<&B::Buf>,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    ) {
        self.time(|| "embedding".into(), || self.inner.embedding_fwd(out, wte, wpe, tokens, positions, channels))
    }
    fn embedding_bwd(
        &self,
        dwte: &mut B::Buf,
        dwpe: Option<&mut B::Buf>,
        dout: &B::Buf,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    ) {
        self.time(
            || "embedding backward".into(),
            || self.inner.embedding_bwd(dwte, dwpe, dout, tokens, positions, channels),
        )
    }
    fn layernorm_fwd(
        &self,
        out: &mut B::Buf,
        mean: &mut B::Buf,
        rstd: &mut B::Buf,
        inp: &B::Buf,
        weight: &B::Buf,
        bias: Option<&B::Buf>,
        rows: usize,
        channels: usize,
    ) {
        self.time(
            || "layernorm".into(),
            || self.inner.layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels),
        )
    }
    fn layernorm_bwd(
        &self,
        dinp: &mut B::Buf,
        dweight: &mut B::Buf,
        dbias: Option<&mut B::Buf>,
        dout: &B::Buf,
        inp: &B::Buf,
        weight: &B::Buf,
        mean: &B::Buf,
        rstd: &B::Buf,
        rows: usize,
        channels: usize,
    ) {
        self.time(
            || "layernorm backward".into(),
            || self.inner.layernorm_bwd(dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels),
        )
    }
    fn rmsnorm_fwd(
        &self,
        out: &mut B::Buf,
        rstd: &mut B::Buf,
        inp: &B::Buf,
        weight: &B::Buf,
        rows: usize,
        channels: usize,
    ) {
        self.time(|| "rmsnorm".into(), || self.inner.rmsnorm_fwd(out, rstd, inp, weight, rows, channels))
    }
    fn rmsnorm_bwd(
        &self,
        dinp: &mut B::Buf,
        dweight: &mut B::Buf,
        dout: &B::Buf,
        inp: &B::Buf,
        weight: &B::Buf,
        rstd: &B::Buf,
        rows: usize,
        channels: usize,
    ) {
        self.time(
            || "rmsnorm backward".into(),
            || self.inner.rmsnorm_bwd(dinp, dweight, dout, inp, weight, rstd, rows, channels),
        )
    }
    fn qk_norm_fwd(&self, out: &mut B::Buf, rstd: &mut B::Buf, qkv: &B::Buf, shape: AttnShape, rows: usize) {
        self.time(|| "qk-norm".into(), || self.inner.qk_norm_fwd(out, rstd, qkv, shape, rows))
    }
    fn qk_norm_bwd(
        &self,
        dqkv: &mut B::Buf,
        dout: &B::Buf,
        qkv: &B::Buf,
        rstd: &B::Buf,
        shape: AttnShape,
        rows: usize,
    ) {
        self.time(|| "qk-norm backward".into(), || self.inner.qk_norm_bwd(dqkv, dout, qkv, rstd, shape, rows))
    }
    fn rope(&self, qkv: &mut B::Buf, cos: &B::Buf, sin: &B::Buf, shape: AttnShape, positions: &[u32], inverse: bool) {
        let name = if inverse { "rope backward" } else { "rope" };
        self.time(|| name.into(), || self.inner.rope(qkv, cos, sin, shape, positions, inverse))
    }
    fn activation_fwd(&self, out: &mut B::Buf, inp: &B::Buf, n: usize, act: Activation) {
        self.time(|| format!("{act:?}"), || self.inner.activation_fwd(out, inp, n, act))
    }
    fn activation_bwd(&self, dinp: &mut B::Buf, inp: &B::Buf, dout: &B::Buf, n: usize, act: Activation) {
        self.time(|| format!("{act:?} backward"), || self.inner.activation_bwd(dinp, inp, dout, n, act))
    }
    fn swiglu_fwd(&self, out: &mut B::Buf, inp: &B::Buf, rows: usize, hidden: usize) {
        self.time(|| "swiglu".into(), || self.inner.swiglu_fwd(out, inp, rows, hidden))
    }
    fn swiglu_bwd(&self, dinp: &mut B::Buf, inp: &B::Buf, dout: &B::Buf, rows: usize, hidden: usize) {
        self.time(|| "swiglu backward".into(), || self.inner.swiglu_bwd(dinp, inp, dout, rows, hidden))
    }
    fn attention_fwd(&self, out: &mut B::Buf, stats: &mut B::Buf, qkv: &B::Buf, shape: AttnShape, drop: Dropout) {
        self.time(|| "attention".into(), || self.inner.attention_fwd(out, stats, qkv, shape, drop))
    }
    fn attention_bwd(
        &self,
        dqkv: &mut B::Buf,
        dout: &B::Buf,
        qkv: &B::Buf,
        stats: &B::Buf,
        shape: AttnShape,
        drop: Dropout,
    ) {
        self.time(|| "attention backward".into(), || self.inner.attention_bwd(dqkv, dout, qkv, stats, shape, drop))
    }
    fn attention_cached(
        &self,
        out: &mut B::Buf,
        qkv: &B::Buf,
        k_cache: &mut B::Buf,
        v_cache: &mut B::Buf,
        rows: &[CacheRow],
        capacity: usize,
        shape: AttnShape,
    ) {
        self.time(
            || "attention (cached)".into(),
            || self.inner.attention_cached(out, qkv, k_cache, v_cache, rows, capacity, shape),
        )
    }
    fn cross_entropy(
        &self,
        losses: &mut B::Buf,
        logits: &mut B::Buf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    ) {
        self.time(
            || "cross-entropy".into(),
            || self.inner.cross_entropy(losses, logits, targets, rows, vocab, padded_vocab, softcap, grad_scale),
        )
    }
    fn adamw(&self, param: &mut B::Buf, grad: &B::Buf, m: &mut B::Buf, v: &mut B::Buf, step: AdamWStep) {
        self.time(|| "adamw".into(), || self.inner.adamw(param, grad, m, v, step))
    }
}
