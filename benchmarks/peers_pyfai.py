"""pyFAI's sparsify-Bragg (ESRF) as the peer of redml's sparse mode, with its own densify step.

    from peers_pyfai import unavailable, write_pyfai_sparsify
    reason = unavailable()               # None where pyFAI and an OpenCL device are usable
    figures = write_pyfai_sparsify(series, "work/x_pyfai-sparsify.nxs")

sparsify-Bragg keeps the pixels more than `cutoff_pick` sigma above the azimuthal background
(sigma-clipped mean per radial bin) exactly and replaces every other pixel by that profile.
pyFAI runs it only through OpenCL (its command refuses to start without pyopencl; there is no
CPU path without OpenCL): on a machine without a GPU, Debian's pocl-opencl-icd gives it the CPU.
The sparse frames are saved with pyFAI's own writer (pyFAI.io.sparse_frame.save_sparse, as the
command does: bitshuffle-LZ4 through hdf5plugin) and rebuilt with fabio's SparseImage, the
reader behind densify-Bragg (its default noise 1: Gaussian noise of the stored background spread,
clipped at 0, is added back to the profile). The ratio is raw bytes / the bytes pyFAI stores for
the frames: the per-frame datasets of its file (frame_ptr, index, intensity, background_avg and
background_std), as redml's ratio counts its chunks; the whole file (which also holds a float32
radius map of the detector, written once per file) is reported as `sparse_file_bytes`.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from redml_reduce.background import BeamGeometry

NAME = "pyfai-sparsify"
# sparsify-Bragg's command-line defaults (pyFAI.app.sparsify)
DEFAULTS = {"bins": 800, "cycle": 5, "cutoff_clip": 0.0, "cutoff_pick": 3.0, "noise": 1.0}
DENSIFY_NOISE = 1.0  # densify-Bragg's default
PER_FRAME = ("frame_ptr", "index", "intensity", "background_avg", "background_std")


def unavailable() -> Optional[str]:
    """Why pyFAI's sparsify cannot run here (None where it can)."""
    try:
        import pyFAI  # noqa: F401
        from pyFAI.opencl import ocl
    except ImportError as e:
        return f"pyFAI is not installed ({e}; pip install pyfai pyopencl, the [bench] extra)"
    if ocl is None:
        return ("pyFAI finds no OpenCL device (pip install pyopencl; on a CPU-only machine: "
                "apt-get install pocl-opencl-icd)")
    return None


