#!/usr/bin/env python3
"""Load on `ferrite serve`: N concurrent streaming clients, on loopback.

    python scripts/bench_serve.py --checkpoint DIR [--ferrite target/release/ferrite]
        [--clients 1,8,32,64] [--tokens 200] [--parallel 64]

Starts the server itself (127.0.0.1, a free port), then for each client
count runs that many streaming chat requests at once, each asking for
exactly `--tokens` tokens (distinct seeds), and prints aggregate tokens/s,
time to first token p50/p99, and whether every response arrived whole
(`[DONE]`, the right token count, text equal to the same request run
alone for a sample of them). Then clients that hang up after a few tokens,
followed by one client again: its speed shows whether their slots came
back. Peak RSS of the server (VmHWM) and the KV cache's size at the end.
Only the standard library; every loop is bounded.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import threading
import time


def request(port, seed, tokens, stream=True, hang_up_after=None):
    """One chat request; returns (text, completion_tokens, ttft_s, total_s, done)."""
    body = json.dumps({
        "messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": tokens, "seed": seed,
        "temperature": 1.0, "stream": stream, "stream_options": {"include_usage": True} if stream else None,
    } if stream else {
        "messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": tokens, "seed": seed, "temperature": 1.0,
    })
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return ("", 0, None, time.perf_counter() - start, False)
    if not stream:
        v = json.loads(resp.read())
        return (v["choices"][0]["message"]["content"], v["usage"]["completion_tokens"], None, time.perf_counter() - start, True)
    text, usage, ttft, done, pieces = "", 0, None, False, 0
    for _ in range(100000):
        line = resp.readline()
        if not line:
            break
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        for c in chunk["choices"]:
            piece = c["delta"].get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - start
                text += piece
                pieces += 1
        if hang_up_after is not None and pieces >= hang_up_after:
            conn.close()
            return (text, pieces, ttft, time.perf_counter() - start, False)
    conn.close()
    return (text, usage, ttft, time.perf_counter() - start, done)


def run_round(port, n, tokens, seed0):
    results = [None] * n
    def go(i):
        results[i] = request(port, seed0 + i, tokens)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - start
    return results, wall


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_peak_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--ferrite", default="target/release/ferrite")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--check", type=int, default=6, help="responses per round compared with the request alone")
    a = ap.parse_args()
    counts = [int(c) for c in a.clients.split(",")]
    server = subprocess.Popen(
        [a.ferrite, "serve", "--checkpoint", a.checkpoint, "--port", "0", "--parallel", str(a.parallel),
         "--queue", str(4 * max(counts))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        print(f"server pid {server.pid} on port {port}, --parallel {a.parallel}, {a.tokens} tokens per client")
        print(f"{'clients':>7} {'tok/s':>9} {'x 1 client':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'whole':>7} {'same as alone':>13}")
        base = None
        def one_client(seed):
            results, wall = run_round(port, 1, a.tokens, seed)
            return results[0][1] / wall
        # One client alone, before any load: the speed the slots must come back to.
        single = statistics.median(one_client(50 + i) for i in range(3))
        for n in counts:
            results, wall = run_round(port, n, a.tokens, 1000 * n)
            tokens = sum(r[1] for r in results if r)
            whole = sum(1 for r in results if r and r[4] and r[1] == a.tokens)
            ttfts = [r[2] for r in results if r and r[2] is not None]
            same = 0
            for i in range(min(a.check, n)):
                alone = request(port, 1000 * n + i, a.tokens, stream=False)
                same += alone[0] == results[i][0]
            speed = tokens / wall
            base = base or speed
            print(f"{n:>7} {speed:>9.1f} {speed / base:>10.2f} {pct(ttfts, 50) * 1000:>7.0f}ms {pct(ttfts, 99) * 1000:>7.0f}ms "
                  f"{whole:>3}/{n:<3} {same:>6}/{min(a.check, n)}")
        # Clients that hang up mid-stream, then one client again.
        hangers = max(counts)
        threads = [threading.Thread(target=request, args=(port, 7 + i, a.tokens, True, 5)) for i in range(hangers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        time.sleep(0.5)
        after = statistics.median(one_client(99 + i) for i in range(3))
        print(f"after {hangers} clients hung up after 5 tokens: 1 client {after:.1f} tok/s "
              f"({after / single:.2f}x one client before them, median of 3 each)")
        metrics = http.client.HTTPConnection("127.0.0.1", port)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        cancelled = [l for l in text.splitlines() if l.startswith("ferrite_cancelled_total")]
        print(f"{cancelled[0] if cancelled else ''}; server peak RSS {rss_peak_mib(server.pid):.0f} MiB")
        stderr_note = ""
        server.terminate()
        _, err = server.communicate(timeout=30)
        for l in err.splitlines():
            if "KV cache" in l or "model " in l:
                stderr_note += l + "\n"
        print(stderr_note.strip())
    finally:
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    main()
