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


# Bins of at most 16 values (the division-free form), of more (the reference), of both.
CASES = [(0.3, 12.0, 4, "fast"), (2.0, 40.0, 8, "both"), (200.0, 2000.0, 3, "reference"), (400.0, 900.0, 6, "reference")]


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
