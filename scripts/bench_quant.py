#!/usr/bin/env python3
"""Quantized weights, measured: quality and decoding speed of ferrite's
f32, bf16, Q8_0, Q4_K and Q4_0 weights, and llama.cpp's speed on the very
same GGUF files.

From one f32 checkpoint it makes the others (`ferrite convert --dtype bf16`,
`ferrite quantize --to ...`, default head) and a GGUF file of each
(`ferrite export --format gguf`: the quantized blocks go in as they are),
in --work (kept, so later runs reuse them).

Modes:
  quality  `ferrite eval` of each on the validation split (--data, the
           whole split): bits per byte, and each one's change against f32.
  decode   single-stream greedy decoding of --tokens new tokens: ferrite
           `sample --temperature 0 --stats` (bf16 KV cache), and llama.cpp's
           `llama-bench -p 0 -n TOKENS -t THREADS` (f16 KV cache) on the same
           file; types alternate round by round (this host's speed drifts),
           medians printed, with each type's speed against ferrite f32 and
           against llama.cpp.
  batched  --prompts prompts from --data decoded together, f32 against q8_0.

    python scripts/bench_quant.py quality --checkpoint CK --data input.txt
    python scripts/bench_quant.py decode --checkpoint CK --llama-bench PATH/llama-bench
    python scripts/bench_quant.py batched --checkpoint CK --data input.txt

llama-bench: build llama.cpp from source with native flags (see
BENCHMARKS.md). Needs a release build of ferrite and Python 3 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TYPES = ["f32", "bf16", "q8_0", "q4_k", "q4_0"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def prepare(a, gguf_files):
    """The checkpoint in every type (and a GGUF file of each), in a.work."""
    os.makedirs(a.work, exist_ok=True)
    paths = {}
    for t in TYPES:
        ck = os.path.join(a.work, t)
        if not os.path.exists(ck):
            if t == "f32":
                run([a.ferrite, "convert", a.checkpoint, ck, "--dtype", "f32"])
            elif t == "bf16":
                run([a.ferrite, "convert", a.checkpoint, ck, "--dtype", "bf16"])
            else:
                run([a.ferrite, "quantize", a.checkpoint, "--to", t, "--out", ck])
        gguf = ck + ".gguf"
        if gguf_files and not os.path.exists(gguf):
            run([a.ferrite, "export", ck, "--format", "gguf", "--out", gguf])
        paths[t] = (ck, gguf)
    return paths


def quality(a, paths):
    base = None
    print("| weights | weights file | val bits per byte | against f32 |")
    print("|---|---|---|---|")
    for t in TYPES:
        ck, gguf = paths[t]
        out = run([a.ferrite, "eval", "--checkpoint", ck, "--data", a.data, "--json"]).stdout
        bpb = json.loads(out.strip().splitlines()[-1])["metrics"]["bits_per_byte"]
        base = bpb if base is None else base
        size = os.path.getsize(os.path.join(ck, "model.safetensors")) / 2**20
        print(f"| {t} | {size:.1f} MiB | {bpb:.4f} | {100 * (bpb / base - 1):+.2f}% |", flush=True)


def ferrite_tps(a, ck, extra):
    out = run([a.ferrite, "sample", "--checkpoint", ck, "--temperature", "0", "--stats", *extra])
    line = [l for l in out.stderr.splitlines() if l.startswith("stats: ")][-1]
    return json.loads(line[len("stats: "):])["tokens_per_s"]


def llama_tps(a, gguf):
    out = run([a.llama_bench, "-m", gguf, "-p", "0", "-n", str(a.tokens), "-t", str(a.threads), "-r", "1", "-o", "json"])
    return json.loads(out.stdout)[0]["avg_ts"]


def decode(a, paths):
    ours = {t: [] for t in TYPES}
    theirs = {t: [] for t in TYPES}
    for r in range(a.rounds):
        for t in TYPES:
            ck, gguf = paths[t]
            ours[t].append(ferrite_tps(a, ck, ["--prompt", a.prompt, "--max-new-tokens", str(a.tokens)]))
            if a.llama_bench:
                theirs[t].append(llama_tps(a, gguf))
            print(f"round {r + 1} {t}: ferrite {ours[t][-1]:.1f} tok/s"
                  + (f", llama.cpp {theirs[t][-1]:.1f} tok/s" if a.llama_bench else ""), flush=True)
    f32 = statistics.median(ours["f32"])
    print(f"\nsingle stream, {a.tokens} new tokens, {a.threads} threads, medians of {a.rounds} rounds")
    print("| weights | ferrite tok/s | vs ferrite f32 | llama.cpp tok/s | ferrite / llama.cpp |")
    print("|---|---|---|---|---|")
    for t in TYPES:
        m = statistics.median(ours[t])
        if a.llama_bench:
            l = statistics.median(theirs[t])
            ratios = [x / y for x, y in zip(ours[t], theirs[t])]
            print(f"| {t} | {m:.1f} | {m / f32:.2f}x | {l:.1f} | **{statistics.median(ratios):.2f}** |")
        else:
            print(f"| {t} | {m:.1f} | {m / f32:.2f}x | | |")


def batched(a, paths):
    text = open(a.data, encoding="utf-8").read()
    rng = random.Random(0)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for _ in range(a.prompts):
            i = rng.randrange(len(text) - 64)
            f.write(text[i:i + 32].replace("\n", " ") + "\n")
    ratios = []
    for r in range(a.rounds):
        extra = ["--prompts", f.name, "--max-new-tokens", str(a.tokens)]
        full = ferrite_tps(a, paths["f32"][0], extra)
        q8 = ferrite_tps(a, paths["q8_0"][0], extra)
        ratios.append(q8 / full)
        print(f"round {r + 1}: f32 {full:.1f} tok/s, q8_0 {q8:.1f} tok/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"median q8_0 / f32, {a.prompts} prompts x {a.tokens} tokens batched: {statistics.median(ratios):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["quality", "decode", "batched"])
    ap.add_argument("--checkpoint", required=True, help="an f32 checkpoint")
    ap.add_argument("--work", help="where the converted checkpoints go (default: CHECKPOINT-quant)")
    ap.add_argument("--data", help="text: the validation split (quality), the prompts (batched)")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (decode)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", default="The meaning of life is")
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "release", "ferrite"))
    a = ap.parse_args()
    a.work = a.work or a.checkpoint.rstrip("/") + "-quant"
    paths = prepare(a, a.mode == "decode")
    {"quality": quality, "decode": decode, "batched": batched}[a.mode](a, paths)


if __name__ == "__main__":
    main()
