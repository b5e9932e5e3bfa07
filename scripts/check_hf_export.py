#!/usr/bin/env python3
"""Checks ferrite's Hugging Face export with transformers itself and records
the result in tests/fixtures/hf_export.json, which tests/hf_interop.rs reads.

It runs that test with FERRITE_HF_EXPORT_DIR set, so the test writes its
exports (ferrite's own GPT-2-style model with the gpt2 tokenizer, a
Llama-style one with a char tokenizer, a GPT-2-style one with the byte
tokenizer) and ferrite's logits there. Then, for each, it loads the
directory with AutoModelForCausalLM and AutoTokenizer, checks that the
tokenizer encodes the prompt to ferrite's ids and decodes them back, and
that the logits agree (1e-4 relative), and records transformers' logits and
the SHA-256 of every exported file. The Rust test then fails whenever the
export writes different files, until this script has checked them again.

Needs `pip install torch transformers` and cargo. Run from anywhere:
    python scripts/check_hf_export.py
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RECORD = os.path.join(ROOT, "tests", "fixtures", "hf_export.json")


def main():
    out = tempfile.mkdtemp(prefix="ferrite-hf-export-")
    env = dict(os.environ, FERRITE_HF_EXPORT_DIR=out)
    test = "exported_models_match_what_transformers_computed"
    subprocess.run(["cargo", "test", "--test", "hf_interop", test], cwd=ROOT, env=env, check=True)
    record = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        mine = os.path.join(path, "ferrite.json")
        if not os.path.exists(mine):
            continue
        with open(mine) as f:
            ferrite = json.load(f)
        tok = AutoTokenizer.from_pretrained(path)
        ids = tok(ferrite["prompt"], add_special_tokens=False)["input_ids"]
        assert ids == ferrite["ids"], f"{name}: transformers encodes {ids}, ferrite {ferrite['ids']}"
        assert tok.decode(ids) == ferrite["prompt"], f"{name}: decodes to {tok.decode(ids)!r}"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        head = logits[:, : len(ferrite["ferrite_logits"][0])]
        want = torch.tensor(ferrite["ferrite_logits"])
        scale = want.abs().max()
        err = ((head - want).abs() / (want.abs() + scale)).max().item()
        print(f"{name}: {type(model).__name__}, {len(ids)} prompt tokens, max relative logit difference {err:.2e}")
        assert err <= 1e-4, f"{name}: logits differ by {err}"
        record[name] = {
            "class": type(model).__name__,
            "ids": ids,
            "files": ferrite["files"],
            "transformers_logits": [[round(float(v), 7) for v in row] for row in head],
        }
    if len(record) < 3:
        sys.exit(f"expected 3 exported models in {out}, found {sorted(record)}")
    with open(RECORD, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    main()
