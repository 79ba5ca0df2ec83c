"""JUNGFRAU raw frames: calibration, conversion to photons in the C++ core, module geometry,
and a raw-frame simulator.

    calib = jungfrau.load_calibration("calib_dir")          # or Calibration(pedestal, gain, energy_keV, ...)
    photons, info = jungfrau.convert(raw, calib)             # int32 photons (assembled if calib.geometry)
    chunk = redml_reduce.encode(raw, calibration=calib, q=1)  # convert, then encode

A raw word holds the gain stage in bits 15-14 (0 = G0, 1 = G1, 3 = G2, 2 = invalid) and the
ADC value in bits 13-0; 0xC000 is an overload and 0xFFFF an error word. The conversion
(csrc/jungfrau.h, one pass with threads, the GIL released) is

    keV     = (adc - pedestal[stage]) / gain[stage]       float32, gain in ADU/keV
    photons = round half away from zero (keV * (1 / energy_keV))

Markers, never photon counts (the codec keeps them exactly and its background model
ignores them): the output type's minimum for masked pixels (calibration mask, non-finite
pedestal or gain), invalid gain bits and error words; its maximum for overloads and for
counts at or above it (saturated); counts at or below the minimum become minimum + 1
(saturated too). In the optional keV image: NaN, and +inf for overloads. Module gaps of an
assembled image hold the minimum (NaN in keV).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from . import _core

__all__ = ["Calibration", "Geometry", "ConversionInfo", "PedestalTracker", "DarkAccumulator", "DarkResult",
           "SimulatedDetector", "convert", "markers", "read_psi_gain_file", "write_psi_gain_file", "gain_maps",
           "pedestal_from_dark", "load_calibration", "write_calibration", "read_calibration",
           "read_pedestal_updates", "describe_calibration", "compress_raw", "photons_to_raw", "simulate_dark_run",
           "simulate_detector", "read_frames_lazily", "MODULE_SHAPE", "ASSEMBLED_MODULE_SHAPE", "STATUS", "TYPICAL_GAIN",
           "TYPICAL_PEDESTAL", "ADC_MAX", "OVERLOAD_WORD", "ERROR_WORD", "GAIN_BITS"]

MODULE_SHAPE = (512, 1024)
ASSEMBLED_MODULE_SHAPE = (514, 1030)  # chip-border pixels are double size: one more row / column per border
CHIP = 256
ADC_MAX = 0x3FFF
OVERLOAD_WORD = 0xC000
ERROR_WORD = 0xFFFF
GAIN_BITS = (0, 1, 3)  # the top two bits of a word in G0, G1, G2
STATUS = ("g0", "g1", "g2", "saturated", "masked", "invalid_gain", "overload", "error")  # redml_jf_status
TYPICAL_GAIN = (41.0, -1.44, -0.11)  # ADU/keV, G0 G1 G2
TYPICAL_PEDESTAL = (3000.0, 13000.0, 14000.0)  # ADU
CALIBRATION_GROUP = "jungfrau_calibration"


def markers(dtype) -> tuple[int, int]:
    """(masked, saturated) marker values of a photon dtype: its minimum and maximum."""
    info = np.iinfo(_photon_dtype(dtype))
    return int(info.min), int(info.max)


def _photon_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.int16), np.dtype(np.int32)):
        raise TypeError(f"photons are int16 or int32, not {dt}")
    return dt


# ----------------------------------------------------------------------------- geometry

def _expand(n_raw: int, chips: int) -> tuple[np.ndarray, np.ndarray]:
    """Assembled position of each raw row (or column) and the direction (+1/-1, 0 if none)
    of the second half of a chip-border pixel (mirrors redml_jf_expand)."""
    raw = np.arange(n_raw)
    chip, j = raw // CHIP, raw % CHIP
    extra = np.where((j == CHIP - 1) & (chip < chips - 1), 1, np.where((j == 0) & (chip > 0), -1, 0))
    return raw + 2 * chip, extra


@dataclass(eq=False)
class Geometry:
    """Where the modules of a JUNGFRAU go in the assembled image.

    modules: (n, 6) int32 rows (origin_y, origin_x, fast_y, fast_x, slow_y, slow_x): module
    k's assembled pixel (r, c), 0 <= r < 514, 0 <= c < 1030, lands at output
    (origin_y + r*slow_y + c*fast_y, origin_x + r*slow_x + c*fast_x). Module k holds raw rows
    [512 k, 512 (k+1)) of the raw frame. shape: the assembled image (height, width). Within a
    module the chip-border pixels (double size, quadruple at chip corners) are split over
    two (four) output pixels, conserving the total; pixels no module covers are gaps.
    """

    modules: np.ndarray
    shape: tuple

    def __post_init__(self):
        self.modules = np.ascontiguousarray(self.modules, dtype=np.int32).reshape(-1, 6)
        self.shape = tuple(int(v) for v in self.shape)
        if len(self.shape) != 2 or min(self.shape) < 1 or len(self.modules) < 1:
            raise ValueError("a geometry needs at least one module and a 2-D image shape")
        for k, (oy, ox, fy, fx, sy, sx) in enumerate(self.modules):
            units = {(0, 1), (0, -1), (1, 0), (-1, 0)}
            if (fy, fx) not in units or (sy, sx) not in units or fy * sy + fx * sx != 0:
                raise ValueError(f"module {k}: fast and slow must be perpendicular unit steps")
        cover = np.bincount(self._outputs().ravel(), minlength=self.shape[0] * self.shape[1])
        if cover.max() > 1:
            raise ValueError("modules overlap")

    @classmethod
    def grid(cls, n_modules: int, modules_per_row: int = 2, gap_x: int = 8, gap_y: int = 36,
             transpose: bool = False) -> "Geometry":
        """Modules in rows of `modules_per_row` (module 0 top left, row-major), `gap_x` pixels
        between neighbours in a row and `gap_y` between rows (Jungfraujoch's layout);
        transpose: the whole image transposed (modules' fast axis vertical)."""
        if n_modules < 1 or modules_per_row < 1 or gap_x < 0 or gap_y < 0:
            raise ValueError("n_modules and modules_per_row must be >= 1, gaps >= 0")
        rows = -(-n_modules // modules_per_row)
        mh, mw = ASSEMBLED_MODULE_SHAPE
        mods = [(k // modules_per_row * (mh + gap_y), k % modules_per_row * (mw + gap_x), 0, 1, 1, 0)
                for k in range(n_modules)]
        shape = (rows * mh + (rows - 1) * gap_y, min(n_modules, modules_per_row) * (mw + gap_x) - gap_x)
        if transpose:
            mods = [(ox, oy, fx, fy, sx, sy) for oy, ox, fy, fx, sy, sx in mods]
            shape = shape[::-1]
        return cls(np.array(mods), shape)

    @classmethod
    def jungfrau_4m(cls) -> "Geometry":
        """8 modules, 2 x 4, gaps 8 and 36 pixels, transposed: 2068 x 2164 (JUNGFRAU_4M_SHAPE)."""
        return cls.grid(8, 2, 8, 36, transpose=True)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def raw_shape(self) -> tuple:
        return (self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])

    def _outputs(self) -> np.ndarray:
        """(n, 514, 1030) flat output index of every assembled module pixel (bounds checked)."""
        r = np.arange(ASSEMBLED_MODULE_SHAPE[0])[:, None]
        c = np.arange(ASSEMBLED_MODULE_SHAPE[1])[None, :]
        out = []
        for k, (oy, ox, fy, fx, sy, sx) in enumerate(self.modules):
            y, x = oy + r * sy + c * fy, ox + r * sx + c * fx
            if y.min() < 0 or x.min() < 0 or y.max() >= self.shape[0] or x.max() >= self.shape[1]:
                raise ValueError(f"module {k} lies outside the {self.shape} image")
            out.append(y * self.shape[1] + x)
        return np.stack(out)

    @cached_property
    def gap_index(self) -> np.ndarray:
        """Flat indices (uint32) of the output pixels no module covers."""
        covered = np.zeros(self.shape[0] * self.shape[1], bool)
        covered[self._outputs().ravel()] = True
        return np.flatnonzero(~covered).astype(np.uint32)

    @cached_property
    def source_index(self) -> np.ndarray:
        """For each output pixel, the flat index of the raw pixel it shows (-1 in gaps)."""
        rows, row_extra = _expand(MODULE_SHAPE[0], 2)
        cols, col_extra = _expand(MODULE_SHAPE[1], 4)
        asm_row = np.empty(ASSEMBLED_MODULE_SHAPE[0], np.int64)
        asm_col = np.empty(ASSEMBLED_MODULE_SHAPE[1], np.int64)
        for raw_pos, first, extra, dest in ((np.arange(512), rows, row_extra, asm_row),
                                            (np.arange(1024), cols, col_extra, asm_col)):
            dest[first] = raw_pos
            dest[(first + extra)[extra != 0]] = raw_pos[extra != 0]
        src = np.full(self.shape[0] * self.shape[1], -1, np.int64)
        local = asm_row[:, None] * MODULE_SHAPE[1] + asm_col[None, :]
        for k, outputs in enumerate(self._outputs()):
            src[outputs.ravel()] = (k * MODULE_SHAPE[0] * MODULE_SHAPE[1] + local).ravel()
        return src.reshape(self.shape)

    def disassemble(self, image: np.ndarray) -> np.ndarray:
        """Raw-layout frame (n*512, 1024) from an assembled image of counts: each raw pixel gets
        the sum of the output pixels it covers (the inverse of the split); gaps are dropped."""
        image = np.asarray(image)
        if image.shape != self.shape:
            raise ValueError(f"image has shape {image.shape}, the geometry {self.shape}")
        src = self.source_index.ravel()
        inside = src >= 0
        acc = np.bincount(src[inside], weights=image.ravel()[inside].astype(np.float64),
                          minlength=self.raw_shape[0] * self.raw_shape[1])  # exact for counts below 2^53
        return acc.reshape(self.raw_shape).astype(image.dtype)

    def assemble(self, values: np.ndarray, fill) -> np.ndarray:
        """An assembled image of a per-pixel map of the raw layout (a pixel mask, say): each
        output pixel shows the value of the raw pixel it belongs to; gaps hold `fill`."""
        values = np.asarray(values)
        if values.shape != self.raw_shape:
            raise ValueError(f"map has shape {values.shape}, the raw frames {self.raw_shape}")
        src = self.source_index
        return np.where(src >= 0, values.ravel()[np.maximum(src, 0)], np.asarray(fill, values.dtype))

    def to_dict(self) -> dict:
        return {"modules": self.modules.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d, n_modules: Optional[int] = None) -> "Geometry":
        """The inverse of to_dict, for input from outside (a stream's start message): anything
        malformed raises ValueError. n_modules: the modules the raw frames hold, checked before
        the image (whose size the geometry sets) is allocated."""
        try:
            modules = np.asarray(d["modules"])
            shape = tuple(d["shape"])
            ok = modules.dtype.kind in "iu" and modules.ndim == 2 and modules.shape[1:] == (6,) and len(shape) == 2
            ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape)
        except (KeyError, TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError("a geometry is {'modules': (n, 6) integer table, 'shape': [height, width]}")
        if n_modules is not None and len(modules) != n_modules:
            raise ValueError(f"the geometry places {len(modules)} modules, the raw frames hold {n_modules}")
        area = ASSEMBLED_MODULE_SHAPE[0] * ASSEMBLED_MODULE_SHAPE[1] * len(modules)
        if not (0 < shape[0] and 0 < shape[1] and shape[0] * shape[1] <= 4 * area) or np.abs(modules).max() > 2**20:
            raise ValueError(f"a geometry image of {shape} for {len(modules)} modules is out of bounds")
        return cls(modules, shape)


# ----------------------------------------------------------------------------- calibration

@dataclass(eq=False)
class Calibration:
    """What the conversion needs, per pixel of the raw frame (height x width; a JUNGFRAU of
    n modules has height = 512 n, width = 1024).

    pedestal: (3, h, w) ADU of G0, G1, G2. gain: (3, h, w) ADU/keV (G1 and G2 negative on a
    real module; the high-gain maps HG0..HG2 when the detector runs in high gain).
    energy_keV: photon energy. mask: (h, w) bad pixels (optional). geometry: module layout
    for assembled output (optional). noise: (3, h, w) ADU from dark runs (optional, kept for
    the record and the simulator). meta: provenance (file names, dates), stored with it.
    """

    pedestal: np.ndarray
    gain: np.ndarray
    energy_keV: float
    mask: Optional[np.ndarray] = None
    geometry: Optional[Geometry] = None
    noise: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.pedestal = np.ascontiguousarray(self.pedestal, dtype=np.float32)
        self.gain = np.ascontiguousarray(self.gain, dtype=np.float32)
        if self.pedestal.ndim != 3 or self.pedestal.shape[0] != 3:
            raise ValueError(f"pedestal must be (3, height, width), not {self.pedestal.shape}")
        if self.gain.shape != self.pedestal.shape:
            raise ValueError(f"gain has shape {self.gain.shape}, the pedestal {self.pedestal.shape}")
        e = self.energy_keV
        if isinstance(e, bool) or not isinstance(e, (int, float, np.integer, np.floating)) or not (
                math.isfinite(e) and e > 0):
            raise ValueError(f"energy_keV must be a finite number > 0, not {e!r}")
        self.energy_keV = float(e)
        if self.mask is not None:
            self.mask = np.ascontiguousarray(np.asarray(self.mask) != 0)
            if self.mask.shape != self.frame_shape:
                raise ValueError(f"mask has shape {self.mask.shape}, the raw frames {self.frame_shape}")
        if self.noise is not None:
            self.noise = np.ascontiguousarray(self.noise, dtype=np.float32)
            if self.noise.shape != self.pedestal.shape:
                raise ValueError(f"noise has shape {self.noise.shape}, the pedestal {self.pedestal.shape}")
        if self.geometry is not None and self.geometry.raw_shape != self.frame_shape:
            raise ValueError(f"the geometry has {self.geometry.n_modules} modules ({self.geometry.raw_shape} raw "
                             f"pixels), the calibration {self.frame_shape}")

    @property
    def frame_shape(self) -> tuple:
        """Shape of the raw frames this calibration converts."""
        return self.pedestal.shape[1:]

    def image_shape(self, assemble: bool = True) -> tuple:
        """Shape of the converted image (assembled when there is a geometry and assemble)."""
        return self.geometry.shape if (assemble and self.geometry is not None) else self.frame_shape

    def convert(self, raw, **kwargs):
        """convert(raw, self, **kwargs)."""
        return convert(raw, self, **kwargs)

    def to_dict(self) -> dict:
        """Plain arrays and scalars (e.g. for a stream's start message, as Jungfraujoch sends
        its calibration): energy_keV, pedestal, gain (float32), mask (uint8), noise, geometry
        ({"modules", "shape"} or None), meta. Calibration.from_dict(d) restores it."""
        return dict(energy_keV=self.energy_keV, pedestal=self.pedestal, gain=self.gain,
                    mask=None if self.mask is None else self.mask.astype(np.uint8), noise=self.noise,
                    geometry=None if self.geometry is None else self.geometry.to_dict(), meta=dict(self.meta))

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        g = d.get("geometry")
        geometry = None if g is None else Geometry.from_dict(g)
        return cls(np.asarray(d["pedestal"]), np.asarray(d["gain"]), d["energy_keV"], d.get("mask"), geometry,
                   d.get("noise"), dict(d.get("meta") or {}))


@dataclass
class ConversionInfo:
    """What convert() saw: counts[name] raw pixels per status (STATUS: g0, g1, g2, saturated,
    masked, invalid_gain, overload, error); kev: the keV image if asked for; status: the
    per-pixel status codes (raw layout, uint8, index into STATUS) if asked for."""

    counts: dict
    kev: Optional[np.ndarray] = None
    status: Optional[np.ndarray] = None

    @property
    def n_marked(self) -> int:
        """Pixels written as markers rather than counts (all but g0/g1/g2)."""
        return sum(v for k, v in self.counts.items() if k not in ("g0", "g1", "g2"))


class PedestalTracker:
    """Pedestal tracking during a run, as receivers do: every G0 pixel that saw no photon
    (|value| < threshold photons) moves its G0 pedestal towards its ADC value with weight
    1/window (an exponential running mean over about `window` dark frames). Fused into the
    conversion: pass it as convert(..., track=tracker).

    snapshot_every: keep a copy of the G0 pedestal every that many frames (the pedestal
    updates stored with the calibration by write_calibration), 0 = none.
    """

    def __init__(self, calibration: Calibration, window: int = 1000, threshold: float = 0.5,
                 snapshot_every: int = 0):
        if not (isinstance(window, (int, np.integer)) and window >= 1):
            raise ValueError(f"window must be an integer >= 1, not {window!r}")
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be >= 0 photons, not {threshold!r}")
        self.window, self.threshold, self.snapshot_every = int(window), float(threshold), int(snapshot_every)
        self.pedestal_g0 = np.array(calibration.pedestal[0], dtype=np.float32, order="C")
        self.frames = 0
        self.snapshots: list[tuple[int, np.ndarray]] = []  # (frames converted, G0 pedestal after them)

    @property
    def alpha(self) -> float:
        return 1.0 / self.window

    def _converted(self) -> None:
        self.frames += 1
        if self.snapshot_every and self.frames % self.snapshot_every == 0:
            self.snapshots.append((self.frames, self.pedestal_g0.copy()))

    def current(self, calibration: Calibration) -> Calibration:
        """The calibration with the tracked G0 pedestal."""
        ped = calibration.pedestal.copy()
        ped[0] = self.pedestal_g0
        return Calibration(ped, calibration.gain, calibration.energy_keV, calibration.mask, calibration.geometry,
                           calibration.noise, dict(calibration.meta))


def _raw_frame(raw, calib: Calibration) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype.newbyteorder("=") != np.dtype(np.uint16):
        raise TypeError(f"raw JUNGFRAU frames are uint16 words, not {arr.dtype}")
    h, w = calib.frame_shape
    if arr.ndim == 3 and arr.shape[1:] == MODULE_SHAPE and arr.shape[0] * MODULE_SHAPE[0] == h and w == MODULE_SHAPE[1]:
        arr = arr.reshape(h, w)  # (modules, 512, 1024)
    if arr.shape != (h, w):
        raise ValueError(f"the calibration is for raw frames of shape {(h, w)}, the frame has shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint16)


def convert(raw, calib: Calibration, out_dtype=np.int32, keV: bool = False, nthreads: int = 0, *,
            assemble: bool = True, track: Optional[PedestalTracker] = None, status: bool = False,
            out: Optional[np.ndarray] = None) -> tuple[np.ndarray, ConversionInfo]:
    """Converts one raw frame (uint16 words, (h, w) or (modules, 512, 1024)) to photons.

    out_dtype: int32 or int16 photons. keV: also return the float32 keV image (info.kev).
    assemble: place the modules by calib.geometry (when it has one). track: a
    PedestalTracker (G0 pedestal read from it and updated). status: also return the
    per-pixel status map (info.status). out: an array to write the photons into (of the
    output's shape and dtype; a stream reuses one instead of a new array per frame).
    Returns (photons, ConversionInfo).
    """
    dt = _photon_dtype(out_dtype)
    arr = _raw_frame(raw, calib)
    if track is not None and track.pedestal_g0.shape != calib.frame_shape:
        raise ValueError("the tracker belongs to a calibration of another shape")
    geom = calib.geometry if assemble else None
    out_h, out_w = calib.image_shape(assemble)
    photons, kev, st, counts = _core.jf_convert(
        arr, calib.pedestal, calib.gain, None if calib.mask is None else calib.mask.view(np.uint8),
        None if track is None else track.pedestal_g0, None if geom is None else geom.modules,
        None if geom is None else geom.gap_index, out_h, out_w, calib.energy_keV, dt.itemsize * 8, bool(keV),
        bool(status), track.alpha if track else 0.0, track.threshold if track else 0.0, int(nthreads), out)
    if track is not None:
        track._converted()
    return photons, ConversionInfo(dict(zip(STATUS, (int(c) for c in counts))), kev, st)


# ----------------------------------------------------------------------------- loaders

def read_psi_gain_file(path) -> np.ndarray:
    """One module's gain maps as PSI's detector group ships them: a binary file of float64
    (little-endian), six 512 x 1024 maps G0, G1, G2, HG0, HG1, HG2 in ADU/keV.
    Returns (6, 512, 1024) float64."""
    data = np.fromfile(path, dtype="<f8")
    n = 6 * MODULE_SHAPE[0] * MODULE_SHAPE[1]
    if data.size != n:
        raise ValueError(f"{path}: {data.size * 8} bytes; a PSI gain file holds 6 x 512 x 1024 float64 "
                         f"({n * 8} bytes)")
    return data.reshape(6, *MODULE_SHAPE)


def write_psi_gain_file(path, maps: np.ndarray) -> None:
    """Writes (6, 512, 1024) maps in PSI's binary layout (for tests and simulations)."""
    maps = np.asarray(maps, dtype="<f8")
    if maps.shape != (6, *MODULE_SHAPE):
        raise ValueError(f"gain maps must be (6, 512, 1024), not {maps.shape}")
    maps.tofile(path)


def gain_maps(paths: Sequence, high_gain: bool = False) -> np.ndarray:
    """(3, 512 n, 1024) float32 gain maps of n modules from their PSI files, in module order:
    G0/G1/G2, or HG0/HG1/HG2 with high_gain (the detector in high-gain mode)."""
    if not paths:
        raise ValueError("no gain files")
    stages = slice(3, 6) if high_gain else slice(0, 3)
    return np.concatenate([read_psi_gain_file(p)[stages] for p in paths], axis=1).astype(np.float32)


class DarkAccumulator:
    """Per-pixel statistics of a dark run taken in one gain stage (0, 1 or 2; on a real
    detector G1 and G2 are forced). Frames are added one by one or in stacks; memory is
    independent of the run length. A frame counts for a pixel when its word is in `stage`
    and is not an overload or error word; the other frames count as wrong."""

    def __init__(self, stage: int, shape):
        if stage not in (0, 1, 2):
            raise ValueError("stage is 0, 1 or 2")
        self.stage, self.shape = stage, tuple(shape)
        self.n = np.zeros(self.shape, np.int64)
        self.wrong = np.zeros(self.shape, np.int64)
        self._shift = None
        self._sum = np.zeros(self.shape)
        self._sumsq = np.zeros(self.shape)

    def add(self, frames) -> None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint16:
            raise TypeError(f"raw frames are uint16, not {frames.dtype}")
        frames = frames.reshape(-1, *self.shape)
        for f in frames:
            ok = ((f >> 14) == GAIN_BITS[self.stage]) & (f != OVERLOAD_WORD) & (f != ERROR_WORD)
            adc = (f & ADC_MAX).astype(np.float64)
            if self._shift is None:
                self._shift = adc.copy()  # shifted sums: no cancellation in the variance
            d = np.where(ok, adc - self._shift, 0.0)
            self._sum += d
            self._sumsq += d * d
            self.n += ok
            self.wrong += ~ok

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ADC, standard deviation) per pixel, float32 (NaN with fewer than 2 frames)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(self.n > 0, self.n, np.nan)
            mean = self._sum / n
            var = (self._sumsq - self.n * mean * mean) / np.where(self.n > 1, self.n - 1, np.nan)
            shift = self._shift if self._shift is not None else 0.0
        return (mean + shift).astype(np.float32), np.sqrt(np.maximum(var, 0)).astype(np.float32)


@dataclass
class DarkResult:
    """pedestal, noise: (3, h, w) float32 ADU; bad: (h, w) bool; reasons: name -> (h, w) bool
    (wrong_gain, dead, noisy, no_data)."""

    pedestal: np.ndarray
    noise: np.ndarray
    bad: np.ndarray
    reasons: dict


def pedestal_from_dark(dark_g0, dark_g1, dark_g2, *, max_wrong_fraction: float = 0.01, noisy_sigma: float = 8.0,
                       dead_noise: float = 0.2) -> DarkResult:
    """Pedestals and noise per gain stage from three dark runs (each: an array of raw frames,
    an iterable of frames or stacks, or a DarkAccumulator), with bad-pixel detection:
    wrong_gain: more than max_wrong_fraction of a run's frames not in its stage (or
    overload/error words); dead: noise below dead_noise ADU (a stuck ADC); noisy: noise
    above the stage's median by noisy_sigma robust sigmas (1.4826 MAD); no_data: fewer than
    2 usable frames in a stage."""
    means, noises, wrong = [], [], []
    shape = None
    for stage, run in enumerate((dark_g0, dark_g1, dark_g2)):
        if isinstance(run, DarkAccumulator):
            acc = run
        else:
            acc = None
            for frames in ([run] if isinstance(run, np.ndarray) else run):
                frames = np.asarray(frames)
                if acc is None:
                    acc = DarkAccumulator(stage, frames.shape[-2:])
                acc.add(frames)
            if acc is None:
                raise ValueError(f"dark run of G{stage} is empty")
        if acc.stage != stage:
            raise ValueError(f"dark run {stage} was accumulated for stage {acc.stage}")
        if shape is not None and acc.shape != shape:
            raise ValueError(f"dark runs have different frame shapes: {shape} and {acc.shape}")
        shape = acc.shape
        m, s = acc.result()
        means.append(m)
        noises.append(s)
        total = np.maximum(acc.n + acc.wrong, 1)
        wrong.append((acc.wrong / total > max_wrong_fraction) | (acc.n < 2))
    pedestal, noise = np.stack(means), np.stack(noises)
    no_data = ~np.isfinite(noise).all(axis=0)
    dead = (noise < dead_noise).any(axis=0)
    noisy = np.zeros(shape, bool)
    for s in noise:
        good = s[np.isfinite(s) & (s >= dead_noise)]
        if good.size:
            med = np.median(good)
            mad = 1.4826 * np.median(np.abs(good - med))
            noisy |= s > med + noisy_sigma * max(mad, 1e-3 * med)
    reasons = dict(wrong_gain=np.any(wrong, axis=0) & ~no_data, dead=dead, noisy=noisy, no_data=no_data)
    bad = np.logical_or.reduce(list(reasons.values()))
    return DarkResult(pedestal, noise, bad, reasons)


def read_frames_lazily(spec):
    """Frames of FILE.h5[:/dataset] (default entry/data/data, else data), one by one: a 2-D
    dataset is one frame, a 3-D or 4-D one a stack (4-D: frames of (modules, 512, 1024))."""
    from .sources import iter_frames

    return iter_frames([str(spec)], modules=True)


def _geometry_from(spec) -> Optional[Geometry]:
    if spec is None:
        return None
    if spec == "4m":
        return Geometry.jungfrau_4m()
    if isinstance(spec, dict) and "modules" in spec:
        return Geometry.from_dict(spec)
    if isinstance(spec, dict):
        return Geometry.grid(**spec)
    raise ValueError(f"geometry must be '4m', a Geometry.grid argument dict or a modules/shape dict, not {spec!r}")


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
            return read_calibration(f[group] if group else _find_calibration_group(f))
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


# ----------------------------------------------------------------------------- HDF5 record

def _find_calibration_group(f):
    found = []
    f.visititems(lambda name, obj: found.append(obj) if name.rsplit("/", 1)[-1] == CALIBRATION_GROUP else None)
    if not found:
        raise KeyError(f"no {CALIBRATION_GROUP} group in {f.filename}")
    return found[0]


def write_calibration(parent, calib: Calibration, tracker: Optional[PedestalTracker] = None,
                      name: str = CALIBRATION_GROUP, photon_dtype=np.int32):
    """Stores `calib` (and the tracker's pedestal updates, if any) as an NXcollection `name`
    under `parent`, an h5py group: normally the NXmx detector, /entry/instrument/detector
    (created as NXentry/NXinstrument/NXdetector when `parent` is a file). Returns the group.
    Once per series: it holds everything needed to see and redo the conversion."""
    if hasattr(parent, "filename") and parent.name == "/":
        for path, cls in (("entry", "NXentry"), ("entry/instrument", "NXinstrument"),
                          ("entry/instrument/detector", "NXdetector")):
            g = parent.require_group(path)
            g.attrs.setdefault("NX_class", cls)
        parent = parent["entry/instrument/detector"]
    g = parent.create_group(name)
    g.attrs["NX_class"] = "NXcollection"
    g.attrs["description"] = ("JUNGFRAU raw -> photons: keV = (adc - pedestal[stage]) / gain[stage] (float32), "
                              "photons = round half away from zero (keV * (1 / photon_energy)); stage from bits 15-14 "
                              "(0 G0, 1 G1, 3 G2, 2 invalid), adc = bits 13-0")
    lo, hi = markers(photon_dtype)
    g.attrs["photon_dtype"] = np.dtype(photon_dtype).name
    g.attrs["markers"] = (f"{lo}: masked / invalid gain / error word / module gap; {hi}: overload (0xC000) or "
                          f"saturated; {lo + 1}: count at or below the minimum")
    big = dict(compression="gzip", compression_opts=1, shuffle=True)
    h, w = calib.frame_shape
    planes = dict(chunks=(1, h, w), **big)
    d = g.create_dataset("pedestal", data=calib.pedestal, **planes)
    d.attrs.update(units="ADU", stages="G0 G1 G2")
    d = g.create_dataset("gain", data=calib.gain, **planes)
    d.attrs.update(units="ADU/keV", stages="G0 G1 G2")
    if calib.noise is not None:
        g.create_dataset("noise", data=calib.noise, **planes).attrs.update(units="ADU", stages="G0 G1 G2")
    mask = np.zeros(calib.frame_shape, np.uint8) if calib.mask is None else calib.mask.astype(np.uint8)
    g.create_dataset("pixel_mask", data=mask, **big).attrs["description"] = "1 = bad pixel (raw layout)"
    g.create_dataset("photon_energy", data=calib.energy_keV).attrs["units"] = "keV"
    if calib.geometry is not None:
        geo = g.create_group("geometry")
        geo.attrs["NX_class"] = "NXcollection"
        geo.create_dataset("module_placement", data=calib.geometry.modules).attrs["columns"] = (
            "origin_y origin_x fast_y fast_x slow_y slow_x: assembled module pixel (r, c) at "
            "(origin_y + r*slow_y + c*fast_y, origin_x + r*slow_x + c*fast_x); module k = raw rows 512k..512k+511")
        geo.create_dataset("image_shape", data=np.array(calib.geometry.shape, np.int64))
        geo.attrs["double_pixels"] = ("chip-border pixels split over 2 (corners 4) output pixels: part j gets "
                                      "floor(v/k) + (j < v mod k), markers copied; keV: v/k")
    g.attrs["meta"] = json.dumps(calib.meta, default=str)
    if tracker is not None:
        write_pedestal_updates(g, tracker)
    return g


def write_pedestal_updates(group, tracker: PedestalTracker) -> None:
    """The tracker's settings and G0 pedestal snapshots, in `group`/pedestal_updates."""
    u = group.create_group("pedestal_updates")
    u.attrs["NX_class"] = "NXcollection"
    u.attrs.update(window=tracker.window, threshold_photons=tracker.threshold, frames_converted=tracker.frames,
                   rule="a G0 pixel with |photons| < threshold (before rounding): pedestal += (adc - pedestal) / window")
    h, w = tracker.pedestal_g0.shape
    u.create_dataset("frames", data=np.array([s[0] for s in tracker.snapshots], np.int64))
    u.create_dataset("pedestal_g0", data=np.array([s[1] for s in tracker.snapshots], np.float32).reshape(-1, h, w),
                     chunks=(1, h, w), compression="gzip", compression_opts=1, shuffle=True).attrs["units"] = "ADU"
    u.create_dataset("final_pedestal_g0", data=tracker.pedestal_g0, compression="gzip", compression_opts=1,
                     shuffle=True).attrs["units"] = "ADU"


def read_calibration(group) -> Calibration:
    """The Calibration stored by write_calibration in `group` (an h5py group)."""
    geometry = None
    if "geometry" in group:
        geometry = Geometry(group["geometry/module_placement"][...], tuple(group["geometry/image_shape"][...]))
    noise = group["noise"][...] if "noise" in group else None
    meta = json.loads(group.attrs.get("meta", "{}"))
    return Calibration(group["pedestal"][...], group["gain"][...], float(group["photon_energy"][()]),
                       group["pixel_mask"][...] != 0, geometry, noise, meta)


def read_pedestal_updates(group) -> Optional[dict]:
    """{"frames", "pedestal_g0", "final_pedestal_g0", "window", "threshold_photons"} or None."""
    if "pedestal_updates" not in group:
        return None
    u = group["pedestal_updates"]
    return dict(frames=u["frames"][...], pedestal_g0=u["pedestal_g0"][...], final_pedestal_g0=u["final_pedestal_g0"][...],
                window=int(u.attrs["window"]), threshold_photons=float(u.attrs["threshold_photons"]))


def describe_calibration(group) -> str:
    """A human-readable summary of a stored calibration (what `redml inspect` prints)."""
    c = read_calibration(group)
    lines = [f"JUNGFRAU calibration {group.name}: raw frames {c.frame_shape[0]} x {c.frame_shape[1]}, "
             f"photon energy {c.energy_keV:g} keV, photons {group.attrs.get('photon_dtype', '?')}"]
    for s, name in enumerate(("G0", "G1", "G2")):
        ped, gain = c.pedestal[s], c.gain[s]
        line = (f"  {name}: pedestal median {np.nanmedian(ped):.1f} ADU, gain median {np.nanmedian(gain):.4g} ADU/keV "
                f"({np.nanmedian(gain) * c.energy_keV:.4g} ADU/photon)")
        if c.noise is not None:
            line += f", noise median {np.nanmedian(c.noise[s]):.2f} ADU"
        lines.append(line)
    lines.append(f"  bad pixels: {int(c.mask.sum())} of {c.mask.size}")
    if c.geometry is not None:
        lines.append(f"  geometry: {c.geometry.n_modules} modules -> {c.geometry.shape[0]} x {c.geometry.shape[1]}, "
                     f"double pixels split")
    lines.append(f"  markers: {group.attrs.get('markers', '?')}")
    if c.meta:
        lines.append(f"  provenance: {json.dumps(c.meta, default=str)}")
    u = read_pedestal_updates(group)
    if u is not None:
        drift = ""
        if len(u["final_pedestal_g0"]):
            d = u["final_pedestal_g0"] - c.pedestal[0]
            drift = f", final G0 drift median {np.nanmedian(d):+.2f} ADU (max |{np.nanmax(np.abs(d)):.2f}|)"
        lines.append(f"  pedestal tracking: window {u['window']}, threshold {u['threshold_photons']:g} photons, "
                     f"{len(u['frames'])} snapshots{drift}")
    return "\n".join(lines)


def compress_raw(frames: Iterable, out, calib: Calibration, *, q=1, photon_dtype=np.int32,
                 track_window: int = 0, track_threshold: float = 0.5, snapshot_every: int = 0,
                 nthreads: int = 0, **codec_settings) -> dict:
    """Converts raw frames and writes them as redml chunks (FrameWriter, entry/data/data) to
    the HDF5 file `out`, with the calibration in /entry/instrument/detector/jungfrau_calibration
    (written before the first frame; the pedestal updates, with tracking, after the last).
    Returns the summed status counts and the number of frames."""
    import h5py

    from .writer import FrameWriter

    dt = _photon_dtype(photon_dtype)
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
    return dict(frames=n, counts=totals)


# ----------------------------------------------------------------------------- simulation

@dataclass
class SimulatedDetector:
    """A simulated JUNGFRAU: the true calibration (pedestal, gain, noise maps; mask = dead or
    noisy pixels, as a facility's calibration would flag them) and its bad pixels."""

    calibration: Calibration
    dead: np.ndarray
    noisy: np.ndarray
    switch_fraction: float = 0.9
    noisy_factor: float = 10.0

    def raw(self, photons, rng, noise: bool = True) -> np.ndarray:
        return photons_to_raw(photons, self.calibration, rng, noise=noise, dead=self.dead, noisy=self.noisy,
                              noisy_factor=self.noisy_factor, switch_fraction=self.switch_fraction)

    def dark_run(self, rng, n_frames: int, stage: int) -> np.ndarray:
        return simulate_dark_run(self.calibration, rng, n_frames, stage, dead=self.dead, noisy=self.noisy,
                                 noisy_factor=self.noisy_factor)


def simulate_detector(rng: np.random.Generator, n_modules: int = 1, energy_keV: float = 12.4, *, frame_shape=None,
                      geometry="auto", pedestal=TYPICAL_PEDESTAL, gain=TYPICAL_GAIN, noise=(12.0, 4.0, 3.0),
                      spread=(0.02, 0.05, 0.1), dead_fraction: float = 2e-4, noisy_fraction: float = 2e-4,
                      switch_fraction: float = 0.9) -> SimulatedDetector:
    """A random JUNGFRAU of n_modules (or any frame_shape, without geometry): per-pixel
    pedestals (ADU), gains (ADU/keV) and noise (ADU) around the given per-stage values, with
    relative Gaussian spreads (pedestal, gain, noise), and a few dead (stuck ADC) and noisy
    pixels. geometry "auto": the 4M layout for 8 modules, a column of modules otherwise;
    None: raw layout only."""
    shape = tuple(frame_shape) if frame_shape is not None else (n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])
    if geometry == "auto":
        geometry = None if frame_shape is not None else (
            Geometry.jungfrau_4m() if n_modules == 8 else Geometry.grid(n_modules, 1))

    def maps(values, rel):
        v = np.asarray(values, np.float64)[:, None, None]
        return (v * (1 + rel * rng.standard_normal((3, *shape)))).astype(np.float32)

    dead = rng.random(shape) < dead_fraction
    noisy = (rng.random(shape) < noisy_fraction) & ~dead
    calib = Calibration(np.clip(maps(pedestal, spread[0]), 0, ADC_MAX), maps(gain, spread[1]), energy_keV,
                        dead | noisy, geometry, np.abs(maps(noise, spread[2])), dict(simulated=True))
    return SimulatedDetector(calib, dead, noisy, switch_fraction)


def _stage_ranges(calib: Calibration) -> np.ndarray:
    """(3, h, w) charge in keV that fills each stage's ADC range from its pedestal."""
    ped, gain = calib.pedestal.astype(np.float64), calib.gain.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(gain > 0, (ADC_MAX - ped) / gain, ped / -gain)


def photons_to_raw(photons, calib: Calibration, rng: np.random.Generator, *, noise: bool = True,
                   dead: Optional[np.ndarray] = None, noisy: Optional[np.ndarray] = None, noisy_factor: float = 10.0,
                   switch_fraction: float = 0.9) -> np.ndarray:
    """Raw JUNGFRAU words (uint16, raw layout) that `calib` converts back to `photons`.

    photons: counts per pixel in the raw layout (h, w), or an assembled image of
    calib.geometry's shape (double pixels collect the sum of their output pixels; photons in
    gaps are lost). The charge (photons * energy) picks the gain stage the way the hardware
    switches: G0 until it would fill switch_fraction of G0's ADC range, then G1 likewise,
    then G2; G2 beyond its range gives the overload word 0xC000. ADC = round(pedestal +
    charge * gain + noise), noise: calib.noise (ADU, per stage) if `noise`, times
    noisy_factor on `noisy` pixels; `dead` pixels read 0 (G0, ADC 0) whatever the charge.
    Noise-free, the conversion gives the photons back exactly wherever |gain| * energy >= 1
    ADU per photon (each photon moves the ADC by at least one step)."""
    ph = np.asarray(photons)
    if calib.geometry is not None and ph.shape == calib.geometry.shape and ph.shape != calib.frame_shape:
        ph = calib.geometry.disassemble(ph)
    if ph.shape != calib.frame_shape:
        raise ValueError(f"photons have shape {ph.shape}; the calibration takes {calib.frame_shape} "
                         f"(or the geometry's {calib.geometry.shape if calib.geometry else None})")
    charge = ph.astype(np.float64) * calib.energy_keV
    limit = switch_fraction * _stage_ranges(calib)
    stage = np.where(charge < limit[0], 0, np.where(charge < limit[1], 1, 2))
    idx = stage[None]
    ped = np.take_along_axis(calib.pedestal, idx, 0)[0].astype(np.float64)
    gain = np.take_along_axis(calib.gain, idx, 0)[0].astype(np.float64)
    adc = ped + charge * gain
    if noise:
        if calib.noise is None:
            raise ValueError("noise=True needs calib.noise")
        sigma = np.take_along_axis(calib.noise, idx, 0)[0].astype(np.float64)
        if noisy is not None:
            sigma = np.where(noisy, sigma * noisy_factor, sigma)
        adc = adc + sigma * rng.standard_normal(adc.shape)
    adc = np.rint(adc)
    over = (stage == 2) & ((adc <= 0) | (adc >= ADC_MAX))
    words = (np.asarray(GAIN_BITS, np.uint16)[stage] << 14) | np.clip(adc, 0, ADC_MAX).astype(np.uint16)
    words[over] = OVERLOAD_WORD
    if dead is not None:
        words[np.asarray(dead, bool)] = 0
    return words


def simulate_dark_run(calib: Calibration, rng: np.random.Generator, n_frames: int, stage: int = 0, *,
                      dead: Optional[np.ndarray] = None, noisy: Optional[np.ndarray] = None,
                      noisy_factor: float = 10.0) -> np.ndarray:
    """(n_frames, h, w) raw dark frames in `stage` (0, 1, 2; G1/G2 forced as on a real pedestal
    run): pedestal plus calib.noise, dead pixels at 0, noisy ones times noisy_factor."""
    if stage not in (0, 1, 2):
        raise ValueError("stage is 0, 1 or 2")
    if calib.noise is None:
        raise ValueError("a dark run needs calib.noise")
    sigma = calib.noise[stage].astype(np.float64)
    if noisy is not None:
        sigma = np.where(noisy, sigma * noisy_factor, sigma)
    ped = calib.pedestal[stage].astype(np.float64)
    frames = np.empty((n_frames, *calib.frame_shape), np.uint16)
    for i in range(n_frames):
        adc = np.clip(np.rint(ped + sigma * rng.standard_normal(ped.shape)), 0, ADC_MAX).astype(np.uint16)
        frames[i] = (GAIN_BITS[stage] << 14) | adc
        if dead is not None:
            frames[i][np.asarray(dead, bool)] = GAIN_BITS[stage] << 14
    return frames
