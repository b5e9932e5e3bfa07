"""Activation recomputation: peak memory and step time of each mode.

Runs `ferrite train` for a few steps with --recompute none, mlp and block on
the same configuration, and prints, for each, the peak resident memory the
run reports, `ferrite info`'s estimate for it, and the time per step from
metrics.jsonl. (Recomputation trades compute for memory: the gradients are
bit-identical, which the test suite checks.)

Usage:
  python scripts/bench_memory.py --data ../shared/data/tinyshakespeare.txt \\
      [--preset shakespeare-char] [--steps 3] [-- extra ferrite train options]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ferrite(binary: str, args: list[str]) -> str:
    proc = subprocess.run([binary, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"ferrite {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def step_seconds(run_dir: str, tokens_per_step: int) -> float:
    """Median seconds per step from the training records' tokens/s (logged
    every step), leaving out the first step."""
    times = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train" and rec.get("step", 0) > 1:
                times.append(tokens_per_step / rec["tokens_per_s"])
    times.sort()
    return times[len(times) // 2] if times else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferrite", default=os.path.join(REPO, "target", "release", "ferrite"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="more `ferrite train` options, after --")
    args = ap.parse_args()

    common = ["--preset", args.preset, *args.extra]
    rows = []
    for mode in ("none", "mlp", "block"):
        info = json.loads(ferrite(args.ferrite, ["info", *common, "--recompute", mode, "--json"]))
        estimate = info["memory_bytes"][mode]["total"] / 2**20
        out_dir = tempfile.mkdtemp(prefix=f"ferrite_mem_{mode}_")
        stdout = ferrite(
            args.ferrite,
            [
                "train",
                *common,
                "--recompute",
                mode,
                "--data",
                args.data,
                "--out",
                out_dir,
                "--max-iters",
                str(args.steps),
                "--eval-interval",
                str(args.steps),
                "--eval-iters",
                "1",
                "--log-interval",
                "1",
                "--sample-tokens",
                "0",
            ],
        )
        m = re.search(r"peak memory: ([0-9.]+) MiB", stdout)
        peak = float(m.group(1)) if m else float("nan")
        tokens = info["batch_size"] * info["block_size"]
        rows.append((mode, peak, estimate, step_seconds(out_dir, tokens)))
        print(f"{mode}: peak {peak:.0f} MiB, estimate {estimate:.0f} MiB", flush=True)

    print(f"\n== {args.preset}: activation recompute ({args.steps} steps) ==")
    print(f"{'recompute':<10} {'peak RSS MiB':>13} {'estimate MiB':>13} {'est/peak':>9} {'s/step':>8}")
    for mode, peak, est, secs in rows:
        print(f"{mode:<10} {peak:>13.0f} {est:>13.0f} {est / peak:>9.2f} {secs:>8.2f}")


if __name__ == "__main__":
    main()
