#!/usr/bin/env python3
"""Greedy decoding speed of ferrite and llama.cpp on the same model: the
checkpoint is exported to GGUF (`ferrite export --format gguf`), llama.cpp
runs it through node-llama-cpp (scripts/test_llama_cpp.mjs), ferrite runs
`sample --temperature 0` on the checkpoint; the two alternate for
--rounds rounds (this host's speed drifts) and the median ratio is printed.
Both time prefill of the short prompt plus the new tokens, not loading.

    python scripts/bench_llama_cpp.py --checkpoint out/gpt2 --dtype f16 --tokens 200

Needs node with node-llama-cpp (FERRITE_NODE_MODULES, default
~/.cache/ferrite-node/node_modules) and a release build of ferrite.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dtype", default="f16", help="weights on both sides: f32, f16 or bf16")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", default="The meaning of life is")
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "release", "ferrite"))
    a = ap.parse_args()
    modules = os.environ.get("FERRITE_NODE_MODULES", os.path.expanduser("~/.cache/ferrite-node/node_modules"))
    gguf = os.path.join(tempfile.mkdtemp(prefix="ferrite-bench-gguf-"), "model.gguf")
    subprocess.run([a.ferrite, "export", a.checkpoint, "--format", "gguf", "--dtype", a.dtype, "--out", gguf], check=True)
    env = dict(os.environ, FERRITE_NODE_MODULES=modules)
    ratios = []
    for r in range(a.rounds):
        node = subprocess.run(
            ["node", os.path.join(ROOT, "scripts", "test_llama_cpp.mjs"), gguf, a.prompt, str(a.tokens), "F16"],
            env=env, capture_output=True, text=True, check=True,
        )
        llama = json.loads([l for l in node.stdout.splitlines() if l.startswith("{")][-1])
        llama_tps = len(llama["greedy"]) / llama["seconds"]
        ours = subprocess.run(
            [a.ferrite, "sample", "--checkpoint", a.checkpoint, "--prompt", a.prompt, "--temperature", "0",
             "--max-new-tokens", str(a.tokens), "--dtype", a.dtype, "--stats"],
            capture_output=True, text=True, check=True,
        )
        stats = json.loads([l for l in ours.stderr.splitlines() if l.startswith("stats: ")][-1][len("stats: "):])
        ratios.append(stats["tokens_per_s"] / llama_tps)
        print(f"round {r + 1}: ferrite {stats['tokens_per_s']:.1f} tok/s, llama.cpp {llama_tps:.1f} tok/s, "
              f"ratio {ratios[-1]:.2f}")
    print(f"median ferrite / llama.cpp: {statistics.median(ratios):.2f} ({a.dtype} weights, {a.tokens} tokens, 16-bit KV caches)")


if __name__ == "__main__":
    main()
