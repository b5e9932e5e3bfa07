#!/usr/bin/env python3
"""Supervised chat fine-tuning, measured: does a model learn facts from
conversations and answer them when asked in words it never saw?

1. 100 made-up countries with made-up capitals; each fact as two chat
   conversations ("What is the capital of X?", "Tell me the capital of X."
   -> "Y."), in OpenAI `messages` JSONL.
2. A byte-level BPE with the chat special tokens (`ferrite tokenizer train`),
   a base model trained on tiny Shakespeare with it (the
   shakespeare-char-cpu sizes, 600 steps).
3. `ferrite data prepare --format chat` (loss on the answers only), then
   `ferrite train --init-from base` on it: every weight, or (`--lora-rank R`)
   LoRA adapters with the base frozen.
4. Greedy answers (`ferrite sample --prompts`, the `special` template) to
   the trained phrasing and to a held-out one ("Which city is the capital
   of X?"): the share that starts with the right capital. Chance is 1/100.

    python scripts/sft_facts.py --shakespeare ../shared/data/tinyshakespeare.txt
    python scripts/sft_facts.py --lora-rank 16 --sft-iters 3000

Needs a release build of ferrite; no Python packages.
"""
import argparse
import json
import os
import random
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "pe", "zo", "qu", "ba", "ri", "fe", "go"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shakespeare", default=os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--ferrite", default=os.path.join(ROOT, "target", "release", "ferrite"))
    ap.add_argument("--facts", type=int, default=100)
    ap.add_argument("--base-iters", type=int, default=600)
    ap.add_argument("--sft-iters", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=0, help="fine-tune LoRA adapters of this rank (0: every weight)")
    ap.add_argument("--lora-targets", default="q,k,v,o,up,down")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3, or 3e-3 with LoRA")
    a = ap.parse_args()
    lr = a.lr or (3e-3 if a.lora_rank else 1e-3)
    lora = ["--lora-rank", str(a.lora_rank), "--lora-alpha", str(2 * a.lora_rank), "--lora-targets", a.lora_targets] if a.lora_rank else []
    rng = random.Random(a.seed)
    name = lambda n: "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()
    facts = {}
    while len(facts) < a.facts:
        facts[name(3)] = name(2)
    work = tempfile.mkdtemp(prefix="ferrite-sft-")
    path = lambda f: os.path.join(work, f)
    convs = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{cap}."}]}
        for c, cap in facts.items()
        for q in (f"What is the capital of {c}?", f"Tell me the capital of {c}.")
    ]
    rng.shuffle(convs)
    with open(path("chat.jsonl"), "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in convs)
    with open(a.shakespeare) as f:
        shakespeare = f.read()
    with open(path("tok-corpus.txt"), "w") as f:
        f.write(shakespeare + open(path("chat.jsonl")).read())

    def ferrite(*args):
        subprocess.run([a.ferrite, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ferrite("tokenizer", "train", "--vocab-size", "1024", "--input", path("tok-corpus.txt"), "--out", path("tok.json"))
    ferrite("train", "--preset", "shakespeare-char-cpu", "--tokenizer", path("tok.json"), "--data", a.shakespeare,
            "--max-iters", str(a.base_iters), "--eval-interval", str(a.base_iters), "--out", path("base"), "--sample-tokens", "0")
    ferrite("data", "prepare", "--input", path("chat.jsonl"), "--format", "chat", "-t", path("tok.json"),
            "--val-fraction", "0.05" if a.facts >= 100 else "0.3", "--out", path("chat"))
    ferrite("train", "--init-from", path("base"), "--dataset", path("chat"), "--max-iters", str(a.sft_iters), *lora,
            "--learning-rate", str(lr), "--warmup-iters", "20", "--eval-interval", str(a.sft_iters), "--eval-iters",
            "20", "--batch-size", "12", "--out", path("sft"), "--sample-tokens", "0")
    for label, question in (("trained phrasing", "What is the capital of {}?"),
                            ("held-out phrasing", "Which city is the capital of {}?")):
        with open(path("prompts.jsonl"), "w") as f:
            for c in facts:
                f.write(json.dumps({"prompt": f"<|user|>\n{question.format(c)}\n<|assistant|>\n"}) + "\n")
        out = subprocess.run([a.ferrite, "sample", "--checkpoint", path("sft"), "--prompts", path("prompts.jsonl"),
                              "--temperature", "0", "--max-new-tokens", "6"],
                             check=True, capture_output=True, text=True).stdout
        answers = [json.loads(line)["completion"] for line in out.splitlines() if line.startswith("{")]
        right = sum(ans.strip().startswith(cap) for ans, cap in zip(answers, facts.values()))
        print(f"{label}: {right}/{len(facts)} right (chance {1 / len(facts):.0%}); e.g. {answers[0]!r}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
