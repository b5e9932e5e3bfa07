//! The engine: device-neutral tensor operations with explicit forward and
//! backward kernels (llm.c style). Model and training code only talk to the
//! [`Backend`] trait, so a CUDA backend slots in beside [`cpu::Cpu`] without
//! touching them; [`Device`] is the one place a backend is chosen.

use anyhow::Result;
use std::borrow::Cow;

pub mod comm;
pub mod cpu;
pub mod device;
pub mod dtype;
pub mod fastmath;
#[cfg(test)]
pub mod gradcheck;
pub mod profile;
pub mod quant;

pub use device::{Device, OnDevice};
pub use dtype::DType;
pub use quant::Quantized;

/// Shape of a causal self-attention call over a fused `qkv` buffer laid out
/// `[batch, seq, (heads + 2 * kv_heads) * head_dim]`: all query heads, then
/// the key heads, then the value heads. With `kv_heads < heads` (grouped-query
/// attention; 1 is multi-query), query head `h` uses key/value head
/// `h / (heads / kv_heads)`. The output is `[batch, seq, heads * head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Width of a `qkv` row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    /// Width of an output row (and of the queries).
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Width of the keys (and of the values).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Floats a training attention call keeps for its backward pass: two
    /// per (batch, head, query) row of scores (`[batch, heads, seq, 2]`),
    /// never the `seq x seq` probabilities.
    pub fn stats_len(&self) -> usize {
        2 * self.batch * self.heads * self.seq
    }
    /// Column offsets of query head `h` and of its key and value heads in a `qkv` row.
    pub fn offsets(&self, h: usize) -> (usize, usize, usize) {
        let g = h / self.group();
        let hd = self.head_dim;
        (h * hd, self.q_width() + g * hd, self.q_width() + self.kv_width() + g * hd)
    }
}

/// Where one row of an inference batch lives in a multi-sequence KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheRow {
    pub slot: usize,
    pub pos: usize,
}

/// Pointwise activations of the MLP (SwiGLU, which gates, has its own kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// GELU with the exact error function (PyTorch's default, nanoGPT's).
    Gelu,
    /// `relu(x)^2` (Primer; modded-nanogpt, nanochat).
    Relu2,
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
/// row-major with row strides `lda`, `ldb`, `ldo` as stored, and the
/// arithmetic: `compute` F32 multiplies the operands' values as stored;
/// BF16 rounds both operands to bfloat16 first (as PyTorch's autocast
/// does), multiplies exactly and sums in f32. `out` is f32; the operands
/// may be stored in any dtype.
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
    /// Where the operands and the output start in their buffers (elements):
    /// a column block of a wider matrix, such as the keys of a fused q/k/v.
    pub offsets: [usize; 3],
    pub compute: DType,
}

impl Matmul {
    /// Contiguous operands: each row stride is its stored row length.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, accumulate: bool) -> Matmul {
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        Matmul { m, n, k, trans_a, trans_b, accumulate, lda, ldb, ldo: n, offsets: [0; 3], compute: DType::F32 }
    }
    /// The same product with other row strides.
    pub fn strides(self, lda: usize, ldb: usize, ldo: usize) -> Matmul {
        Matmul { lda, ldb, ldo, ..self }
    }
    /// The same product on blocks starting `a`, `b` and `out` elements into their buffers.
    pub fn offsets(self, a: usize, b: usize, out: usize) -> Matmul {
        Matmul { offsets: [a, b, out], ..self }
    }
    /// The same product in another arithmetic (F32 or BF16).
    pub fn compute(self, compute: DType) -> Matmul {
        Matmul { compute, ..self }
    }
}

/// A target the loss skips: positions that are not trained on (the prompt
/// of an instruction example), like PyTorch's `ignore_index`.
pub const IGNORE_TARGET: u32 = u32::MAX;

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

