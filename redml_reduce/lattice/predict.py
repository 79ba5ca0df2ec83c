"""Reflection prediction for still shots, and the exact region it gives (C++ core, csrc/lattice.h).

    from redml_reduce.lattice import predict, lattice_roi, LatticeSettings
    xy, hkl = predict(A, geometry, frame.shape)                  # every reflection on the detector
    roi = lattice_roi(frame.shape, geometry, A, radius=8)        # discs of 8 px around them
    chunk = redml_reduce.encode(frame, q=8, recon="draw", roi=roi | finder_roi)
    chunk = redml_reduce.encode(frame, q=8, recon="draw", roi="lattice", geometry=geometry, crystals=[A])
    chunk = redml_reduce.encode(frame, q=8, recon="draw", roi=LatticeRegion([A], geometry))  # the same

The last two keep the finder's region and the discs exact and store the crystal models in the
chunk instead of a mask of the discs (docs/format.md, "Lattice region"): the decoder predicts the
same discs (the same C++ predictor, bit for bit).

Frame: redml_reduce.background.BeamGeometry (a flat detector normal to the beam). Laboratory
x along the fast axis (increasing column), y along the slow axis (increasing row), z along
the beam from sample to detector, in mm and 1/Angstrom. A = U B (numpy (3, 3)): its columns
are a*, b*, c* in this frame, so the reciprocal vector of hkl is r = A @ hkl.

Positions are DIALS's stills predictions: r is rotated onto the Ewald sphere about the axis
normal to r and to the beam, and the diffracted ray is projected onto the detector; with a
sensor (Crystal.sensor_*: a DIALS .expt's panel with parallax correction brings its
thickness and absorption), the spot is shifted outwards by the parallax of its mean
absorption depth, as DIALS does (on the thaumatin stills, 450 um of silicon: up to 0.66 px).
DIALS 3.12's xyzcal.px of the thaumatin stills' integrated reflections agree to 1e-9 px.

Which reflections (the excitation profile): a reflection is predicted when the rotation
moves r by at most

    1/domain_size_a + |r| * half_mosaicity/2 + |r| * tan(theta) * bandwidth/2   (1/Angstrom)

i.e. the Nave mosaic model of DIALS's stills predictor (rotation angle below d/D + eta/2,
D the mosaic domain size, eta/2 the half mosaicity in radians) widened by the beam's
bandwidth (full width dlambda/lambda: the Bragg angle spread tan(theta) dlambda/lambda).
A crystal read from a DIALS .expt carries its refined D and eta/2 (ML_domain_size_ang,
ML_half_mosaicity_deg) and they are used unless LatticeSettings sets them; a crystal of the
built-in indexer carries the profile its own spots show (lattice.index.estimate_profile: the
defaults scaled to predict 99% of its indexed spots); otherwise the defaults below apply (on
the thaumatin stills they predict every reflection DIALS integrates).
Lattice centring (P, A, B, C, I, F, R) removes systematically absent reflections; other
space-group absences (screw axes, glide planes) are kept (a slightly larger exact region).

The footprint of each reflection is a disc of `radius` pixels (every pixel whose centre is
within it): 8 px by default, the size that left |mean dsig| <= 0.02 on the thaumatin stills
(issue 21: 4 px left -0.39 sigma of bias, 6 px -0.25).

The arithmetic is deterministic (+, -, *, /, sqrt in a fixed order, no FMA contraction), so a
decoder predicting from the same model gets the same region bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .. import _core
from ..arrays import check_range
from ..background import BeamGeometry
from .cell import CENTRINGS

__all__ = ["Crystal", "LatticeSettings", "LatticeRegion", "predict", "lattice_roi", "DEFAULT_DOMAIN_SIZE_A", "DEFAULT_HALF_MOSAICITY_DEG",
           "DEFAULT_RADIUS", "CENTRINGS"]

DEFAULT_DOMAIN_SIZE_A = 500.0
DEFAULT_HALF_MOSAICITY_DEG = 0.3
DEFAULT_RADIUS = 8.0


@dataclass(frozen=True, eq=False)
class Crystal:
    """One crystal lattice on one frame: A = U B ((3, 3), 1/Angstrom, in the frame above);
    the geometry its orientation was refined with (None: the frame's); its own mosaic model
    (DIALS's ML_domain_size_ang and ML_half_mosaicity_deg, None when unknown); the lattice
    centring letter of its space group; the detector's sensor for the parallax correction
    (absorption coefficient 1/mm and thickness mm, 0: none; see below); margin_px: pixels added
    to the footprint's disc radius for this crystal's reflections (an orientation less certain
    than usual: lattice.index gives it to a lattice that explains few of the frame's spots)."""

    A: np.ndarray
    geometry: Optional[BeamGeometry] = None
    domain_size_a: Optional[float] = None
    half_mosaicity_deg: Optional[float] = None
    centring: str = "P"
    sensor_mu_per_mm: float = 0.0
    sensor_thickness_mm: float = 0.0
    margin_px: float = 0.0

    def __post_init__(self):
        A = np.array(self.A, dtype=np.float64)
        if A.shape != (3, 3) or not np.isfinite(A).all():
            raise ValueError(f"a crystal's A must be a finite 3x3 matrix, not {A.shape}")
        object.__setattr__(self, "A", A)
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, not {self.centring!r}")
        check_range("sensor_thickness_mm", self.sensor_thickness_mm, 0, 1e3)
        check_range("sensor_mu_per_mm", self.sensor_mu_per_mm, 0, 1e9, open_low=self.sensor_thickness_mm > 0)
        check_range("margin_px", self.margin_px, 0, 100)


@dataclass(frozen=True)
class LatticeSettings:
    """The footprint of the predicted reflections: disc radius (pixels), resolution limit
    (Angstrom, 0: the detector's edge), and the excitation profile (see the module doc);
    domain_size_a / half_mosaicity_deg None: the crystal's own, else the defaults."""

    radius: float = DEFAULT_RADIUS
    d_min: float = 0.0
    domain_size_a: Optional[float] = None
    half_mosaicity_deg: Optional[float] = None
    bandwidth: float = 0.0

    def __post_init__(self):
        check_range("radius", self.radius, 0, 1e4)
        check_range("d_min", self.d_min, 0, 1e6)
        check_range("bandwidth", self.bandwidth, 0, 1)
        if self.domain_size_a is not None:
            check_range("domain_size_a", self.domain_size_a, 0, 1e12, open_low=True)
        if self.half_mosaicity_deg is not None:
            check_range("half_mosaicity_deg", self.half_mosaicity_deg, 0, 90)

    def profile(self, crystal: Crystal) -> tuple:
        """(domain size, half mosaicity) for one crystal."""
        d = self.domain_size_a or crystal.domain_size_a or DEFAULT_DOMAIN_SIZE_A
        eta = self.half_mosaicity_deg
        if eta is None:
            eta = DEFAULT_HALF_MOSAICITY_DEG if crystal.half_mosaicity_deg is None else crystal.half_mosaicity_deg
        return float(d), float(eta)

    def radius_for(self, crystal: Crystal) -> float:
        """The disc radius of one crystal's reflections: radius plus the crystal's margin."""
        return float(self.radius + crystal.margin_px)


def _as_crystals(crystals) -> list:
    """A Crystal, an A matrix, or a list of them -> [Crystal]."""
    if isinstance(crystals, Crystal):
        return [crystals]
    if isinstance(crystals, np.ndarray) and crystals.shape == (3, 3):
        return [Crystal(crystals)]
    return [c if isinstance(c, Crystal) else Crystal(c) for c in crystals]


def _shape(shape) -> tuple:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"frame shape must be (height, width) > 0, not {shape}")
    return shape


def _geometry(geometry, crystal: Crystal) -> BeamGeometry:
    geometry = crystal.geometry if geometry is None else geometry
    if not isinstance(geometry, BeamGeometry):
        raise TypeError("predicting needs the frame's BeamGeometry (geometry=, or a crystal that carries one)")
    return geometry


def _predict_one(crystal: Crystal, geometry: BeamGeometry, shape, settings: LatticeSettings, margin: float):
    domain, eta = settings.profile(crystal)
    g = _geometry(geometry, crystal)
    return _core.lattice_predict(crystal.A, g.beam_x, g.beam_y, g.distance_mm, g.pixel_size_mm, g.wavelength_a,
                                 float(crystal.sensor_mu_per_mm), float(crystal.sensor_thickness_mm), shape[0], shape[1], domain, eta, float(settings.bandwidth), float(settings.d_min),
                                 float(margin), crystal.centring)


def predict(A, geometry: Optional[BeamGeometry], shape, *, settings: Optional[LatticeSettings] = None,
            margin: float = 0.0, return_rotation: bool = False):
    """The reflections of one crystal (A, or a Crystal) that land on a frame of `shape`
    (within `margin` pixels of it): positions (n, 2) float64 (x fast, y slow; pixel centres
    at +0.5) and hkl (n, 3) int32, in hkl order; with return_rotation, also how far each r
    moves onto the Ewald sphere (1/Angstrom). geometry None: the crystal's own."""
    crystal = A if isinstance(A, Crystal) else Crystal(A)
    settings = settings or LatticeSettings()
    hkl, xy, rotation = _predict_one(crystal, geometry, _shape(shape), settings, margin)
    return (xy, hkl, rotation) if return_rotation else (xy, hkl)


def lattice_roi(frame_shape, geometry: Optional[BeamGeometry], A, radius: float = DEFAULT_RADIUS, *,
                settings: Optional[LatticeSettings] = None) -> np.ndarray:
    """Boolean map of the frame: True within `radius` pixels (plus a Crystal's margin_px) of
    every predicted reflection of A (a matrix, a Crystal, or a list of them: several lattices
    on one frame). `settings` gives the rest of the footprint (its radius is replaced by
    `radius`)."""
    shape = _shape(frame_shape)
    settings = settings or LatticeSettings()
    if radius != settings.radius:
        settings = replace(settings, radius=radius)
    out = np.zeros(shape, np.uint8)
    for crystal in _as_crystals(A):
        radius = settings.radius_for(crystal)
        _, xy, _ = _predict_one(crystal, geometry, shape, settings, radius)
        _core.lattice_paint(out, np.ascontiguousarray(xy), radius)
    return out.view(bool)


@dataclass(frozen=True, eq=False)
class LatticeRegion:
    """An exact region for encode(roi=...): the discs of `settings.radius` pixels around every
    reflection the crystals predict (as lattice_roi), besides `base` (a boolean map, e.g. the
    spot finder's region; None: the encoder's built-in finder). The chunk stores the crystal
    models, not a mask of the discs (docs/format.md, "Lattice region"); the decoder predicts
    the same discs. crystals: A matrices or Crystal (1 to 255; none: base alone); geometry:
    the frame's, or None for each crystal's own."""

    crystals: Sequence = ()
    geometry: Optional[BeamGeometry] = None
    settings: LatticeSettings = field(default_factory=LatticeSettings)
    base: Optional[np.ndarray] = None

    def __post_init__(self):
        object.__setattr__(self, "crystals", tuple(_as_crystals(self.crystals)))
        if not isinstance(self.settings, LatticeSettings):
            raise TypeError(f"settings must be a LatticeSettings, not {type(self.settings).__name__}")
        if not 0 <= len(self.crystals) <= 255:
            raise ValueError(f"a lattice region holds at most 255 crystals, not {len(self.crystals)}")

    def records(self) -> tuple:
        """(float64 (n, 21) array, n centring letters): the crystals as the chunk stores them
        (the fields of redml_lattice in csrc/redml.h, in order)."""
        rows = []
        for crystal in self.crystals:
            g = _geometry(self.geometry, crystal)
            domain, eta = self.settings.profile(crystal)
            rows.append([*crystal.A.ravel(), g.beam_x, g.beam_y, g.distance_mm, g.pixel_size_mm, g.wavelength_a,
                         crystal.sensor_mu_per_mm, crystal.sensor_thickness_mm, domain, eta, self.settings.bandwidth,
                         self.settings.d_min, self.settings.radius_for(crystal)])
        return np.array(rows, np.float64).reshape(-1, 21), "".join(c.centring for c in self.crystals)

    def mask(self, shape) -> np.ndarray:
        """The whole region as a boolean map (base, if any, and the discs): what the decoder's
        exact map holds of it."""
        discs = lattice_roi(shape, self.geometry, self.crystals, self.settings.radius, settings=self.settings) \
            if self.crystals else np.zeros(_shape(shape), bool)
        return discs if self.base is None else discs | np.asarray(self.base, bool)
