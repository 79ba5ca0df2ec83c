"""Spot lists of simulated still shots with a known orientation, for the indexer's tests and
benchmark: the reflections a crystal of orientation U excites (with an Ewald-sphere shell of
mosaic spread, bandwidth and domain size), projected on a flat detector in the lattice
package's laboratory frame, with centroid noise and optional false spots."""
from __future__ import annotations

import numpy as np

from redml_reduce.background import BeamGeometry
from redml_reduce.lattice.cell import b_matrix, centring, centring_allows

PILATUS_6M = dict(shape=(2527, 2463), geometry=BeamGeometry(beam_x=1231.5, beam_y=1263.5, distance_mm=351.0,
                                                            pixel_size_mm=0.172, wavelength_a=0.9686))
JUNGFRAU_4M = dict(shape=(2164, 2068), geometry=BeamGeometry(beam_x=1034.3, beam_y=1082.7, distance_mm=120.0,
                                                             pixel_size_mm=0.075, wavelength_a=1.0))


def random_rotation(rng) -> np.ndarray:
    """Uniform over SO(3), from a uniform unit quaternion."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def hkl_to(B, d_min: float, letter: str = "P") -> np.ndarray:
    """Every centring-allowed hkl with d >= d_min (except 000)."""
    lim = np.floor(np.linalg.norm(np.linalg.inv(B), axis=1) / d_min).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(-m, m + 1) for m in lim), indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1) & centring_allows(letter, grid)]
    return grid[np.linalg.norm(grid @ B.T, axis=1) <= 1 / d_min]


def still_spots(cell, space_group, U, rng, *, detector=PILATUS_6M, d_min=2.0, mosaicity_deg=0.05,
                bandwidth=0.002, domain_a=5000.0, min_partiality=0.2, noise_px=0.3, n_false=0, false_fraction=0.0,
                max_spots=None):
    """(xy (n, 2) pixels, intensity (n,), hkl (n, 3) with 0 0 0 for false spots, A = U B).
    False spots: n_false plus false_fraction times the crystal's, uniform on the detector."""
    geom, (h, w) = detector["geometry"], detector["shape"]
    B = b_matrix(cell)
    A = U @ B
    hkl = hkl_to(B, d_min, centring(space_group))
    r = hkl @ A.T
    k = 1 / geom.wavelength_a
    s1 = r + np.array([0, 0, k])
    rlen = np.linalg.norm(r, axis=1)
    shell = np.sqrt((np.radians(mosaicity_deg) * rlen) ** 2 + (bandwidth * rlen**2 * geom.wavelength_a / 2) ** 2
                    + (1 / domain_a) ** 2)
    partiality = np.exp(-0.5 * ((np.linalg.norm(s1, axis=1) - k) / shell) ** 2)
    keep = (partiality >= min_partiality) & (s1[:, 2] > 0)
    s1, hkl, partiality = s1[keep], hkl[keep], partiality[keep]
    t = geom.distance_mm / s1[:, 2] / geom.pixel_size_mm
    xy = np.stack([s1[:, 0] * t + geom.beam_x, s1[:, 1] * t + geom.beam_y], axis=1)
    xy += rng.normal(scale=noise_px, size=xy.shape)
    on = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    xy, hkl, partiality = xy[on], hkl[on], partiality[on]
    intensity = partiality * rng.exponential(size=len(xy)) * 1000
    if max_spots is not None and len(xy) > max_spots:
        strongest = np.argsort(-intensity)[:max_spots]
        xy, hkl, intensity = xy[strongest], hkl[strongest], intensity[strongest]
    n_false += int(round(false_fraction * len(xy)))
    if n_false:
        false_xy = rng.uniform([0, 0], [w, h], size=(n_false, 2))
        xy = np.concatenate([xy, false_xy])
        hkl = np.concatenate([hkl, np.zeros((n_false, 3), int)])
        intensity = np.concatenate([intensity, rng.exponential(size=n_false) * 300])
    return xy, intensity, hkl, A
