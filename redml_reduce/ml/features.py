"""What every model sees: the frame with its background removed (numpy, no torch).

    excess, background = prepare(frame, mask, geometry)

The background is radial (redml_reduce.background.RadialBackground, sigma-clipped per
1-px ring; beam centre and distance from `geometry`); without a geometry, a robust mean
per 32 x 32 block (the codec's tile model), bilinearly interpolated. Masked pixels, gaps
(negative values) and the dtype's maximum get excess 0. The input transforms (raw, sqrt,
log, Gaussian-filter ratio) are the models' first layer (redml_reduce.ml.models), so a
frame processed in tiles sees the same pixels as the whole frame.
"""
from __future__ import annotations

import numpy as np

from ..background import RadialBackground

__all__ = ["prepare", "invalid_pixels", "block_background"]


def invalid_pixels(frame: np.ndarray, mask=None) -> np.ndarray:
    bad = frame < 0
    if np.issubdtype(frame.dtype, np.integer):
        bad |= frame == np.iinfo(frame.dtype).max
    else:
        bad |= ~np.isfinite(frame)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    return bad


def block_background(frame: np.ndarray, bad: np.ndarray, block: int = 32) -> np.ndarray:
    """Clipped mean per block (values above median + 3 sqrt(median) + 3 left out),
    interpolated bilinearly between block centres."""
    h, w = frame.shape
    nby, nbx = -(-h // block), -(-w // block)
    pad = np.full((nby * block, nbx * block), np.nan, np.float32)
    pad[:h, :w] = np.where(bad, np.nan, frame)
    tiles = pad.reshape(nby, block, nbx, block).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(tiles, axis=2)
            cut = med + 3 * np.sqrt(np.maximum(med, 1)) + 3
            mean = np.nanmean(np.where(tiles <= cut[..., None], tiles, np.nan), axis=2)
    mean = np.where(np.isfinite(mean), mean, np.nanmean(mean) if np.isfinite(mean).any() else 0.0)
    cy = (np.arange(h) + 0.5) / block - 0.5
    cx = (np.arange(w) + 0.5) / block - 0.5
    y0 = np.clip(np.floor(cy).astype(int), 0, nby - 1)
    x0 = np.clip(np.floor(cx).astype(int), 0, nbx - 1)
    y1, x1 = np.minimum(y0 + 1, nby - 1), np.minimum(x0 + 1, nbx - 1)
    fy = np.clip(cy - y0, 0, 1)[:, None].astype(np.float32)
    fx = np.clip(cx - x0, 0, 1)[None, :].astype(np.float32)
    m = mean.astype(np.float32)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def prepare(frame, mask=None, geometry=None, nthreads: int = 0):
    """(excess, background): float32 maps, excess = frame - background (0 on invalid pixels),
    background >= 0."""
    frame = np.asarray(frame)
    bad = invalid_pixels(frame, mask)
    if geometry is not None:
        model = RadialBackground(geometry, frame.shape, mask=bad, nthreads=nthreads)
        background = np.maximum(model.update(frame).background(), 0).astype(np.float32)
    else:
        background = np.maximum(block_background(frame, bad), 0).astype(np.float32)
    excess = frame.astype(np.float32) - background
    excess[bad] = 0
    return excess, background
