#!/usr/bin/env python3
"""Reads a GGUF file with the `gguf` package (llama.cpp's own Python reader)
and prints one JSON object: its metadata keys with their values (arrays as
their length) and its tensors (name, shape innermost first, type).
tests/gguf.rs checks ferrite's exports with it. Needs `pip install gguf`.
Usage: python scripts/check_gguf.py FILE.gguf"""
import json
import sys

from gguf import GGUFReader


def main():
    reader = GGUFReader(sys.argv[1])
    keys = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        keys[name] = len(value) if isinstance(value, list) else value
    tensors = [
        {"name": t.name, "shape": [int(d) for d in t.shape], "type": t.tensor_type.name} for t in reader.tensors
    ]
    print(json.dumps({"keys": keys, "tensors": tensors}))


if __name__ == "__main__":
    main()
