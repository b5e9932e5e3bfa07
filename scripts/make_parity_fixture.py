"""Generate the model parity fixtures used by ferrite's Rust tests.

Writes one file per architecture, all with the same layout, so the Rust test
runs the same code on each:

    tests/fixtures/gpt_parity.safetensors         GPT-2: biases, tanh GELU
    tests/fixtures/gpt_parity_nobias.safetensors  nanoGPT: no biases, exact GELU
    tests/fixtures/gpt_parity_llama.safetensors   Llama-style: RoPE, RMSNorm,
                                                  SwiGLU, 4 heads sharing 2 KV
                                                  heads, untied head, no biases
    tests/fixtures/gpt_parity_options.safetensors the remaining options:
                                                  sinusoidal positions, one KV
                                                  head (MQA), QK-norm, ReLU^2,
                                                  logit soft-capping, biases

Model: vocab_size=50 (padded_vocab=64), block_size=16, n_layer=2, n_head=2
(4 for the Llama and options files), n_embd=32, dropout=0; batch B=2, T=12
(T < block_size on purpose, so the position-embedding / attention code must
not assume T == block_size).

Safetensors __metadata__ (all values are strings, as the format requires):
    "config"          JSON: the model config (every field of ferrite's
                      ModelConfig, same names) plus B, T, lr, beta1, beta2,
                      eps, weight_decay, grad_clip.
    "grad_norm_step1" unclipped global L2 grad norm of the first step.
    "grad_norm_step2" unclipped global L2 grad norm of the second step.
    "loss_step2"      loss of the second forward pass (after one update).

Tensors (float32 unless noted):
    "inputs", "targets"  int32 [B, T], random tokens < vocab_size
    "param.<name>"       initial value of every parameter
    "logits"             [B, T, padded_vocab] (padding columns included)
    "loss"               [1], mean cross entropy over logits[..., :vocab_size]
    "grad.<name>"        gradient of every parameter at step 1, unclipped
    "step1.<name>"       parameters after 1 AdamW step
    "step2.<name>"       parameters after 2 AdamW steps
    "bf16.logits", "bf16.loss", "bf16.grad.<name>"
                         the same first forward/backward of the float32
                         model under torch.autocast("cpu", dtype=bfloat16)
                         (mixed precision: what `--dtype bf16` is checked
                         against, within bf16 tolerance)

<name> is the ferrite/safetensors parameter name, e.g.
"transformer.h.0.attn.c_attn.weight". There is no lm_head (tied to wte).

Each step = forward + backward on the same (inputs, targets) batch, global
grad-norm clipping exactly like torch.nn.utils.clip_grad_norm_ (scale grads by
grad_clip / (norm + 1e-6) when that factor is < 1), then torch.optim.AdamW with
constant lr, weight decay only on parameters with dim >= 2 (embeddings
included). grad_clip is set to half the first-step norm, so clipping really
happens in step 1 (and, given the same batch, almost surely in step 2).

The initial weights are float32 values; the reference is computed in float64
from exactly those values and rounded to float32 only when stored. Biases and
LayerNorm parameters are randomised (not 0/1) so that their code paths are
tested, and the padding rows of wte are random too (they receive zero gradient
but are still weight-decayed).

Usage:  python scripts/make_parity_fixture.py [--out-dir tests/fixtures]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import GPT, GPTConfig, configure_optimizer  # noqa: E402

B, T = 2, 12
LR = 1e-2
BETA1, BETA2 = 0.9, 0.95
# Adam's eps: larger than PyTorch's default 1e-8 on purpose. Gradients that
# are zero in exact arithmetic (a key bias, which softmax ignores) come out
# of f32 and f64 as different specks of rounding; with eps = 1e-8 Adam turns
# each speck into a full-size update of random sign, and the two steps then
# differ for reasons that have nothing to do with correctness.
EPS = 1e-6
WEIGHT_DECAY = 0.1


def global_grad_norm(model: torch.nn.Module) -> float:
    return torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item()


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


FIXTURES = {
    "gpt_parity.safetensors": dict(bias=True),
    "gpt_parity_nobias.safetensors": dict(bias=False, mlp="gelu"),
    "gpt_parity_llama.safetensors": dict(
        bias=False,
        n_head=4,
        n_kv_head=2,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=False,
    ),
    "gpt_parity_options.safetensors": dict(
        bias=True,
        n_head=4,
        n_kv_head=1,
        pos="sinusoidal",
        qk_norm=True,
        mlp="relu2",
        logit_softcap=5.0,
    ),
}


def build_fixture(options: dict) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    cfg = GPTConfig(**{**base, **options})
    assert cfg.padded_vocab == 64
    model = GPT(cfg)  # float32 init

    # Randomise the 1-D parameters so a Rust bug that ignores them shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                is_ln_weight = ".ln_" in name and name.endswith(".weight")
                p.copy_(
                    (1.0 if is_ln_weight else 0.0)
                    + torch.randn_like(p) * (0.1 if is_ln_weight else 0.02)
                )

    inputs = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))

    tensors: dict[str, torch.Tensor] = {
        "inputs": inputs.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
    }
    for name, p in model.named_parameters():
        tensors[f"param.{name}"] = f32(p)

    # Mixed precision: the float32 model under bf16 autocast, as nanoGPT and
    # PyTorch users train (matmul inputs in bf16, accumulation in f32).
    m16 = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16, loss16 = m16(inputs, targets)
    loss16.backward()
    tensors["bf16.logits"] = f32(logits16)
    tensors["bf16.loss"] = f32(loss16.reshape(1))
    for name, p in m16.named_parameters():
        tensors[f"bf16.grad.{name}"] = f32(p.grad)

    # Everything from here on runs in float64, starting from the fp32 values.
    model.double()
    model.train()  # dropout is 0, so train/eval only differ in name

    # Step 1 forward/backward: record logits, loss, raw grads, raw norm.
    logits, loss = model(inputs, targets)
    loss.backward()
    tensors["logits"] = f32(logits)
    tensors["loss"] = f32(loss.reshape(1))
    for name, p in model.named_parameters():
        tensors[f"grad.{name}"] = f32(p.grad)
    norm1 = global_grad_norm(model)
    grad_clip = 0.5 * norm1

    # Two full training steps. The grads from above are exactly what step 1
    # needs, so step 1 continues from them instead of recomputing.
    opt = configure_optimizer(
        model, lr=LR, betas=(BETA1, BETA2), wd=WEIGHT_DECAY, eps=EPS
    )
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    for name, p in model.named_parameters():
        tensors[f"step1.{name}"] = f32(p)

    opt.zero_grad(set_to_none=True)
    _, loss2 = model(inputs, targets)
    loss2.backward()
    norm2 = global_grad_norm(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    for name, p in model.named_parameters():
        tensors[f"step2.{name}"] = f32(p)

    config = cfg.to_dict()
    config.update(
        B=B,
        T=T,
        lr=LR,
        beta1=BETA1,
        beta2=BETA2,
        eps=EPS,
        weight_decay=WEIGHT_DECAY,
        grad_clip=grad_clip,
    )
    metadata = {
        "config": json.dumps(config),
        "grad_norm_step1": repr(norm1),
        "grad_norm_step2": repr(norm2),
        "loss_step2": repr(loss2.item()),
    }
    summary = dict(
        loss=loss.item(),
        loss_step2=loss2.item(),
        norm1=norm1,
        norm2=norm2,
        grad_clip=grad_clip,
    )
    return tensors, metadata, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out-dir", default=os.path.join(repo, "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    for fname, options in FIXTURES.items():
        tensors, metadata, s = build_fixture(options)
        path = os.path.join(args.out_dir, fname)
        save_file(tensors, path, metadata=metadata)
        print(
            f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1024:.0f} KiB, "
            f"loss {s['loss']:.6f} -> {s['loss_step2']:.6f}, "
            f"grad norm {s['norm1']:.6f} / {s['norm2']:.6f}, clip {s['grad_clip']:.6f}"
        )


if __name__ == "__main__":
    main()
