"""The usable-pixel map (masked pixels and markers, the encoder's first stage) is built by
one loop compiled for each SIMD level: every level must give the same chunks, and the
markers and masked pixels must be stored exactly."""
from __future__ import annotations

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core

SIMD_LEVELS = (1, 2, 3)  # portable, AVX2, AVX-512 (a level the CPU lacks runs the best it has)
SHAPE = (37, 203)  # odd widths: every build's tail loop runs


def special_frame(dtype: str, seed: int = 5) -> tuple:
    """Poisson counts with every kind of marker scattered over them, and a mask."""
    rng = np.random.default_rng(seed)
    frame = rng.poisson(2.0, SHAPE).astype(dtype)
    kind = np.dtype(dtype)
    specials = [np.iinfo(kind).max] if kind.kind in "iu" else [np.inf, np.nan, -np.inf]
    if kind.kind == "i":
        specials += [np.iinfo(kind).min, -1, -2, -7]
    elif kind.kind == "f":
        specials += [-1.0, -2.0, -0.5]
    flat = frame.reshape(-1)
    spots = rng.choice(flat.size, 300, replace=False)
    flat[spots] = np.array(specials, dtype)[np.arange(spots.size) % len(specials)]
    mask = rng.random(SHAPE) < 0.02
    return frame, mask


def encode_at(level: int, frame, mask, **fields) -> bytes:
    _core._spots_force_simd(level)
    try:
        return rr.encode(frame, mask=mask, nthreads=1, **fields)
    finally:
        _core._spots_force_simd(0)


@pytest.mark.parametrize("markers", ["negative", "extremes", "gaps"])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32"])
def test_lossless_chunks_same_at_every_simd_level(dtype, markers):
    frame, mask = special_frame(dtype)
    chunks = [encode_at(level, frame, mask, q=0, markers=markers) for level in SIMD_LEVELS]
    assert chunks[1] == chunks[0] and chunks[2] == chunks[0]
    out = rr.decode(chunks[0])
    assert out.dtype == frame.dtype and out.tobytes() == frame.tobytes()


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32"])
def test_quantized_markers_exact_at_every_simd_level(dtype, with_mask):
    frame, mask = special_frame(dtype, seed=9)
    mask = mask if with_mask else None
    chunks = [encode_at(level, frame, mask, q=1) for level in SIMD_LEVELS]
    assert chunks[1] == chunks[0] and chunks[2] == chunks[0]
    # photon counters' markers: negative values, non-finite floats, the type's maximum
    f = frame.astype(np.float64)
    special = ~np.isfinite(f) | (f < 0)
    if frame.dtype.kind in "iu":
        special |= frame == np.iinfo(frame.dtype).max
    if mask is not None:
        special |= mask
    assert special.any()
    exact = rr.exact_mask(chunks[0])
    assert exact[special].all()
    out = rr.decode(chunks[0])
    assert out[special].tobytes() == frame[special].tobytes()
