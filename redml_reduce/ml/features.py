"""What every model sees: the frame with its background removed (numpy, no torch).

    excess, background = prepare(frame, mask, geometry)

The background is radial (the C++ radial profile of redml_reduce.background, sigma-clipped
per 1-px ring; beam centre from `geometry`; ring geometry cached per geometry and shape); without a geometry, a robust mean
per 32 x 32 block (the codec's tile model), bilinearly interpolated. Masked pixels, gaps
(negative values) and the dtype's maximum get excess 0. The input transforms (raw, sqrt,
log, Gaussian-filter ratio) are the models' first layer (redml_reduce.ml.models), so a
frame processed in tiles sees the same pixels as the whole frame.
"""
from __future__ import annotations

import numpy as np

from functools import lru_cache

from .. import _core

__all__ = ["prepare", "invalid_pixels", "block_background", "radial_background"]


def invalid_pixels(frame: np.ndarray, mask=None) -> np.ndarray:
    bad = frame < 0
    if np.issubdtype(frame.dtype, np.integer):
        bad |= frame == np.iinfo(frame.dtype).max
    else:
        bad |= ~np.isfinite(frame)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    return bad


@lru_cache(maxsize=4)
def _block_ids(shape, block):
    h, w = shape
    nbx = -(-w // block)
    return ((np.arange(h)[:, None] // block) * nbx + np.arange(w)[None, :] // block).astype(np.int32)


def block_background(frame: np.ndarray, bad: np.ndarray, block: int = 32) -> np.ndarray:
    """Sigma-clipped mean per block (the C++ profile with block ids as bins; 3 sigma, 3
    iterations), interpolated bilinearly between block centres."""
    h, w = frame.shape
    nby, nbx = -(-h // block), -(-w // block)
    ids = np.where(bad, -1, _block_ids(frame.shape, block)).astype(np.int32)
    mean, _, count = _core.radial_profile(np.ascontiguousarray(frame), ids, nby * nbx, 3.0, 3, 0)
    ok = count > 0
    mean = np.where(ok, mean, mean[ok].mean() if ok.any() else 0.0).reshape(nby, nbx).astype(np.float32)
    cy = (np.arange(h) + 0.5) / block - 0.5
    cx = (np.arange(w) + 0.5) / block - 0.5
    y0 = np.clip(np.floor(cy).astype(int), 0, nby - 1)
    x0 = np.clip(np.floor(cx).astype(int), 0, nbx - 1)
    y1, x1 = np.minimum(y0 + 1, nby - 1), np.minimum(x0 + 1, nbx - 1)
    fy = np.clip(cy - y0, 0, 1)[:, None].astype(np.float32)
    fx = np.clip(cx - x0, 0, 1)[None, :].astype(np.float32)
    top = mean[y0][:, x0] * (1 - fx) + mean[y0][:, x1] * fx
    bottom = mean[y1][:, x0] * (1 - fx) + mean[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@lru_cache(maxsize=4)
def _rings(geometry, shape):
    """Radial bin of each pixel (1-px rings) and the linear interpolation between ring
    centres: (bins, lower ring, upper ring, weight of the lower, weight of the upper,
    number of rings), cached per geometry."""
    radius = geometry.radius_map(shape).astype(np.float32)
    bins = np.floor(radius).astype(np.int32)
    nbins = int(bins.max()) + 2
    pos = np.maximum(radius - 0.5, 0)
    lo = np.floor(pos).astype(np.intp)  # numpy's index type: no conversion per gather
    f = (pos - lo).astype(np.float32)
    return bins, lo, np.minimum(lo + 1, nbins - 1), 1 - f, f, nbins


def radial_background(frame, bad, geometry, nthreads: int = 0) -> np.ndarray:
    """Sigma-clipped mean per 1-px ring (the C++ radial profile, 3 sigma, 3 iterations) of
    every other row and column (a quarter of the pixels: still hundreds per ring away from
    the beam), interpolated linearly between ring centres; rings without good pixels take
    their neighbours' values."""
    bins, lo, hi, w_lo, w_hi, nbins = _rings(geometry, frame.shape)
    b = np.where(bad[::2, ::2], -1, bins[::2, ::2]).astype(np.int32)
    mean, _, count = _core.radial_profile(np.ascontiguousarray(frame[::2, ::2]), b, nbins, 3.0, 3, nthreads)
    ok = count > 0
    if not ok.any():
        return np.zeros(frame.shape, np.float32)
    mean = np.interp(np.arange(nbins), np.flatnonzero(ok), mean[ok]).astype(np.float32)
    out = np.take(mean, lo)
    out *= w_lo
    out += np.take(mean, hi) * w_hi
    return np.maximum(out, 0, out=out)


def prepare(frame, mask=None, geometry=None, nthreads: int = 0, out=None):
    """(excess, background): float32 maps, excess = frame - background (0 on invalid pixels),
    background >= 0; written into out[0] and out[1] when given (a (C, H, W) float32 array).
    nthreads: the C++ profile's threads (0: all cores)."""
    frame = np.asarray(frame)
    if out is None:
        out = np.empty((2,) + frame.shape, np.float32)
    excess, background = out[0], out[1]
    bad = invalid_pixels(frame, mask)
    if geometry is not None:
        background[...] = radial_background(frame, bad, geometry, nthreads)
    else:
        np.maximum(block_background(frame, bad), 0, out=background)
    np.subtract(frame, background, out=excess, dtype=np.float32, casting="unsafe")
    excess[bad] = 0
    return excess, background