def azimuthal_integrator(geometry: BeamGeometry, shape):
    """The pyFAI integrator of a flat detector normal to the beam: PONI = the beam centre
    (both count pixel centres at +0.5, so the beam centre in pixels times the pixel size)."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    pixel_m = geometry.pixel_size_mm * 1e-3
    detector = Detector(pixel1=pixel_m, pixel2=pixel_m, max_shape=tuple(shape))
    return AzimuthalIntegrator(dist=geometry.distance_mm * 1e-3, poni1=geometry.beam_y * pixel_m,
                               poni2=geometry.beam_x * pixel_m, detector=detector,
                               wavelength=geometry.wavelength_a * 1e-10)


def error_model_for(frame: np.ndarray, bad: np.ndarray) -> str:
    """"poisson" (sparsify-Bragg's default: variance = counts) for photon counts; the model-free
    "azimuthal" (spread within each radial bin) for float, ADU or pedestal-subtracted frames."""
    counts = frame.dtype.kind in "iu" and not (frame[~bad] < 0).any()
    return "poisson" if counts else "azimuthal"


class Sparsifier:
    """pyFAI's OpenCL peak finder set up for one detector geometry and mask, as sparsify-Bragg
    sets it up: radial unit r_m, CSR without pixel splitting, `bins` radial bins."""

    def __init__(self, geometry: BeamGeometry, shape, bad: np.ndarray, *, error_model: str = "poisson",
                 bins: int = DEFAULTS["bins"], **params):
        from pyFAI.opencl import ocl
        from pyFAI.opencl.peak_finder import OCL_PeakFinder
        from pyFAI.units import to_unit

        unit = to_unit("r_m")
        self.ai = azimuthal_integrator(geometry, shape)
        mask = np.ascontiguousarray(bad, np.int8)
        self.ai.detector.mask = mask
        integrator = self.ai.setup_sparse_integrator(tuple(shape), bins, mask=mask, unit=unit, split="no",
                                                     algo="CSR", scale=False)
        self.finder = OCL_PeakFinder(integrator.lut, image_size=int(np.prod(shape)), unit=unit,
                                     bin_centers=integrator.bin_centers, mask=mask, ctx=ocl.create_context(),
                                     radius=self.ai.array_from_unit(typ="center", unit=unit, scale=False))
        self.params = {k: params.get(k, v) for k, v in DEFAULTS.items() if k != "bins"}
        self.params["error_model"] = error_model
        self.config = {"bins": bins, "unit": str(unit), **self.params}

    def __call__(self, frame: np.ndarray):
        """One frame -> pyFAI's SparseFrame (kept pixels' flat index and value, background profile)."""
        return self.finder.sparsify(frame, safe=False, **self.params)


def save(path, sparse_frames, sparsifier: Sparsifier) -> None:
    """pyFAI's own sparse file (what sparsify-Bragg writes)."""
    from pyFAI.io.sparse_frame import save_sparse

    save_sparse(str(path), sparse_frames, ai=sparsifier.ai, extra=dict(sparsifier.config))


def stored_bytes(path) -> dict:
    """Bytes pyFAI's file takes: the per-frame datasets as stored, and the whole file."""
    import h5py

    with h5py.File(path, "r") as f:
        entry = f[f.attrs["default"]]
        group = entry[entry.attrs["pyFAI_sparse_frames"]]
        frames = sum(group[name].id.get_storage_size() for name in PER_FRAME)
    return {"stored_bytes": frames, "sparse_file_bytes": Path(path).stat().st_size}


def densified(path, noise: float = DENSIFY_NOISE, dummy=None, seed: int = 0,
              clip: bool = True) -> Iterator[np.ndarray]:
    """The frames of pyFAI's sparse file rebuilt by fabio (densify-Bragg's reader and its densify
    function): the background profile, plus Gaussian noise of `noise` x the stored spread clipped
    at 0, with the kept pixels put back; masked pixels get `dummy` (the file's own when None).
    fabio's numpy densify, not its compiled one: the same rebuild, but seeded (frame i: seed + i),
    so that the decoded frames are the same on every run. clip=False: the noise is not clipped
    at 0 (integrating detectors, whose background is negative as often as not: clipping would
    raise it by about 0.4 x its spread)."""
    import fabio.sparseimage

    image = fabio.sparseimage.SparseImage()
    image.read(str(path))
    try:
        fill = image.dummy if dummy is None else image.intensity.dtype.type(dummy)
        for i in range(image.nframes):
            start, stop = image.frame_ptr[i:i + 2]
            index, kept = image.index[start:stop], image.intensity[start:stop]
            spread = image.background_std[i] * noise if noise else None
            if clip or spread is None:
                with np.errstate(invalid="ignore"):  # masked pixels: NaN cast to int, then set to `fill`
                    yield fabio.sparseimage.densify(image.mask, image.radius, index, kept, fill,
                                                    image.background_avg[i], spread, image.normalization,
                                                    seed=seed + i)
            else:
                yield unclipped(image, i, index, kept, spread, fill, seed + i)
    finally:
        image.close()


