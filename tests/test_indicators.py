"""The acquisition indicators' background level and saturated count (frame_levels: one pass
of the core) against their numpy definition, on every dtype a stream delivers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from redml_reduce.acquire.indicators import analyse, count_saturated, frame_levels

INT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


def numpy_levels(frame, saturation=None, bad=None):
    """The definition, as numpy writes it: the background is the mean of the good pixels on
    the 1-in-4 grid clipped at 5 sigma; saturated: pixels >= saturation, not bad."""
    sub = frame[::4, ::4]
    good = np.isfinite(sub) if sub.dtype.kind == "f" else np.ones(sub.shape, bool)
    if bad is not None:
        good &= ~(np.asarray(bad) != 0)[::4, ::4]
    if sub.dtype.kind in "if":
        good &= sub >= 0
    if saturation is not None:
        good &= sub < saturation
    background = math.nan
    if good.any():
        v = sub[good].astype(np.float64)
        m = v.mean()
        background = float(v[v <= m + 5 * math.sqrt(max(m, 1.0))].mean())
    saturated = 0
    if saturation is not None:
        hit = frame >= saturation
        if bad is not None:
            hit &= np.asarray(bad) == 0
        saturated = int(np.count_nonzero(hit))
    return background, saturated


def hostile_frame(rng, dtype, shape=(203, 157)):
    """Poisson background with Bragg-like outliers, the dtype's markers (its maximum, negative
    values, NaN and infinities on floats) and saturated pixels; an odd shape (a partial grid)."""
    dt = np.dtype(dtype)
    top = dt.type(np.iinfo(dt).max if dt.kind in "ui" else 1e6)
    f = rng.poisson(3.0, shape).astype(dt)
    f[rng.random(shape) < 0.01] = 90  # bright pixels: clipped from the background
    f[rng.random(shape) < 0.01] = top  # the marker / saturated value
    if dt.kind in "if":
        f[rng.random(shape) < 0.01] = -1
    if dt.kind == "f":
        for v in (np.nan, np.inf, -np.inf):
            f[rng.random(shape) < 0.005] = v
    f[0, 0] = f[4, min(8, shape[1] - 1) // 4 * 4] = top  # on the grid
    return f


def saturation_of(dtype):
    dt = np.dtype(dtype)
    return int(np.iinfo(dt).max) if dt.kind in "ui" else 1e6


def check(frame, saturation=None, bad=None):
    want = numpy_levels(frame, saturation, bad)
    got = frame_levels(frame, saturation, bad)
    assert got[1] == want[1]
    if frame.dtype.kind == "f":  # float sums in another order: equal to their rounding
        assert got[0] == pytest.approx(want[0], rel=1e-12, nan_ok=True)
    else:  # integer values sum exactly: the same bits
        assert got[0] == want[0] or (math.isnan(got[0]) and math.isnan(want[0]))
    return got


@pytest.mark.parametrize("dtype", INT_DTYPES + ("float32", "float64"))
def test_frame_levels_are_the_numpy_definition(rng, dtype):
    frame = hostile_frame(rng, dtype)
    bad = rng.random(frame.shape) < 0.05
    bad[0, 0] = True  # a bad saturated pixel: neither counted nor in the background
    sat = saturation_of(dtype)
    for b in (None, bad, bad.astype(np.uint8) * 3):
        for s in (None, sat, sat - 1):
            bg, n = check(frame, s, b)
            assert math.isfinite(bg)
            assert (n > 0) == (s is not None)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_frame_levels_of_views_and_byte_orders(rng, dtype):
    """Strided views and big-endian frames give their values' levels (converted, not misread)."""
    frame = hostile_frame(rng, dtype, (120, 90))
    bad = rng.random(frame.shape) < 0.05
    s = saturation_of(dtype)
    want = check(frame, s, bad)
    assert frame_levels(frame.astype(frame.dtype.newbyteorder(">")), s, bad) == want
    check(frame[::2, 1::3], s, bad[::2, 1::3])
    check(np.asfortranarray(frame), s, bad)


