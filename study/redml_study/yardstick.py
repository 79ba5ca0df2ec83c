"""DIALS as the judge: index and integrate still shots from any NXmx file, compare two files.

    dials = Dials(space_group="P43212", unit_cell=(79.1, 79.1, 37.9, 90, 90, 90))
    ref = dials.process("uncompressed.nxs", "work/ref")      # import, find_spots, ssx_index, ssx_integrate
    test = dials.process("q2.nxs", "work/q2")                  # the same on a compressed file
    test.integrated = dials.integrate_like(ref, "q2.nxs", "work/q2-ref")   # ref's crystals on q2's pixels
    print(compare(ref, test))    # frames indexed (lost, gained), intensity CC, mean ratio, bias in sigma

DIALS (Debian's package) runs on the system python as subprocesses (dials.* programs);
the redml filter and hdf5plugin's filters reach its HDF5 library through HDF5_PLUGIN_PATH.
Debian's cctbx lacks a compiled module stills indexing imports without using: an empty
stand-in (dials_side/shim) goes on PYTHONPATH for these subprocesses only.

Intensities are compared the way background.md explains: the reference file is indexed
once and its crystal models are integrated on the other file's pixels, so every difference
comes from the pixels and none from a different orientation solution.
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .dials_side import DIALS_PYTHON, SHIM_DIR, script
from redml_reduce.formats.h5filter import PLUGIN_PATH

__all__ = ["Dials", "DialsRun", "DialsError", "compare", "dials_env", "INTEGRATED_DTYPE", "SPOT_DTYPE"]

# x, y: DIALS's predicted position (xyzcal.px; pixel centres at +0.5), NaN in exports made before it was kept
INTEGRATED_DTYPE = np.dtype([("image", "<i8"), ("h", "<i8"), ("k", "<i8"), ("l", "<i8"), ("intensity", "<f8"),
                             ("variance", "<f8"), ("x", "<f8"), ("y", "<f8")])
SPOT_DTYPE = np.dtype([("image", "<i8"), ("x", "<f8"), ("y", "<f8")])  # pixel centres at +0.5


class DialsError(RuntimeError):
    pass


def dials_env() -> dict:
    """Environment for the DIALS subprocesses: the shim and the HDF5 filter plugins."""
    env = dict(os.environ)
    plugin_dirs = [str(PLUGIN_PATH)]
    try:
        import hdf5plugin

        plugin_dirs.append(hdf5plugin.PLUGIN_PATH)
    except ImportError:
        pass
    env["HDF5_PLUGIN_PATH"] = os.pathsep.join(plugin_dirs)
    env["PYTHONPATH"] = str(SHIM_DIR)  # DIALS's python must not see the virtualenv's packages
    for var in ("PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


@dataclass
class DialsRun:
    """What DIALS made of one file: per image, strong spots and whether it indexed; the
    integrated reflections (INTEGRATED_DTYPE); the strong spots' centroids (SPOT_DTYPE);
    seconds per step; the commands run."""

    path: str
    workdir: str
    strong: np.ndarray
    indexed: np.ndarray  # bool per image
    integrated: np.ndarray
    spots: np.ndarray
    seconds: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.strong)


@dataclass
class Dials:
    """How DIALS is run. nproc: processes per DIALS program. find_spots_options,
    index_options, integrate_options: extra phil parameters ("key=value") per program."""

    space_group: str
    unit_cell: tuple
    nproc: int = 2
    find_spots_options: tuple = ()
    index_options: tuple = ()
    integrate_options: tuple = ("algorithm=stills",)
    timeout_s: float = 7200.0
    reuse: bool = False  # keep a finished run whose input file and options are unchanged (resume)

    def _stamp(self, path: str, kind: str) -> dict:
        st = os.stat(path)
        return {"kind": kind, "path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "options": [self.space_group, list(self.unit_cell), list(self.find_spots_options),
                            list(self.index_options), list(self.integrate_options)]}

    def _finished(self, work: Path, stamp: dict):
        done = work / "done.json"
        if not (self.reuse and done.exists() and (work / "export.npz").exists()):
            return None
        record = json.loads(done.read_text())
        return record if record.get("stamp") == stamp else None

    def _fresh(self, work: Path) -> None:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)

    def _run(self, args, cwd, commands, seconds, step):
        commands.append(f"(cd {shlex.quote(str(cwd))} && {shlex.join(args)})")
        t0 = time.perf_counter()
        try:
            out = subprocess.run(args, cwd=cwd, env=dials_env(), capture_output=True, text=True,
                                 timeout=self.timeout_s)
        except FileNotFoundError as e:
            raise DialsError(f"{args[0]} not found: install Debian's dials (apt-get install dials)") from e
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - t0
        if out.returncode != 0:
            tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
            raise DialsError(f"{args[0]} failed in {cwd} (exit {out.returncode}):\n" + "\n".join(tail))
        return out

    def _cell(self) -> str:
        return ",".join(f"{v:g}" for v in self.unit_cell)

    def process(self, path, workdir, *, index: bool = True, integrate: bool = True) -> DialsRun:
        """dials.import, find_spots, ssx_index (known cell and space group), ssx_integrate."""
        path = str(Path(path).resolve())
        work = Path(workdir).resolve()
        stamp = self._stamp(path, f"process index={index} integrate={integrate}")
        record = self._finished(work, stamp)
        if record is not None:
            return self._run_from(path, work, record["seconds"], record["commands"])
        self._fresh(work)
        commands, seconds = [], {}
        nproc = f"nproc={self.nproc}"
        self._run(["dials.import", path, "output.experiments=imported.expt"], work, commands, seconds, "import")
        self._run(["dials.find_spots", "imported.expt", nproc, "output.reflections=strong.refl",
                   *self.find_spots_options], work, commands, seconds, "find_spots")
        if index:
            self._run(["dials.ssx_index", "imported.expt", "strong.refl", f"space_group={self.space_group}",
                       f"unit_cell={self._cell()}", nproc, *self.index_options], work, commands, seconds, "index")
        indexed = index and (work / "indexed.expt").exists() and (work / "indexed.refl").exists()
        if integrate and indexed:
            self._run(["dials.ssx_integrate", "indexed.expt", "indexed.refl", nproc, *self.integrate_options], work,
                      commands, seconds, "integrate")
        export = [f"strong={work / 'strong.refl'}"]
        if indexed:
            export.append(f"indexed={work / 'indexed.expt'}")
        self._export(work, export, commands, seconds)
        (work / "done.json").write_text(json.dumps({"stamp": stamp, "seconds": seconds, "commands": commands}))
        return self._run_from(path, work, seconds, commands)

    def _run_from(self, path: str, work: Path, seconds: dict, commands: list) -> DialsRun:
        """The DialsRun of a finished workdir (its export.npz)."""
        strong, indexed_images, integrated, spots = self._load(work)
        flags = np.zeros(len(strong), bool)
        flags[indexed_images] = True
        return DialsRun(path, str(work), strong, flags, integrated, spots, seconds, commands)

    def integrate_like(self, reference: DialsRun, path, workdir) -> np.ndarray:
        """The reference's indexed crystals integrated on the images of `path` (the same
        frames, coded differently): INTEGRATED_DTYPE rows."""
        path = str(Path(path).resolve())
        work = Path(workdir).resolve()
        stamp = {**self._stamp(path, "integrate_like"), "reference": self._stamp(reference.path, "reference")}
        record = self._finished(work, stamp)
        if record is not None:
            reference.commands.extend(record["commands"])
            return self._load(work)[2]
        self._fresh(work)
        ref = Path(reference.workdir)
        commands, seconds = [], {}
        if not (ref / "indexed.expt").exists():
            return np.zeros(0, INTEGRATED_DTYPE)
        text = (ref / "indexed.expt").read_text()
        old = json.dumps(reference.path)[1:-1]
        if old not in text:
            raise DialsError(f"{ref / 'indexed.expt'} does not name {reference.path}")
        (work / "indexed.expt").write_text(text.replace(old, json.dumps(path)[1:-1]))
        shutil.copy(ref / "indexed.refl", work / "indexed.refl")
        self._run(["dials.import", path, "output.experiments=imported.expt"], work, commands, seconds, "import")
        self._run(["dials.ssx_integrate", "indexed.expt", "indexed.refl", f"nproc={self.nproc}",
                   *self.integrate_options], work, commands, seconds, "integrate")
        integrated = self._export(work, [], commands, seconds)[2]
        (work / "done.json").write_text(json.dumps({"stamp": stamp, "seconds": seconds, "commands": commands}))
        reference.commands.extend(commands)
        return integrated

    def _export(self, work: Path, extra, commands, seconds):
        pairs = []
        for refl in sorted(glob.glob(str(work / "integrated_*.refl"))):
            expt = refl[:-5] + ".expt"
            if os.path.exists(expt):
                pairs.append(f"integrated={expt}:{refl}")
        out = work / "export.npz"
        self._run([DIALS_PYTHON, script("export.py"), str(work / "imported.expt"), str(out), *extra, *pairs], work,
                  commands, seconds, "export")
        return self._load(work)

    @staticmethod
    def _load(work: Path):
        with np.load(work / "export.npz") as z:
            integrated = np.zeros(len(z["integrated_intensity"]), INTEGRATED_DTYPE)
            for name in INTEGRATED_DTYPE.names:
                integrated[name] = z["integrated_" + name] if "integrated_" + name in z else np.nan
            spots = np.zeros(len(z["strong_x"]) if "strong_x" in z else 0, SPOT_DTYPE)
            if len(spots):
                spots["image"], spots["x"], spots["y"] = z["strong_image"], z["strong_x"], z["strong_y"]
            return z["strong_per_image"].copy(), z["indexed_images"].copy(), integrated, spots


def _keys(table: np.ndarray) -> np.ndarray:
    """One int64 per (image, h, k, l)."""
    hkl = [(table[c] + 1024) & 2047 for c in ("h", "k", "l")]
    return (table["image"] << 33) | (hkl[0] << 22) | (hkl[1] << 11) | hkl[2]


def match(reference: np.ndarray, test: np.ndarray):
    """Rows of reference and test integrated tables that name the same reflection."""
    kr, kt = _keys(reference), _keys(test)
    _, ir, it = np.intersect1d(kr, kt, assume_unique=False, return_indices=True)
    return reference[ir], test[it]


def compare(reference: DialsRun, test: DialsRun, integrated: Optional[np.ndarray] = None,
            blank: Optional[np.ndarray] = None) -> dict:
    """Frame-by-frame indexing and intensities of `test` against `reference`.

    integrated: the test file's integration of the reference's crystals (integrate_like);
    by default test.integrated. mean_dsig: mean of (I_test - I_ref) / sigma_ref; weak:
    reflections with I_ref / sigma_ref < 2. blank: a boolean per image (frames without a
    crystal), for the strong spots found on them (false spots)."""
    if reference.n_images != test.n_images:
        raise ValueError(f"{reference.n_images} images against {test.n_images}")
    integrated = test.integrated if integrated is None else integrated
    ref_i, test_i = match(reference.integrated, integrated)
    out = {
        "indexed_uncompressed": int(reference.indexed.sum()),
        "indexed": int(test.indexed.sum()),
        "indexed_both": int((reference.indexed & test.indexed).sum()),
        "lost": [int(i) for i in np.flatnonzero(reference.indexed & ~test.indexed)],
        "gained": [int(i) for i in np.flatnonzero(test.indexed & ~reference.indexed)],
        "strong_spots": int(test.strong.sum()),
        "strong_spots_uncompressed": int(reference.strong.sum()),
        "blank_frames": int(blank.sum()) if blank is not None else 0,
        "blank_spots": int(test.strong[blank].sum()) if blank is not None else 0,
        "blank_spots_uncompressed": int(reference.strong[blank].sum()) if blank is not None else 0,
        "reflections_uncompressed": int(len(reference.integrated)),
        "reflections_matched": int(len(ref_i)),
    }
    out["yield"] = out["indexed_both"] / out["indexed_uncompressed"] if out["indexed_uncompressed"] else float("nan")
    if len(ref_i) >= 2:
        a, b = ref_i["intensity"], test_i["intensity"]
        sigma = np.sqrt(np.maximum(ref_i["variance"], 1e-12))
        dsig = (b - a) / sigma
        weak = a / sigma < 2
        out.update(cc_intensity=float(np.corrcoef(a, b)[0, 1]), mean_ratio=float(b.sum() / a.sum()),
                   mean_dsig=float(dsig.mean()), weak_mean_dsig=float(dsig[weak].mean()) if weak.any() else float("nan"),
                   sigma_ratio=float(np.median(np.sqrt(np.maximum(test_i["variance"], 0)) / sigma)))
    else:
        out.update(cc_intensity=float("nan"), mean_ratio=float("nan"), mean_dsig=float("nan"),
                   weak_mean_dsig=float("nan"), sigma_ratio=float("nan"))
    return out
