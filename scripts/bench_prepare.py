"""`ferrite data prepare` on a large synthetic JSONL corpus: throughput and
peak memory (RSS), to show that memory stays bounded as the corpus grows.

    cargo build --release
    python scripts/bench_prepare.py --mb 1000
    python scripts/bench_prepare.py --mb 100      # compare: peak RSS should not grow with size

The corpus is random words (a fixed made-up vocabulary with punctuation and
some non-ASCII) in documents of 200-4000 bytes, one JSON object per line.
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(path: str, mb: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    syll = ["ka", "to", "ri", "an", "el", "mo", "us", "th", "er", "in", "qu", "é", "ß", "on", "ly", "st"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    punct = [".", ",", "!", "?", ";", ":", "\n"]
    # A pool of documents, each written many times with a fresh id: a real
    # corpus would not repeat, but tokenisation speed and memory do not care.
    pool = []
    for _ in range(2000):
        n = rng.randint(40, 800)
        pool.append(" ".join(rng.choice(words) + (rng.choice(punct) if rng.random() < 0.1 else "") for _ in range(n)))
    target, written, i = mb * 1_000_000, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            line = json.dumps({"id": i, "text": f"{i} " + pool[i % len(pool)]}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
            i += 1
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1000, help="corpus size in MB")
    ap.add_argument("--tokenizer", default="gpt2")
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "release", "ferrite"))
    ap.add_argument("--keep", action="store_true", help="keep the corpus and dataset")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ferrite_prepare_")
    corpus = os.path.join(tmp, "corpus.jsonl")
    t0 = time.perf_counter()
    size = make_corpus(corpus, args.mb)
    print(f"wrote {size / 1e6:.0f} MB of JSONL in {time.perf_counter() - t0:.0f} s")
    out = os.path.join(tmp, "dataset")
    cmd = [args.ferrite, "data", "prepare", "--input", corpus, "-t", args.tokenizer, "--out", out]
    print("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stats = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("stats: "))
    print(proc.stdout.strip().splitlines()[0])
    print(
        f"result: {size / 1e6:.0f} MB in {wall:.1f} s = {size / 1e6 / wall:.1f} MB/s, "
        f"{stats['tokens'] / wall / 1e6:.2f}M tokens/s, {stats['tokens'] / 1e6:.1f}M tokens, peak RSS {peak_mib:.0f} MiB"
    )
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
