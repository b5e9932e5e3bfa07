#!/usr/bin/env python3
"""Writes tests/fixtures/hf/{gpt2,llama}: two tiny random-weight Hugging Face
models with their tokenizers, as `save_pretrained` writes them, and what
transformers computes with them (reference.json), for tests/hf_interop.rs.

- gpt2: GPT2LMHeadModel (biases, tied head, tanh GELU), float32, one
  model.safetensors.
- llama: LlamaForCausalLM with grouped-query attention (4 heads, 2 KV
  heads), an untied head, RMSNorm eps 1e-5, RoPE theta 500; stored in
  bfloat16 and sharded (model-0000x-of-0000y.safetensors + index).

Both share a byte-level BPE tokenizer of ~300 tokens trained here on a
fixed text. Weights are drawn with a larger spread than usual (std 0.2) and
norms and biases are random too, so that every tensor's mapping matters and
greedy decoding has clear winners. reference.json holds the prompt, its ids,
the float32 logits at every position and 16 greedily generated ids.

Deterministic: `python scripts/make_hf_fixture.py` rewrites the same files.
Needs `pip install torch transformers`.
"""
import json
import os
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
TEXT = """First Citizen:
Before we proceed any further, hear me speak.
All:
Speak, speak.
First Citizen:
You are all resolved rather to die than to famish?
All:
Resolved. resolved.
First Citizen:
First, you know Caius Marcius is chief enemy to the people.
All:
We know't, we know't.
First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?
"""
PROMPT = "First Citizen:\nBefore we"


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def randomize(model, std):
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            # Norm weights around 1, everything else around 0.
            p.copy_(1.0 + noise if "norm" in name or ".ln_" in name else noise)


def write(name, model, tok, dtype, shard):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.eval()
    model.to(dtype)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=shard)
    tok.save_pretrained(out)
    # The reference is what a user gets: the saved directory loaded back, in
    # float32 (a model cast to bf16 and back would also have rounded its
    # rotary frequencies).
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok(PROMPT)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0]
        greedy = model.generate(
            x, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(x), pad_token_id=0, eos_token_id=None
        )[0, len(ids):]
    ref = {
        "prompt": PROMPT,
        "ids": ids,
        "logits": [[round(float(v), 6) for v in row] for row in logits],
        "greedy": greedy.tolist(),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(name, sorted(os.listdir(out)), "greedy", tok.decode(greedy))


def main():
    torch.manual_seed(0)
    tok = tokenizer()
    vocab = len(tok)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    )
    randomize(gpt2, 0.2)
    write("gpt2", gpt2, tok, torch.float32, "10GB")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rms_norm_eps=1e-5,
            rope_theta=500.0,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    randomize(llama, 0.2)
    write("llama", llama, tok, torch.bfloat16, "40KB")


if __name__ == "__main__":
    main()
