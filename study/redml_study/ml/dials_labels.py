"""Labels from DIALS on real frames: its strong spots, and separately the spots that index.

    labels = dials_labels(paths, workdir, ("P41212", (58.6, 58.6, 151.5, 90, 90, 90)))
    labels.frames[i], labels.strong[i] (n, 2) x, y, labels.indexed[i] (m, 2) x, y

The frames are written once, uncompressed, through the project's NXmx writer and DIALS
runs on that file exactly as the yield yardstick runs it (dials.import, find_spots,
ssx_index with the known cell; redml_study.yardstick.Dials); the indexed reflections'
centroids come from indexed.refl (dials_side/indexed_spots.py). Results are kept in
`workdir` and reused when the input is unchanged.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dials_side import DIALS_PYTHON, script
from ..yardstick import Dials, dials_env
from ..yield_study import cached, series_from_files, write_series

__all__ = ["DialsLabels", "dials_labels"]


@dataclass
class DialsLabels:
    frames: list          # the frames (as read from the image files)
    mask: np.ndarray      # bad / gap pixels
    geometry: object      # redml_reduce.background.BeamGeometry
    strong: list          # per frame, (n, 2) x, y of dials.find_spots strong spots
    indexed: list         # per frame, (m, 2) x, y of the strong spots that indexed
    indexed_frames: np.ndarray  # bool per frame


def _per_image(image, x, y, n):
    return [np.stack([x[image == i], y[image == i]], axis=1) for i in range(n)]


def dials_labels(paths, workdir, cell, nproc: int = 2) -> DialsLabels:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    series = cached(series_from_files(paths, name="labels"))
    path = work / "labels_uncompressed.nxs"
    if not path.exists():
        write_series(series, "uncompressed", path)
    run = Dials(*cell, nproc=nproc, reuse=True).process(path, work / "dials", integrate=False)
    frames = list(series.frames())
    n = len(frames)
    strong = _per_image(run.spots["image"], run.spots["x"], run.spots["y"], n)
    d = Path(run.workdir)
    out = d / "indexed_spots.npz"
    if (d / "indexed.refl").exists() and not out.exists():
        subprocess.run([DIALS_PYTHON, script("indexed_spots.py"), str(d / "imported.expt"), str(d / "indexed.expt"),
                        str(d / "indexed.refl"), str(out)], check=True, env=dials_env(), capture_output=True,
                       cwd=str(Path(script("export.py")).parent), timeout=600)
    if out.exists():
        with np.load(out) as z:
            indexed = _per_image(z["image"], z["x"], z["y"], n)
    else:
        indexed = [np.zeros((0, 2)) for _ in range(n)]
    mask = series.pixel_mask != 0 if series.pixel_mask is not None else np.zeros(series.shape, bool)
    return DialsLabels(frames, mask, series.geometry, strong, indexed, run.indexed.copy())
