#!/usr/bin/env python3
"""Writes tests/fixtures/gguf: the two tiny Hugging Face models of
tests/fixtures/hf as GGUF files the way llama.cpp's convert_hf_to_gguf.py
writes them, with llama.cpp's own Python package (`gguf`: GGUFWriter, its
quantizers and SpecialVocab), and what llama.cpp computes on them
(reference.json), so that `ferrite import FILE.gguf` can be checked against
the real llama.cpp.

- gpt2-q8_0.gguf, gpt2-q4_0.gguf: tests/fixtures/hf/gpt2 (GPT2LMHeadModel,
  tied head: no output.weight, llama.cpp reuses token_embd). HF's Conv1D
  weights ([in, out]) are transposed to [out, in] as the converter does.
- llama-q8_0.gguf: tests/fixtures/hf/llama (LlamaForCausalLM, 4 heads, 2 KV
  heads, untied head, bf16 shards). attn_q and attn_k get the converter's
  rotary permutation (LlamaModel.permute; n_head = the KV heads for k).

Types follow convert_hf_to_gguf (and llama-quantize): every 2-D weight
matrix, token_embd and output included, in the file's type (Q8_0 or Q4_0);
norms, biases and position_embd (kept float by both llama.cpp tools) F32.
Tokenizer: the byte-level BPE of tokenizer.json as tokenizer.ggml.model
"gpt2", pre "gpt-2"; bos/eos/merges from gguf.SpecialVocab (as the converter
does), add_bos_token false. Nothing in the files depends on time or host.

reference.json: for each file, llama.cpp's tokens for PROMPT and its 12
greedy tokens after it (f32 KV cache), from scripts/test_llama_cpp.mjs
through node-llama-cpp's prebuilt CPU binary. Regenerate everything with

    pip install gguf numpy
    npm install --prefix "$HOME/.cache/ferrite-node" --no-audit --no-fund \\
        --ignore-scripts node-llama-cpp@3.22.1
    python3 scripts/make_gguf_fixture.py

FERRITE_NODE_MODULES names another node_modules. Without node-llama-cpp
only the .gguf files are rewritten (reference.json is left as it is); with
--no-llama-cpp likewise.
"""
import argparse
import importlib.metadata
import json
import os
import struct
import subprocess
import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
HF = os.path.join(ROOT, "tests", "fixtures", "hf")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
PROMPT = "Hello world, this is"
N_GREEDY = 12
NODE_LLAMA_CPP = "3.22.1"
FILE_TYPE = {Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}


def load_safetensors(path):
    """name -> float32 array, read by hand (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start : base + end]
        if info["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} not handled")
        out[name] = arr.reshape(info["shape"]).astype(np.float32)
    return out


def load_model(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(load_safetensors(os.path.join(model_dir, shard)))
    return tensors


def tn(tensor, bid=None, suffix="weight"):
    name = gguf.TENSOR_NAMES[tensor]
    if bid is not None:
        name = name.format(bid=bid)
    return f"{name}.{suffix}"


def add(writer, name, arr, qtype):
    """2-D weights in qtype (except position_embd, as the converter), the rest F32."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim >= 2 and name.endswith(".weight") and name != tn(gguf.MODEL_TENSOR.POS_EMBD):
        data = gguf.quants.quantize(arr, qtype)
        # data is uint8 [rows, bytes per row]; GGUFWriter turns the byte shape
        # back into the float one itself (quant_shape_from_byte_shape).
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:
        writer.add_tensor(name, arr)


def add_vocab(writer, model_dir, vocab_size):
    """convert_hf_to_gguf's _set_vocab_gpt2: tokens in id order, added tokens
    included; special added tokens CONTROL; merges, bos/eos from SpecialVocab."""
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    assert tok["model"]["type"] == "BPE" and tok["pre_tokenizer"]["type"] == "ByteLevel"
    reverse = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    for i, a in added.items():
        reverse[i] = a["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    assert special.merges and "bos" in special.special_token_ids and "eos" in special.special_token_ids, special
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)


