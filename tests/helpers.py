"""Shared round-trip helpers for the codec tests (numcodecs style)."""
from __future__ import annotations

import numpy as np

import redml_reduce as rr
from redml_reduce.codec import error_bound
from redml_study.synthetic import still_frame

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


def check_decoded(frame, back, chunk, q):
    """The one round-trip check of a decoded chunk: same dtype and shape, byte for byte when
    q == 0; otherwise the pixels the chunk keeps exactly (exact_mask) byte for byte and, unless
    sparse, every other finite pixel within the stated bound q*sigma/2 (error_bound). Returns
    the error (decoded - frame, float64)."""
    frame = np.asarray(frame).reshape(back.shape)
    assert back.dtype == frame.dtype and back.shape == frame.shape
    err = back.astype(np.float64) - frame.astype(np.float64)
    if q == 0:
        assert back.tobytes() == frame.tobytes(), "lossless chunk changed the frame"
        return err
    exact = rr.exact_mask(chunk).reshape(back.shape)
    assert np.array_equal(back[exact].view(np.uint8), frame[exact].view(np.uint8)), "exact pixels changed"
    if q != "sparse":
        bg = ~exact & np.isfinite(frame.astype(np.float64))
        bound = error_bound(chunk).reshape(back.shape)
        over = np.abs(err[bg]) > bound[bg] * (1 + 1e-6)
        assert not over.any(), f"{over.sum()} pixels exceed the bound; worst {np.abs(err[bg]).max()}"
    return err


def check_backwards_compatibility(back, expected, frames=None, chunks=(), lossless=False):
    """Data written by an earlier release (tests/golden: chunks, numcodecs fixtures, zarr stores,
    an HDF5 file) decodes today to exactly what it decoded to then (`expected`), the pixels its
    chunks keep exactly are the input's (`frames`, one chunk per frame), and lossless data is
    the input byte for byte."""
    assert back.dtype == expected.dtype and back.shape == expected.shape
    assert back.tobytes() == expected.tobytes(), "decodes differently from the release that wrote it"
    if frames is None:
        return
    frames = np.asarray(frames).reshape(back.shape)
    for chunk, b, f in zip(chunks, back.reshape(-1, *back.shape[-2:]), frames.reshape(-1, *back.shape[-2:])):
        exact = rr.exact_mask(chunk)
        assert np.array_equal(b[exact].view(np.uint8), f[exact].view(np.uint8)), "exact pixels changed"
    if lossless:
        assert back.tobytes() == frames.tobytes()


def assert_within_bound(frame, q, **settings):
    """Encodes at q and checks (check_decoded, with the chunk's q, gain and mu_min those
    asked for) that nonnegative inputs never decode negative. Returns (chunk, decoded, error)."""
    chunk = rr.encode(frame, q, **settings)
    back = rr.decode(chunk)
    bound_map(chunk, q, settings.get("gain", 1.0), settings.get("mu_min", 1.0))
    err = check_decoded(frame, back, chunk, q)
    x = frame.astype(np.float64)
    assert not (back[x >= 0] < 0).any(), "a nonnegative input decoded negative"
    return chunk, back, err
