"""JUNGFRAU calibrations: what the conversion needs per pixel (Calibration), PSI gain files,
and their storage in HDF5 (write_calibration, read_calibration, describe_calibration) or a
calibration directory (redml_reduce.formats.jungfrau_raw.load_calibration).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .layout import ADC_MAX, MODULE_SHAPE, ModuleLayout, markers

__all__ = ["Calibration", "read_psi_gain_file", "write_psi_gain_file", "gain_maps",
           "write_calibration", "read_calibration", "read_pedestal_updates", "write_pedestal_updates",
           "describe_calibration", "find_calibration_group", "CALIBRATION_GROUP"]

CALIBRATION_GROUP = "jungfrau_calibration"


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
    geometry: Optional[ModuleLayout] = None
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

    def photon_range(self) -> tuple[float, float]:
        """(lowest, highest) photon count that any raw word of any good pixel (not masked, a
        finite non-zero gain) converts to, in any gain stage: ADC 0 or ADC_MAX, whichever
        end each pixel's gain sign makes the extreme. (nan, nan) when no pixel is good."""
        lo, hi = math.inf, -math.inf
        for ped, gain in zip(self.pedestal, self.gain):  # float32, whole planes: ~70 ms for a 4M
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                inv = np.float32(1) / gain
                at_zero = np.negative(ped) * inv
                at_max = (np.float32(ADC_MAX) - ped) * inv
            low, high = np.fmin(at_zero, at_max), np.fmax(at_zero, at_max, out=at_max)
            bad = ~np.isfinite(at_zero)
            bad |= ~np.isfinite(high)
            bad |= np.isinf(gain)  # the conversion masks these (their quotient, 0, is not a count)
            if self.mask is not None:
                bad |= self.mask
            low[bad], high[bad] = np.inf, -np.inf
            lo, hi = min(lo, float(low.min())), max(hi, float(high.max()))
        lo, hi = lo / self.energy_keV, hi / self.energy_keV
        return (lo, hi) if lo <= hi else (math.nan, math.nan)

    def photon_dtype(self) -> np.dtype:
        """int16 where every count this calibration can produce fits between int16's markers
        (its minimum and maximum, with two photons of margin for the rounding and the G0
        pedestal's tracking), else int32: the smaller frame loses nothing (half the bytes to
        convert and encode: a JUNGFRAU at 12 keV tops out near 14000 photons in G2)."""
        lo, hi = self.photon_range()
        info = np.iinfo(np.int16)
        fits = math.isfinite(lo) and lo > info.min + 2 and hi < info.max - 2
        return np.dtype(np.int16) if fits else np.dtype(np.int32)

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
        geometry = None if g is None else ModuleLayout.from_dict(g)
        return cls(np.asarray(d["pedestal"]), np.asarray(d["gain"]), d["energy_keV"], d.get("mask"), geometry,
                   d.get("noise"), dict(d.get("meta") or {}))


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


# ----------------------------------------------------------------------------- HDF5 record

def find_calibration_group(f):
    found = []
    f.visititems(lambda name, obj: found.append(obj) if name.rsplit("/", 1)[-1] == CALIBRATION_GROUP else None)
    if not found:
        raise KeyError(f"no {CALIBRATION_GROUP} group in {f.filename}")
    return found[0]


def write_calibration(parent, calib: Calibration, tracker=None,
                      name: str = CALIBRATION_GROUP, photon_dtype=np.int32):
    """Stores `calib` (and the pedestal updates of `tracker`, a PedestalTracker, if any) as an NXcollection `name`
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


def write_pedestal_updates(group, tracker) -> None:
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
        geometry = ModuleLayout(group["geometry/module_placement"][...], tuple(group["geometry/image_shape"][...]))
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
