"""Loads Python tiktoken's official encodings without the network: the rank
files come from the `tiktoken-rs` crate that ferrite embeds (found in the
cargo registry), placed in a private TIKTOKEN_CACHE_DIR under the names
tiktoken's cache looks for. tiktoken checks each file against its published
SHA-256, so a match also proves ferrite embeds the official ranks.

Also builds a Hugging Face `tokenizers` GPT-2 tokenizer from the same ranks
(vocabulary and merges recovered from the ranks), for benchmarks."""

import glob
import hashlib
import os
import shutil
import tempfile

URLS = {
    "r50k_base.tiktoken": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
    "p50k_base.tiktoken": "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
    "cl100k_base.tiktoken": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base.tiktoken": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def asset_dir() -> str:
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    found = sorted(glob.glob(os.path.join(home, "registry/src/*/tiktoken-rs-*/assets")))
    if not found:
        raise SystemExit("tiktoken-rs is not in the cargo registry: run `cargo build` first")
    return found[-1]


def get_encoding(name: str):
    """tiktoken.get_encoding, offline. `gpt2` maps to r50k_base (same ranks)."""
    cache = os.path.join(tempfile.gettempdir(), "ferrite-tiktoken-cache")
    os.makedirs(cache, exist_ok=True)
    for file, url in URLS.items():
        dst = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
        if not os.path.exists(dst):
            shutil.copy(os.path.join(asset_dir(), file), dst)
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    import tiktoken

    return tiktoken.get_encoding("r50k_base" if name == "gpt2" else name)


def _bytes_to_unicode() -> dict:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def hf_gpt2_tokenizer():
    """A `tokenizers.Tokenizer` equal to GPT-2's, built from the r50k ranks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    enc = get_encoding("gpt2")
    ranks = enc._mergeable_ranks
    b2u = _bytes_to_unicode()
    show = lambda bs: "".join(b2u[b] for b in bs)

    def split(token: bytes, max_rank: int) -> list:
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < max_rank and (best is None or r < best[1]):
                    best = (i, r)
            if best is None:
                return parts
            i = best[0]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]

    vocab = {show(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = split(tok, rank)
            merges.append((show(a), show(b)))
    vocab["<|endoftext|>"] = 50256
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok
