#!/usr/bin/env python3
"""Generate tests/fixtures/quant/ggml_reference.json: ggml-quant reference data.

Writes one compact JSON object:
  generator   "scripts/make_quant_fixture.py, gguf <ver>, numpy <ver>"
  quantize    [q8_0, q4_0]: f32 input `values` (4x256, row-major), the bytes
              gguf.quants.quantize produces (hex, row-major) and gguf's
              dequantization of those bytes (`dequantized`).
  dequantize  [q4_k, q6_k]: random valid block bytes (4x512, two super-blocks
              per row; f16 scale fields forced finite and positive) and gguf's
              dequantization of them.

Every float is written as the shortest repr of the float64 of an f32, so
float32(json_value) is bit-identical to the f32 used (-0.0 is kept). gguf.quants
is bit-exact with ggml-quants.c for Q8_0/Q4_0 quantization. The script also
checks gguf against a scalar re-implementation (the spec Rust follows).

Deterministic (numpy default_rng with a fixed seed). Regenerate with:
    python3 scripts/make_quant_fixture.py
"""

import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants

SEED = 20240607
ROWS = 4
COLS = 256
KCOLS = 512
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant", "ggml_reference.json")

f32 = np.float32


def quant_inputs(rng):
    """4x256 f32 matrix of awkward inputs (8 blocks of 32 per row)."""
    x = np.zeros((ROWS, COLS), dtype=np.float64)
    # Row 0: plain normal(0, 1).
    x[0] = rng.standard_normal(COLS)
    # Row 1: block 0 all zero; block 1 tiny (1e-8: f16 scale underflows to 0
    # while the quants are nonzero); block 2 ~1e-4 (f16-subnormal scale);
    # block 3 a single nonzero; block 4 constant; rest normal.
    r = rng.standard_normal(COLS)
    r[0:32] = 0.0
    r[32:64] *= 1e-8
    r[64:96] *= 1e-4
    r[96:128] = 0.0
    r[96 + 7] = -0.3
    r[128:160] = 0.75
    x[1] = r
    # Row 2: in every block the largest-magnitude value is negative; blocks 4..7
    # at 1e3 scale; block 6 has a +a/-a magnitude tie (positive first) and
    # block 7 a -a/+a tie (negative first): Q4_0 takes the first argmax.
    r = rng.standard_normal(COLS)
    r[128:256] *= 1e3
    for b in range(8):
        blk = r[32 * b:32 * b + 32]
        blk[rng.integers(32)] = -(np.abs(blk).max() * 1.25)
    a = np.abs(r[192:224]).max()
    r[192 + 3], r[192 + 20] = a, -a
    a = np.abs(r[224:256]).max()
    r[224 + 5], r[224 + 9] = -a, a
    x[2] = r
    # Row 3: exact ties. Blocks 0..3: multiples of 0.25 with max |x| = 63.5, so
    # the Q8_0 d = 63.5/127 = 0.5 exactly and x/d hits .5 for half the values.
    # Blocks 4..5: multiples of 0.5 with max = -8 (Q4_0 d = 1, x*id + 8.5 lands
    # on integers/.5); blocks 6..7: max = +16 (Q4_0 d = -2) and 3e4 scale.
    r = np.empty(COLS)
    for b in range(4):
        blk = rng.integers(-253, 254, size=32) * 0.25
        blk[rng.integers(32)] = 63.5 if b % 2 == 0 else -63.5
        r[32 * b:32 * b + 32] = blk
    for b in (4, 5):
        blk = rng.integers(-16, 17, size=32) * 0.5
        blk[blk == 8.0] = 7.5
        blk[rng.integers(32)] = -8.0
        r[32 * b:32 * b + 32] = blk
    blk = rng.integers(-31, 32, size=32) * 0.5
    blk[rng.integers(32)] = 16.0
    r[192:224] = blk
    r[224:256] = rng.standard_normal(32) * 3e4
    x[3] = r
    return x.astype(np.float32)


def random_kquant_bytes(rng, qtype):
    """Random block bytes whose f16 scale fields are finite and positive."""
    block_elems, type_size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = ROWS * KCOLS // block_elems
    raw = rng.integers(0, 256, size=(nblocks, type_size), dtype=np.uint8)
    if qtype == QT.Q4_K:
        fields = [0, 2]          # d f16 @0, dmin f16 @2 (scales[12] @4, qs[128] @16)
    elif qtype == QT.Q6_K:
        fields = [208]           # ql[128] @0, qh[64] @128, scales i8[16] @192, d f16 @208
    else:
        raise ValueError(qtype)
    for off in fields:
        h = rng.uniform(0.001, 0.1, size=nblocks).astype(np.float16)
        assert np.all(np.isfinite(h)) and np.all(h > 0)
        raw[:, off:off + 2] = h.reshape(nblocks, 1).view(np.uint8)
    return raw.reshape(ROWS, -1)


# ---------------------------------------------------------------------------
# Scalar re-implementation (the semantics a Rust port must follow), used only
# to cross-check gguf.quants.

def f16_bits(v):
    return int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def f16_to_f32(lo, hi):
    return f32(np.array([lo | (hi << 8)], dtype=np.uint16).view(np.float16)[0])


def roundf(v):  # C roundf: round half away from zero (== gguf np_roundf)
    a = abs(float(v))
    fl = np.floor(a)
    r = fl + (1.0 if a - fl >= 0.5 else 0.0)
    return f32(np.copysign(r, float(v)))


def ref_q8_0(row):
    out = bytearray()
    for b in range(0, len(row), 32):
        blk = row[b:b + 32]
        amax = f32(0)
        for v in blk:
            amax = max(amax, abs(v))
        d = f32(amax / f32(127))          # f32 division
        idd = f32(f32(1) / d) if d != 0 else f32(0)  # 1/d from the f32 d
        h = f16_bits(d)                   # stored scale: f16(d), RNE
        out += bytes([h & 0xFF, h >> 8])
        for v in blk:
            q = int(roundf(f32(v * idd)))
            out.append(q & 0xFF)
    return bytes(out)


def ref_q4_0(row):
    out = bytearray()
    for b in range(0, len(row), 32):
        blk = row[b:b + 32]
        amax, mx = f32(0), f32(0)
        for v in blk:                     # first index of max |x|, keep sign
            if abs(v) > amax:
                amax, mx = abs(v), v
        d = f32(mx / f32(-8))
        idd = f32(f32(1) / d) if d != 0 else f32(0)
        h = f16_bits(d)
        out += bytes([h & 0xFF, h >> 8])
        q = [min(15, int(np.trunc(f32(f32(v * idd) + f32(8.5))))) for v in blk]
        assert min(q) >= 0
        out += bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


def ref_deq_q8_0(buf):
    y = []
    for b in range(0, len(buf), 34):
        d = f16_to_f32(buf[b], buf[b + 1])
        y += [f32(f32(int(np.int8(np.uint8(q)))) * d) for q in buf[b + 2:b + 34]]
    return y


def ref_deq_q4_0(buf):
    y = []
    for b in range(0, len(buf), 18):
        d = f16_to_f32(buf[b], buf[b + 1])
        qs = buf[b + 2:b + 18]
        q = [v & 0xF for v in qs] + [v >> 4 for v in qs]
        y += [f32(f32(v - 8) * d) for v in q]
    return y


def ref_deq_q4_k(buf):
    y = []
    for b in range(0, len(buf), 144):
        blk = buf[b:b + 144]
        d, dmin = f16_to_f32(blk[0], blk[1]), f16_to_f32(blk[2], blk[3])
        s, qs = blk[4:16], blk[16:144]
        for j in range(8):
            if j < 4:
                sc, m = s[j] & 63, s[j + 4] & 63
            else:
                sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)
                m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
            d1, m1 = f32(d * f32(sc)), f32(dmin * f32(m))
            chunk = qs[32 * (j // 2):32 * (j // 2) + 32]
            for l in range(32):
                q = (chunk[l] & 0xF) if j % 2 == 0 else (chunk[l] >> 4)
                y.append(f32(f32(d1 * f32(q)) - m1))   # no FMA
    return y


def ref_deq_q6_k(buf):
    y = []
    for b in range(0, len(buf), 210):
        blk = buf[b:b + 210]
        ql, qh, sc = blk[0:128], blk[128:192], blk[192:208]
        d = f16_to_f32(blk[208], blk[209])
        out = [None] * 256
        for h in range(2):
            for l in range(32):
                for k in range(4):
                    lo = ql[64 * h + 32 * (k & 1) + l]
                    lo = (lo & 0xF) if k < 2 else (lo >> 4)
                    q = (lo | (((qh[32 * h + l] >> (2 * k)) & 3) << 4)) - 32
                    n = 128 * h + 32 * k + l
                    s = int(np.int8(np.uint8(sc[n // 16])))
                    out[n] = f32(f32(d * f32(s)) * f32(q))
        y += out
    return y


# ---------------------------------------------------------------------------

def jfloats(a):
    a = np.asarray(a, dtype=np.float32).ravel()
    assert np.all(np.isfinite(a))
    return [float(v) for v in a]


def same_bits(a, b):
    a = np.asarray(a, dtype=np.float32).ravel()
    b = np.asarray(b, dtype=np.float32).ravel()
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def main():
    rng = np.random.default_rng(SEED)
    x = quant_inputs(rng)
    doc = {
        "generator": f"scripts/make_quant_fixture.py, gguf {_gguf_version()}, numpy {np.__version__}",
        "quantize": [],
        "dequantize": [],
    }
    refs = {QT.Q8_0: (ref_q8_0, ref_deq_q8_0), QT.Q4_0: (ref_q4_0, ref_deq_q4_0)}
    for qt in (QT.Q8_0, QT.Q4_0):
        q = quants.quantize(x, qt)
        _, tsz = gguf.GGML_QUANT_SIZES[qt]
        assert q.dtype == np.uint8 and q.shape == (ROWS, COLS // 32 * tsz), q.shape
        dq = quants.dequantize(q, qt)
        assert dq.dtype == np.float32 and dq.shape == (ROWS, COLS), dq.shape
        rq, rdq = refs[qt]
        for r in range(ROWS):
            assert rq(x[r]) == q[r].tobytes(), (qt.name, r)
            assert same_bits(rdq(q[r].tobytes()), dq[r]), (qt.name, r)
        doc["quantize"].append({
            "type": qt.name.lower(), "rows": ROWS, "cols": COLS,
            "values": jfloats(x), "bytes": q.tobytes().hex(), "dequantized": jfloats(dq),
        })
    krefs = {QT.Q4_K: ref_deq_q4_k, QT.Q6_K: ref_deq_q6_k}
    for qt in (QT.Q4_K, QT.Q6_K):
        raw = random_kquant_bytes(rng, qt)
        dq = quants.dequantize(raw, qt)
        assert dq.dtype == np.float32 and dq.shape == (ROWS, KCOLS), dq.shape
        for r in range(ROWS):
            assert same_bits(krefs[qt](raw[r].tobytes()), dq[r]), (qt.name, r)
        doc["dequantize"].append({
            "type": qt.name.lower(), "rows": ROWS, "cols": KCOLS,
            "bytes": raw.tobytes().hex(), "dequantized": jfloats(dq),
        })

    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)

    # Round-trip check: JSON -> float32 gives back identical bits.
    back = json.loads(text)
    for case, src in zip(back["quantize"], doc["quantize"]):
        assert same_bits(case["values"], x)
        q = np.frombuffer(bytes.fromhex(case["bytes"]), dtype=np.uint8).reshape(ROWS, -1)
        assert same_bits(case["dequantized"], quants.dequantize(q, QT[case["type"].upper()]))
        assert case == src
    for case in back["dequantize"]:
        raw = np.frombuffer(bytes.fromhex(case["bytes"]), dtype=np.uint8).reshape(ROWS, -1)
        assert same_bits(case["dequantized"], quants.dequantize(raw, QT[case["type"].upper()]))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({len(text) + 1} bytes)", file=sys.stderr)


def _gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
