"""Automatic bad-pixel mask from a run of frames: no hand-made mask needed.

    masks = redml_reduce.automask.find_bad_pixels(frames)      # (n, h, w) stack
    mask = masks["bad"]                                        # combine with a user mask

Classes (each a boolean map, `bad` is their union):
- gap:       negative or fill value (dtype maximum) in every frame (module gaps, Pilatus -1/-2)
- dead:      zero in every frame where its neighbourhood expects counts
- stuck:     the same nonzero value in every frame while its neighbourhood varies
- hot:       far above its neighbourhood in most frames (Bragg spots move between stills;
             a hot or noisy pixel stays)
- saturated: at the dtype maximum in some but not all frames (flagged, not a gap)

The run statistics are per pixel over the stack, compared with a median over a small
neighbourhood, so a water ring or a slowly varying background is not flagged.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["find_bad_pixels", "save_masks", "load_masks", "CLASSES"]

CLASSES = ("gap", "dead", "stuck", "hot", "saturated")


def _neighbourhood_median(image: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """Median of the valid pixels in a (2r+1)^2 window (NaN where none)."""
    h, w = image.shape
    padded = np.pad(np.where(valid, image, np.nan), radius, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    out = np.full((h, w), np.nan)
    for y0 in range(0, h, 256):  # bounded memory
        block = windows[y0 : y0 + 256].reshape(min(256, h - y0), w, -1)
        with warnings.catch_warnings():  # all-NaN windows (inside gaps) give NaN, on purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            out[y0 : y0 + 256] = np.nanmedian(block, axis=2)
    return out


def find_bad_pixels(frames: np.ndarray, hot_fraction: float = 0.5, hot_sigma: float = 8.0,
                    radius: int = 3, chance: float = 1e-7, user_mask=None) -> dict:
    """Classifies bad pixels from a stack of frames (n >= 3). Returns a dict of boolean
    maps, one per class in CLASSES, plus "bad" (their union, with user_mask)."""
    stack = np.asarray(frames)
    if stack.ndim != 3 or stack.shape[0] < 3:
        raise ValueError("find_bad_pixels needs a (frames, height, width) stack of at least 3 frames")
    n = stack.shape[0]
    info = np.iinfo(stack.dtype) if stack.dtype.kind in "iu" else None
    fill = info.max if info else np.inf
    x = stack.astype(np.float64)
    special = (x < 0) | (x == fill) | ~np.isfinite(x)
    gap = special.all(axis=0)
    saturated = (x == fill).any(axis=0) & ~gap
    valid = ~special
    mean = _safe_mean(x, valid)
    usable = ~gap & np.isfinite(mean)
    local = _neighbourhood_median(mean, usable, radius)
    local = np.where(np.isfinite(local), local, 0.0)
    # Flags need a chance below `chance` of happening to a good pixel under Poisson
    # statistics of its neighbourhood: exp(-local*n) for n zeros, pmf(v)^n for n equal v.
    log_chance = np.log(chance)
    lo = np.nanmin(np.where(valid, x, np.inf), axis=0)
    hi = np.nanmax(np.where(valid, x, -np.inf), axis=0)
    dead = usable & (hi == 0) & (-local * n < log_chance)
    stuck = usable & (lo == hi) & (lo > 0)
    if stuck.any():
        lam = np.maximum(local[stuck], 1e-3)
        v = lo[stuck]
        log_pmf = v * np.log(lam) - lam - np.array([math.lgamma(k + 1) for k in v])
        stuck[stuck] = n * log_pmf < log_chance
    # hot: above the neighbourhood by hot_sigma Poisson sigmas in most frames
    sigma = np.sqrt(np.maximum(local, 1.0))
    high = (x > (local + hot_sigma * sigma)[None]) & valid
    hot = usable & (high.mean(axis=0) >= hot_fraction) & ~stuck
    out = {"gap": gap, "dead": dead, "stuck": stuck, "hot": hot, "saturated": saturated}
    bad = gap | dead | stuck | hot | saturated
    if user_mask is not None:
        bad |= np.asarray(user_mask, bool)
    out["bad"] = bad
    return out


def _safe_mean(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel mean over the frames without each pixel's largest value, so a Bragg spot
    that hit a pixel in one still does not raise its neighbourhood's expected level."""
    vals = np.where(valid, x, 0.0)
    count = valid.sum(axis=0) - valid.any(axis=0)
    total = vals.sum(axis=0) - np.where(valid, x, -np.inf).max(axis=0).clip(min=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def save_masks(path, masks: dict, group: str = "redml_pixel_mask") -> None:
    """Stores the maps of find_bad_pixels (compressed booleans) in an HDF5 file, so the
    mask of a detector is made once and reused for every run."""
    import h5py

    with h5py.File(path, "a") as f:
        if group in f:
            del f[group]
        g = f.create_group(group)
        for name, m in masks.items():
            g.create_dataset(name, data=np.asarray(m, bool), compression="gzip", shuffle=True)


def load_masks(path, group: str = "redml_pixel_mask") -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return {name: d[...].astype(bool) for name, d in f[group].items()}
