"""Seed corpus for the libFuzzer targets in csrc/fuzz/ (written to a build directory,
not committed).

    .venv/bin/python csrc/fuzz/make_corpus.py build/fuzz/seeds

Writes <dir>/decode/: real chunks of every mode (lossless, quantized, sparse, sparse with
Poisson noise) x dtype (uint16, int16, int32, uint32, float32) x codec (rans, zstd, lz4),
plus shuffle and block-size variants, with special values (negative gaps, saturation,
NaN/inf) and spots; <dir>/filter/: the same chunks behind the filter target's control
byte; <dir>/roundtrip/: control byte + 8 parameter bytes + raw frame pixels.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import redml_reduce as rr

DTYPES = ("uint16", "int16", "int32", "uint32", "float32")
CODECS = ("rans", "zstd", "lz4")
MODES = {"lossless": dict(q=0), "quantized": dict(q=1.5), "sparse": dict(q="sparse"),
         "sparse_noise": dict(q="sparse", sparse_noise=True)}


def seed_frame(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Poisson background (~20 photons) with a few spots and the special values the codec
    keeps exactly: negative gap marks, the dtype's maximum, NaN and infinities for floats."""
    h, w = shape
    lam = np.full(shape, 20.0)
    for _ in range(2):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[:h, :w]
        lam += rng.uniform(200, 3000) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
    f = rng.poisson(lam).astype(np.float64)
    f[:, w // 3] = -1 if dtype != "uint16" and dtype != "uint32" else f[:, w // 3]
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        f = np.clip(f, np.iinfo(dt).min, np.iinfo(dt).max)
        frame = f.astype(dt)
        frame[0, 0] = np.iinfo(dt).max
    else:
        frame = f.astype(dt)
        frame[0, 1], frame[1, 0], frame[1, 1] = np.nan, np.inf, -np.inf
        frame[2, 2] = 0.37
    return frame


def chunks(rng: np.random.Generator):
    """(name, chunk bytes) for every mode x dtype x codec, plus variants."""
    k = 0
    for mode, kw in MODES.items():
        for dtype in DTYPES:
            for codec in CODECS:
                shape = (17 + k % 7, 23 + 3 * (k % 5))
                tile = (4, 8, 16)[k % 3]
                frame = seed_frame(rng, shape, dtype)
                yield f"{mode}_{dtype}_{codec}", rr.encode(frame, codec=codec, tile=tile, block_elems=256, **kw)
                k += 1
    # shuffles, one-pixel and one-row frames, a default-sized block, a roi/mask
    frame = seed_frame(rng, (20, 30), "uint16")
    for codec, shuffle in (("zstd", "byte"), ("lz4", "none"), ("rans", "none"), ("zstd", "none"), ("lz4", "byte")):
        yield f"shuffle_{codec}_{shuffle}", rr.encode(frame, 1.0, codec=codec, shuffle=shuffle, block_elems=256)
    yield "one_pixel", rr.encode(np.array([[7]], np.uint16), 1.0)
    yield "one_row", rr.encode(np.arange(40, dtype=np.int32)[None, :], 2.0, tile=5)
    yield "default_blocks", rr.encode(seed_frame(rng, (16, 16), "float32"), 1.0)
    yield "roi_mask", rr.encode(frame, 2.0, roi=rng.random(frame.shape) < 0.1, mask=rng.random(frame.shape) < 0.05,
                                block_elems=256)
    yield "zeros", rr.encode(np.zeros((9, 11), np.uint32), 1.0, tile=4)


def roundtrip_seeds(rng: np.random.Generator):
    """Round-trip target inputs: control byte, 8 parameter bytes, raw pixels."""
    for i in range(40):
        dcode = i % 5
        dtype = np.dtype(DTYPES[dcode])
        width = 8 + i % 17
        frame = seed_frame(rng, (6 + i % 9, width), dtype.name)
        params = bytes([dcode, width - 1, i % 3, 2 + i % 9, i % 9, 1 + (i * 7) % 39, i % 32, i % 64])
        control = (0x40 if i % 4 == 3 else 0) | (4 if i % 5 == 0 else 0)
        yield f"roundtrip_{i:02d}", bytes([control]) + params + frame.tobytes()


def write_corpus(out: Path | str, seed: int = 20240611) -> dict:
    """Writes the seed corpus; returns the number of seeds per target."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n = {"decode": 0, "filter": 0, "roundtrip": 0}
    for t in n:
        (out / t).mkdir(parents=True, exist_ok=True)
    for i, (name, chunk) in enumerate(chunks(rng)):
        (out / "decode" / name).write_bytes(chunk)
        (out / "filter" / name).write_bytes(bytes([i % 8]) + chunk)
        n["decode"] += 1
        n["filter"] += 1
    for name, data in roundtrip_seeds(rng):
        (out / "roundtrip" / name).write_bytes(data)
        n["roundtrip"] += 1
    return n


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "build/fuzz/seeds"
    print(write_corpus(target), "seeds in", target)
