"""Known-cell indexing of still shots (the C++ core's indexer, csrc/index.h).

    peaks, _ = redml_reduce.find_spots(frame)
    result = index_still(peaks, geometry, (57.9, 57.9, 150.6, 90, 90, 90), "P41212")
    if result is not None:
        result.A, result.n_indexed, result.rmsd_px, result.hkl[result.indexed]

The orientation A = U B has a*, b*, c* as columns in the laboratory frame of the lattice
package (x fast, y slow, z along the beam; see redml_reduce.background.BeamGeometry): the
reciprocal vector of hkl is A @ hkl. A frame indexes when enough spots (min_indexed, and
min_fraction of them) lie on the lattice within tolerance_px on the detector; otherwise the
result is None (blank frames, too few spots, another crystal, a false lattice).

Each result also carries the excitation profile its own spots show (estimate_profile: the
mosaic model the predictor then uses for this frame, instead of a fixed default), and
result.crystals() is what the per-frame policy gets: [] when the lattice explains too few of
the frame's spots to be trusted (min_explained: a false lattice, or a crowd of crystals), so
such a frame is coded as a hit (midpoint, unbiased for any signal) rather than with a lattice
region that may miss the reflections a later integration measures; a lattice that explains
fewer spots than a single crystal's does (confident: several crystals, among which the
indexer and a later integration may settle differently) keeps wider discs (margin_px).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _core
from ..arrays import check_range
from ..background import BeamGeometry
from .cell import b_matrix, centring, parse_cell
from .predict import DEFAULT_DOMAIN_SIZE_A, DEFAULT_HALF_MOSAICITY_DEG, Crystal

__all__ = ["IndexSettings", "IndexResult", "index_still", "estimate_profile", "excitation", "MIN_EXPLAINED",
           "CONFIDENT_EXPLAINED", "UNCERTAIN_MARGIN_PX"]

# The per-frame policy's trust in a lattice: the fraction of the frame's spots it must index,
# and under CONFIDENT_EXPLAINED of them its discs grow by UNCERTAIN_MARGIN_PX. On the 19
# thaumatin stills the lattices index 70-100% of the spots, except still 2 (46%, several
# crystals: two DIALS runs on the same frames, from the CBF files and from an NXmx copy, differ
# by 0.25 degree there). Its reflections, integrated with DIALS's crystal on frames coded with
# ours (q=24): mean dsig -0.12 with discs of 8 px, -0.03 with 10 px, -0.03 as a hit (midpoint:
# a chunk 1.7 times the one with 10 px discs).
MIN_EXPLAINED = 0.4
CONFIDENT_EXPLAINED = 0.6
UNCERTAIN_MARGIN_PX = 2.0

# estimate_profile: the fraction of the indexed spots the profile must predict, and the fewest
# spots an estimate is made from (below: the package's default profile). 0.99 rather than
# 0.98: where DIALS's orientation lies 0.1 degree from ours, its reflections at the edge of
# the excitation window are ours too (thaumatin stills, q=24: mean dsig -0.020 instead of
# -0.021, 37.24x instead of 37.58x). A still with few
# spots shows only its strongest reflections, those nearest the Ewald sphere, whose spread
# understates the profile (thaumatin still 15: 50 spots, half mosaicity 0.12 degree against
# DIALS's 0.27; 0.915 of DIALS's reflections predicted within 1 px, 0.975 with the default).
PROFILE_COVERAGE = 0.99
PROFILE_MIN_SPOTS = 100
MIN_PROFILE_SCALE, MAX_PROFILE_SCALE = 0.05, 10.0  # the estimate's bounds, relative to the default profile


@dataclass(frozen=True)
class IndexSettings:
    """How the indexer searches and what it accepts.

    tolerance_px: a spot indexes when its lattice point's ray meets the detector this close;
    spread_deg: and the point lies within this angle times |r| (plus the same tolerance) of
    the Ewald sphere (mosaic spread and bandwidth of stills); length_tolerance,
    angle_tolerance_deg: matching spot differences to lattice vectors (relative length, angle,
    widened by the spots' own uncertainty); max_spots: strongest spots the search starts from;
    neighbours: per spot, the spots whose differences are matched; max_trials: rotations tried
    before giving up; min_indexed and min_fraction: acceptance; accept_fraction: stop the
    search at the first solution indexing this fraction of the spots.
    """

    tolerance_px: float = 3.0
    spread_deg: float = 0.3
    length_tolerance: float = 0.04
    angle_tolerance_deg: float = 3.0
    max_spots: int = 60
    neighbours: int = 6
    max_trials: int = 5000
    min_indexed: int = 10
    min_fraction: float = 0.3
    accept_fraction: float = 0.75

    def __post_init__(self):
        check_range("tolerance_px", self.tolerance_px, 0, 1000, open_low=True)
        check_range("spread_deg", self.spread_deg, 0, 10)
        check_range("length_tolerance", self.length_tolerance, 0, 0.5)
        check_range("angle_tolerance_deg", self.angle_tolerance_deg, 0, 30)
        check_range("max_spots", self.max_spots, 3, 100000, integer=True)
        check_range("neighbours", self.neighbours, 2, 100, integer=True)
        check_range("max_trials", self.max_trials, 1, 10**9, integer=True)
        check_range("min_indexed", self.min_indexed, 3, 10**9, integer=True)
        check_range("min_fraction", self.min_fraction, 0, 1)
        check_range("accept_fraction", self.accept_fraction, 0, 1)


@dataclass(frozen=True)
class IndexResult:
    """An indexed still: A = U @ B (3, 3), per spot its hkl (n, 3) and whether it indexed
    (indexed, bool (n,)), how many did, their rms distance (pixels) from the predicted
    positions, the cell and space group used, rotations tried."""

    A: np.ndarray
    U: np.ndarray
    B: np.ndarray
    hkl: np.ndarray
    indexed: np.ndarray
    n_indexed: int
    n_spots: int
    rmsd_px: float
    cell: tuple
    space_group: str
    trials: int
    domain_size_a: Optional[float] = None
    half_mosaicity_deg: Optional[float] = None

    @property
    def fraction(self) -> float:
        """The fraction of the frame's spots this lattice indexes."""
        return self.n_indexed / self.n_spots if self.n_spots else 0.0

    def crystals(self, geometry: Optional[BeamGeometry] = None, *, min_explained: float = MIN_EXPLAINED,
                 confident: float = CONFIDENT_EXPLAINED) -> list:
        """The per-frame policy's crystals: [Crystal] with the estimated profile and the space
        group's centring, or [] when the lattice indexes under min_explained of the spots; under
        `confident` of them, the crystal's discs grow by UNCERTAIN_MARGIN_PX (margin_px)."""
        check_range("min_explained", min_explained, 0, 1)
        check_range("confident", confident, 0, 1)
        if self.fraction < min_explained:
            return []
        return [Crystal(self.A, geometry=geometry, domain_size_a=self.domain_size_a,
                        half_mosaicity_deg=self.half_mosaicity_deg, centring=centring(self.space_group),
                        margin_px=UNCERTAIN_MARGIN_PX if self.fraction < confident else 0.0)]


def _spot_arrays(spots, intensities):
    """x, y and intensities (or None) from a peak table (fields x, y, total) or an (n, 2) array."""
    if isinstance(spots, np.ndarray) and spots.dtype.names:
        if "x" not in spots.dtype.names or "y" not in spots.dtype.names:
            raise ValueError("spots: a structured array needs fields x and y (a find_spots peak table)")
        x, y = spots["x"], spots["y"]
        if intensities is None and "total" in spots.dtype.names:
            intensities = spots["total"]
    else:
        xy = np.asarray(spots, dtype=np.float64)
        if xy.size == 0:
            xy = xy.reshape(0, 2)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"spots must be an (n, 2) array of x, y pixel centroids, not shape {xy.shape}")
        x, y = xy[:, 0], xy[:, 1]
    x, y = np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spot positions must be finite")
    if intensities is not None:
        intensities = np.ascontiguousarray(intensities, np.float64).reshape(-1)
        if len(intensities) != len(x):
            raise ValueError(f"intensities: {len(intensities)} values for {len(x)} spots")
        if not np.isfinite(intensities).all():
            raise ValueError("intensities must be finite")
    return x, y, intensities


