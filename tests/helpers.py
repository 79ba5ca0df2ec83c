"""Shared round-trip helpers for the codec tests (numcodecs style)."""
from __future__ import annotations

import numpy as np

import redml_reduce as rr
from redml_reduce.codec import error_bound
from redml_reduce.synthetic import still_frame

ALL_DTYPES = ("uint16", "int16", "int32", "uint32", "float32")


def poisson_frame(rng, mu, shape, dtype="uint16", spots=0):
    """Poisson background of mean mu (photons) with optional Gaussian spots."""
    return still_frame(rng, shape, background=mu, spots=spots, dtype=dtype)


def assert_lossless(frame, **settings):
    """Encodes losslessly and checks the decoded frame byte for byte."""
    chunk = rr.encode(frame, 0, **settings)
    back = rr.decode(chunk)
    assert back.dtype == frame.dtype and back.shape == frame.shape
    assert back.tobytes() == np.ascontiguousarray(frame).tobytes()
    return chunk


def bound_map(chunk, q=None, gain=None, mu_min=None):
    """Per-pixel stated bound q*sigma/2 (redml_reduce.codec.error_bound; the chunk carries
    q, gain and mu_min, the arguments only check they match)."""
    info = rr.inspect(chunk)
    for name, value in (("q", q), ("gain", gain), ("mu_min", mu_min)):
        assert value is None or np.float32(value) == np.float32(info[name]), name
    return error_bound(chunk)


def assert_within_bound(frame, q, **settings):
    """Encodes at q and checks: exact pixels exact, every other pixel within q*sigma/2,
    nonnegative inputs never decode negative. Returns (chunk, decoded, error)."""
    chunk = rr.encode(frame, q, **settings)
    back = rr.decode(chunk)
    assert back.dtype == frame.dtype and back.shape == frame.shape
    x = frame.astype(np.float64)
    err = back.astype(np.float64) - x
    exact = rr.exact_mask(chunk)
    finite = np.isfinite(x)
    assert np.array_equal(back[exact].view(np.uint8), frame[exact].view(np.uint8)), "exact pixels changed"
    bg = ~exact & finite
    bound = bound_map(chunk, q, settings.get("gain", 1.0), settings.get("mu_min", 1.0))
    over = np.abs(err[bg]) > bound[bg] * (1 + 1e-6)
    assert not over.any(), f"{over.sum()} pixels exceed the bound; worst {np.abs(err[bg]).max()}"
    assert not (back[x >= 0] < 0).any(), "a nonnegative input decoded negative"
    return chunk, back, err
