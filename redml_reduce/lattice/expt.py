"""Crystals from a DIALS experiment list (.expt, JSON): one Crystal per indexed experiment,
in redml's laboratory frame, keyed by the image it was indexed on.

    table = read_expt("indexed.expt")          # a CrystalTable
    table.for_frame("/data/thau_0001.cbf", 0)  # [Crystal, ...] (several lattices possible)

DIALS's laboratory frame is converted to redml's (redml_reduce.lattice.predict): x along
the panel's fast axis, y along its slow axis, z along the beam (DIALS's beam "direction"
points back to the source: the beam travels along -direction). Only a flat single-panel
detector normal to the beam is supported (tilts up to 0.1 degree are accepted: the beam
centre is where the beam meets the panel); the crystal's A = (real-space axes as rows)^-1
is rotated into this frame, and its refined mosaic model (ML_domain_size_ang,
ML_half_mosaicity_deg), lattice centring (the first letter of its Hall symbol) and the
panel's sensor (mu, thickness: parallax, when DIALS corrects for it) come along.
Each experiment names its image: the image set's one file (CBF) or file and
single_file_indices (HDF5); image paths relative to the .expt's folder are resolved there.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..background import BeamGeometry
from .predict import CENTRINGS, Crystal

__all__ = ["read_expt", "CrystalTable", "geometry_from_dials"]

# A panel tilted more than this from normal to the beam is refused (BeamGeometry is flat and normal).
MAX_TILT_DEG = 0.1


class CrystalTable:
    """Crystals per image: entries (path, frame index in that file, Crystal). A frame is
    found by its file's full path, or by the file's name when no full path matches (so an
    .expt written on another machine still applies)."""

    def __init__(self, entries, source: str = ""):
        self.source = source
        self.by_path, self.by_name = {}, {}
        for path, index, crystal in entries:
            self.by_path.setdefault((os.path.abspath(path), int(index)), []).append(crystal)
            self.by_name.setdefault((os.path.basename(path), int(index)), []).append(crystal)

    def __len__(self):
        return sum(len(v) for v in self.by_path.values())

    @property
    def images(self) -> int:
        return len(self.by_path)

    def for_frame(self, path, index: int = 0) -> list:
        found = self.by_path.get((os.path.abspath(path), int(index)))
        if found is None:
            found = self.by_name.get((os.path.basename(path), int(index)), [])
        return list(found)

    def for_input(self, inp, n_frames: int) -> list:
        """[crystals of frame i] for the n_frames frames of a recompression input
        (redml_reduce.formats.sources.Input): an image series by file, an HDF5 file by frame index."""
        if inp.kind == "images":
            return [self.for_frame(f, 0) for f in inp.files[:n_frames]]
        return [self.for_frame(inp.files[0], i) for i in range(n_frames)]


def _unit(v, what):
    v = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if v.shape != (3,) or not np.isfinite(n) or n == 0:
        raise ValueError(f"DIALS {what} must be a non-zero 3-vector")
    return v / n


def geometry_from_dials(beam: dict, panel: dict):
    """(BeamGeometry, R): redml's geometry of a DIALS beam and flat panel (experiment-list
    JSON dicts), and the rotation R (rows: fast, slow, beam direction) taking DIALS's
    laboratory vectors into redml's frame."""
    wavelength = float(beam["wavelength"])
    b = -_unit(beam["direction"], "beam direction")  # sample -> detector
    f, s = _unit(panel["fast_axis"], "fast axis"), _unit(panel["slow_axis"], "slow axis")
    n = np.cross(f, s)
    cos_tilt = float(np.dot(n, b))
    if abs(cos_tilt) < math.cos(math.radians(MAX_TILT_DEG)) or abs(float(np.dot(f, s))) > 1e-6:
        raise ValueError("the DIALS detector is not a flat panel normal to the beam (within "
                         f"{MAX_TILT_DEG} degree): redml's geometry cannot hold it")
    origin = np.asarray(panel["origin"], dtype=np.float64)
    t = float(np.dot(origin, n)) / cos_tilt  # the beam meets the panel at t * b
    if not t > 0:
        raise ValueError("the DIALS detector is behind the sample")
    pixel = [float(v) for v in panel["pixel_size"]]
    if abs(pixel[0] - pixel[1]) > 1e-9 * pixel[0]:
        raise ValueError(f"non-square pixels {pixel} are not supported")
    hit = t * b - origin
    geometry = BeamGeometry(beam_x=float(np.dot(hit, f)) / pixel[0], beam_y=float(np.dot(hit, s)) / pixel[1],
                            distance_mm=t * abs(cos_tilt), pixel_size_mm=pixel[0], wavelength_a=wavelength)
    return geometry, np.stack([f, s, b])


def _sensor(panel: dict) -> tuple:
    """(mu 1/mm, thickness mm) of a panel whose pixel positions DIALS corrects for parallax, else (0, 0)."""
    strategy = (panel.get("px_mm_strategy") or {}).get("type", "")
    mu, thickness = float(panel.get("mu") or 0.0), float(panel.get("thickness") or 0.0)
    if strategy.startswith("ParallaxCorrected") and mu > 0 and thickness > 0:
        return mu, thickness
    return 0.0, 0.0


def _crystal(d: dict, geometry: BeamGeometry, R: np.ndarray, sensor: tuple) -> Crystal:
    real = np.array([d["real_space_a"], d["real_space_b"], d["real_space_c"]], dtype=np.float64)
    A = R @ np.linalg.inv(real)  # r = A hkl: columns a*, b*, c*
    hall = str(d.get("space_group_hall_symbol", "P 1")).strip().lstrip("-").strip()
    centring = hall[:1].upper() if hall[:1].upper() in CENTRINGS else "P"
    domain, eta = d.get("ML_domain_size_ang"), d.get("ML_half_mosaicity_deg")
    return Crystal(A, geometry, float(domain) if domain else None, float(eta) if eta is not None else None, centring,
                   *sensor)


def _image(imageset: dict, folder: Path):
    """(path, frame index in the file) of a one-image image set."""
    images = imageset.get("images") or ([imageset["template"]] if "template" in imageset else [])
    indices = imageset.get("single_file_indices")
    if indices is not None and len(images) == 1 and len(indices) == 1:
        path, index = images[0], int(indices[0])
    elif len(images) == 1 and not indices:
        path, index = images[0], 0
    else:
        raise ValueError(f"an indexed experiment's image set holds {max(len(images), len(indices or ()))} images: "
                         "expected one still per experiment (dials.ssx_index, dials.stills_process)")
    p = Path(path)
    return str(p if p.is_absolute() else folder / p), index


def read_expt(path) -> CrystalTable:
    """The crystals of a DIALS .expt file (experiments without a crystal are skipped)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable DIALS experiment list ({e})") from None
    if not isinstance(d, dict) or d.get("__id__") != "ExperimentList":
        raise ValueError(f"{path}: not a DIALS experiment list (no ExperimentList)")
    entries = []
    try:
        for i, e in enumerate(d.get("experiment", [])):
            if e.get("crystal") is None:
                continue
            detector = d["detector"][e["detector"]]
            if len(detector["panels"]) != 1:
                raise ValueError(f"experiment {i}: {len(detector['panels'])} panels; only one is supported")
            geometry, R = geometry_from_dials(d["beam"][e["beam"]], detector["panels"][0])
            image, index = _image(d["imageset"][e["imageset"]], path.parent)
            entries.append((image, index, _crystal(d["crystal"][e["crystal"]], geometry, R,
                                                   _sensor(detector["panels"][0]))))
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: incomplete DIALS experiment list ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return CrystalTable(entries, str(path))