/// Device-neutral operations. Buffers are flat arrays of one [`DType`]
/// owned by the backend; shapes are passed explicitly and all matrices are
/// row-major. Token ids live on the host and are passed as slices.
///
/// Dtypes: every operation takes and writes f32 buffers unless its doc says
/// otherwise (norms, softmax, the loss and AdamW always accumulate in f32).
/// Memory operations take any dtype: uploads and writes round f32 values to
/// the buffer's dtype (to nearest even), downloads give f32 values back.
/// The kernels whose outputs only feed matmuls (norms, MLP activations,
/// attention) may write f32 or bf16, computing in f32 and rounding once as
/// they store: that is how bf16 training keeps those activations.
///
/// Conventions: `*_fwd` overwrite their outputs; parameter gradients are
/// always accumulated (`+=`) so gradient accumulation needs no extra pass;
/// activation gradients are overwritten unless the doc says otherwise.
///
/// Failures: what can fail on a device returns `Result`: allocation (out of
/// memory), upload, download and [`Backend::synchronize`]. Kernels do not:
/// on a GPU they are queued without waiting, so a failed launch can only be
/// seen later; a backend records it and returns it from the next download
/// or synchronisation (as CUDA itself reports errors). Callers therefore
/// learn of a failure at the latest when they read a result.
///
/// A backend is a cheap handle (`Clone`): a model and its draft, or a
/// server's threads, each hold one.
pub trait Backend: Clone + Send + Sync + 'static {
    type Buf: Send + Sync;

    fn name(&self) -> String;
    /// Up to how many rows a matmul's result for one row is bit-identical
    /// whatever the other rows (`None`: no such guarantee). Incremental
    /// inference caps its passes at this, so a sequence gets the same logits
    /// decoded alone or in a batch, and speculative decoding's check of a
    /// draft gives exactly the target's own logits.
    fn batch_invariant_rows(&self) -> Option<usize> {
        None
    }

    // ---- memory ----
    /// A buffer of `len` f32 zeros; an error when the device has no room.
    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        self.zeros_as(len, DType::F32)
    }
    fn zeros_as(&self, len: usize, dtype: DType) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload_as(data, DType::F32)
    }
    /// `data` stored as `dtype` (a block-quantized dtype quantizes it:
    /// `data` is then a whole number of blocks).
    fn upload_as(&self, data: &[f32], dtype: DType) -> Result<Self::Buf>;
    /// Block-quantized values as they are (from a file): a weight matrix
    /// whose rows are whole blocks. Only `matmul_strided` (as `b`, `x · Wᵀ`),
    /// `embedding_fwd` (as the table) and the memory operations take them.
    fn upload_blocks(&self, blocks: &Quantized) -> Result<Self::Buf>;
    fn dtype(&self, buf: &Self::Buf) -> DType;
    fn to_host(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// The buffer's values on the host: borrowed where the backend's memory
    /// is host memory (no copy of a large model when saving it), else copied.
    fn view<'a>(&self, buf: &'a Self::Buf) -> Result<Cow<'a, [f32]>> {
        Ok(Cow::Owned(self.to_host(buf)?))
    }
    /// Copies `len` values starting at `offset` back to the host.
    fn read_range(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Vec<f32>>;
    fn write(&self, buf: &mut Self::Buf, data: &[f32]) -> Result<()>;
    /// Bytes the device can still give (none: unknown). Runs check what
    /// they need against it before allocating, so a size that cannot fit is
    /// a clear error instead of an abort or a machine swapping to a halt.
    fn available_memory(&self) -> Option<u64> {
        None
    }
    /// Temporary bytes training attention of this shape takes while it
    /// runs (beyond its inputs, outputs and statistics).
    fn attention_scratch_bytes(&self, _shape: AttnShape) -> usize {
        0
    }
    /// Waits for the queued kernels; reports the first that failed.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Elements (of any dtype).
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill(&self, buf: &mut Self::Buf, value: f32);
    /// Any dtype; both the same.
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);

    // ---- elementwise ----
    /// `out = a + b` on the first `n` elements.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize);
    /// `dst += src` on the first `n` elements.
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize);
    /// Sum of squares, accumulated in f64 (for the global gradient norm):
    /// a value on the host, so like a download it can report a failure.
    fn sum_squares(&self, buf: &Self::Buf) -> Result<f64>;
    /// In-place inverted dropout; the same call is its own backward.
    fn dropout(&self, buf: &mut Self::Buf, drop: Dropout);
    /// `dst[..n] = dropout(src[..n])` into f32 from a buffer of any dtype,
    /// with the mask [`Backend::dropout`] gives the first `n` elements.
    fn dropout_from(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize, drop: Dropout);
    /// `buf[..n] *= factor`.
    fn scale(&self, buf: &mut Self::Buf, n: usize, factor: f32);

    // ---- matmul ----
    /// `out[m,n] (+)= op(a)[m,k] · op(b)[k,n]` where `a` is stored `[m,k]`
    /// (or `[k,m]` when `trans_a`) and `b` is stored `[k,n]` (or `[n,k]` when
    /// `trans_b`). `accumulate` adds to `out` instead of overwriting it.
    /// In f32 arithmetic; [`Backend::matmul_strided`] takes the arithmetic too.
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
    /// for working on a block of a wider matrix, and the arithmetic
    /// ([`Matmul::compute`]). `a` and `b` may be of any dtype; `out` is f32.
    /// With block-quantized weights `b` (`x · Wᵀ`) the activations are
    /// rounded to int8 blocks of 32 first, as llama.cpp does, and the
    /// products summed in integers.
    fn matmul_strided(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, mm: Matmul);
    /// `out[r, :] += bias` for each of `rows` rows.
    fn add_bias(&self, out: &mut Self::Buf, bias: &Self::Buf, rows: usize, cols: usize);
    /// `dbias += sum over rows of dout`.
    fn bias_backward(&self, dbias: &mut Self::Buf, dout: &Self::Buf, rows: usize, cols: usize);

    // ---- embedding ----
    /// `out[i,:] = wte[tokens[i]] (+ wpe[positions[i]])`; `wpe` is a
    /// learned or fixed (sinusoidal) position table, or absent.
    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        wte: &Self::Buf,
        wpe: Option<&Self::Buf>,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    );
    /// Accumulates into `dwte` and, for a learned position table, `dwpe`.
    fn embedding_bwd(
        &self,
        dwte: &mut Self::Buf,
        dwpe: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        tokens: &[u32],
        positions: &[u32],
        channels: usize,
    );

    // ---- normalisation ----
    /// LayerNorm over rows of `channels` (`eps` inside the square root;
    /// PyTorch's default is 1e-5). `out` is f32 or bf16.
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
        eps: f32,
    );
    /// Accumulates into `dinp` (it sits on the residual stream).
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
    /// RMSNorm: `out = inp / sqrt(mean(inp^2) + eps) * weight`; `out` is f32 or bf16.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        channels: usize,
        eps: f32,
    );
    /// Accumulates into `dinp` and `dweight`.
    fn rmsnorm_bwd(
        &self,
        dinp: &mut Self::Buf,
        dweight: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        weight: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        channels: usize,
    );
    /// QK-norm: copies `qkv` (`rows` rows) to `out` with every query and key
    /// head RMS-normalised (eps 1e-6, no weight); `rstd` gets
    /// `[rows, heads + kv_heads]`.
    fn qk_norm_fwd(&self, out: &mut Self::Buf, rstd: &mut Self::Buf, qkv: &Self::Buf, shape: AttnShape, rows: usize);
    /// Overwrites `dqkv` (values pass straight through).
    fn qk_norm_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        rstd: &Self::Buf,
        shape: AttnShape,
        rows: usize,
    );

    // ---- rotary position embedding ----
    /// Rotates every query and key head of the first `positions.len()` rows
    /// of `qkv` in place (the "rotate half" pairing `(i, i + head_dim / 2)`
    /// of Llama), row `r` by the angles of position `positions[r]`. `cos`
    /// and `sin` are `[positions, head_dim / 2]` tables. `inverse` rotates
    /// back: the backward pass. (Only the head counts of `shape` are used.)
    fn rope(
        &self,
        qkv: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        shape: AttnShape,
        positions: &[u32],
        inverse: bool,
    );

    // ---- MLP activations ----
    /// On the first `n` elements; `out` is f32 or bf16.
    fn activation_fwd(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize, act: Activation);
    fn activation_bwd(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, n: usize, act: Activation);
    /// SwiGLU: `inp` rows are `[gate | up]` (`2 * hidden` wide), `out[r] =
    /// silu(gate) * up` (`out` f32 or bf16).
    fn swiglu_fwd(&self, out: &mut Self::Buf, inp: &Self::Buf, rows: usize, hidden: usize);
    fn swiglu_bwd(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, rows: usize, hidden: usize);

    // ---- causal self-attention ----
    /// `out` from `qkv`; keeps per-row softmax statistics in `stats`
    /// ([`AttnShape::stats_len`] floats, the backend's to define) from which
    /// the backward pass recomputes the probabilities, as flash attention
    /// does: memory linear in the sequence, not quadratic. `out` is f32 or bf16.
    fn attention_fwd(
        &self,
        out: &mut Self::Buf,
        stats: &mut Self::Buf,
        qkv: &Self::Buf,
        shape: AttnShape,
        drop: Dropout,
    );
    /// Overwrites `dqkv`.
    fn attention_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        stats: &Self::Buf,
        shape: AttnShape,
        drop: Dropout,
    );
    /// Inference with a KV cache holding several sequences: `k_cache` and
    /// `v_cache` are `[slots, capacity, kv_width]`. Row `r` of `qkv` belongs
    /// to `rows[r]`: its keys and values are stored at that slot and
    /// position, then its query attends to the slot's positions up to its
    /// own (one row of scores at a time: no `seq x seq` matrix). A
    /// prompt is consecutive rows of one slot; a decoding step of a batch is
    /// one row per slot. The caches may be f32 or bf16 (keys and values are
    /// rounded as they are stored; scores and sums are f32).
    fn attention_cached(
        &self,
        out: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        rows: &[CacheRow],
        capacity: usize,
        shape: AttnShape,
    );

    // ---- loss ----
    /// Softmax cross-entropy over the first `vocab` of `padded_vocab` logits
    /// per row, after optional soft-capping (`cap * tanh(logit / cap)`).
    /// Rows whose target is [`IGNORE_TARGET`] get loss 0 and gradient 0.
    /// Writes per-row losses. With `grad_scale = Some(s)`, replaces `logits`
    /// by `s * dloss/dlogits` (padding columns get 0), fusing the backward
    /// into the forward so the logits are never read twice.
    fn cross_entropy(
        &self,
        losses: &mut Self::Buf,
        logits: &mut Self::Buf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        softcap: Option<f32>,
        grad_scale: Option<f32>,
    );

    // ---- optimizer ----
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, step: AdamWStep);
}
