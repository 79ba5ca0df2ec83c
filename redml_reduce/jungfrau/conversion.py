"""JUNGFRAU raw frames to photons, in the C++ core.

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

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _core
from .calibration import Calibration
from .layout import MODULE_SHAPE, STATUS, photon_dtype

__all__ = ["convert", "ConversionInfo", "PedestalTracker"]


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
    dt = photon_dtype(out_dtype)
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
