"""Detector geometry and the radial background model (streaming across frames).

    geom = BeamGeometry(beam_x=1231.5, beam_y=1263.5, distance_mm=300, pixel_size_mm=0.172, wavelength_a=0.98)
    bg = RadialBackground(geom, frame.shape, mask=bad_pixels)
    bg.update(frame)                 # fit (first frame) or blend in (later frames)
    clean = bg.subtract(frame)       # background-subtracted frame (float32)
    geom.resolution_map(frame.shape) # d-spacing per pixel, Angstrom

The profile per radial bin is a sigma-clipped mean and standard deviation (C++ core).
The model is stored beside the data (NXmx), never needed to decode a chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .spots import MARKERS

__all__ = ["BeamGeometry", "RadialBackground", "ICE_RINGS_A"]

ICE_RINGS_A = (3.897, 3.669, 3.441)  # d-spacings (angstrom) of hexagonal ice's strongest rings


@dataclass(frozen=True)
class BeamGeometry:
    """A flat detector normal to the beam: beam centre in pixels (fast x, slow y; pixel
    centres at +0.5), sample-detector distance, pixel size, wavelength."""

    beam_x: float
    beam_y: float
    distance_mm: float = 100.0
    pixel_size_mm: float = 0.075
    wavelength_a: float = 1.0

    def __post_init__(self):
        for name in ("distance_mm", "pixel_size_mm", "wavelength_a"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {v!r}")
        if not (np.isfinite(self.beam_x) and np.isfinite(self.beam_y)):
            raise ValueError("beam centre must be finite")

    def radius_map(self, shape) -> np.ndarray:
        """Distance of each pixel centre from the beam centre, in pixels."""
        h, w = shape
        y = np.arange(h, dtype=np.float64)[:, None] + 0.5 - self.beam_y
        x = np.arange(w, dtype=np.float64)[None, :] + 0.5 - self.beam_x
        return np.hypot(x, y)

    def two_theta_map(self, shape) -> np.ndarray:
        return np.arctan2(self.radius_map(shape) * self.pixel_size_mm, self.distance_mm)

    def resolution_map(self, shape) -> np.ndarray:
        """d-spacing (Angstrom) of each pixel; inf at the beam centre."""
        with np.errstate(divide="ignore"):
            return self.wavelength_a / (2 * np.sin(self.two_theta_map(shape) / 2))

    def resolution_at(self, x, y) -> np.ndarray:
        """d-spacing (Angstrom) at positions (pixel coordinates, centres at +0.5)."""
        r = np.hypot(np.asarray(x) - self.beam_x, np.asarray(y) - self.beam_y) * self.pixel_size_mm
        with np.errstate(divide="ignore"):
            return self.wavelength_a / (2 * np.sin(np.arctan2(r, self.distance_mm) / 2))

    @classmethod
    def from_nxmx(cls, path, entry: str = "entry") -> "BeamGeometry":
        """Reads beam centre, distance, pixel size and wavelength from an NXmx file."""
        import h5py

        with h5py.File(path, "r") as f:
            det = f[f"{entry}/instrument/detector"]

            def length_mm(d):
                units = d.attrs.get("units", b"m")
                units = units.decode() if isinstance(units, bytes) else str(units)
                scale = {"m": 1e3, "mm": 1.0, "um": 1e-3, "microns": 1e-3}.get(units, 1e3)
                return float(np.asarray(d[()]).ravel()[0]) * scale

            wl = f[f"{entry}/instrument/beam/incident_wavelength"]
            return cls(beam_x=float(det["beam_center_x"][()]), beam_y=float(det["beam_center_y"][()]),
                       distance_mm=length_mm(det["distance"]), pixel_size_mm=length_mm(det["x_pixel_size"]),
                       wavelength_a=float(np.asarray(wl[()]).ravel()[0]))


class RadialBackground:
    """Radial background with sigma clipping; update() blends new frames in so the model
    follows a slowly changing background (weight = the new frame's share). markers: which
    values are ignored, as in CodecSettings ("negative": every negative value; integrating
    detectors' "extremes" and "gaps": negative values are noise and count)."""

    def __init__(self, geometry: BeamGeometry, shape, *, bin_width: float = 1.0, clip: float = 3.0,
                 iterations: int = 5, mask=None, weight: float = 0.2, nthreads: int = 0, markers: str = "negative"):
        if not (bin_width > 0 and clip > 0 and 0 < weight <= 1):
            raise ValueError("bin_width and clip must be > 0, weight in (0, 1]")
        if markers not in MARKERS:
            raise ValueError(f"markers must be one of {sorted(MARKERS)}, not {markers!r}")
        self.markers = markers
        self.geometry, self.shape = geometry, tuple(shape)
        self.clip, self.iterations, self.weight, self.nthreads = clip, iterations, weight, nthreads
        self.radius = geometry.radius_map(self.shape)
        bins = np.floor(self.radius / bin_width).astype(np.int32)
        if mask is not None:
            bins[np.asarray(mask, bool)] = -1
        self.bins = np.ascontiguousarray(bins)
        self.nbins = int(bins.max()) + 1
        self.centres = (np.arange(self.nbins) + 0.5) * bin_width
        self.mean = self.sigma = self.count = None
        self.frames = 0

    def fit(self, frame: np.ndarray):
        """Profile of one frame: (mean, sigma, count) per radial bin."""
        frame = np.ascontiguousarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} does not match the model's {self.shape}")
        return _core.radial_profile(frame, self.bins, self.nbins, float(self.clip), int(self.iterations),
                                    int(self.nthreads), MARKERS[self.markers])

    def update(self, frame: np.ndarray) -> "RadialBackground":
        mean, sigma, count = self.fit(frame)
        if self.mean is None:
            self.mean, self.sigma, self.count = mean, sigma, count
        else:
            a = np.where(count > 0, self.weight, 0.0)
            self.mean = (1 - a) * self.mean + a * mean
            self.sigma = (1 - a) * self.sigma + a * sigma
            self.count = np.maximum(self.count, count)
        self.frames += 1
        return self

    def _interp(self, values) -> np.ndarray:
        if self.count is None or not (self.count > 0).any():
            raise ValueError("the background model has no data yet: call update(frame) first")
        ok = self.count > 0
        return np.interp(self.radius, self.centres[ok], values[ok]).astype(np.float32)

    def background(self) -> np.ndarray:
        """Per-pixel background (linear between bin centres)."""
        return self._interp(self.mean)

    def noise(self) -> np.ndarray:
        """Per-pixel standard deviation of the background."""
        return self._interp(self.sigma)

    def subtract(self, frame: np.ndarray) -> np.ndarray:
        return np.asarray(frame, dtype=np.float32) - self.background()

    def snr(self, frame: np.ndarray) -> np.ndarray:
        """(frame - background) / sigma per pixel."""
        return self.subtract(frame) / np.maximum(self.noise(), 1e-6)
