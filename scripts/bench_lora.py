"""LoRA against full fine-tuning: peak memory and step time, side by side.

Makes a base of the given preset (one training step on --data, so it is a
real checkpoint), then fine-tunes it for a few steps twice on the same data
and configuration: every weight (AdamW on all of them), and LoRA (rank 8 on
q, k, v, o by default: the base frozen, no gradients or AdamW state for
it). Prints each run's peak resident memory as `ferrite train` reports it,
`ferrite info`'s estimate, the median time per step from metrics.jsonl, and
the ratios.

Usage:
  python scripts/bench_lora.py --data ../shared/data/tinyshakespeare.txt \\
      [--preset gpt2-small] [--steps 6] [--rank 8] [--targets q,k,v,o] \\
      [-- extra ferrite train options]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile

from bench_memory import REPO, ferrite, step_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferrite", default=os.path.join(REPO, "target", "release", "ferrite"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q,k,v,o")
    ap.add_argument("--torch", action="store_true", help="also Hugging Face + peft on the same model (gpt2-small only)")
    ap.add_argument("extra", nargs="*", help="more `ferrite train` options, after --")
    args = ap.parse_args()
    if args.extra == [] and args.preset == "gpt2-small":
        # The issue's configuration: GPT-2's vocabulary, block 256, batch 4.
        args.extra = ["--tokenizer", "gpt2", "--block-size", "256", "--batch-size", "4"]

    work = tempfile.mkdtemp(prefix="ferrite_lora_bench_")
    base = os.path.join(work, "base")
    quiet = ["--eval-iters", "1", "--log-interval", "1", "--sample-tokens", "0", "--data", args.data]
    ferrite(args.ferrite, ["train", "--preset", args.preset, *args.extra, *quiet, "--max-iters", "1", "--out", base])

    # A fine-tune keeps the base's architecture and tokenizer: only the batch shape is given again.
    shape = [a for i, a in enumerate(args.extra) if args.extra[i - 1] in ("--batch-size", "--block-size") or a in ("--batch-size", "--block-size")]
    runs = {"full": [], "lora": ["--lora-rank", str(args.rank), "--lora-targets", args.targets]}
    rows = {}
    for name, opts in runs.items():
        common = ["--init-from", base, *shape, *opts]
        info = json.loads(ferrite(args.ferrite, ["info", *common, "--json"]))
        estimate = info["memory_bytes"]["none"]["total"] / 2**20
        out = os.path.join(work, name)
        stdout = ferrite(
            args.ferrite,
            ["train", *common, *quiet, "--max-iters", str(args.steps), "--eval-interval", str(args.steps), "--out", out],
        )
        m = re.search(r"peak memory: ([0-9.]+) MiB", stdout)
        peak = float(m.group(1)) if m else float("nan")
        secs = step_seconds(out, info["batch_size"] * info["block_size"])
        rows[name] = (peak, estimate, secs)
        print(f"{name}: peak {peak:.0f} MiB (estimate {estimate:.0f}), {secs:.2f} s/step", flush=True)

    (fp, fe, fs), (lp, le, ls) = rows["full"], rows["lora"]
    print(f"\n== {args.preset} {' '.join(args.extra)}: LoRA rank {args.rank} on {args.targets} vs full fine-tuning ({args.steps} steps) ==")
    print(f"{'run':<6} {'peak RSS MiB':>13} {'estimate MiB':>13} {'s/step':>8}")
    for name, (peak, est, secs) in rows.items():
        print(f"{name:<6} {peak:>13.0f} {est:>13.0f} {secs:>8.2f}")
    print(f"LoRA peak memory: {100 * lp / fp:.0f}% of full fine-tuning's; LoRA step: {fs / ls:.2f}x faster")
    if args.torch:
        # PyTorch + peft on the same shape (GPT-2 small, block 256, batch 4, dropout 0).
        import subprocess
        import sys

        script = os.path.join(REPO, "scripts", "torch_lora_step.py")
        torch_rows = {}
        for mode in ("full", "lora"):
            cmd = [sys.executable, script, "--mode", mode, "--rank", str(args.rank), "--steps", str(args.steps)]
            torch_rows[mode] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"\n{'run':<6} {'torch peak MiB':>15} {'torch s/step':>13} {'ferrite speedup':>16}")
        for mode, r in torch_rows.items():
            print(f"{mode:<6} {r['peak_mib']:>15.0f} {r['s_per_step']:>13.2f} {r['s_per_step'] / rows[mode][2]:>15.2f}x")


if __name__ == "__main__":
    main()
