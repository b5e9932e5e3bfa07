//! The engine: device-neutral tensor operations with explicit forward and
//! backward kernels (llm.c style). Model and training code only talk to the
//! [`Backend`] trait, so a CUDA backend slots in beside [`cpu::Cpu`] without
//! touching them.

pub mod cpu;
pub mod fastmath;
#[cfg(test)]
pub mod gradcheck;
pub mod profile;

/// Shape of a causal self-attention call over a fused `qkv` buffer laid out
/// `[batch, seq, 3 * channels]` (q, k, v along the last axis).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub heads: usize,
}

impl AttnShape {
    pub fn head_dim(&self) -> usize {
        self.channels / self.heads
    }
}

/// Inverted dropout with a counter-based mask: the mask is a pure function of
/// `(seed, element index)`, so the backward pass regenerates it instead of
/// storing it, and runs are reproducible whatever the thread count.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    pub const OFF: Dropout = Dropout { p: 0.0, seed: 0 };
    pub fn active(&self) -> bool {
        self.p > 0.0
    }
}

/// Shape and layout of `out[m,n] (+)= op(a)[m,k] · op(b)[k,n]`, all
/// row-major with row strides `lda`, `ldb`, `ldo` as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub accumulate: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldo: usize,
}

impl Matmul {
    /// Contiguous operands: each row stride is its stored row length.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, accumulate: bool) -> Matmul {
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        Matmul { m, n, k, trans_a, trans_b, accumulate, lda, ldb, ldo: n }
    }
    /// The same product with other row strides.
    pub fn strides(self, lda: usize, ldb: usize, ldo: usize) -> Matmul {
        Matmul { lda, ldb, ldo, ..self }
    }
}

/// Hyper-parameters of one AdamW update of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based update count, for bias correction.
    pub t: u64,
    /// Multiplies the gradient first (gradient clipping by global norm).
    pub grad_scale: f32,
}

/// Device-neutral operations. Buffers are flat `f32` arrays owned by the
/// backend; shapes are passed explicitly and all matrices are row-major.
/// Token ids live on the host and are passed as slices.
///
/// Conventions: `*_fwd` overwrite their outputs; parameter gradients are
/// always accumulated (`+=`) so gradient accumulation needs no extra pass;
/// activation gradients are overwritten unless the doc says otherwise.
pub trait Backend: Send + Sync {
    type Buf: Send + Sync;

    fn name(&self) -> String;

    // ---- memory ----
    fn zeros(&self, len: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn to_host(&self, buf: &Self::Buf) -> Vec<f32>;
    /// Copies `len` values starting at `offset` back to the host.
    fn read_range(&self, buf: &Self::Buf, offset: usize, len: usize) -> Vec<f32>;
    fn write(&self, buf: &mut Self::Buf, data: &[f32]);
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill(&self, buf: &mut Self::Buf, value: f32);
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);

    // ---- elementwise ----
    /// `out = a + b` on the first `n` elements.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize);
    /// `dst += src` on the first `n` elements.
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize);
    /// Sum of squares, accumulated in f64 (for the global gradient norm).
    fn sum_squares(&self, buf: &Self::Buf) -> f64;
    /// In-place inverted dropout; the same call is its own backward.
    fn dropout(&self, buf: &mut Self::Buf, drop: Dropout);

    // ---- matmul ----
    /// `out[m,n] (+)= op(a)[m,k] · op(b)[k,n]` where `a` is stored `[m,k]`
    /// (or `[k,m]` when `trans_a`) and `b` is stored `[k,n]` (or `[n,k]` when
    /// `trans_b`). `accumulate` adds to `out` instead of overwriting it.
    fn matmul(
        &self,
        out: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) {
        self.matmul_strided(out, a, b, Matmul::new(m, n, k, trans_a, trans_b, accumulate));
    }
    /// [`Backend::matmul`] with explicit row strides (leading dimensions),
    /// for working on a block of a wider matrix.
    fn matmul_strided(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, mm: Matmul);
    /// `out[r, :] += bias` for each of `rows` rows.
    fn add_bias(&self, out: &mut Self::Buf, bias: &Self::Buf, rows: usize, cols: usize);
    /// `dbias += sum over rows of dout`.
    fn bias_backward(&self, dbias: &mut Self::Buf, dout: &Self::Buf, rows: usize, cols: usize);

    // ---- embedding ----
    /// `out[b,t,:] = wte[tokens[b,t]] + wpe[pos_offset + t]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        wte: &Self::Buf,
        wpe: &Self::Buf,
        tokens: &[u32],
        seq: usize,
        channels: usize,
        pos_offset: usize,
    );
    #[allow(clippy::too_many_arguments)]
    fn embedding_bwd(
        &self,
        dwte: &mut Self::Buf,
        dwpe: &mut Self::Buf,
        dout: &Self::Buf,
        tokens: &[u32],
        seq: usize,
        channels: usize,
    );

    // ---- layer norm (eps 1e-5) ----
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        rows: usize,
        channels: usize,
    );
    /// Accumulates into `dinp` (it sits on the residual stream).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dinp: &mut Self::Buf,
        dweight: &mut Self::Buf,
        dbias: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        channels: usize,
    );

    // ---- GELU (tanh approximation) ----
    /// On the first `n` elements.
    fn gelu_fwd(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize);
    fn gelu_bwd(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, n: usize);

    // ---- causal self-attention ----
    /// `out[b,t,:]` from `qkv`; stores the softmax probabilities
    /// (`[batch, heads, seq, seq]`, before dropout) in `probs` for backward.
    fn attention_fwd(
        &self,
        out: &mut Self::Buf,
        probs: &mut Self::Buf,
        qkv: &Self::Buf,
        shape: AttnShape,
        drop: Dropout,
    );
    fn attention_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        probs: &Self::Buf,
        shape: AttnShape,
        drop: Dropout,
    );
    /// Inference with a KV cache: appends the k and v of `rows` new positions
    /// (taken from `qkv`, `[rows, 3C]`) at `start_pos` of the caches
    /// (`[max_seq, C]`) and attends each new query to every cached position up
    /// to its own, with an online softmax (no `seq x seq` matrix is stored).
    #[allow(clippy::too_many_arguments)]
    fn attention_cached(
        &self,
        out: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        start_pos: usize,
        rows: usize,
        channels: usize,
        heads: usize,
    );

    // ---- loss ----
    /// Softmax cross-entropy over the first `vocab` of `padded_vocab` logits
    /// per row. Writes per-row losses. With `grad_scale = Some(s)`, replaces
    /// `logits` by `s * dloss/dlogits` (padding columns get 0), fusing the
    /// backward into the forward so the logits are never read twice.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        losses: &mut Self::Buf,
        logits: &mut Self::Buf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        grad_scale: Option<f32>,
    );

    // ---- optimizer ----
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, step: AdamWStep);
}
