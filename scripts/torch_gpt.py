"""PyTorch reference implementation of the ferrite GPT model.

This module mirrors the Rust engine exactly: same architecture, same parameter
names (so ferrite's `model.safetensors` loads with `strict=True`), same weight
init and the same AdamW decay/no-decay split. It is used by

  * make_parity_fixture.py  - numbers the Rust parity test compares against,
  * torch_train_char.py     - the PyTorch side of the end-to-end training race,
  * bench_compare.py        - side-by-side throughput measurements.

Architecture (GPT-2 style, pre-LayerNorm decoder):

    x = wte[idx] + wpe[pos]; dropout
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T          # tied LM head, [B, T, padded_vocab]
    loss   = cross_entropy(logits[..., :vocab_size], targets)

The embedding table has `padded_vocab` rows (vocab_size rounded up to a
multiple of 64). The padding columns of the logits are computed but never
enter the loss or sampling.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5
VOCAB_PAD_MULTIPLE = 64


def pad_vocab(vocab_size: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """Round `vocab_size` up to a multiple of `multiple`."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    """ferrite's ModelConfig, field for field (config.json's "model")."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = False
    dropout: float = 0.0
    # 0 means "derive from vocab_size" (see __post_init__).
    padded_vocab: int = 0
    # Key/value heads (grouped-query attention); None means n_head.
    n_kv_head: int | None = None
    # "learned", "sinusoidal", "rope" or "none".
    pos: str = "learned"
    rope_base: float = 10000.0
    # "layernorm" or "rmsnorm".
    norm: str = "layernorm"
    qk_norm: bool = False
    # "gelu_tanh", "gelu", "swiglu" or "relu2".
    mlp: str = "gelu_tanh"
    # None: 4 * n_embd, or for swiglu 8/3 * n_embd rounded up to 64.
    mlp_hidden: int | None = None
    tie_embeddings: bool = True
    logit_softcap: float | None = None

    def __post_init__(self):
        if self.padded_vocab == 0:
            self.padded_vocab = pad_vocab(self.vocab_size)
        if self.padded_vocab < self.vocab_size:
            raise ValueError("padded_vocab must be >= vocab_size")
        if self.n_embd % self.n_head != 0:
            raise ValueError("n_embd must be divisible by n_head")
        if self.n_head % self.kv_heads != 0:
            raise ValueError("n_kv_head must divide n_head")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return (8 * self.n_embd // 3 + 63) // 64 * 64
        return 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a dict, ignoring unknown keys (e.g. batch_size)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


RMS_EPS = 1e-6


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return y * weight if weight is not None else y


class LayerNorm(nn.Module):
    """LayerNorm with an always-present weight and an optional bias.

    (nn.LayerNorm only grew a `bias=` switch in recent releases; doing it by
    hand keeps the parameter names and behaviour explicit.)
    """

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd)
    return LayerNorm(cfg.n_embd, cfg.bias)


def rope_tables(positions: int, head_dim: int, base: float):
    """cos, sin: [positions, head_dim / 2], computed in float64."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    freq = base ** (-2.0 * i / head_dim)
    angle = torch.arange(positions, dtype=torch.float64)[:, None] * freq[None, :]
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, hd]; rotates pairs (i, i + hd/2) ("rotate half")."""
    T = x.shape[2]
    c, s = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def sinusoidal_table(positions: int, channels: int) -> torch.Tensor:
    """The original Transformer's table: channel 2i = sin, 2i + 1 = cos."""
    table = torch.zeros(positions, channels, dtype=torch.float64)
    p = torch.arange(positions, dtype=torch.float64)[:, None]
    i = torch.arange(0, channels, 2, dtype=torch.float64)
    angle = p / 10000.0 ** (i / channels)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle.cos()[:, : channels // 2]
    return table


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.dropout = cfg.dropout
        hd = cfg.head_dim
        width = (cfg.n_head + 2 * cfg.kv_heads) * hd
        self.c_attn = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.block_size, hd, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, C = x.shape
        H, Hkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # c_attn output is laid out as [q heads | k heads | v heads].
        q, k, v = self.c_attn(x).split([H * hd, Hkv * hd, Hkv * hd], dim=2)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, Hkv, hd).transpose(1, 2)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        if cfg.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if cfg.pos == "rope":
            q = apply_rope(q, self.rope_cos, self.rope_sin)
            k = apply_rope(k, self.rope_cos, self.rope_sin)
        if Hkv != H:
            # Query head h uses key/value head h // (H / Hkv).
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        # SDPA uses the default 1/sqrt(hd) scale; dropout acts on the
        # attention probabilities, only in training mode.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        fc_out = 2 * cfg.hidden if cfg.mlp == "swiglu" else cfg.hidden
        self.c_fc = nn.Linear(cfg.n_embd, fc_out, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        elif self.kind == "gelu":
            h = F.gelu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        # Module names are chosen so that state_dict() keys are exactly the
        # ferrite checkpoint keys ("transformer.h.0.attn.c_attn.weight", ...).
        # A tied head reuses wte (no lm_head module); an untied one is lm_head.
        modules = dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg),
        )
        if cfg.pos == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.transformer = nn.ModuleDict(modules)
        if cfg.pos == "sinusoidal":
            table = sinusoidal_table(cfg.block_size, cfg.n_embd).float()
            self.register_buffer("sinusoid", table, persistent=False)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled."""
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # Both attn.c_proj and mlp.c_proj write into the residual
                # stream; scaling keeps its variance from growing with depth.
                nn.init.normal_(p, mean=0.0, std=proj_std)
            elif p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith(".weight"):
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
            else:
                # Linear biases.
                nn.init.zeros_(p)

    def num_params(self) -> int:
        # A tied wte is shared with the head, so every parameter is counted once.
        return sum(p.numel() for p in self.parameters())

    def head_weight(self) -> torch.Tensor:
        if self.config.tie_embeddings:
            return self.transformer.wte.weight
        return self.lm_head.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        B, T = idx.shape
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} > block_size {cfg.block_size}")
        tr = self.transformer
        x = tr.wte(idx)
        if cfg.pos == "learned":
            x = x + tr.wpe(torch.arange(T, device=idx.device))
        elif cfg.pos == "sinusoidal":
            x = x + self.sinusoid[:T].to(x.dtype)
        x = tr.drop(x)
        for block in tr.h:
            x = block(x)
        x = tr.ln_f(x)
        logits = F.linear(x, self.head_weight())  # [B, T, padded_vocab]
        if cfg.logit_softcap:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        loss = None
        if targets is not None:
            V = cfg.vocab_size
            loss = F.cross_entropy(
                logits[..., :V].reshape(-1, V), targets.reshape(-1), reduction="mean"
            )
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Autoregressive sampling without a KV cache.

        Every new token re-runs the model on the whole (cropped) context,
        which is what nanoGPT's sample.py does; bench_compare.py times exactly
        this.
        """
        V = self.config.vocab_size
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size :]
            logits, _ = self(ctx)
            # Padding columns are not real tokens: never sample them.
            logits = logits[:, -1, :V] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, V)).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


