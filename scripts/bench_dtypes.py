"""Two dtypes side by side, in one run: what does bf16 buy ferrite?

Alternates an f32 run and a bf16 run of the same workload round by round
(this host drifts between speed states for minutes at a time) and prints
each round's bf16/f32 ratio and the median. Ratio > 1: bf16 is faster.

Workloads:
  step     `ferrite bench --dtype f32|bf16 --dropout 0` on a preset (mixed-
           precision training against f32 training)
  kv       `ferrite sample --kv-dtype f32|bf16`: one prompt of 500 tokens,
           and 32 prompts x 200 tokens decoded together (--data for prompts)
  weights  `ferrite sample --dtype f32|bf16 --kv-dtype f32`: single-stream
           decoding with 16-bit weights (pick a model whose weights do not
           fit in cache, e.g. 12 layers x 768)

Examples:
  python scripts/bench_dtypes.py step --preset shakespeare-char
  python scripts/bench_dtypes.py kv --checkpoint out/shakespeare-char --data ../shared/data/tinyshakespeare.txt
  python scripts/bench_dtypes.py weights --checkpoint out/gpt-12x768

Needs only Python 3 (no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FERRITE = os.path.join(REPO, "target", "release", "ferrite")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc


def sample_tps(args, extra: list[str]) -> float:
    proc = run([args.ferrite, "sample", "--checkpoint", args.checkpoint, "--stats", *extra])
    for line in proc.stderr.splitlines():
        if line.startswith("stats:"):
            return json.loads(line[len("stats:") :])["tokens_per_s"]
    sys.exit(f"no stats line in:\n{proc.stderr}")


def step_tps(args, dtype: str) -> float:
    cmd = [args.ferrite, "bench", "--preset", args.preset, "--dtype", dtype, "--dropout", "0", "--json"]
    cmd += ["--steps", str(args.steps), "--warmup", "1", *args.extra]
    return json.loads(run(cmd).stdout.strip().splitlines()[-1])["tokens_per_s"]


def compare(name: str, rounds: int, measure) -> None:
    ratios = []
    for r in range(rounds):
        f32, bf16 = measure("f32"), measure("bf16")
        ratios.append(bf16 / f32)
        print(f"{name} round {r + 1}: f32 {f32:.0f} tokens/s, bf16 {bf16:.0f} tokens/s, bf16/f32 {bf16 / f32:.3f}", flush=True)
    each = ", ".join(f"{x:.3f}" for x in ratios)
    print(f"{name}: bf16/f32 median {statistics.median(ratios):.3f} (rounds {each})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["step", "kv", "weights"])
    ap.add_argument("--ferrite", default=DEFAULT_FERRITE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--checkpoint", help="ferrite checkpoint (kv, weights)")
    ap.add_argument("--data", help="text to draw the 32 prompts from (kv)")
    ap.add_argument("extra", nargs="*", help="more `ferrite bench` options after --, e.g. -- --vocab-size 50304")
    args = ap.parse_args()
    if args.workload == "step":
        compare(f"step {args.preset} {' '.join(args.extra)}", args.rounds, lambda d: step_tps(args, d))
        return
    if not args.checkpoint:
        sys.exit("--checkpoint is needed")
    if args.workload == "weights":
        extra = ["--max-new-tokens", "200", "--kv-dtype", "f32"]
        compare("weights, 1 prompt x 200", args.rounds, lambda d: sample_tps(args, [*extra, "--dtype", d]))
        return
    compare("kv, 1 prompt x 500", args.rounds, lambda d: sample_tps(args, ["--max-new-tokens", "500", "--kv-dtype", d]))
    if args.data:
        text = open(args.data, encoding="utf-8").read()
        rng = random.Random(1)
        starts = rng.sample(range(len(text) - 10), 32)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("".join(text[i : i + 8].replace("\n", " ") + "\n" for i in starts))
        extra = ["--prompts", f.name, "--max-new-tokens", "200"]
        compare("kv, 32 prompts x 200", args.rounds, lambda d: sample_tps(args, [*extra, "--kv-dtype", d]))
        os.unlink(f.name)


if __name__ == "__main__":
    main()