def index_still(spots, geometry: BeamGeometry, cell, space_group: str, *, intensities=None,
                settings: IndexSettings | None = None, **fields) -> IndexResult | None:
    """Indexes one still with a known cell and space group, or returns None.

    spots: find_spots' peak table (its `total` orders the search, strongest first) or an
    (n, 2) array of x, y centroids (pixels, centres at +0.5), with optional intensities.
    geometry: a BeamGeometry. cell: (a, b, c, alpha, beta, gamma). space_group: a
    Hermann-Mauguin symbol (only its lattice centring is used). settings: an IndexSettings,
    or its fields as keywords. The GIL is released while the core searches.
    """
    if settings is not None and fields:
        raise ValueError("give settings= or the indexer's fields, not both")
    s = settings if settings is not None else IndexSettings(**fields)
    if not isinstance(geometry, BeamGeometry):
        raise TypeError(f"geometry must be a BeamGeometry, not {type(geometry).__name__}")
    cell = parse_cell(cell)
    letter = centring(space_group)
    B = b_matrix(cell)
    x, y, w = _spot_arrays(spots, intensities)
    out = _core.index_still(x, y, w, B, geometry.beam_x, geometry.beam_y, geometry.distance_mm,
                            geometry.pixel_size_mm, geometry.wavelength_a, letter, s.tolerance_px, s.spread_deg,
                            s.length_tolerance, s.angle_tolerance_deg, s.max_spots, s.neighbours, s.max_trials,
                            s.min_indexed, s.min_fraction, s.accept_fraction)
    if not out["indexed"]:
        return None
    A = out["A"]
    hkl, indexed = out["hkl"], out["is_indexed"]
    profile = estimate_profile(A, hkl[indexed], geometry.wavelength_a) or (None, None)
    return IndexResult(A=A, U=A @ np.linalg.inv(B), B=B, hkl=hkl, indexed=indexed,
                       n_indexed=int(out["n_indexed"]), n_spots=len(x), rmsd_px=float(out["rmsd_px"]),
                       cell=cell, space_group=space_group, trials=int(out["trials"]), domain_size_a=profile[0],
                       half_mosaicity_deg=profile[1])


