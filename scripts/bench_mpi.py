#!/usr/bin/env python3
"""Data-parallel training, measured and projected.

  scaling  the same global batch trained by 1 process of T threads and by
           N MPI processes of T/N threads each (`mpirun -np N`), alternating
           round by round (this host drifts): training tokens/s of each, from
           the run's metrics.jsonl (its steps after the first two), and the
           ratio. Also the all-reduce's share of a step, timed in the run.
  model    the cost of the gradient all-reduce for a model (`ferrite info
           --json`: its parameters) on 2-64 machines: bytes per step, ring
           all-reduce time at 10/25/100 Gb/s, and the parallel efficiency
           (compute / (compute + all-reduce), no overlap) given the measured
           compute time of one machine for the global batch.

    python scripts/bench_mpi.py scaling --ranks 2 --threads 2 --rounds 3
    python scripts/bench_mpi.py model --preset gpt2-small --tokens-per-s 96.9 --global-tokens 8192 491520

Needs a build with `--features mpi` (target/debug or --ferrite) and Open
MPI's mpirun. Python 3 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
          "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"]


def train_tps(a, ranks, threads, out):
    args = [a.ferrite, "train", "--preset", a.preset, "--max-iters", str(a.iters), "--grad-accum", str(a.grad_accum),
            "--eval-interval", str(a.iters * 10), "--eval-iters", "1", "--log-interval", "1",
            "--sample-tokens", "0", "--out", out]
    if a.batch_size:
        args += ["--batch-size", str(a.batch_size)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if ranks == 1:
        cmd = args
    else:
        cmd = MPIRUN + ["-x", "RAYON_NUM_THREADS", "-np", str(ranks)] + args
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    steps = [r for r in rows if r["kind"] == "train" and r["step"] > 2]
    tps = statistics.median(r["tokens_per_s"] for r in steps)
    reduce = statistics.median(r.get("all_reduce_s", 0.0) for r in steps)
    return tps, reduce


def scaling(a):
    single, multi = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            s, _ = train_tps(a, 1, a.threads, os.path.join(tmp, f"one{r}"))
            m, reduce = train_tps(a, a.ranks, max(1, a.threads // a.ranks), os.path.join(tmp, f"many{r}"))
            single.append(s)
            multi.append(m)
            print(f"round {r + 1}: 1 process x {a.threads} threads {s:.0f} tok/s, "
                  f"{a.ranks} processes x {max(1, a.threads // a.ranks)} threads {m:.0f} tok/s, ratio {m / s:.3f}; "
                  f"all-reduce {reduce * 1e3:.2f} ms a step")
    ratios = sorted(m / s for m, s in zip(multi, single))
    print(f"{a.preset}, global batch {a.grad_accum} micro-batches: median {a.ranks}-process / 1-process = "
          f"{statistics.median(ratios):.3f}")


def model(a):
    info = json.loads(subprocess.run([a.ferrite, "info", "--preset", a.preset, "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    params = info["params"]
    grad_bytes = 4 * params  # f32 gradients, one bucket
    print(f"{a.preset}: {params / 1e6:.1f}M parameters, {grad_bytes / 1e6:.0f} MB of f32 gradients a step; "
          f"one machine computes {a.tokens_per_s:.1f} tokens/s")
    for tokens in a.global_tokens:
        t1 = tokens / a.tokens_per_s
        print(f"\nglobal batch {tokens} tokens: {t1:.1f} s of compute a step on one machine")
        print("| machines | compute/machine s | " + " | ".join(f"all-reduce {g} Gb/s s | efficiency" for g in a.gbps) + " |")
        print("|---|---|" + "---|---|" * len(a.gbps))
        for n in a.machines:
            compute = t1 / n
            cells = []
            for g in a.gbps:
                # Ring all-reduce: each machine sends and receives 2 (N-1)/N of the buffer.
                comm = 2 * (n - 1) / n * grad_bytes / (g * 1e9 / 8)
                cells.append(f"{comm:.2f} | {compute / (compute + comm):.0%}")
            print(f"| {n} | {compute:.2f} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["scaling", "model"])
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "debug", "ferrite"))
    ap.add_argument("--preset", default="shakespeare-char-cpu")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads in all")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens-per-s", type=float, help="model: one machine's training tokens/s (ferrite bench)")
    ap.add_argument("--global-tokens", type=int, nargs="+", default=[8192, 491520])
    ap.add_argument("--machines", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--gbps", type=float, nargs="+", default=[10, 25, 100])
    a = ap.parse_args()
    if a.mode == "scaling":
        scaling(a)
    else:
        if a.tokens_per_s is None:
            ap.error("model needs --tokens-per-s")
        model(a)


if __name__ == "__main__":
    main()
