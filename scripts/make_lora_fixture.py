#!/usr/bin/env python3
"""Writes tests/fixtures/lora/{gpt2,llama}: what Hugging Face `peft` does
with a LoRA adapter on the tiny models of tests/fixtures/hf, for
tests/lora.rs to compare ferrite's LoRA with.

For each model: a PEFT LoRA adapter (rank 4, alpha 8, every projection:
GPT-2's c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj; Llama's q/k/v/o and
gate/up/down) with random A *and* B (`init_lora_weights=False`: a fresh
adapter's B is zero, which would leave A's gradient zero), saved with
`save_pretrained` into `init/` (so ferrite reads a file PEFT wrote); then
two AdamW steps (torch.optim.AdamW on the adapter only, no dropout) on a
fixed batch in float32. expected.safetensors holds the batch (x, y), the
adapters' gradients at the first step (grad.*) and their weights after the
second (final.*); expected.json the two losses and the optimizer's settings.

Deterministic: `python scripts/make_lora_fixture.py` rewrites the same
files. Needs `pip install torch transformers peft safetensors`.
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TARGETS = {
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# eps 1e-4: AdamW's first step moves each weight by about lr * g / (|g| + eps),
# so with a tiny eps a gradient that is zero up to rounding (some are 1e-8
# here) becomes a full-size update of arbitrary sign.
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-4, "weight_decay": 0.1}
RANK, ALPHA = 4, 8.0
BATCH, SEQ = 2, 8


def main():
    for name, targets in TARGETS.items():
        torch.manual_seed(7)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "hf", name), dtype=torch.float32)
        cfg = LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=0.0,
            target_modules=targets,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, cfg)
        # Evaluation mode: no dropout (GPT-2's config has 0.1), gradients as usual.
        model.eval()
        out = os.path.join(ROOT, "lora", name)
        shutil.rmtree(out, ignore_errors=True)
        init = os.path.join(out, "init")
        model.save_pretrained(init)
        # A path that is the same on every machine; and no model card.
        os.remove(os.path.join(init, "README.md"))
        with open(os.path.join(init, "adapter_config.json")) as f:
            saved = json.load(f)
        saved["base_model_name_or_path"] = f"tests/fixtures/hf/{name}"
        with open(os.path.join(init, "adapter_config.json"), "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
        gen = torch.Generator().manual_seed(11)
        ids = torch.randint(0, base.config.vocab_size, (BATCH, SEQ + 1), generator=gen)
        x, y = ids[:, :-1], ids[:, 1:]
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(".lora_A." in n or ".lora_B." in n for n in params), list(params)
        opt = torch.optim.AdamW(
            params.values(),
            lr=HYPER["lr"],
            betas=(HYPER["beta1"], HYPER["beta2"]),
            eps=HYPER["eps"],
            weight_decay=HYPER["weight_decay"],
        )
        losses, tensors = [], {"x": x.to(torch.int32).contiguous(), "y": y.to(torch.int32).contiguous()}
        for step in range(2):
            opt.zero_grad()
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            losses.append(loss.item())
            if step == 0:
                for n, p in params.items():
                    tensors["grad." + saved_name(n)] = p.grad.detach().clone().contiguous()
            opt.step()
        for n, p in params.items():
            tensors["final." + saved_name(n)] = p.detach().clone().contiguous()
        save_file(tensors, os.path.join(out, "expected.safetensors"))
        with open(os.path.join(out, "expected.json"), "w") as f:
            json.dump({"losses": losses, "rank": RANK, "alpha": ALPHA, **HYPER}, f, indent=1)
        print(f"{name}: losses {losses}, {len(params)} adapter tensors")


def saved_name(n):
    # The name save_pretrained gives the tensor: no adapter name ("default").
    return n.replace(".default", "")


if __name__ == "__main__":
    main()
