"""Quick synthetic still shots for demos and tests (Poisson background, water ring, spots).

Not a crystallographic simulator: spots are placed at random. The still-shot simulator
with a real lattice lives with the yield benchmark.
"""
from __future__ import annotations

import numpy as np

__all__ = ["still_frame", "JUNGFRAU_4M_SHAPE"]

JUNGFRAU_4M_SHAPE = (2068, 2164)


def still_frame(rng: np.random.Generator, shape=(512, 512), background: float = 1.0, spots: int = 0,
                water_ring: float = 0.0, dtype="uint16") -> np.ndarray:
    """One frame: Poisson counts of a flat background (photons/px), plus an optional water
    ring (extra photons/px at its peak, radius ~40% of the frame) and `spots` Gaussian
    spots (sigma 1.2 px, 50-2000 photons at the peak)."""
    h, w = shape
    lam = np.full(shape, float(background))
    if water_ring:
        yy, xx = np.ogrid[:h, :w]
        r = np.hypot(yy - h / 2, xx - w / 2)
        r0 = 0.4 * min(h, w)
        lam += water_ring * np.exp(-((r - r0) ** 2) / (2 * (0.05 * r0) ** 2))
    for _ in range(spots):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = int(max(0, cy - 6)), int(min(h, cy + 7))
        x0, x1 = int(max(0, cx - 6)), int(min(w, cx + 7))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        lam[y0:y1, x0:x1] += rng.uniform(50, 2000) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
    return rng.poisson(lam).astype(dtype)