def write_gpt2(path, qtype):
    model_dir = os.path.join(HF, "gpt2")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["activation_function"] == "gelu_new" and cfg.get("tie_word_embeddings", True)
    w = load_model(model_dir)
    T = gguf.MODEL_TENSOR
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("gpt2")
    writer.add_context_length(cfg["n_positions"])
    writer.add_embedding_length(cfg["n_embd"])
    writer.add_block_count(cfg["n_layer"])
    writer.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
    writer.add_head_count(cfg["n_head"])
    writer.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    writer.add_file_type(FILE_TYPE[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, model_dir, cfg["vocab_size"])

    p = "transformer."
    add(writer, tn(T.TOKEN_EMBD), w[p + "wte.weight"], qtype)
    add(writer, tn(T.POS_EMBD), w[p + "wpe.weight"], qtype)
    for b in range(cfg["n_layer"]):
        h = f"{p}h.{b}."
        for hf, t in [("ln_1", T.ATTN_NORM), ("attn.c_attn", T.ATTN_QKV), ("attn.c_proj", T.ATTN_OUT),
                      ("ln_2", T.FFN_NORM), ("mlp.c_fc", T.FFN_UP), ("mlp.c_proj", T.FFN_DOWN)]:
            weight = w[h + hf + ".weight"]
            if not hf.startswith("ln_"):
                weight = weight.T  # Conv1D [in, out] -> [out, in]
            add(writer, tn(t, b), weight, qtype)
            add(writer, tn(t, b, "bias"), w[h + hf + ".bias"], qtype)
    add(writer, tn(T.OUTPUT_NORM), w[p + "ln_f.weight"], qtype)
    add(writer, tn(T.OUTPUT_NORM, suffix="bias"), w[p + "ln_f.bias"], qtype)
    if "lm_head.weight" in w and not np.array_equal(w["lm_head.weight"], w[p + "wte.weight"]):
        add(writer, tn(T.OUTPUT), w["lm_head.weight"], qtype)
    finish(writer)


def permute(weights, n_head, n_head_kv=None):
    """convert_hf_to_gguf's LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_llama(path, qtype):
    model_dir = os.path.join(HF, "llama")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["hidden_act"] == "silu" and not cfg.get("attention_bias") and not cfg.get("mlp_bias")
    w = load_model(model_dir)
    T = gguf.MODEL_TENSOR
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    # transformers >= 5 keeps rope_theta under rope_parameters
    rope = cfg.get("rope_parameters") or {}
    assert rope.get("rope_type", "default") == "default" and not cfg.get("rope_scaling")
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(FILE_TYPE[qtype])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, model_dir, cfg["vocab_size"])

    add(writer, tn(T.TOKEN_EMBD), w["model.embed_tokens.weight"], qtype)
    for b in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{b}."
        add(writer, tn(T.ATTN_NORM, b), w[h + "input_layernorm.weight"], qtype)
        add(writer, tn(T.ATTN_Q, b), permute(w[h + "self_attn.q_proj.weight"], n_head, n_head), qtype)
        add(writer, tn(T.ATTN_K, b), permute(w[h + "self_attn.k_proj.weight"], n_head, n_kv), qtype)
        add(writer, tn(T.ATTN_V, b), w[h + "self_attn.v_proj.weight"], qtype)
        add(writer, tn(T.ATTN_OUT, b), w[h + "self_attn.o_proj.weight"], qtype)
        add(writer, tn(T.FFN_NORM, b), w[h + "post_attention_layernorm.weight"], qtype)
        add(writer, tn(T.FFN_GATE, b), w[h + "mlp.gate_proj.weight"], qtype)
        add(writer, tn(T.FFN_UP, b), w[h + "mlp.up_proj.weight"], qtype)
        add(writer, tn(T.FFN_DOWN, b), w[h + "mlp.down_proj.weight"], qtype)
    add(writer, tn(T.OUTPUT_NORM), w["model.norm.weight"], qtype)
    if not cfg.get("tie_word_embeddings", False):
        add(writer, tn(T.OUTPUT), w["lm_head.weight"], qtype)
    finish(writer)


def finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


FILES = {
    "gpt2-q8_0.gguf": (write_gpt2, Q.Q8_0),
    "gpt2-q4_0.gguf": (write_gpt2, Q.Q4_0),
    "llama-q8_0.gguf": (write_llama, Q.Q8_0),
}


def run_llama_cpp(path, node_modules):
    env = dict(os.environ, FERRITE_NODE_MODULES=node_modules)
    out = subprocess.run(
        ["node", os.path.join(HERE, "test_llama_cpp.mjs"), path, PROMPT, str(N_GREEDY)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-llama-cpp", action="store_true", help="only write the .gguf files")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    for name, (write, qtype) in FILES.items():
        path = os.path.join(OUT, name)
        write(path, qtype)
        print(f"{path}: {os.path.getsize(path)} bytes")

    node_modules = os.environ.get("FERRITE_NODE_MODULES", os.path.expanduser("~/.cache/ferrite-node/node_modules"))
    if args.no_llama_cpp or not os.path.isdir(os.path.join(node_modules, "node-llama-cpp")):
        print("node-llama-cpp not used: reference.json left as it is", file=sys.stderr)
        return
    reference = {
        "generator": {
            "script": "scripts/make_gguf_fixture.py",
            "gguf": importlib.metadata.version("gguf"),
            "node-llama-cpp": NODE_LLAMA_CPP,
            "llama.cpp": "scripts/test_llama_cpp.mjs: greedy (temperature 0), f32 KV cache, no BOS added",
        }
    }
    for name in FILES:
        got = run_llama_cpp(os.path.join(OUT, name), node_modules)
        reference[name] = {"prompt": PROMPT, "prompt_tokens": got["prompt"], "greedy": got["greedy"], "text": got["text"]}
        print(f"{name}: {json.dumps(reference[name])}")
    # one line per field: the token lists stay readable
    text = "{\n" + ",\n".join(
        f" {json.dumps(name)}: {{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entry.items()) + "\n }"
        for name, entry in reference.items()
    ) + "\n}\n"
    assert json.loads(text) == reference
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
