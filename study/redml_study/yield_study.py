"""Compression ratio against DIALS indexing yield and intensities: "which q can I afford?"

    series = series_from_files(["run_0001.cbf", ...])         # or an NXmx file, or simulated shots
    dials = Dials("P41212", (58.6, 58.6, 151.5, 90, 90, 90))
    results = study(series, ["bslz4", "sz3-abs1", "redml-q1", "redml-q2"], dials, "work/")
    print(format_table(results))

Each codec writes the same frames into an NXmx file through one writer (FrameWriter); the
file is read back and compared with the original frames; DIALS indexes every file whose
frames differ from the original and integrates the original's crystals on it (see
redml_study.yardstick). Files whose decoded frames are byte-identical to the original
would give DIALS identical input: their DIALS figures are the uncompressed run's, and the
table says so ("dials": "identical"); likewise a codec whose decoded frames equal another
codec's ("same frames as ...").
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import h5py
import numpy as np

from redml_reduce.background import BeamGeometry
from redml_reduce.formats.nxmx import pixel_mask_from_gaps
from redml_reduce.formats.sources import Input, open_frames
from redml_reduce.formats.writer import FrameWriter
from .yardstick import Dials, compare

__all__ = ["Series", "CODECS", "cached", "series_from_files", "series_from_simulator", "write_series", "study",
           "format_table", "plot", "codec_writer_options"]

# name -> what FrameWriter gets. Peers come from hdf5plugin (imported when used).
CODECS = {
    "uncompressed": lambda hp: {"filter": {}},
    "bslz4": lambda hp: {"filter": hp.Bitshuffle(cname="lz4")},
    "bszstd": lambda hp: {"filter": hp.Bitshuffle(cname="zstd")},
    "zstd": lambda hp: {"filter": hp.Zstd()},
    "sz3-abs0.5": lambda hp: {"filter": hp.SZ3(absolute=0.5)},
    "sz3-abs1": lambda hp: {"filter": hp.SZ3(absolute=1)},
    "sz3-abs2": lambda hp: {"filter": hp.SZ3(absolute=2)},
    "zfp-acc4": lambda hp: {"filter": hp.Zfp(accuracy=4)},
    "redml-lossless": lambda hp: {"q": 0},
    "redml-q0.5": lambda hp: {"q": 0.5},
    "redml-q1": lambda hp: {"q": 1},
    "redml-q2": lambda hp: {"q": 2},
    "redml-q4": lambda hp: {"q": 4},
    "redml-draw-q1": lambda hp: {"q": 1, "recon": "draw"},
    "redml-draw-q2": lambda hp: {"q": 2, "recon": "draw"},
    "redml-draw-q4": lambda hp: {"q": 4, "recon": "draw"},
    "redml-draw-q8": lambda hp: {"q": 8, "recon": "draw"},
    # draw with a wider ROI margin: spot tails kept exact instead of pulled towards the model
    "redml-draw-q4-m4": lambda hp: {"q": 4, "recon": "draw", "roi_margin": 4},
    "redml-draw-q6-m4": lambda hp: {"q": 6, "recon": "draw", "roi_margin": 4},
    "redml-draw-q8-m6": lambda hp: {"q": 8, "recon": "draw", "roi_margin": 6},
    "redml-mean-q2": lambda hp: {"q": 2, "recon": "mean"},
    "redml-mean-q4": lambda hp: {"q": 4, "recon": "mean"},
    "redml-mean-q8": lambda hp: {"q": 8, "recon": "mean"},
    # sparse mode with its noisy background (Poisson, plus the read noise of integrating data), as
    # pyFAI's densify adds its noise: DIALS's robust background estimate of the smooth dithered
    # model came out high (thaumatin: -0.42 sigma on every reflection, against +0.14 with noise)
    "redml-sparse": lambda hp: {"q": "sparse", "sparse_noise": True},
}
# SZ3's absolute bound in data units: 0.5, 1, 2 and 4 photons of an integrating detector's 20 ADU
for _b in (10, 20, 40, 80):
    CODECS[f"sz3-abs{_b}"] = (lambda b: lambda hp: {"filter": hp.SZ3(absolute=b)})(_b)
del _b
# The exact region from the learned models (redml_reduce.pipeline; needs the [ml] extra):
# redml-q2-ml (default CNN), redml-q2-union (classical or CNN), redml-q2-ensemble, ...
for _q in (2, "sparse"):
    for _src in ("ml", "union", "ml:logistic", "ml:ensemble", "ml:unet"):
        _name = f"redml-{'q' if _q != 'sparse' else ''}{_q}-{_src.split(':')[-1]}"
        CODECS[_name] = (lambda q, src: lambda hp: {"q": q, "roi": src})(_q, _src)
del _q, _src, _name
# Lattice settings (issue 21): every frame by the per-frame policy
# (redml_reduce.pipeline.encode_by_policy), indexed frames with discs around the reflections
# their crystals predict (LatticeSettings' radius, 8 px, or R px with a "-rR" suffix:
# redml-lattice-dials-q16-r6), drawn at q. The crystals come from DIALS's indexing of
# the uncompressed file (redml-lattice-dials-qK) or from the built-in indexer
# (redml-lattice-qK: the finder's spots -> index_still with the data set's cell and space
# group). Written once DIALS has indexed the reference (study() below), so not in CODECS.
LATTICE_PREFIXES = {"redml-lattice-dials-q": "dials", "redml-lattice-q": "redml"}
_LATTICE_TAIL = re.compile(r"(?P<q>\d+(?:\.\d+)?)(?:-r(?P<radius>\d+(?:\.\d+)?))?")


def lattice_setting(name: str):
    """(crystal source "dials" or "redml", q, disc radius in px) of a lattice codec name, None
    for other names; ValueError for a lattice name whose tail is not "K" or "K-rR"."""
    from redml_reduce.lattice.predict import DEFAULT_RADIUS

    for prefix, source in LATTICE_PREFIXES.items():
        if name.startswith(prefix):
            tail = _LATTICE_TAIL.fullmatch(name[len(prefix):])
            if tail is None:
                raise ValueError(f"lattice codec {name!r}: expected {prefix}K or {prefix}K-rR (q K, disc radius R px)")
            radius = tail["radius"]
            return source, float(tail["q"]), float(radius) if radius is not None else DEFAULT_RADIUS
    return None


# What the benchmark runs by default: the settings and the conditional reconstructions.
DEFAULT_CODECS = ["uncompressed", "bslz4", "bszstd", "zstd", "sz3-abs0.5", "sz3-abs1", "sz3-abs2", "redml-lossless", "redml-q0.5", "redml-q1",
                  "redml-q2", "redml-q4", "redml-draw-q2", "redml-draw-q4", "redml-mean-q4", "redml-sparse"]


# Peers with a file format of their own (benchmarks/peers_pyfai.py registers pyfai-sparsify):
# name -> write(series, path) -> the figures of measure_file, the frames for DIALS written to path.
FILE_PEERS: dict = {}


CLIP_SUFFIX = "-clip0"  # a lossy peer whose decoded counts a careful user clips at 0 before DIALS


def base_codec(name: str) -> str:
    return name[: -len(CLIP_SUFFIX)] if name.endswith(CLIP_SUFFIX) else name


def codec_writer_options(name: str, series: Optional["Series"] = None) -> dict:
    """FrameWriter's keywords for one codec; redml codecs on an integrating detector's series
    also get its settings (Series.redml_options)."""
    options = _codec_options(base_codec(name))
    if series is not None and "filter" not in options:
        options.update(series.redml_options)
    return options


def _codec_options(name: str) -> dict:
    if lattice_setting(name) is not None:
        return {"q": lattice_setting(name)[1], "recon": "draw"}
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")
    hp = None
    if not name.startswith("redml"):
        from redml_reduce.formats.h5filter import load_hdf5plugin

        hp = load_hdf5plugin()
    return CODECS[name](hp)


@dataclass
class Series:
    """Frames with their geometry: what one NXmx file holds."""

    name: str
    n: int
    shape: tuple
    dtype: np.dtype
    geometry: BeamGeometry
    frames: Callable[[], Iterator[np.ndarray]]  # a fresh iterator over the n frames per call
    pixel_mask: Optional[np.ndarray] = None
    nxmx: dict = field(default_factory=dict)
    truth: Optional[np.ndarray] = None  # the simulator's reflections (sim.REFLECTION_DTYPE)
    hits: Optional[np.ndarray] = None
    asu_of: Optional[Callable[[np.ndarray], np.ndarray]] = None  # (n, 3) hkl -> symmetry-unique id (-1: none)
    # An integrating detector's frames: what every redml codec is given on them (gain, markers,
    # read_noise: IntegratingDetector.redml_options), and the data units per photon (truth is in photons).
    redml_options: dict = field(default_factory=dict)
    adu_per_photon: float = 1.0

    @property
    def integrating(self) -> bool:
        return self.redml_options.get("markers", "negative") != "negative"

    def valid(self, frame: np.ndarray) -> np.ndarray:
        """Pixels holding data, not a marker: outside the pixel mask for an integrating detector
        (negative values are its read noise), the non-negative ones for a photon counter."""
        if self.integrating:
            return self.pixel_mask == 0 if self.pixel_mask is not None else np.ones(self.shape, bool)
        return frame >= 0


def cached(series: Series) -> Series:
    """The same series with its frames made (or read) once and kept in memory: every codec
    then sees them without re-simulating or re-reading compressed CBFs."""
    frames = list(series.frames())
    series.frames = lambda: iter(frames)
    return series


def series_from_simulator(sim, n: int, name: str = "simulated", start: int = 0, detector=None) -> Series:
    """n shots of a redml_study.sim.StillSimulator (made again on every pass: shot i is a
    pure function of the simulator's seed and i). detector: a redml_study.detector.
    IntegratingDetector that turns the photons into its frames (read noise seeded per shot);
    None: the simulator's photon counts."""
    shots = [(s.reflections, s.hit) for s in (sim.shot(i) for i in range(start, start + n))]
    truth = np.concatenate([r for r, _ in shots]) if shots else None

    def frame(i):
        photons = sim.shot(i).frame
        if detector is None:
            return photons
        return detector.frame(photons, sim.mask, np.random.default_rng([sim.seed, 2, i]))

    nxmx, dtype, extra = sim.nxmx_options(), np.dtype(sim.settings.dtype), {}
    if detector is not None:
        nxmx.update(detector.nxmx_options())
        dtype = detector.frame_dtype
        extra = {"redml_options": detector.redml_options(), "adu_per_photon": detector.adu_per_photon}
    return Series(name, n, sim.detector.shape, dtype, sim.geometry, lambda: (frame(i) for i in range(start, start + n)),
                  pixel_mask_from_gaps(sim.mask), nxmx, truth, np.array([h for _, h in shots], bool), sim.asu_of,
                  **extra)


def _dials_geometry(path: str) -> dict:
    from .dials_side import DIALS_PYTHON, script

    out = subprocess.run([DIALS_PYTHON, script("geometry.py"), path], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"dxtbx could not read the geometry of {path}: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout)


def series_from_files(paths, name: Optional[str] = None, dataset: str = "entry/data/data") -> Series:
    """Frames and geometry from image files dxtbx and fabio read (CBF, SMV, ...: one frame
    per file) or from one NXmx file. The pixel mask: pixels negative in the first frame
    (module gaps of Pilatus/EIGER CBFs) or the file's NXmx pixel_mask."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no input files")
    if len(paths) == 1 and h5py.is_hdf5(paths[0]):
        path = paths[0]
        geom = BeamGeometry.from_nxmx(path)
        inp = Input("hdf5", Path(path).stem, (path,), dataset)
        with open_frames(inp) as fr:
            n, shape, dtype = len(fr), fr.shape, fr.dtype
        with h5py.File(path, "r") as f:
            det = f["entry/instrument/detector"]
            mask = det["pixel_mask"][()] if "pixel_mask" in det else None

        def frames():
            with open_frames(inp) as fr:
                yield from fr

        return Series(name or Path(path).stem, n, tuple(shape), dtype, geom, frames, mask)
    g = _dials_geometry(paths[0])
    if abs(abs(g["normal_z"]) - 1) > 1e-6:
        raise ValueError(f"{paths[0]}: the detector is not normal to the beam; only flat, untilted detectors are supported")
    geom = BeamGeometry(beam_x=g["beam_x"], beam_y=g["beam_y"], distance_mm=g["distance_mm"],
                    pixel_size_mm=g["pixel_size_mm"], wavelength_a=g["wavelength_a"])
    inp = Input("images", Path(paths[0]).parent.name, tuple(paths))
    with open_frames(inp) as fr:
        first = fr.read(0)[0]
    options = {"detector_name": g["name"] or "detector", "sensor_material": g["sensor_material"],
               "sensor_thickness_mm": g["sensor_thickness_mm"], "saturation_value": int(g["trusted_range"][1])}

    def frames():
        with open_frames(inp) as fr:
            yield from fr

    return Series(name or Path(paths[0]).parent.name, len(paths), first.shape, first.dtype, geom, frames,
                  pixel_mask_from_gaps(first < 0), options)


def stored_bytes(path, dataset: str = "entry/data/data") -> int:
    """Bytes of the frames as stored (chunk sizes; no metadata)."""
    with h5py.File(path, "r") as f:
        d = f[dataset]
        return sum(d.id.get_chunk_info(i).size for i in range(d.id.get_num_chunks()))


def write_series(series: Series, codec: str, path) -> dict:
    """Writes the series with one codec; reads it back and compares with the original."""
    if codec in FILE_PEERS:
        return FILE_PEERS[codec](series, path)
    options = codec_writer_options(codec, series)
    t0 = time.perf_counter()
    with FrameWriter(path, series.shape, series.dtype, geometry=series.geometry, pixel_mask=series.pixel_mask,
                     nxmx=series.nxmx, **options) as w:
        for frame in series.frames():
            w.write(frame)
    return measure_file(series, codec, path, write_s=time.perf_counter() - t0)


def dials_crystals(series: Series, reference) -> list:
    """Per frame, the crystals DIALS found on the reference file (reference: a DialsRun of the
    uncompressed file), [] where it found none."""
    from redml_reduce.lattice import read_expt

    expt = Path(reference.workdir) / "indexed.expt"
    table = read_expt(expt) if expt.exists() else None
    return [table.for_frame(reference.path, i) if table else [] for i in range(series.n)]


def builtin_crystals(series: Series, space_group: str, cell) -> tuple:
    """(crystals per frame for the policy, mean ms per frame, lattices found per frame): the
    built-in indexer (redml_reduce.lattice.index_still) on the classical finder's spots of each
    frame, with the known cell and space group; the policy's crystals leave out the lattices
    that explain too few of the frame's spots (IndexResult.crystals); the time is the
    indexer's alone (spots already found)."""
    from redml_reduce.lattice import index_still
    from redml_reduce.spots import find_spots

    mask = series.pixel_mask != 0 if series.pixel_mask is not None else None
    crystals, ms, lattices = [], [], []
    for frame in series.frames():
        peaks, _ = find_spots(frame, mask)
        t0 = time.perf_counter()
        found = index_still(peaks, series.geometry, cell, space_group)
        ms.append((time.perf_counter() - t0) * 1e3)
        # the policy's crystals: the lattice with its own profile, none where it explains too few spots
        crystals.append(found.crystals(series.geometry) if found else [])
        lattices.append(found.crystals(series.geometry, min_explained=0) if found else [])
    return crystals, float(np.mean(ms)) if ms else float("nan"), lattices


def predicted_fraction(crystals: list, integrated: np.ndarray, shape) -> float:
    """The fraction of DIALS's integrated reflections (their predicted positions, xyzcal.px)
    within 1 px of a reflection the frame's crystals predict: positions, not Miller indices,
    so another lattice setting or a misplaced prediction does not count."""
    from scipy.spatial import cKDTree

    from redml_reduce.lattice import predict

    if not len(integrated) or np.isnan(integrated["x"]).all():
        return float("nan")  # no reflections, or an export from before positions were kept
    near = np.zeros(len(integrated), bool)
    for i, frame_crystals in enumerate(crystals):
        rows = np.flatnonzero(integrated["image"] == i)
        if not len(rows) or not frame_crystals:
            continue
        tree = cKDTree(np.concatenate([predict(c, None, shape)[0] for c in frame_crystals]))
        dist, _ = tree.query(np.stack([integrated["x"][rows], integrated["y"][rows]], axis=1))
        near[rows] = dist <= 1.0
    return float(near.mean())


def indexing_figures(dials: list, redml: list, ms: float, space_group: str, cell) -> dict:
    """The built-in indexer against DIALS on one series: frames each indexes, the median
    misorientation (degrees, symmetry-equivalent settings allowed) on frames both index."""
    from redml_reduce.lattice import b_matrix, misorientation_deg

    B = b_matrix(cell)
    mis = [min(misorientation_deg(r[0].A, c.A, B) for c in d) for d, r in zip(dials, redml) if d and r]
    return {"index_ms_per_frame": ms, "frames_indexed_redml": sum(bool(r) for r in redml),
            "frames_indexed_dials": sum(bool(d) for d in dials),
            "frames_indexed_both": len(mis),
            "median_misorientation_deg": float(np.median(mis)) if mis else float("nan")}


def write_series_lattice(series: Series, codec: str, path, crystals: list) -> dict:
    """Writes the series by the per-frame policy with the given crystals per frame; reads it
    back and compares with the original."""
    from redml_reduce.codec import CodecSettings
    from redml_reduce.lattice import LatticeSettings
    from redml_reduce.pipeline import encode_by_policy

    options = codec_writer_options(codec, series)
    settings = CodecSettings(**options)
    lattice = LatticeSettings(radius=lattice_setting(codec)[2])
    t0 = time.perf_counter()
    with FrameWriter(path, series.shape, series.dtype, geometry=series.geometry, pixel_mask=series.pixel_mask,
                     nxmx=series.nxmx, **options) as w:
        for frame, frame_crystals in zip(series.frames(), crystals):
            w.write_chunk(encode_by_policy(frame, settings, frame_crystals, lattice=lattice)[0])
    return measure_file(series, codec, path, write_s=time.perf_counter() - t0)


def _complete(path, n: int) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f["entry/data/data"].shape[0] == n
    except (OSError, KeyError):
        return False


def measure_file(series: Series, codec: str, path, write_s: float = float("nan")) -> dict:
    """Ratio of a written file, and its decoded frames against the original ones."""
    identical, max_err, digest = True, 0.0, hashlib.sha256()
    with h5py.File(path, "r") as f:
        d = f["entry/data/data"]
        if d.shape[0] != series.n:
            raise ValueError(f"{path} holds {d.shape[0]} frames, the series {series.n}")
        for i, frame in enumerate(series.frames()):
            back = d[i]
            digest.update(back.tobytes())
            if back.tobytes() != frame.tobytes():
                identical = False
                valid = series.valid(frame)
                max_err = max(max_err, float(np.abs(back[valid].astype(np.float64) - frame[valid]).max()))
    raw = series.n * int(np.prod(series.shape)) * series.dtype.itemsize
    stored = stored_bytes(path)
    out = {"raw_bytes": raw, "stored_bytes": stored, "ratio": raw / stored, "write_s": write_s,
           "identical": identical, "max_abs_error": max_err, "decoded_sha256": digest.hexdigest(), "dials_path": str(path)}
    if codec.endswith(CLIP_SUFFIX):
        out.update(clipped_copy(series, path))
    return out


def clipped_copy(series: Series, path) -> dict:
    """The decoded frames with negative counts set to 0 (outside the pixel mask, which DIALS
    ignores anyway), written uncompressed beside `path` for DIALS: what a careful user of a
    lossy peer does for a photon counter. The ratio stays the peer file's."""
    path = Path(path)
    clipped = path.with_name(path.stem + ".clipped.nxs")
    digest = hashlib.sha256()
    keep = series.pixel_mask != 0 if series.pixel_mask is not None else np.zeros(series.shape, bool)
    with h5py.File(path, "r") as f, FrameWriter(clipped, series.shape, series.dtype, geometry=series.geometry,
                                                 pixel_mask=series.pixel_mask, nxmx=series.nxmx, filter={}) as w:
        d = f["entry/data/data"]
        for i in range(series.n):
            frame = d[i]
            frame = np.where((frame < 0) & ~keep, 0, frame).astype(series.dtype)
            digest.update(frame.tobytes())
            w.write(frame)
    return {"dials_path": str(clipped), "decoded_sha256": digest.hexdigest(), "identical": False}


def study(series: Series, codecs, dials: Dials, workdir, *, dials_identical: bool = False, log=print,
          reuse: bool = False, crystal: Optional[tuple] = None) -> dict:
    """Every codec on one series; returns {codec: figures} (see compare for the DIALS ones).
    reuse: keep files and DIALS runs a stopped study finished in the same workdir (resume).
    crystal: (space group, cell) the built-in indexer of redml-lattice-qK is given (default:
    the ones DIALS is given)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    codecs = list(codecs)
    if "uncompressed" not in codecs:
        codecs.insert(0, "uncompressed")
    results, runs = {}, {}
    for codec in [c for c in codecs if lattice_setting(c) is None]:
        path = work / f"{series.name}_{codec}.nxs"
        record = path.with_suffix(".json")
        if reuse and path.exists() and record.exists() and json.loads(record.read_text()).get("n") == series.n:
            results[codec] = json.loads(record.read_text())["result"]
        elif (reuse and path.exists() and not codec.endswith(CLIP_SUFFIX) and codec not in FILE_PEERS
              and _complete(path, series.n)):
            results[codec] = measure_file(series, codec, path)  # written by a run that stopped before its record
        elif codec.endswith(CLIP_SUFFIX) and base_codec(codec) in results:
            results[codec] = {**results[base_codec(codec)], **clipped_copy(series, work / f"{series.name}_{base_codec(codec)}.nxs")}
        else:
            results[codec] = write_series(series, codec, path)
        record.write_text(json.dumps({"n": series.n, "result": results[codec]}))
        log(f"  {series.name} {codec}: ratio {results[codec]['ratio']:.2f}, "
            f"{'identical' if results[codec]['identical'] else 'max error %.3g' % results[codec]['max_abs_error']}")
    ref_path = work / f"{series.name}_uncompressed.nxs"
    t0 = time.perf_counter()
    reference = dials.process(ref_path, work / "dials" / series.name / "uncompressed")
    ref_seconds = time.perf_counter() - t0
    log(f"  {series.name} DIALS on uncompressed: {reference.indexed.sum()}/{reference.n_images} indexed, "
        f"{len(reference.integrated)} reflections integrated, {ref_seconds:.0f} s")
    lattice_codecs = [c for c in codecs if lattice_setting(c) is not None]
    if lattice_codecs:  # need the reference's crystals
        space_group, cell = crystal or (dials.space_group, dials.unit_cell)
        crystals = {"dials": dials_crystals(series, reference)}
        crystals["redml"], ms, lattices = builtin_crystals(series, space_group, cell)
        indexing = indexing_figures(crystals["dials"], lattices, ms, space_group, cell)
        indexing["frames_lattice_redml"] = sum(bool(c) for c in crystals["redml"])  # trusted by the policy
        log(f"  {series.name} built-in indexer: {indexing}")
        for codec in lattice_codecs:
            used = crystals[lattice_setting(codec)[0]]
            results[codec] = write_series_lattice(series, codec, work / f"{series.name}_{codec}.nxs", used)
            results[codec].update(indexing, predicted_fraction=predicted_fraction(used, reference.integrated,
                                                                                  series.shape))
            log(f"  {series.name} {codec}: ratio {results[codec]['ratio']:.2f}, "
                f"{sum(bool(c) for c in used)} frames with crystals, "
                f"{results[codec]['predicted_fraction']:.4f} of the reflections predicted within 1 px")
    # Blank frames: the simulator's non-hits, or frames that did not index and have <= 5 strong spots.
    blank = ~series.hits if series.hits is not None else (~reference.indexed & (reference.strong <= 5))
    truth_ref = truth_error(reference.integrated, series)
    ran = {results["uncompressed"]["decoded_sha256"]: "uncompressed"}  # decoded frames -> codec DIALS ran on
    for codec in codecs:
        r = results[codec]
        if codec == "uncompressed" or (r["identical"] and not dials_identical):
            r.update(compare(reference, reference, blank=blank), **_prefixed(truth_ref, "truth_"),
                     dials="identical" if codec != "uncompressed" else "reference", dials_s=ref_seconds)
            continue
        twin = ran.get(r["decoded_sha256"])
        if twin is not None and not dials_identical:
            # Same decoded frames as a codec already run: DIALS would see the same input.
            r.update({k: v for k, v in results[twin].items() if k not in ("raw_bytes", "stored_bytes", "ratio", "write_s",
                                                                           "identical", "max_abs_error")},
                     dials=f"same frames as {twin}")
            continue
        path = r["dials_path"]
        t0 = time.perf_counter()
        run = dials.process(path, work / "dials" / series.name / codec, integrate=False)
        integrated = dials.integrate_like(reference, path, work / "dials" / series.name / f"{codec}-integrate")
        r.update(compare(reference, run, integrated, blank=blank), **_prefixed(truth_error(integrated, series), "truth_"),
                 dials="run", dials_s=time.perf_counter() - t0)
        runs[codec] = run
        ran[r["decoded_sha256"]] = codec
        log(f"  {series.name} {codec}: {r['indexed']}/{r['indexed_uncompressed']} indexed (lost {len(r['lost'])}, "
            f"gained {len(r['gained'])}), CC {r['cc_intensity']:.4f}, {r['dials_s']:.0f} s")
    results["_commands"] = reference.commands + [c for run in runs.values() for c in run.commands]
    return results


def _prefixed(d: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in d.items()}


def truth_error(integrated: np.ndarray, series: Series) -> dict:
    """Integrated intensities against the simulator's expected photons (simulated series
    only): mean of (I - I_true) / sigma over the reflections found in the truth list, all
    and weak (I_true / sigma < 2). Reflections are matched by frame and symmetry-unique
    index (DIALS may pick any of the equivalent settings of the crystal)."""
    if series.truth is None or series.asu_of is None or len(integrated) == 0:
        return {}
    truth = series.truth
    t_key = truth["frame"].astype(np.int64) * (1 << 32) + series.asu_of(np.stack([truth["h"], truth["k"], truth["l"]], 1))
    i_asu = series.asu_of(np.stack([integrated["h"], integrated["k"], integrated["l"]], 1))
    i_key = integrated["image"] * (1 << 32) + i_asu
    keys, counts = np.unique(t_key, return_counts=True)
    unique = keys[counts == 1]  # equivalents excited together in one shot are ambiguous: left out
    order = np.argsort(t_key)
    pos = np.searchsorted(t_key[order], i_key)
    pos = np.clip(pos, 0, len(order) - 1)
    hit = (t_key[order][pos] == i_key) & np.isin(i_key, unique) & (i_asu >= 0)
    if not hit.any():
        return {"matched": 0}
    t = truth[order][pos[hit]]
    i = integrated[hit]
    sigma = np.sqrt(np.maximum(i["variance"], 1e-12))
    true_i = t["intensity"] * series.adu_per_photon  # DIALS's intensities are in the frames' units
    d = (i["intensity"] - true_i) / sigma
    weak = true_i / sigma < 2
    return {"matched": int(hit.sum()), "mean_dsig": float(d.mean()),
            "weak_mean_dsig": float(d[weak].mean()) if weak.any() else float("nan")}


COLUMNS = [("codec", "{}"), ("ratio", "{:.2f}"), ("indexed", "{}"), ("yield", "{:.1%}"), ("lost", "{}"),
           ("gained", "{}"), ("strong", "{}"), ("cc_int", "{:.4f}"), ("mean_ratio", "{:.4f}"), ("dsig", "{:+.3f}"),
           ("weak_dsig", "{:+.3f}"), ("refl", "{}"), ("dials_s", "{:.0f}"), ("dials", "{}")]


def format_table(results: dict, title: str = "") -> str:
    rows = []
    for codec, r in results.items():
        if codec.startswith("_"):
            continue
        rows.append([codec, r["ratio"], f"{r['indexed']}/{r['indexed_uncompressed']}", r["yield"], len(r["lost"]),
                     len(r["gained"]), r["strong_spots"], r["cc_intensity"], r["mean_ratio"], r["mean_dsig"],
                     r["weak_mean_dsig"], f"{r['reflections_matched']}/{r['reflections_uncompressed']}",
                     r["dials_s"], r["dials"]])
    return render_table(COLUMNS, rows, title)


def render_table(columns, rows, title: str = "") -> str:
    """Right-aligned text table: columns are (name, format) pairs; NaN prints as '-'."""
    cells = [[fmt.format(v) if not (isinstance(v, float) and np.isnan(v)) else "-" for (_, fmt), v in zip(columns, row)]
             for row in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, (name, _) in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(name.rjust(w) for (name, _), w in zip(columns, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot(all_results: dict, path) -> None:
    """Ratio against indexing yield, intensity CC and reflections integrated: one point per
    codec and data set (marker: data set; colour: redml, SZ3, lossless peers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("frames indexed, % of uncompressed (frame by frame)", lambda r: 100 * r["yield"]),
              ("integrated intensity CC vs uncompressed", lambda r: r["cc_intensity"]),
              ("reflections integrated, % of uncompressed", lambda r: 100 * r["reflections_matched"]
               / max(r["reflections_uncompressed"], 1)))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    markers = "osD^vP*X"
    for k, (series, results) in enumerate(all_results.items()):
        for codec, r in results.items():
            if codec.startswith("_") or codec == "uncompressed":
                continue
            color = "C3" if codec.startswith("redml") else "C0" if codec.startswith("sz3") else "0.45"
            for ax, (_, value) in zip(axes, panels):
                y = value(r)
                ax.scatter(r["ratio"], y, marker=markers[k % len(markers)], color=color, s=36, alpha=0.85)
                if r["dials"] in ("run", "reference"):  # label the points DIALS ran on
                    ax.annotate(codec.replace("redml-", ""), (r["ratio"], y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    for ax, (label, _) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio (raw bytes / stored bytes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=markers[k % len(markers)], ls="", color="k", label=s)
               for k, s in enumerate(all_results)]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=l)
                for c, l in (("C3", "redml"), ("C0", "SZ3 (hdf5plugin)"), ("0.45", "lossless peers"))]
    axes[2].legend(handles=handles, fontsize=8, loc="lower left")
    fig.suptitle("Compression ratio against DIALS indexing yield and intensities (benchmarks/yield.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