def configure_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float],
    wd: float,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/embeddings only.

    Parameters with dim >= 2 (all Linear weights, wte, wpe) are decayed;
    1-D parameters (biases, LayerNorm weights/biases) are not.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": wd},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


# ---------------------------------------------------------------------------
# Tokenizer + ferrite checkpoint I/O
# ---------------------------------------------------------------------------


class Tokenizer:
    """The two tokenizers ferrite knows: per-character and raw bytes."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.kind = spec["kind"]
        if self.kind == "char":
            self.chars = spec["chars"]
            self.stoi = {c: i for i, c in enumerate(self.chars)}
        elif self.kind != "byte":
            raise ValueError(f"unknown tokenizer kind {self.kind!r}")

    @classmethod
    def char_from_text(cls, text: str) -> "Tokenizer":
        return cls({"kind": "char", "chars": "".join(sorted(set(text)))})

    @property
    def vocab_size(self) -> int:
        return len(self.chars) if self.kind == "char" else 256

    def encode(self, s: str) -> list[int]:
        if self.kind == "char":
            return [self.stoi[c] for c in s]
        return list(s.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        if self.kind == "char":
            return "".join(self.chars[i] for i in ids)
        return bytes(ids).decode("utf-8", errors="replace")


def load_ferrite_checkpoint(
    ckpt_dir: str, device: str = "cpu"
) -> tuple[GPT, Tokenizer]:
    """Load DIR/config.json + DIR/model.safetensors written by ferrite.

    config.json holds {"model": {...GPTConfig fields...}, "tokenizer": {...}};
    any other top-level keys (training settings etc.) are ignored.
    """
    from safetensors.torch import load_file

    # A run directory means its best checkpoint, as for `ferrite sample`.
    if not os.path.exists(os.path.join(ckpt_dir, "config.json")):
        for sub in ("best", "last"):
            if os.path.exists(os.path.join(ckpt_dir, sub, "config.json")):
                ckpt_dir = os.path.join(ckpt_dir, sub)
                break
    with open(os.path.join(ckpt_dir, "config.json"), encoding="utf-8") as f:
        meta = json.load(f)
    cfg = GPTConfig.from_dict(meta["model"])
    model = GPT(cfg)
    state = load_file(os.path.join(ckpt_dir, "model.safetensors"), device=device)
    # The checkpoint may be stored in a narrower dtype; compute in fp32.
    state = {k: v.float() for k, v in state.items()}
    # strict=True: a missing or extra key means the layouts disagree.
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, Tokenizer(meta["tokenizer"])


def save_ferrite_checkpoint(model: GPT, tokenizer: Tokenizer, ckpt_dir: str) -> None:
    """Write a checkpoint in ferrite's layout (used to export PyTorch runs)."""
    from safetensors.torch import save_file

    os.makedirs(ckpt_dir, exist_ok=True)
    meta = {"model": model.config.to_dict(), "tokenizer": tokenizer.spec}
    with open(os.path.join(ckpt_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(ckpt_dir, "model.safetensors"))
