"""The decoder's coded tiles (step > 1) decode many pixels at a time, and the conditional
reconstructions take a division-free form where it decides (csrc/quantize.h,
redml_recon_conditional_lanes). These tests hold the decoded pixels to the normative
definition (docs/format.md) transliterated into Python, operation for operation (Python
floats are IEEE doubles, so the results are the same bits), on frames whose model varies
from pixel to pixel, and check that every thread count decodes the same pixels."""
import math

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core


def reference_conditional(a, b, lam, draw, seed, idx):
    """redml_recon_conditional of csrc/quantize.h, line for line."""
    if b <= a:
        return a
    if not lam > 0.0:
        return a
    fl = math.floor(lam)
    m = a if fl < a else (b if fl > b else int(fl))
    wa = 1.0
    for x in range(m, a, -1):
        wa *= float(x) / lam
    total, moment, w, kept = 0.0, 0.0, wa, []
    for x in range(a, b + 1):
        kept.append(w)
        total += w
        moment += float(x - a) * w
        w *= lam / float(x + 1)
    if not total > 0.0:
        return m
    if not draw:
        r = a + math.floor(moment / total + _core.hash_uniform(seed, idx, 5))
        return min(r, b)
    target, c = _core.hash_uniform(seed, idx, 6) * total, 0.0
    for x in range(a, b + 1):
        c += kept[x - a]
        if c > target:
            return x
    return b


def bilinear(mean, tile, y, x):
    """interpolate_mean of csrc/background.h, line for line."""
    def axis(p, count):
        f = (p + 0.5) / tile - 0.5
        f = 0.0 if f < 0.0 else (float(count - 1) if f > count - 1 else f)
        i0 = int(f)
        return i0, (i0 + 1 if i0 + 1 < count else count - 1), f - i0

    r0, r1, rw = axis(y, mean.shape[0])
    c0, c1, cw = axis(x, mean.shape[1])
    at = lambda ty, tx: float(mean[ty, tx])  # noqa: E731
    return (1 - rw) * ((1 - cw) * at(r0, c0) + cw * at(r0, c1)) + rw * ((1 - cw) * at(r1, c0) + cw * at(r1, c1))


def sloped_frame(rng, shape, lo, hi, dtype="uint16"):
    """Poisson counts whose mean climbs from lo to hi across the frame (log scale), so the
    interpolated model, the bins and the steps differ from pixel to pixel and tile to tile."""
    ramp = np.exp(np.linspace(np.log(lo), np.log(hi), shape[1]))[None, :] * np.linspace(0.8, 1.2, shape[0])[:, None]
    return rng.poisson(ramp).astype(dtype)


# Bins of at most 16 values (the division-free form), of more (the reference), of both. The
# fast form runs in float where a span's bins end below 2^(112 / (width - 1)) (and the model
# lies within that factor of 1), in double elsewhere: bins of 14 to 16 values around 200 counts
# take both (and wider ones the reference).
CASES = [(0.3, 12.0, 4, "fast"), (2.0, 40.0, 8, "both"), (200.0, 2000.0, 3, "reference"), (400.0, 900.0, 6, "reference"),
         (180.0, 240.0, 2, "both")]


