"""Non-lattice features planted on simulated frames, labelled negative for training.

    extra_expected, extra_counts, positions, kinds = plant(rng, shape, geometry, mask)

Five kinds, each drawn with its own random count per frame:
  ice     powder spots of hexagonal ice on its three strongest rings (d = 3.897, 3.669,
          3.441 Angstrom): Bragg-like Gaussian spots at random azimuths on a ring;
  zinger  cosmic-ray hits: 1-3 adjacent pixels with hundreds to thousands of counts;
  hot     hot pixels no mask knows about: one pixel, a constant large value;
  streak  a radial line from near the beam (jet or beamstop-edge streak), 1 px wide;
  glow    module-edge glow: a background band decaying over a few pixels from the edges.
Ice, streaks and glow are expected photons (Poisson noise is drawn with the frame);
zingers and hot pixels are counts added after the noise. `positions` (x, y, pixel centres
at +0.5) are the spot-like artefacts a spot finder could mistake for reflections.
"""
from __future__ import annotations

import math

import numpy as np

from redml_reduce.background import ICE_RINGS_A

__all__ = ["ICE_RINGS_A", "plant", "KINDS"]

KINDS = ("ice", "zinger", "hot", "streak", "glow")


def _gaussian_spot(expected, x, y, total, sigma):
    h, w = expected.shape
    r = int(math.ceil(3 * sigma))
    i0, i1 = max(int(y) - r, 0), min(int(y) + r + 1, h)
    j0, j1 = max(int(x) - r, 0), min(int(x) + r + 1, w)
    if i0 >= i1 or j0 >= j1:
        return
    yy = np.arange(i0, i1)[:, None] + 0.5 - y
    xx = np.arange(j0, j1)[None, :] + 0.5 - x
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    expected[i0:i1, j0:j1] += total * g / (2 * math.pi * sigma**2)


def plant(rng: np.random.Generator, shape, geometry, mask=None, *, strength: float = 1.0):
    """Artefacts for one frame: (expected photons to add before noise, counts to add after
    noise, (n, 2) positions of spot-like artefacts, {kind: count})."""
    h, w = shape
    expected = np.zeros(shape, np.float64)
    counts = np.zeros(shape, np.int64)
    positions, kinds = [], {k: 0 for k in KINDS}
    valid = np.ones(shape, bool) if mask is None else ~np.asarray(mask, bool)

    # Ice powder spots on one to three rings.
    for d in rng.choice(ICE_RINGS_A, size=rng.integers(1, 4), replace=False):
        two_theta = 2 * math.asin(geometry.wavelength_a / (2 * d))
        radius = geometry.distance_mm * math.tan(two_theta) / geometry.pixel_size_mm
        for phi in rng.uniform(0, 2 * math.pi, size=rng.integers(15, 60)):
            x = geometry.beam_x + radius * math.cos(phi) + rng.normal(0, 0.7)
            y = geometry.beam_y + radius * math.sin(phi) + rng.normal(0, 0.7)
            if 0 <= x < w and 0 <= y < h and valid[int(y), int(x)]:
                _gaussian_spot(expected, x, y, strength * rng.lognormal(math.log(150), 0.8), rng.uniform(0.8, 1.4))
                positions.append((x, y))
                kinds["ice"] += 1
    # Zingers: short tracks of 1-3 pixels.
    for _ in range(rng.integers(3, 12)):
        i, j = rng.integers(0, h), rng.integers(0, w)
        di, dj = rng.integers(-1, 2, size=2)
        for k in range(rng.integers(1, 4)):
            ii, jj = min(max(i + k * di, 0), h - 1), min(max(j + k * dj, 0), w - 1)
            counts[ii, jj] += int(rng.uniform(100, 3000))
        positions.append((j + 0.5, i + 0.5))
        kinds["zinger"] += 1
    # Hot pixels.
    for _ in range(rng.integers(3, 12)):
        i, j = rng.integers(0, h), rng.integers(0, w)
        counts[i, j] += int(rng.uniform(50, 4000))
        positions.append((j + 0.5, i + 0.5))
        kinds["hot"] += 1
    # Radial streaks: 1 px wide, a few photons per pixel along 30-250 px.
    for _ in range(rng.integers(0, 3)):
        phi = rng.uniform(0, 2 * math.pi)
        r0 = rng.uniform(20, 200)
        length = rng.uniform(30, 250)
        level = strength * rng.uniform(2, 15)
        t = np.arange(0, length, 0.5)
        xs = geometry.beam_x + (r0 + t) * math.cos(phi)
        ys = geometry.beam_y + (r0 + t) * math.sin(phi)
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        if ok.any():
            np.add.at(expected, (ys[ok].astype(int), xs[ok].astype(int)), level * 0.5)
            kinds["streak"] += 1
    # Module-edge glow: an exponential band along the edges of the sensitive area.
    if rng.random() < 0.5:
        edge = _distance_to_edge(valid)
        expected += strength * rng.uniform(3, 20) * np.exp(-edge / rng.uniform(1.5, 4.0)) * valid
        kinds["glow"] = 1
    return expected, counts, np.array(positions, float).reshape(-1, 2), kinds


def _distance_to_edge(valid: np.ndarray, reach: int = 16) -> np.ndarray:
    """Chessboard distance (pixels, capped at reach) of each valid pixel to the nearest
    invalid pixel or frame border."""
    dist = np.full(valid.shape, float(reach))
    inside = np.pad(valid, 1, constant_values=False)
    cur = inside.copy()
    for k in range(reach):
        shrunk = cur.copy()
        shrunk[1:-1, 1:-1] = (cur[1:-1, 1:-1] & cur[:-2, 1:-1] & cur[2:, 1:-1] & cur[1:-1, :-2] & cur[1:-1, 2:]
                              & cur[:-2, :-2] & cur[:-2, 2:] & cur[2:, :-2] & cur[2:, 2:])
        edge = cur & ~shrunk
        dist[edge[1:-1, 1:-1]] = k
        cur = shrunk
    return dist