def unclipped(image, i: int, index, kept, spread, fill, seed: int) -> np.ndarray:
    """Frame i rebuilt as fabio's densify does, but with its Gaussian background noise unclipped:
    the profile (fabio, in float), the seeded noise of `spread` added, rounded once for integer
    data, the kept pixels put back exactly, masked pixels `fill`."""
    import fabio.sparseimage

    with np.errstate(invalid="ignore"):
        mean = fabio.sparseimage.densify(image.mask, image.radius, index, kept.astype(np.float64), np.nan,
                                         image.background_avg[i], None, image.normalization)
        sigma = np.interp(image.mask, image.radius, spread)
    dense = mean + sigma * np.random.default_rng(seed).standard_normal(mean.shape)
    if np.issubdtype(kept.dtype, np.integer):
        dense = np.rint(dense)
    dense.ravel()[index] = kept
    bad = ~np.isfinite(image.mask)
    dense[bad] = 0
    dense = dense.astype(kept.dtype)
    dense[bad] = fill
    return dense


def gap_marker(dtype, integrating: bool = False):
    """What masked pixels hold in the rebuilt frames: the detectors' own markers (-1 as in a
    Pilatus CBF, the largest count of an unsigned type as in EIGER files, NaN for floats; an
    integrating detector's signed integers: the type's minimum, as integrating_frame writes)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        return int(np.iinfo(dtype).min) if integrating else -1
    return np.iinfo(dtype).max if dtype.kind == "u" else np.nan


def write_pyfai_sparsify(series, path, **params) -> dict:
    """The study's peer codec (redml_study.yield_study.FILE_PEERS): sparsifies the series into
    pyFAI's file beside `path`, writes its densified frames to `path` (uncompressed NXmx, for
    DIALS) and returns the figures of measure_file with pyFAI's stored bytes as the ratio."""
    from redml_reduce.formats.writer import FrameWriter
    from redml_study.yield_study import measure_file

    path = Path(path)
    sparse_path = path.with_suffix(".sparse.h5")
    bad = series.pixel_mask != 0 if series.pixel_mask is not None else np.zeros(series.shape, bool)
    frames = series.frames()
    first = next(frames)
    t0 = time.perf_counter()
    sparsifier = Sparsifier(series.geometry, series.shape, bad, error_model=error_model_for(first, bad), **params)
    save(sparse_path, [sparsifier(f) for f in itertools.chain([first], frames)], sparsifier)
    write_s = time.perf_counter() - t0
    with FrameWriter(path, series.shape, series.dtype, geometry=series.geometry, pixel_mask=series.pixel_mask,
                     nxmx=series.nxmx, filter={}) as w:
        for frame in densified(sparse_path, dummy=gap_marker(series.dtype, series.integrating),
                               clip=not series.integrating):
            w.write(np.asarray(frame, series.dtype))
    out = measure_file(series, NAME, path, write_s=write_s)
    sizes = stored_bytes(sparse_path)
    out.update(sizes, ratio=out["raw_bytes"] / sizes["stored_bytes"], sparse_path=str(sparse_path),
               sparsify=sparsifier.config)
    return out


NOTE = ("pyfai-sparsify: ratio = raw bytes / pyFAI's per-frame datasets as stored (bitshuffle-LZ4); "
        "frames rebuilt by fabio's densify (noise 1) for DIALS; on integrating detectors with the "
        "azimuthal error model and the noise not clipped at 0")


def register(codecs) -> tuple[list, dict]:
    """Registers pyfai-sparsify with the study (yield_study.FILE_PEERS) where pyFAI runs; where it
    does not, drops it from `codecs`. Returns (codecs, {name: why skipped})."""
    from redml_study.yield_study import FILE_PEERS

    codecs = list(codecs)
    if NAME not in codecs:
        return codecs, {}
    reason = unavailable()
    if reason is not None:
        return [c for c in codecs if c != NAME], {NAME: reason}
    FILE_PEERS[NAME] = write_pyfai_sparsify
    return codecs, {}


__all__ = ["NAME", "NOTE", "unavailable", "azimuthal_integrator", "error_model_for", "Sparsifier", "save",
           "stored_bytes", "densified", "unclipped", "gap_marker", "write_pyfai_sparsify", "register"]