def test_saturation_beyond_or_below_the_dtype_and_between_integers(rng):
    """Saturation values an integer frame cannot hold compare as numpy does: none reach a
    value above the maximum, every pixel reaches one at or below the minimum (no good grid
    pixel is left: nan); a fractional one rounds up."""
    frame = hostile_frame(rng, "uint16")
    assert check(frame, 70000)[1] == 0
    bg, n = check(frame, 0)
    assert n == frame.size and math.isnan(bg)
    assert check(frame, -5)[1] == frame.size
    assert check(frame, 89.5) == check(frame, 90)
    assert check(frame.astype(np.int64), 2**70)[1] == 0
    assert check(frame.astype(np.int8), -200)[1] == frame.size
    assert check(frame, math.inf)[1] == 0 and check(frame, -math.inf)[1] == frame.size
    with pytest.raises(ValueError, match="nan"):
        frame_levels(frame, math.nan)


def test_float_frames_compare_in_their_own_precision():
    """numpy casts a Python number to a float32 frame's dtype: 16777217 is 16777216 there."""
    frame = np.full((8, 8), 16777216, np.float32)
    assert check(frame, 16777217)[1] == 64
    assert check(frame.astype(np.float64), 16777217)[1] == 0


def test_frames_without_good_grid_pixels_have_no_background():
    frame = np.full((9, 9), -3, np.int16)
    assert math.isnan(check(frame)[0])
    bad = np.ones(frame.shape, bool)
    assert math.isnan(check(np.ones((9, 9), np.uint16), bad=bad)[0])
    for empty in (np.zeros((0, 5), np.uint16), np.zeros((5, 0), np.float32)):
        assert math.isnan(check(empty, 10)[0])


def test_other_dtypes_and_bad_maps(rng):
    """bool and float16 frames convert exactly; a bad map of another shape is refused."""
    frame = rng.random((33, 17)) < 0.5
    assert frame_levels(frame, 1) == frame_levels(frame.astype(np.uint8), 1)
    half = rng.poisson(3.0, (33, 17)).astype(np.float16)
    assert frame_levels(half, 5) == frame_levels(half.astype(np.float32), 5)
    with pytest.raises(ValueError, match="bad has shape"):
        frame_levels(half, 5, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="2-D"):
        frame_levels(np.zeros(5, np.uint16))


def test_analyse_and_count_saturated_use_the_same_levels(rng):
    frame = hostile_frame(rng, "uint16", (300, 200))
    bad = rng.random(frame.shape) < 0.05
    st, _, _ = analyse(frame, bad=bad, saturation=65535, spots=False)
    assert (st.background, st.saturated) == numpy_levels(frame, 65535, bad)
    assert count_saturated(frame, 65535, bad) == st.saturated


@pytest.mark.parametrize("level", (1, 2, 3), ids=["portable", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "uint8"])
def test_every_simd_build_gives_the_definition(rng, level, dtype):
    """The core's loops are built per SIMD level (the best the CPU has runs; a CPU without one
    runs the next): every build, on widths around the vector lengths, gives numpy's values."""
    from redml_reduce import _core

    _core._spots_force_simd(level)
    try:
        for width in (1, 5, 63, 64, 65, 129, 257):
            frame = hostile_frame(rng, dtype, (37, width))
            bad = rng.random(frame.shape) < 0.05
            check(frame, saturation_of(dtype), bad)
            check(frame, saturation_of(dtype) - 1)
    finally:
        _core._spots_force_simd(0)


@pytest.mark.parametrize("frame", [np.full((8, 8), 3 + 4j), np.array([["1", "2"], ["3", "4"]]),
                                   np.full((8, 8), 3, np.longdouble), np.full((8, 8), None, object)],
                         ids=["complex", "str", "longdouble", "object"])
def test_frames_of_other_kinds_are_refused(frame):
    """Only numbers the core reads exactly (or after an exact cast: bool, float16) are taken: a
    complex frame is not silently cut to its real part, nor strings parsed, nor a long double
    rounded to float64."""
    with pytest.raises(TypeError, match="frame_levels"):
        frame_levels(frame, 2)
