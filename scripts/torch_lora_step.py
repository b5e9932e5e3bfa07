"""The PyTorch side of scripts/bench_lora.py: Hugging Face GPT2LMHeadModel
(random weights, dropout 0) fine-tuned fully or with `peft` LoRA, AdamW,
batch x block random tokens; prints one JSON line with the median seconds
per step and the peak resident memory.

  python scripts/torch_lora_step.py --mode lora --rank 8 --layers 12 --embd 768 \\
      --heads 12 --block 256 --batch 4 --steps 6
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "lora"], required=True)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=a.layers, n_embd=a.embd, n_head=a.heads, n_positions=a.block,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    if a.mode == "lora":
        from peft import LoraConfig, get_peft_model
        # q, k, v, o: GPT-2's fused c_attn and the attention's c_proj.
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0,
                                                 target_modules=["attn.c_attn", "attn.c_proj"], fan_in_fan_out=True))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=False)
    times = []
    for _ in range(a.steps):
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.block + 1))
        t0 = time.perf_counter()
        out = model(input_ids=x[:, :-1], labels=None).logits
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_step": statistics.median(times[1:]), "peak_mib": peak}))


if __name__ == "__main__":
    main()
