"""GPT-2 encoding throughput: ferrite against Python tiktoken (loaded offline
from the same rank file) and Python Hugging Face `tokenizers` (the same
vocabulary), on the same text, in one run. Prints MB/s for each, checks that
all produce the same token count, and prints ferrite's ratio to the fastest
Python way.

    pip install tiktoken tokenizers
    cargo build --release
    python scripts/bench_tokenizers.py --data ../shared/data/tinyshakespeare.txt --repeat 8
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from tiktoken_offline import get_encoding, hf_gpt2_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_of(rounds, fn):
    best, out = None, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, out


def chunks(text: str, size: int) -> list:
    # Cut at newlines near `size` bytes: the pieces' tokens then equal the
    # whole text's for GPT-2 except at the few cuts (counts are compared).
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--repeat", type=int, default=8, help="concatenate the file this many times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "release", "ferrite"))
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    with open(args.data, encoding="utf-8") as f:
        text = f.read() * args.repeat
    mb = len(text.encode()) / 1e6
    tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    tmp.write(text)
    tmp.close()

    rows = []
    # ferrite: best of the rounds, each a separate process timing only encoding.
    f_best, f_tokens = None, None
    for _ in range(args.rounds):
        proc = subprocess.run([args.ferrite, "tokenizer", "stats", "-t", "gpt2", tmp.name], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        stats = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("stats: "))
        f_best = max(f_best or 0, stats["encode_mb_per_s"])
        f_tokens = stats["tokens"]
    rows.append(("ferrite (DFA pre-tokenizer, tiktoken-rs BPE, parallel)", f_best, f_tokens))

    enc = get_encoding("gpt2")
    dt, ids = best_of(args.rounds, lambda: enc.encode_ordinary(text))
    rows.append(("python tiktoken encode_ordinary", mb / dt, len(ids)))
    pieces = chunks(text, 1 << 16)
    dt, out = best_of(args.rounds, lambda: enc.encode_ordinary_batch(pieces, num_threads=args.threads))
    rows.append((f"python tiktoken encode_ordinary_batch ({args.threads} threads)", mb / dt, sum(map(len, out))))

    hf = hf_gpt2_tokenizer()
    dt, e = best_of(args.rounds, lambda: hf.encode(text, add_special_tokens=False))
    rows.append(("python tokenizers encode", mb / dt, len(e.ids)))
    lines = chunks(text, 1 << 12)
    dt, out = best_of(args.rounds, lambda: hf.encode_batch(lines, add_special_tokens=False))
    rows.append(("python tokenizers encode_batch", mb / dt, sum(len(x.ids) for x in out)))
    os.unlink(tmp.name)

    print(f"== GPT-2 encoding of {mb:.1f} MB ({args.data} x{args.repeat}), {args.threads} threads ==")
    for name, speed, n in rows:
        print(f"{name:<55} {speed:8.2f} MB/s  {n} tokens")
    fastest = max(rows[1:], key=lambda r: r[1])
    print(f"ferrite / fastest python ({fastest[0]}): {rows[0][1] / fastest[1]:.2f}x")
    print(f"token counts equal to python tiktoken on the whole text: {rows[0][2] == rows[1][2]}")


if __name__ == "__main__":
    main()
