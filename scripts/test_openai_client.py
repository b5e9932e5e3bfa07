#!/usr/bin/env python3
"""Drives a running `ferrite serve` with the official `openai` package.

    python scripts/test_openai_client.py --base-url http://127.0.0.1:8080/v1 [--api-key KEY]

Both endpoints, streaming and not, through the client's own parsing:
the whole answer equals the streamed one for the same seed, usage and
finish reasons come back as the client expects, and errors raise the
client's exception classes with the right status. Exits non-zero on the
first failure. `tests/serve.rs` runs it when the package is installed
(CI installs it: `pip install openai`).
"""
import argparse
import sys

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="none")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=60)

    models = client.models.list()
    name = models.data[0].id
    assert models.data[0].object == "model", models

    # Completions, whole and streamed.
    whole = client.completions.create(model=name, prompt="the king", max_tokens=24, seed=11, temperature=0.9)
    assert whole.object == "text_completion", whole
    assert whole.choices[0].finish_reason == "length", whole
    assert whole.usage.completion_tokens == 24, whole.usage
    pieces, usage = [], None
    for chunk in client.completions.create(
        model=name, prompt="the king", max_tokens=24, seed=11, temperature=0.9, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.text)
    assert "".join(pieces) == whole.choices[0].text, ("".join(pieces), whole.choices[0].text)
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens, usage

    # Chat, whole and streamed, with a stop sequence and two choices.
    messages = [{"role": "system", "content": "speak."}, {"role": "user", "content": "the lord"}]
    chat = client.chat.completions.create(model=name, messages=messages, max_tokens=30, seed=4, n=2)
    assert chat.object == "chat.completion", chat
    assert [c.index for c in chat.choices] == [0, 1], chat
    assert chat.choices[0].message.role == "assistant", chat
    streamed = ["", ""]
    for chunk in client.chat.completions.create(model=name, messages=messages, max_tokens=30, seed=4, n=2, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == [c.message.content for c in chat.choices], (streamed, chat)
    stopped = client.completions.create(model=name, prompt="the", max_tokens=50, seed=2, stop=["e"])
    assert "e" not in stopped.choices[0].text, stopped
    assert stopped.choices[0].finish_reason in ("stop", "length"), stopped

    # Log-probabilities, as the client parses them.
    lp = client.chat.completions.create(model=name, messages=messages, max_tokens=10, seed=4, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, lp
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content), content
    assert "".join(c.token for c in content).startswith(lp.choices[0].message.content[:1]), content

    # Errors come back as the client's exceptions.
    for call, status in [
        (lambda: client.completions.create(model="no-such-model", prompt="x", max_tokens=2), 404),
        (lambda: client.completions.create(model=name, prompt="x", max_tokens=2, temperature=9), 400),
        (lambda: client.chat.completions.create(model=name, messages=[], max_tokens=2), 400),
    ]:
        try:
            call()
        except openai.APIStatusError as e:
            assert e.status_code == status, (e.status_code, status, e)
            assert e.body and "message" in e.body, e.body
        else:
            raise AssertionError(f"expected HTTP {status}")
    print("openai client: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