@pytest.mark.parametrize("lo, hi, q, path", CASES)
@pytest.mark.parametrize("recon", ["mean", "draw"])
def test_conditional_decode_equals_the_definition(rng, lo, hi, q, path, recon):
    f = sloped_frame(rng, (150, 260), lo, hi)
    f[70:74, 100:104] += 3000  # a spot: exact pixels among the coded ones
    c = rr.encode(f, q=q, recon=recon, tile=24)
    d = rr.decode(c)
    model = rr.background_model(c)
    seed, tile = rr.inspect(c)["seed"], model["tile"]
    exact = rr.exact_mask(c)
    assert exact.any() and not exact.all()
    coded = np.flatnonzero(~exact.ravel())
    steps = set()
    for i in rng.choice(coded, min(1500, coded.size), replace=False):
        y, x = divmod(int(i), f.shape[1])
        s = int(model["step"][y // tile, x // tile])
        steps.add(s)
        u = math.floor(_core.hash_uniform(seed, int(i), 1) * s)
        k = (int(f.flat[i]) + u) // s
        a, b = max(k * s - u, 0), k * s - u + s - 1
        expected = reference_conditional(a, b, bilinear(model["mean"], tile, y, x), recon == "draw", seed, int(i))
        assert d.flat[i] == expected, (y, x, a, b)
    assert min(steps) > 1
    assert (min(steps) <= 16) == (path != "reference") and (max(steps) > 16) == (path != "fast")


@pytest.mark.parametrize(
    "kw, dtype",
    [
        (dict(q=2), "uint16"),
        (dict(q=3), "int32"),
        (dict(q=4, recon="draw"), "uint16"),
        (dict(q=2, recon="mean"), "uint32"),
        (dict(q=1), "float32"),
        (dict(q="sparse"), "int16"),
    ],
)
def test_every_thread_count_decodes_the_same_pixels(rng, kw, dtype):
    """Bands decoded in parallel start where the counting pass says: the same pixels as one
    pass in raster order, whatever the number of threads."""
    f = sloped_frame(rng, (300, 200), 1.0, 60.0, dtype)
    f[100:104, 50:54] += 2000
    c = rr.encode(f, tile=16, **kw)
    one = rr.decode(c, nthreads=1)
    for nt in (2, 3, 5):
        assert rr.decode(c, nthreads=nt).tobytes() == one.tobytes(), nt


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32"])
def test_sparse_decode_equals_the_definition(rng, dtype):
    """Sparse chunks decode a row at a time: each background pixel is the bilinear model made
    unbiased by its seeded dither, min(T's max, floor(max(0, model) + uniform)) (floats: the
    model itself), and the exact pixels are the frame's."""
    f = sloped_frame(rng, (120, 200), 0.5, 30.0, dtype)
    f[50:54, 80:84] += 2000
    c = rr.encode(f, q="sparse", tile=16, sparse_noise=False)  # the smooth model
    d = rr.decode(c, nthreads=1)
    model = rr.background_model(c)
    seed, tile = rr.inspect(c)["seed"], model["tile"]
    exact = rr.exact_mask(c)
    assert exact.any() and not exact.all()
    assert np.array_equal(d[exact], f[exact])
    top = np.iinfo(dtype).max if dtype != "float32" else None
    coded = np.flatnonzero(~exact.ravel())
    for i in rng.choice(coded, min(1500, coded.size), replace=False):
        y, x = divmod(int(i), f.shape[1])
        v = max(0.0, bilinear(model["mean"], tile, y, x))
        if top is None:
            assert d.flat[i] == np.float32(v), (y, x)
        else:
            assert d.flat[i] == min(top, math.floor(v + _core.hash_uniform(seed, int(i), 2))), (y, x)


@pytest.mark.parametrize(
    "kw, dtype, lo, hi",
    [
        (dict(q=4, recon="draw"), "uint16", 0.5, 12.0),
        (dict(q=2, recon="mean"), "uint16", 2.0, 40.0),
        (dict(q=2, recon="draw"), "uint16", 180.0, 240.0),  # float and double lanes
        (dict(q=3, recon="draw"), "int32", 200.0, 2000.0),
        # 32-bit pixels decode coded tile rows tile by tile (16-bit ones across the tiles)
        (dict(q=1), "int32", 5.0, 60.0),
        (dict(q=2, recon="mean"), "int32", 2.0, 40.0),
        (dict(q=2), "uint16", 5.0, 60.0),
        (dict(q=2), "uint32", 5.0, 60.0),
        (dict(q=1), "float32", 5.0, 60.0),
        (dict(q="sparse"), "uint16", 0.5, 30.0),
        (dict(q="sparse"), "float32", 0.5, 30.0),
    ],
)
def test_every_simd_build_decodes_the_same_pixels(rng, kw, dtype, lo, hi):
    """The decoder's loops are compiled portable, for AVX2 and for AVX-512 (16-bit words with
    or without VBMI2's expansion: levels 4 and 3) and the best one the CPU has runs: every build
    the test hook forces (a build the CPU lacks falls back to the next one down) decodes the
    same bytes, with one thread and with several."""
    f = sloped_frame(rng, (130, 300), lo, hi, dtype)
    f[60:64, 100:104] += 3000
    c = rr.encode(f, tile=16, **kw)
    best = rr.decode(c, nthreads=1).tobytes()
    try:
        for level in (1, 2, 3, 4):
            _core._codec_force_simd(level)
            for nt in (1, 3):
                assert rr.decode(c, nthreads=nt).tobytes() == best, (level, nt)
    finally:
        _core._codec_force_simd(0)


def test_portable_build_decodes_the_golden_reconstructions():
    """The portable build of the decoder's loops reproduces the stored digests of the
    conditional reconstructions (tests/golden/recon_v1) too."""
    import hashlib
    import json
    from pathlib import Path

    golden = Path(__file__).parent / "golden" / "recon_v1"
    digests = json.loads((golden / "digests.json").read_text())
    _core._codec_force_simd(1)
    try:
        for name, cases in sorted(digests.items()):
            chunk = (golden / f"{name}.rdml").read_bytes()
            for key, digest in cases.items():
                recon, nt = key.split("_nt")
                out = rr.decode(chunk, recon=recon, nthreads=int(nt))
                assert hashlib.sha256(out.tobytes()).hexdigest() == digest, (name, key)
    finally:
        _core._codec_force_simd(0)
