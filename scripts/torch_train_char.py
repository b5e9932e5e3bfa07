"""Character-level GPT training in PyTorch: the reference side of the race.

Reproduces the recipe of ferrite's `shakespeare-char-cpu` preset (nanoGPT's
"train on a CPU" Shakespeare settings) with our own model from torch_gpt.py:

  * vocab: sorted set of the corpus characters; 90/10 contiguous train/val split
  * model: 4 layers, 4 heads, 128 wide, block 64, no biases, dropout 0,
    exact (erf) GELU as nanoGPT's nn.GELU()
  * batch 12, 2000 iterations, AdamW(beta1 0.9, beta2 0.99, wd 0.1), clip 1.0
  * lr: linear warmup to 1e-3 over 100 iterations, cosine decay to 1e-4 at
    iteration lr_decay_iters (= iters), constant min_lr after that
  * eval every 250 iterations and at the end: mean loss over 20 random
    batches of each split
  * 2 torch threads, eager mode (no torch.compile)

Prints one line per eval and, last, `result: {json}` with the final losses and
timings (bench_compare.py parses that line). With --out DIR it also writes
DIR/metrics.jsonl (same "eval" line format as ferrite) and a ferrite-format
checkpoint, so `bench_compare.py sample` can be pointed at a PyTorch run.

Usage:  python scripts/torch_train_char.py --data data/tinyshakespeare.txt [--iters 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import (  # noqa: E402
    GPT,
    GPTConfig,
    Tokenizer,
    configure_optimizer,
    save_ferrite_checkpoint,
)


def lr_at(
    it: int, max_lr: float, min_lr: float, warmup: int, decay_iters: int
) -> float:
    """Learning rate for iteration `it` (0-based), exactly as nanoGPT's get_lr."""
    if it < warmup:
        return max_lr * (it + 1) / (warmup + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator):
    # Any start position whose target window still fits inside the split.
    starts = torch.randint(len(data) - block, (batch,), generator=gen)
    x = torch.stack([data[s : s + block] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + 1 + block] for s in starts.tolist()])
    return x, y


@torch.no_grad()
def estimate_loss(model, splits, block, batch, eval_iters, gen) -> dict:
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = [
            model(*get_batch(data, block, batch, gen))[1].item()
            for _ in range(eval_iters)
        ]
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def main():
    ap = argparse.ArgumentParser(description="PyTorch char-level GPT training")
    ap.add_argument("--data", required=True, help="plain-text corpus")
    ap.add_argument("--out", default=None, help="write metrics.jsonl + checkpoint here")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--lr-decay-iters", type=int, default=None, help="default: --iters")
    ap.add_argument("--warmup-iters", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--mlp", default="gelu", help="gelu (nanoGPT), gelu_tanh, swiglu, relu2")
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    decay_iters = args.lr_decay_iters or args.iters

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t_start = time.perf_counter()
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    tok = Tokenizer.char_from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    n_train = int(0.9 * len(data))
    splits = {"train": data[:n_train], "val": data[n_train:]}

    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        bias=False,
        dropout=0.0,
        mlp=args.mlp,
    )
    model = GPT(cfg)
    opt = configure_optimizer(model, lr=args.lr, betas=(0.9, 0.99), wd=0.1)
    print(
        f"vocab {cfg.vocab_size} (padded {cfg.padded_vocab}), "
        f"{model.num_params() / 1e6:.3f}M params, {len(data)} tokens, "
        f"{args.threads} threads",
        flush=True,
    )

    metrics = []
    eval_seconds = 0.0
    t_train = time.perf_counter()
    for it in range(args.iters):
        lr = lr_at(it, args.lr, args.min_lr, args.warmup_iters, decay_iters)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = get_batch(splits["train"], cfg.block_size, args.batch_size, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        step = it + 1  # number of optimizer updates done so far
        if step % args.eval_interval == 0 or step == args.iters:
            t0 = time.perf_counter()
            losses = estimate_loss(
                model, splits, cfg.block_size, args.batch_size, args.eval_iters, gen
            )
            eval_seconds += time.perf_counter() - t0
            rec = {
                "kind": "eval",
                "step": step,
                "train_loss": losses["train"],
                "val_loss": losses["val"],
            }
            metrics.append(rec)
            elapsed = time.perf_counter() - t_train
            print(
                f"step {step:5d}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
                f"lr {lr:.2e}, {elapsed:.1f}s",
                flush=True,
            )
    train_seconds = time.perf_counter() - t_train

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.jsonl"), "w", encoding="utf-8") as f:
            for rec in metrics:
                f.write(json.dumps(rec) + "\n")
        save_ferrite_checkpoint(model, tok, args.out)

    final = metrics[-1]
    result = {
        "iters": args.iters,
        "train_loss": final["train_loss"],
        "val_loss": final["val_loss"],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "tokens_per_s": args.iters
        * args.batch_size
        * cfg.block_size
        / (train_seconds - eval_seconds),
    }
    print("result: " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
