"""Two ferrite binaries side by side, in one run: did a change make
training steps or generation faster or slower?

Runs the same workloads with `--old` and `--new`, alternating the two
binaries round by round (this host drifts between speed states for minutes
at a time, so a slow spell hits both), and prints each round's new/old
ratio and the median. Ratio > 1: the new binary is faster.

Workloads:
  step        `ferrite bench --json` for the three configurations of
              BENCHMARKS.md (shakespeare-char-cpu; the baby GPT with GPT-2's
              vocabulary at batch 8; the baby GPT at batch 64)
  sample      one prompt, 500 tokens, `ferrite sample --stats`
  batched     32 prompts decoded together (`sample --prompts`)
  speculative greedy decoding with a draft model (needs --draft)

Build the old binary from the old commit in a second folder, e.g.
  git worktree add ../baseline <commit> && (cd ../baseline && cargo build --release)
  python scripts/bench_versions.py --old ../baseline/target/release/ferrite \
      --new target/release/ferrite --checkpoint out/shakespeare-char \
      --draft out/draft --data ../shared/data/tinyshakespeare.txt

Needs only Python 3 (no torch).
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

STEP_CONFIGS = [
    ("shakespeare-char-cpu (4L/128C, vocab 65, block 64, batch 12)", ["--preset", "shakespeare-char-cpu"], 20, 3),
    (
        "baby GPT, vocab 50304, batch 8 (6L/384C, block 256)",
        ["--preset", "shakespeare-char", "--vocab-size", "50304", "--batch-size", "8"],
        5,
        1,
    ),
    ("shakespeare-char (6L/384C, block 256, batch 64)", ["--preset", "shakespeare-char"], 3, 1),
]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"{cmd[0]} exited with status {proc.returncode}: {' '.join(cmd)}")
    return proc


def stats_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("stats:"):
            return json.loads(line[len("stats:") :])
    sys.exit(f"no stats line in:\n{text}")


def compare(name: str, rounds: int, measure) -> list[str]:
    """Alternates old and new; `measure(binary)` returns (tokens/s, output)."""
    ratios, lines, same = [], [], True
    for r in range(rounds):
        # Alternate which binary goes first, so neither always runs warm.
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        got = {}
        for which in order:
            got[which] = measure(BINARIES[which])
        (old_tps, old_out), (new_tps, new_out) = got["old"], got["new"]
        same &= old_out == new_out
        ratios.append(new_tps / old_tps)
        lines.append(f"  round {r + 1}: old {old_tps:,.0f} tok/s, new {new_tps:,.0f} tok/s, new/old {ratios[-1]:.3f}")
    median = statistics.median(ratios)
    print(f"\n{name}")
    print("\n".join(lines))
    print(f"  median new/old: {median:.3f} ({(median - 1) * 100:+.1f}%); outputs identical: {same}", flush=True)
    return [f"{name}: median new/old {median:.3f}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the binary before the change")
    ap.add_argument("--new", required=True, help="the binary after it")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["step", "generate"], default=None, help="one group of workloads")
    ap.add_argument("--checkpoint", help="checkpoint to generate from")
    ap.add_argument("--draft", help="draft checkpoint for speculative decoding")
    ap.add_argument("--data", help="corpus to take the batched prompts from")
    ap.add_argument(
        "--new-sample-args",
        default="",
        help="extra options for the new binary's sample runs, e.g. '--kv-dtype f32' "
        "to time the path the old binary had",
    )
    args = ap.parse_args()
    for b in (args.old, args.new):
        if not os.path.exists(b):
            sys.exit(f"no binary at {b}")
    BINARIES.update(old=args.old, new=args.new)
    summary = []
    if args.only in (None, "step"):
        for name, extra, steps, warmup in STEP_CONFIGS:

            def step(binary, extra=extra, steps=steps, warmup=warmup):
                out = run([binary, "bench", *extra, "--steps", str(steps), "--warmup", str(warmup), "--json"])
                return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"], None

            summary += compare(f"training step: {name}", args.rounds, step)
    if args.only in (None, "generate") and args.checkpoint:

        def sample(binary, extra):
            if binary == BINARIES["new"]:
                extra = [*extra, *shlex.split(args.new_sample_args)]
            proc = run([binary, "sample", "--checkpoint", args.checkpoint, "--stats", *extra])
            return stats_line(proc.stderr)["tokens_per_s"], proc.stdout

        one = ["--prompt", "ROMEO:", "--max-new-tokens", "500", "--seed", "7"]
        summary += compare("sample: 1 prompt x 500 tokens", args.rounds, lambda b: sample(b, one))
        if args.data:
            with open(args.data, encoding="utf-8") as f:
                text = f.read()
            val = text[int(0.9 * len(text)) :]
            gap = (len(val) - 8) // 32
            prompts = [val[i * gap : i * gap + 8].replace("\n", " ") for i in range(32)]
            # A blank line is no prompt: keep all 32.
            prompts = [p if p.strip() else "the " for p in prompts]
            path = os.path.join(tempfile.mkdtemp(prefix="ferrite_versions_"), "prompts.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(prompts) + "\n")
            batched = ["--prompts", path, "--max-new-tokens", "200"]
            summary += compare("batched: 32 prompts x 200 tokens", args.rounds, lambda b: sample(b, batched))
        if args.draft:
            spec = ["--prompt", "ROMEO:", "--max-new-tokens", "500", "--temperature", "0", "--draft", args.draft]
            summary += compare("speculative: greedy, k=4", args.rounds, lambda b: sample(b, spec))
    print("\n== summary ==")
    print("\n".join(summary))


BINARIES: dict[str, str] = {}

if __name__ == "__main__":
    main()
