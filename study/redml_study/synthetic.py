"""Quick synthetic still shots for demos and tests (Poisson background, water ring, spots).

Not a crystallographic simulator: spots are placed at random. The still-shot simulator
with a real lattice lives with the yield benchmark.
"""
from __future__ import annotations

import numpy as np

__all__ = ["still_frame", "JUNGFRAU_4M_SHAPE"]

JUNGFRAU_4M_SHAPE = (2068, 2164)


def still_frame(rng: np.random.Generator, shape=(512, 512), background: float = 1.0, spots: int = 0,
                water_ring: float = 0.0, dtype="uint16", peak_range=(50.0, 2000.0), return_spots: bool = False):
    """One frame: Poisson counts of a flat background (photons/px), plus an optional water
    ring (extra photons/px at its peak, radius ~40% of the frame) and `spots` Gaussian
    spots (sigma 1.2 px, peak photons uniform in peak_range). With return_spots, also
    returns the (n, 2) spot centres (x = fast, y = slow; pixel centres at +0.5)."""
    h, w = shape
    lam = np.full(shape, float(background))
    if water_ring:
        yy, xx = np.ogrid[:h, :w]
        r = np.hypot(yy - h / 2, xx - w / 2)
        r0 = 0.4 * min(h, w)
        lam += water_ring * np.exp(-((r - r0) ** 2) / (2 * (0.05 * r0) ** 2))
    centres = []
    for _ in range(spots):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = int(max(0, cy - 6)), int(min(h, cy + 7))
        x0, x1 = int(max(0, cx - 6)), int(min(w, cx + 7))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        # pixel (i, j) covers [j, j+1) x [i, i+1); its centre is at (j + 0.5, i + 0.5)
        lam[y0:y1, x0:x1] += rng.uniform(*peak_range) * np.exp(
            -((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / (2 * 1.2**2))
        centres.append((cx, cy))
    frame = rng.poisson(lam).astype(dtype)
    return (frame, np.array(centres).reshape(-1, 2)) if return_spots else frame
