"""JUNGFRAU files: raw frames read one by one, calibrations loaded from a directory (gain files,
dark runs) or an HDF5 record, and raw frames converted and written as redml chunks with their
calibration (redml compress --jungfrau-calibration)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..jungfrau.calibration import (CALIBRATION_GROUP, Calibration, find_calibration_group, gain_maps, read_calibration,
                                    write_calibration, write_pedestal_updates)
from ..jungfrau.conversion import PedestalTracker, convert
from ..jungfrau.dark import pedestal_from_dark
from ..jungfrau.layout import STATUS, ModuleLayout, photon_dtype as as_photon_dtype
from .sources import iter_frames
from .writer import FrameWriter

__all__ = ["compress_raw", "load_calibration", "read_frames_lazily"]


def read_frames_lazily(spec):
    """Frames of FILE.h5[:/dataset] (default entry/data/data, else data), one by one: a 2-D
    dataset is one frame, a 3-D or 4-D one a stack (4-D: frames of (modules, 512, 1024))."""
    return iter_frames([str(spec)], modules=True)


def _geometry_from(spec) -> Optional[ModuleLayout]:
    if spec is None:
        return None
    if spec == "4m":
        return ModuleLayout.jungfrau_4m()
    if isinstance(spec, dict) and "modules" in spec:
        return ModuleLayout.from_dict(spec)
    if isinstance(spec, dict):
        return ModuleLayout.grid(**spec)
    raise ValueError(f"geometry must be '4m', a ModuleLayout.grid argument dict or a modules/shape dict, not {spec!r}")


def load_calibration(path) -> Calibration:
    """A calibration from an HDF5 file written by write_calibration (FILE.h5 or
    FILE.h5:/group), or from a directory holding calibration.json:

        {"energy_keV": 12.4,
         "gain_files": ["gainMaps_M420.bin", ...],        # PSI files, in module order
         "high_gain": false,                              # true: HG0/HG1/HG2 maps
         "dark_runs": {"g0": "dark_g0.h5:/data", "g1": ..., "g2": ...},
         "mask": "mask.h5:/mask",                         # optional, 1 = bad (or'ed with the dark-run bad pixels)
         "geometry": "4m" | {"n_modules": 8, "modules_per_row": 2, ...} | null}

    Paths are relative to the directory."""
    import h5py

    p = Path(str(path).partition(":")[0])
    if p.is_file():
        group = str(path).partition(":")[2] or None
        with h5py.File(p, "r") as f:
            return read_calibration(f[group] if group else find_calibration_group(f))
    cfg_path = p / "calibration.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: neither an HDF5 calibration file nor a directory with calibration.json")
    cfg = json.loads(cfg_path.read_text())
    rel = lambda s: str(p / s)  # noqa: E731
    gain = gain_maps([rel(s) for s in cfg["gain_files"]], bool(cfg.get("high_gain", False)))
    runs = cfg["dark_runs"]
    dark = pedestal_from_dark(*(read_frames_lazily(rel(runs[k])) for k in ("g0", "g1", "g2")))
    mask = dark.bad
    if cfg.get("mask"):
        mask = mask | (np.asarray(next(iter(read_frames_lazily(rel(cfg["mask"]))))) != 0)
    meta = dict(source=str(cfg_path), gain_files=list(cfg["gain_files"]), high_gain=bool(cfg.get("high_gain", False)),
                dark_runs=[runs[k] for k in ("g0", "g1", "g2")],
                bad_pixels={k: int(v.sum()) for k, v in dark.reasons.items()})
    return Calibration(dark.pedestal, gain, cfg["energy_keV"], mask, _geometry_from(cfg.get("geometry")), dark.noise,
                       meta)


def compress_raw(frames: Iterable, out, calib: Calibration, *, q=1, photon_dtype="auto",
                 track_window: int = 0, track_threshold: float = 0.5, snapshot_every: int = 0,
                 nthreads: int = 0, **codec_settings) -> dict:
    """Converts raw frames and writes them as redml chunks (FrameWriter, entry/data/data) to
    the HDF5 file `out`, with the calibration in /entry/instrument/detector/jungfrau_calibration
    (written before the first frame; the pedestal updates, with tracking, after the last).
    photon_dtype: int16, int32 or "auto" (calib.photon_dtype(): int16 where no count can
    reach its ends). Returns the summed status counts, the number of frames and the dtype."""
    import h5py

    dt = calib.photon_dtype() if isinstance(photon_dtype, str) and photon_dtype == "auto" else as_photon_dtype(photon_dtype)
    tracker = PedestalTracker(calib, track_window, track_threshold, snapshot_every) if track_window else None
    totals = dict.fromkeys(STATUS, 0)
    with FrameWriter(out, calib.image_shape(), dt, q=q, nthreads=nthreads,
                     setup=lambda f: write_calibration(f, calib, photon_dtype=dt), **codec_settings) as w:
        for raw in frames:
            photons, info = convert(raw, calib, dt, nthreads=nthreads, track=tracker)
            w.write(photons)
            for k, v in info.counts.items():
                totals[k] += v
        n = len(w)
    if tracker is not None:
        with h5py.File(out, "a", libver=("v110", "v110")) as f:
            write_pedestal_updates(f[f"entry/instrument/detector/{CALIBRATION_GROUP}"], tracker)
    return dict(frames=n, counts=totals, dtype=dt.name)
