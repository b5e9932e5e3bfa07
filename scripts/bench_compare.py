"""Side-by-side benchmarks: ferrite vs our PyTorch reference, in one run.

Subcommands (each ends with a compact summary table):

  step    Training-step throughput for one model config. Runs
          `ferrite bench --preset NAME --json ...`, takes the model config
          from its JSON output, and times the same config in PyTorch
          (forward + backward + clip(1.0) + AdamW, 3 warmup steps, median of
          the timed steps). Ratio = ferrite tokens/s / PyTorch tokens/s.

          `--dtype bf16` trains in mixed precision on both sides (ferrite's
          `--dtype bf16`; PyTorch's forward under
          `torch.autocast("cpu", dtype=torch.bfloat16)`). `--reference nanogpt
          --nanogpt-dir DIR` times nanoGPT's own model.py from a checkout of
          karpathy/nanoGPT (SDPA attention, its configure_optimizers) instead
          of our scripts/torch_gpt.py.

  matmul  One matrix multiply, f32 and bf16, in PyTorch and in ferrite
          (`ferrite bench --matmul`): GFLOP/s and ferrite's fraction of
          PyTorch's (the machine's practical ceiling).

  train   End-to-end wall time of the nanoGPT CPU Shakespeare recipe:
          `ferrite train --preset shakespeare-char-cpu` against
          scripts/torch_train_char.py. Both run as subprocesses and the wall
          time is measured around each, so process start-up, data loading and
          evals count on both sides. Ratio = ferrite time / PyTorch time.

  sample  Generation speed from a ferrite checkpoint: PyTorch loads it and
          samples nanoGPT-style (full context recomputed per token, no KV
          cache, top-k 200, temperature 0.8), ferrite runs `ferrite sample
          --stats`. Ratio = ferrite tokens/s / PyTorch tokens/s.

Ratios > 1 mean ferrite is better (faster) for throughputs; for `train` the
ratio is a time, so < 1 means ferrite is faster.

Examples:
  python scripts/bench_compare.py step --preset shakespeare-char-cpu
  python scripts/bench_compare.py step --torch-only --vocab-size 65 --batch-size 12
  python scripts/bench_compare.py train --data data/tinyshakespeare.txt --iters 200
  python scripts/bench_compare.py sample --checkpoint out/shakespeare
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
from torch_gpt import (
    GPT,
    GPTConfig,
    configure_optimizer,
    load_ferrite_checkpoint,
)  # noqa: E402

DEFAULT_FERRITE = os.path.join(REPO, "target", "release", "ferrite")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def run_ferrite(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ferrite, echo its stderr, fail loudly with its output on error."""
    if not os.path.exists(cmd[0]):
        sys.exit(
            f"ferrite binary not found at {cmd[0]} "
            "(build it with `cargo build --release` or pass --ferrite PATH)"
        )
    print("$ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"ferrite exited with status {proc.returncode}")
    return proc


def last_json_line(text: str, prefix: str = "") -> dict:
    """The last line of `text` that starts with `prefix` and holds JSON."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(prefix):
            payload = line[len(prefix) :].strip()
            if payload.startswith("{"):
                return json.loads(payload)
    raise ValueError(f"no JSON line with prefix {prefix!r} in output:\n{text}")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def fmt(row):
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        )

    print(f"\n== {title} ==")
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def ratio_str(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def approx_flops_per_token(cfg: GPTConfig, n_params: int, T: int) -> float:
    """fwd+bwd FLOPs per token: 6*N plus attention (PaLM appendix B).

    Only used when ferrite's own figure is not available (--torch-only).
    N excludes wpe (a lookup, no matmul) but includes wte (the tied head).
    """
    n = n_params - cfg.block_size * cfg.n_embd
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T


# ---------------------------------------------------------------------------
# step
# ---------------------------------------------------------------------------


def nanogpt_model(nanogpt_dir: str, cfg: GPTConfig):
    """nanoGPT's own GPT (model.py of a karpathy/nanoGPT checkout) and its
    optimizer, for the same configuration (dropout 0)."""
    sys.path.insert(0, nanogpt_dir)
    import model as nanogpt  # noqa: E402

    ncfg = nanogpt.GPTConfig(
        block_size=cfg.block_size,
        vocab_size=cfg.vocab_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        dropout=0.0,
        bias=cfg.bias,
    )
    model = nanogpt.GPT(ncfg)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    return model, opt


def torch_step_benchmark(
    cfg: GPTConfig,
    batch: int,
    warmup: int,
    steps: int,
    dtype: str = "f32",
    nanogpt_dir: str | None = None,
) -> list[float]:
    """Seconds per training step for `steps` timed steps."""
    torch.manual_seed(0)
    if nanogpt_dir:
        model, opt = nanogpt_model(nanogpt_dir, cfg)
    else:
        model = GPT(cfg)
        opt = configure_optimizer(model, lr=1e-3, betas=(0.9, 0.95), wd=0.1)
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    times = []
    for i in range(warmup + steps):
        # Fresh random tokens every step; generated outside the timed region.
        x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
        y = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return times


def cmd_step(args):
    """Alternates ferrite and PyTorch for --rounds rounds (this host switches
    speed states for minutes at a time, so one long run of each would compare
    different machines) and reports the median ratio of the rounds."""
    torch.set_num_threads(args.threads)

    def ferrite_round():
        cmd = [
            args.ferrite,
            "bench",
            "--preset",
            args.preset,
            "--steps",
            str(args.steps),
            "--json",
        ]
        if args.vocab_size:
            cmd += ["--vocab-size", str(args.vocab_size)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        # Dropout changes the work done; the comparison is always without it.
        cmd += ["--dropout", "0", "--dtype", args.dtype]
        return last_json_line(run_ferrite(cmd).stdout)

    if args.torch_only:
        cfg_dict = dict(
            vocab_size=args.vocab_size or 65,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            bias=args.bias,
            dropout=0.0,
            batch_size=args.batch_size or 12,
        )
        first = None
    else:
        first = ferrite_round()
        cfg_dict = first["config"]

    cfg = GPTConfig.from_dict({**cfg_dict, "dropout": 0.0})
    batch = int(cfg_dict["batch_size"])
    tokens = batch * cfg.block_size
    print(
        f"config: {json.dumps(cfg.to_dict())}, batch_size {batch}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads",
        flush=True,
    )
    if first:
        # Use ferrite's FLOP count so both GFLOP/s figures share a definition.
        flops_per_step = first["gflops"] * 1e9 * first["ms_per_step"] / 1e3
    else:
        n_params = sum(p.numel() for p in GPT(cfg).parameters())
        flops_per_step = approx_flops_per_token(cfg, n_params, cfg.block_size) * tokens

    rows, ratios = [], []
    for r in range(args.rounds):
        ferrite = None
        if not args.torch_only:
            ferrite = first if r == 0 else ferrite_round()
        t_med = statistics.median(
            torch_step_benchmark(
                cfg, batch, args.warmup, args.steps, args.dtype, args.nanogpt_dir
            )
        )
        torch_tps = tokens / t_med
        if ferrite:
            rows.append(
                [
                    f"ferrite {args.dtype} (round {r + 1})",
                    f"{ferrite['tokens_per_s']:.0f}",
                    f"{ferrite['ms_per_step']:.2f}",
                    f"{ferrite['gflops']:.2f}",
                ]
            )
            ratios.append(ferrite["tokens_per_s"] / torch_tps)
        rows.append(
            [
                f"{'nanoGPT' if args.nanogpt_dir else 'pytorch'} {args.dtype}, "
                f"{args.threads} thr (round {r + 1})",
                f"{torch_tps:.0f}",
                f"{t_med * 1e3:.2f}",
                f"{flops_per_step / t_med / 1e9:.2f}",
            ]
        )
    print_table(
        f"train step: {cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}C, vocab {cfg.vocab_size}, "
        f"block {cfg.block_size}, batch {batch} (median of {args.steps} steps per round)",
        ["engine", "tokens/s", "ms/step", "GFLOP/s"],
        rows,
    )
    if ratios:
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        print(
            f"ratio ferrite/pytorch (tokens/s): {statistics.median(ratios):.2f}x "
            f"(median of rounds: {each})"
        )


# ---------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------

MATMUL_SHAPES = [
    "2048x2048x2048:NN",
    "16384x1536x384:NT",
    "16384x384x1536:NN",
    "1536x384x16384:TN",
]


def torch_matmul_gflops(spec: str, dtype, steps: int) -> float:
    dims, layout = spec.split(":")
    m, n, k = (int(x) for x in dims.split("x"))
    a = torch.randn(k, m) if layout[0] == "T" else torch.randn(m, k)
    b = torch.randn(n, k) if layout[1] == "T" else torch.randn(k, n)
    a, b = a.to(dtype), b.to(dtype)
    op_a = a.t() if layout[0] == "T" else a
    op_b = b.t() if layout[1] == "T" else b
    for _ in range(2):
        op_a @ op_b
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        op_a @ op_b
        times.append(time.perf_counter() - t0)
    return 2 * m * n * k / statistics.median(times) / 1e9


def cmd_matmul(args):
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.shape or MATMUL_SHAPES:
        t32 = torch_matmul_gflops(spec, torch.float32, args.steps)
        t16 = torch_matmul_gflops(spec, torch.bfloat16, args.steps)
        if args.torch_only:
            f = {"f32_gflops": None, "bf16_gflops": None}
        else:
            cmd = [args.ferrite, "bench", "--matmul", spec, "--steps", str(args.steps), "--json"]
            f = last_json_line(run_ferrite(cmd).stdout)
        fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
        rows.append(
            [
                spec,
                fmt(f["f32_gflops"]),
                f"{t32:.0f}",
                ratio_str(f["f32_gflops"], t32),
                fmt(f["bf16_gflops"]),
                f"{t16:.0f}",
                ratio_str(f["bf16_gflops"], t16),
            ]
        )
    print_table(
        f"matmul GFLOP/s (median of {args.steps}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        ["shape", "ferrite f32", "torch f32", "ratio", "ferrite bf16", "torch bf16", "ratio"],
        rows,
    )


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def final_eval(metrics_path: str) -> dict:
    last = None
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if rec.get("kind") == "eval":
                    last = rec
    if last is None:
        raise ValueError(f"no eval records in {metrics_path}")
    return last


def ferrite_train_round(args, out_dir: str) -> dict:
    cmd = [
        args.ferrite,
        "train",
        "--preset",
        "shakespeare-char-cpu",
        "--data",
        args.data,
        "--out",
        out_dir,
    ]
    if args.iters:
        cmd += ["--max-iters", str(args.iters), "--lr-decay-iters", str(args.iters)]
    t0 = time.perf_counter()
    run_ferrite(cmd)
    wall = time.perf_counter() - t0
    ev = final_eval(os.path.join(out_dir, "metrics.jsonl"))
    print(f"ferrite: {wall:.1f}s, step {ev['step']}, val {ev['val_loss']:.4f} (out: {out_dir})")
    return dict(wall=wall, step=ev["step"], train=ev["train_loss"], val=ev["val_loss"])


def torch_train_round(args) -> dict:
    cmd = [
        sys.executable,
        os.path.join(SCRIPTS, "torch_train_char.py"),
        "--data",
        args.data,
        "--threads",
        str(args.threads),
    ]
    if args.iters:
        cmd += ["--iters", str(args.iters)]
    if args.torch_out:
        cmd += ["--out", args.torch_out]
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    # Stream the child's progress lines through while keeping a copy.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write("  torch| " + line)
        lines.append(line)
    if proc.wait() != 0:
        sys.exit(f"torch_train_char.py exited with status {proc.returncode}")
    wall = time.perf_counter() - t0
    res = last_json_line("".join(lines), prefix="result:")
    return dict(wall=wall, step=res["iters"], train=res["train_loss"], val=res["val_loss"])


def cmd_train(args):
    """Alternates ferrite and PyTorch runs for --rounds rounds (the host
    switches speed states for minutes at a time) and reports the median of
    the per-round wall-time ratios."""
    out_dir = args.ferrite_out or tempfile.mkdtemp(prefix="ferrite_train_")
    rows, ratios = [], []
    for r in range(args.rounds):
        f = None if args.torch_only else ferrite_train_round(args, out_dir)
        p = torch_train_round(args)
        for name, res in (("ferrite", f), (f"pytorch ({args.threads} thr)", p)):
            if res:
                rows.append(
                    [
                        f"{name} (round {r + 1})",
                        str(res["step"]),
                        f"{res['train']:.4f}",
                        f"{res['val']:.4f}",
                        f"{res['wall']:.1f}",
                    ]
                )
        if f:
            ratios.append(f["wall"] / p["wall"])
    print_table(
        "shakespeare-char-cpu end to end",
        ["engine", "iters", "train loss", "val loss", "wall s"],
        rows,
    )
    if ratios:
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        print(
            f"ratio ferrite/pytorch (wall time): {statistics.median(ratios):.2f}x "
            f"(median of rounds: {each})"
        )


# ---------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------


def cmd_sample(args):
    torch.set_num_threads(args.threads)
    model, tok = load_ferrite_checkpoint(args.checkpoint)
    cfg = model.config
    prompt_ids = tok.encode(args.prompt)
    idx = torch.tensor([prompt_ids], dtype=torch.long)
    gen = torch.Generator().manual_seed(args.seed)

    # One short untimed call so lazy initialisation does not count.
    model.generate(idx, 2, args.temperature, args.top_k, generator=gen)
    t0 = time.perf_counter()
    out = model.generate(
        idx, args.max_new_tokens, args.temperature, args.top_k, generator=gen
    )
    secs = time.perf_counter() - t0
    torch_tps = args.max_new_tokens / secs
    text = tok.decode(out[0, len(prompt_ids) :].tolist())
    print(f"pytorch sample (first 200 chars):\n{text[:200]}\n", flush=True)

    ferrite = None
    if not args.torch_only:
        cmd = [
            args.ferrite,
            "sample",
            "--checkpoint",
            args.checkpoint,
            "--prompt",
            args.prompt,
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--temperature",
            str(args.temperature),
            "--top-k",
            str(args.top_k),
            "--seed",
            str(args.seed),
            "--stats",
        ]
        proc = run_ferrite(cmd)
        ferrite = last_json_line(proc.stderr, prefix="stats:")
        print(f"ferrite sample (first 200 chars):\n{proc.stdout[:200]}\n")

    rows = []
    if ferrite:
        rows.append(
            [
                "ferrite",
                str(ferrite["new_tokens"]),
                f"{ferrite['seconds']:.2f}",
                f"{ferrite['tokens_per_s']:.1f}",
            ]
        )
    rows.append(
        [
            f"pytorch ({args.threads} thr, no KV cache)",
            str(args.max_new_tokens),
            f"{secs:.2f}",
            f"{torch_tps:.1f}",
        ]
    )
    print_table(
        f"sampling: {cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}C, block {cfg.block_size}, "
        f"top-k {args.top_k}, temperature {args.temperature}",
        ["engine", "new tokens", "seconds", "tokens/s"],
        rows,
    )
    if ferrite:
        print(
            f"ratio ferrite/pytorch (tokens/s): {ratio_str(ferrite['tokens_per_s'], torch_tps)}"
        )


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------


def cmd_generate(args):
    """Batched against one-by-one generation, and speculative decoding
    against plain decoding, all from one checkpoint; PyTorch (batched,
    nanoGPT-style without a KV cache) as a reference point."""
    torch.set_num_threads(args.threads)
    model, tok = load_ferrite_checkpoint(args.checkpoint)
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    # Equal-length prompts from the validation part of the corpus, so
    # PyTorch can batch them too.
    val = text[int(0.9 * len(text)) :]
    step = max(1, (len(val) - args.prompt_len) // args.prompts)
    prompts = [val[i * step : i * step + args.prompt_len] for i in range(args.prompts)]
    prompts = [p.replace("\n", " ") for p in prompts]
    tmp = tempfile.mkdtemp(prefix="ferrite_gen_")
    prompt_file = os.path.join(tmp, "prompts.txt")
    with open(prompt_file, "w", encoding="utf-8") as f:
        f.write("\n".join(prompts) + "\n")

    def ferrite_stats(extra):
        cmd = [args.ferrite, "sample", "--checkpoint", args.checkpoint, "--stats", *extra]
        proc = run_ferrite(cmd)
        return last_json_line(proc.stderr, prefix="stats:"), proc.stdout

    rows, notes = [], []
    common = ["--prompts", prompt_file, "--max-new-tokens", str(args.max_new_tokens)]
    # Batched and one-by-one runs alternate, so a slow spell of the machine
    # hits both; each round's ratio is printed.
    speedups = []
    for r in range(args.rounds):
        batched, out_b = ferrite_stats(common)
        sequential, out_s = ferrite_stats([*common, "--sequential"])
        notes.append(f"batched output identical to sequential (round {r + 1}): {out_b == out_s}")
        rows.append(
            [f"ferrite, {args.prompts} prompts batched (round {r + 1})", f"{batched['seconds']:.2f}", f"{batched['tokens_per_s']:.0f}"]
        )
        rows.append(
            [
                f"ferrite, {args.prompts} prompts one by one (round {r + 1})",
                f"{sequential['seconds']:.2f}",
                f"{sequential['tokens_per_s']:.0f}",
            ]
        )
        speedups.append(batched["tokens_per_s"] / sequential["tokens_per_s"])
    idx = torch.tensor([tok.encode(p) for p in prompts], dtype=torch.long)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    model.generate(idx, args.max_new_tokens, 0.8, 200, generator=gen)
    torch_secs = time.perf_counter() - t0
    torch_tps = args.prompts * args.max_new_tokens / torch_secs
    rows.append([f"pytorch, {args.prompts} prompts batched (no KV cache)", f"{torch_secs:.2f}", f"{torch_tps:.0f}"])
    ratios = [f"batched / one by one (round {r + 1}): {x:.2f}x" for r, x in enumerate(speedups)]
    ratios.append(f"batched / one by one, median: {statistics.median(speedups):.2f}x")
    ratios.append(f"ferrite batched (round 1) / pytorch batched: {float(rows[0][2]) / torch_tps:.2f}x")
    if args.draft:
        spec_speedups = []
        greedy = ["--prompt", prompts[0], "--max-new-tokens", str(args.max_new_tokens), "--temperature", "0"]
        for r in range(args.rounds):
            plain, out_p = ferrite_stats(greedy)
            spec, out_d = ferrite_stats([*greedy, "--draft", args.draft, "--draft-tokens", str(args.draft_tokens)])
            rows.append([f"ferrite greedy (round {r + 1})", f"{plain['seconds']:.2f}", f"{plain['tokens_per_s']:.0f}"])
            rows.append(
                [
                    f"ferrite greedy + draft, k={args.draft_tokens}, acceptance {spec['acceptance']:.2f} (round {r + 1})",
                    f"{spec['seconds']:.2f}",
                    f"{spec['tokens_per_s']:.0f}",
                ]
            )
            spec_speedups.append(spec["tokens_per_s"] / plain["tokens_per_s"])
            ratios.append(f"speculative / plain (round {r + 1}): {spec_speedups[-1]:.2f}x")
            notes.append(f"speculative output identical to plain greedy (round {r + 1}): {out_p == out_d}")
        ratios.append(f"speculative / plain, median: {statistics.median(spec_speedups):.2f}x")
    print_table(
        f"generation: {model.config.n_layer}L/{model.config.n_embd}C, block {model.config.block_size}, "
        f"{args.max_new_tokens} new tokens per prompt",
        ["run", "seconds", "tokens/s"],
        rows,
    )
    for line in ratios + notes:
        print(line)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="Compare ferrite with PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--ferrite", default=DEFAULT_FERRITE, help="ferrite binary")
        p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
        p.add_argument(
            "--torch-only", action="store_true", help="skip the ferrite half"
        )

    p = sub.add_parser("step", help="training-step throughput")
    common(p)
    p.add_argument("--preset", default="shakespeare-char-cpu")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=20, help="timed steps (both engines)")
    p.add_argument("--warmup", type=int, default=3, help="untimed PyTorch steps")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating ferrite/PyTorch rounds"
    )
    # Only used with --torch-only (otherwise the config comes from ferrite).
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--bias", action="store_true")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument(
        "--nanogpt-dir",
        default=None,
        help="a karpathy/nanoGPT checkout: time its model.py as the reference",
    )
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("matmul", help="one matrix multiply, f32 and bf16")
    common(p)
    p.add_argument(
        "--shape",
        action="append",
        help="MxNxK:NT (repeatable; default: the baby GPT's training shapes)",
    )
    p.add_argument("--steps", type=int, default=10)
    p.set_defaults(func=cmd_matmul)

    p = sub.add_parser("train", help="end-to-end shakespeare-char-cpu training")
    common(p)
    p.add_argument("--data", required=True, help="corpus, e.g. tinyshakespeare.txt")
    p.add_argument(
        "--iters", type=int, default=None, help="shorten both runs (default 2000)"
    )
    p.add_argument(
        "--ferrite-out", default=None, help="ferrite --out (default: temp dir)"
    )
    p.add_argument("--torch-out", default=None, help="save the PyTorch run here")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternating ferrite/PyTorch rounds"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generation speed from a ferrite checkpoint")
    common(p)
    p.add_argument("--checkpoint", required=True, help="ferrite checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("generate", help="batched, one-by-one and speculative generation")
    common(p)
    p.add_argument("--checkpoint", required=True, help="ferrite checkpoint directory")
    p.add_argument("--data", required=True, help="corpus to take prompts from")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=8, help="characters per prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--draft", default=None, help="draft checkpoint for speculative decoding")
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each comparison")
    p.set_defaults(func=cmd_generate)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