def excitation(A, hkl, wavelength_a: float):
    """(rotation, |r|) per reflection hkl (n, 3) of orientation A: how far (1/Angstrom) the
    predictor rotates r = A hkl to put it on the Ewald sphere (lattice.cpp's measure, which its
    profile bounds), and |r|."""
    r = np.asarray(hkl, np.float64).reshape(-1, 3) @ np.asarray(A, np.float64).T
    k0 = 1.0 / wavelength_a
    rr = (r * r).sum(axis=1)
    along = 0.5 * rr / k0  # the rotated point's depth along the beam, and its distance from the beam
    across = np.sqrt(np.maximum(rr - along * along, 0.0))
    return np.hypot(np.hypot(r[:, 0], r[:, 1]) - across, r[:, 2] + along), np.sqrt(rr)


def estimate_profile(A, hkl, wavelength_a: float, coverage: float = PROFILE_COVERAGE):
    """(domain size A, half mosaicity deg): the package's default profile (lattice.cpp's
    tolerance 1/D + |r| eta/2, eta the half mosaicity in radians) scaled so that it just
    predicts the `coverage` quantile of the indexed spots hkl: a crystal's spots say how far
    from the Ewald sphere its reflections diffract (what DIALS refines as its mosaic model).
    One scale rather than D and eta apart: the spots of a still span too narrow a range of |r|
    to tell the two terms apart reliably. None with fewer than PROFILE_MIN_SPOTS spots."""
    rotation, length = excitation(A, hkl, wavelength_a)
    default = 1.0 / DEFAULT_DOMAIN_SIZE_A + length * np.radians(DEFAULT_HALF_MOSAICITY_DEG) / 2
    ratio = rotation / default
    ratio = ratio[np.isfinite(ratio)]
    if len(ratio) < PROFILE_MIN_SPOTS:
        return None
    scale = float(np.clip(np.quantile(ratio, coverage), MIN_PROFILE_SCALE, MAX_PROFILE_SCALE))
    return DEFAULT_DOMAIN_SIZE_A / scale, DEFAULT_HALF_MOSAICITY_DEG * scale

