"""Spot finding: local dispersion threshold and connected components (C++ core).

    peaks, spot_mask = redml_reduce.find_spots(frame, mask=bad_pixels)
    peaks["x"], peaks["y"], peaks["total"], peaks["snr"] ...

The same finder decides the region the codec keeps losslessly (dilated by roi_margin).
Its defaults reproduce the criterion of DIALS's default spot finder (dispersion_extended:
7x7 window, sigma_background 6, sigma_strong 3, min_local 2, spots of 3-1000 pixels,
peak-to-centroid distance <= 2), so the spots it keeps are the spots DIALS will index.

Integrating detectors (pedestal-subtracted ADU or float photons, negative values as often
as not): markers="extremes" or "gaps" (as in CodecSettings) makes negative values noise,
and read_noise (data units, or "auto") adds it to the model's variance,
var = gain * mean + read_noise^2, in the dispersion and strong-pixel tests:

    peaks, _ = find_spots(frame_adu, gain=20.0, markers="extremes", read_noise="auto")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from .arrays import as_frame, as_map, check_range

__all__ = ["FinderSettings", "find_spots", "roi_mask", "is_hit", "PEAK_DTYPE", "MARKERS"]

# Which values are the detector's markers (csrc/redml.h, redml_markers): "negative" for photon
# counters (every negative value is one); integrating detectors' negative values are noise.
MARKERS = {"negative": 0, "extremes": 1, "gaps": 2}

PEAK_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("total", "<f8"), ("max", "<f8"), ("background", "<f8"),
                       ("snr", "<f8"), ("npix", "<i4"), ("x0", "<i4"), ("y0", "<i4"), ("x1", "<i4"),
                       ("y1", "<i4")], align=True)
"""One spot: centroid x (fast) and y (slow) with pixel centres at +0.5 (DIALS convention),
background-subtracted total, brightest value, mean local background, SNR, pixel count and
half-open bounding box."""
assert PEAK_DTYPE.itemsize == _core.PEAK_RECORD_SIZE


@dataclass(frozen=True)
class FinderSettings:
    """Spot finder parameters (defaults: DIALS's dispersion_extended defaults).

    markers, read_noise: integrating detectors, as in CodecSettings: markers "extremes" or
    "gaps" (negative values are noise, only the markers are ignored), read_noise in data
    units or "auto" (estimated from the frame as the encoder does; needs those markers).
    """

    kernel: int = 3
    sigma_b: float = 6.0
    sigma_s: float = 3.0
    gain: float = 1.0
    min_count: int = 2
    threshold: float = 0.0
    min_pixels: int = 3
    max_pixels: int = 1000
    max_separation: float = 2.0
    read_noise: Union[float, str] = 0.0
    markers: str = "negative"

    def __post_init__(self):
        check_range("kernel", self.kernel, 1, 64, integer=True)
        check_range("sigma_b", self.sigma_b, 0, 1e6)
        check_range("sigma_s", self.sigma_s, 0, 1e6)
        check_range("gain", self.gain, 0, 1e9, open_low=True)
        check_range("min_count", self.min_count, 2, (2 * self.kernel + 1) ** 2, integer=True)
        check_range("threshold", self.threshold, -1e30, 1e30)
        check_range("min_pixels", self.min_pixels, 1, 10**9, integer=True)
        check_range("max_pixels", self.max_pixels, self.min_pixels, 10**9, integer=True)
        check_range("max_separation", self.max_separation, -1, 1e6)
        if self.markers not in MARKERS:
            raise ValueError(f"markers must be one of {sorted(MARKERS)}, not {self.markers!r}")
        if self.read_noise != "auto":
            check_range("read_noise", self.read_noise, 0, 1e30)
        if self.read_noise != 0 and self.markers == "negative":
            raise ValueError("read_noise models integrating detectors: set markers='extremes' or 'gaps' "
                             "(negative values are noise there)")

    def core_fields(self) -> tuple:
        """The fields in the order of the C API's redml_finder_params."""
        return (self.kernel, self.sigma_b, self.sigma_s, self.gain, self.min_count, self.threshold,
                self.min_pixels, self.max_pixels, self.max_separation,
                -1.0 if self.read_noise == "auto" else float(self.read_noise), MARKERS[self.markers])


def find_spots(frame: np.ndarray, mask=None, *, nthreads: int = 0, settings: Optional[FinderSettings] = None,
               **fields):
    """Finds the spots of one frame.

    Returns (peaks, spot_mask): a structured array of PEAK_DTYPE and a boolean map of the
    pixels that belong to the accepted spots. `mask` marks bad pixels (ignored); the
    markers are ignored too (markers="negative": negative values, the dtype's maximum and
    non-finite values). settings: a FinderSettings, or its fields as keywords.
    """
    if settings is not None and fields:
        raise ValueError("give settings= or the finder's fields, not both")
    s = settings if settings is not None else FinderSettings(**fields)
    arr = as_frame(frame)
    raw, spot_mask = _core.find_spots(arr, as_map(mask, arr.shape, "mask"), *s.core_fields(), nthreads=nthreads)
    return np.frombuffer(raw, dtype=PEAK_DTYPE).copy(), spot_mask


def roi_mask(spot_mask: np.ndarray, margin: int = 2, keep=None, nthreads: int = 0) -> np.ndarray:
    """The region to keep losslessly: the spot mask dilated by `margin` pixels (square),
    plus user keep-regions (a boolean map). This is what the encoder does internally."""
    check_range("margin", margin, 0, 65535, integer=True)
    m = np.asarray(spot_mask)
    roi = _core.dilate(m.view(np.uint8) if m.dtype == np.bool_ else m.astype(np.uint8), margin, nthreads)
    if keep is not None:
        keep = np.asarray(keep, bool)
        if keep.shape != roi.shape:
            raise ValueError(f"keep has shape {keep.shape}, the mask {roi.shape}")
        roi |= keep
    return roi


def is_hit(peaks: np.ndarray, min_peaks: int = 10) -> bool:
    """A frame is a hit when it has at least min_peaks spots (the usual hit-finding rule)."""
    return len(peaks) >= min_peaks
