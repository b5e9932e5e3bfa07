"""Writes tests/fixtures/tokenizers.json: texts and their token ids under
Python tiktoken's gpt2, p50k_base, cl100k_base and o200k_base (loaded offline, see
tiktoken_offline.py). `cargo test` checks ferrite's encodings against it.

    pip install tiktoken && python scripts/make_tokenizer_fixture.py
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from tiktoken_offline import get_encoding  # noqa: E402

TEXTS = [
    "Hello, world!",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs\nnewlines\n\n\nand\r\nCRLF\r\n",
    "It's, they're, we'll, I'd, you've, ISN'T, 'quoted'",
    "Numbers: 0 7 42 123 1234 12345 3.14159 -2e10 1,000,000 0x1F 2026-11-27",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces} <tags> @#$%^&*_+=|\\/~`",
    "naïve café résumé Ærøskøbing straße ﬁ Ω ≈ ∑",
    "中文文本，日本語のテキスト、한국어 텍스트。",
    "Русский текст и ελληνικά και العربية ١٢٣ עברית",
    "Emoji: 🦀🔥👍🏽 👩‍💻 🇫🇷🇯🇵 ❤️ ✨",
    "Combining: e\u0301 a\u0308 n\u0303 and zero\u200bwidth and \ufeffBOM",
    "<|endoftext|> is plain text here",
    "def f(x):\n    return x ** 2  # comment\n\n\tif x:\n\t\tpass\n",
    "    \n  \n\n \t \n",
    "a" * 300,
    " " * 17 + "word",
    "",
]


def random_texts(n: int, seed: int = 7) -> list:
    pieces = ["a", "Z", "0", "42", " ", "  ", "\n", "\n\n", "\t", "\r\n", ".", ",", "'s", "'", "!?", "é",
              "e\u0301", "ß", "中文", "🦀", "👩\u200d💻", "🇫🇷", "\u007f", "ﬁ", "١٢٣", "word", " the", "ing"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 60))) for _ in range(n)]


def main():
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizers.json")
    texts = TEXTS + random_texts(200)
    fixture = {"texts": texts, "ids": {}}
    for name in ["gpt2", "p50k_base", "cl100k_base", "o200k_base"]:
        enc = get_encoding(name)
        fixture["ids"][name] = [enc.encode_ordinary(t) for t in texts]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {out}: {len(texts)} texts")


if __name__ == "__main__":
    main()
