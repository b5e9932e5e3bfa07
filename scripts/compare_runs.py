"""Validation-loss curves of several ferrite runs, side by side.

Reads the "eval" records of each run directory's metrics.jsonl and prints
one row per evaluated step and one column per run (a text stand-in for
`ferrite plot`).

Usage:  python scripts/compare_runs.py RUN_DIR [RUN_DIR ...] [--key val_loss]
"""

from __future__ import annotations

import argparse
import json
import os


def evals(run_dir: str, key: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                out[rec["step"]] = rec[key]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--key", default="val_loss", help="val_loss, train_loss, val_bpb, ...")
    args = ap.parse_args()
    curves = [evals(r, args.key) for r in args.runs]
    names = [os.path.basename(os.path.normpath(r)) for r in args.runs]
    width = max(10, *(len(n) for n in names))
    print(f"{args.key}\n{'step':>6} " + " ".join(f"{n:>{width}}" for n in names))
    for step in sorted(set().union(*curves)):
        cells = [f"{c[step]:>{width}.4f}" if step in c else " " * width for c in curves]
        print(f"{step:>6} " + " ".join(cells))


if __name__ == "__main__":
    main()
