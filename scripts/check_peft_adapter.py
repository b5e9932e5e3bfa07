#!/usr/bin/env python3
"""Checks that Hugging Face `peft` loads ferrite's LoRA adapters and computes
what ferrite computes with them, and records the result in
tests/fixtures/lora_peft.json, which tests/lora.rs reads.

It runs that test with FERRITE_PEFT_DIR set, so the test writes its
adapters there (seeded random weights, B included, on the tiny models of
tests/fixtures/hf, on some of the projections) with ferrite's logits. For
each, it loads the Hugging Face model with PeftModel.from_pretrained,
checks that the logits agree (1e-4 relative), and records peft's logits and
the SHA-256 of every adapter file. The Rust test then fails whenever the
adapter writer changes its files, until this script has checked them again.

Needs `pip install torch transformers peft` and cargo. Run from anywhere:
    python scripts/check_peft_adapter.py
"""
import json
import os
import subprocess
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RECORD = os.path.join(ROOT, "tests", "fixtures", "lora_peft.json")


def main():
    out = tempfile.mkdtemp(prefix="ferrite-peft-")
    env = dict(os.environ, FERRITE_PEFT_DIR=out)
    subprocess.run(["cargo", "test", "--test", "lora", "peft_loads_ferrite_adapters"], cwd=ROOT, env=env, check=True)
    record = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        with open(os.path.join(path, "ferrite.json")) as f:
            mine = json.load(f)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "hf", name), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, path)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([mine["ids"]])).logits[0].reshape(-1)
        theirs = torch.tensor(mine["ferrite_logits"])
        scale = logits.abs().max()
        worst = ((logits - theirs).abs() / (logits.abs() + scale)).max().item()
        assert worst < 1e-4, f"{name}: peft and ferrite logits differ by {worst:.2e} (relative)"
        with model.disable_adapter(), torch.no_grad():
            without = model(input_ids=torch.tensor([mine["ids"]])).logits[0].reshape(-1)
        assert (without - logits).abs().max() > 1e-2, f"{name}: the adapter changed nothing in peft"
        print(f"{name}: peft matches ferrite to {worst:.1e} (relative) with the adapter applied")
        record[name] = {"files": mine["files"], "peft_logits": logits.tolist()}
    with open(RECORD, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    main()
