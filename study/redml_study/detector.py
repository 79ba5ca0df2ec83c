"""A simulated JUNGFRAU: random per-pixel pedestals, gains and noise, dead and noisy pixels, raw
words from photon images (photons_to_raw) and dark runs (simulate_dark_run); and the frames an
integrating detector's pipeline hands on after pedestal subtraction (integrating_frame)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from redml_reduce.jungfrau import (ADC_MAX, GAIN_BITS, MODULE_SHAPE, OVERLOAD_WORD, TYPICAL_GAIN, TYPICAL_PEDESTAL,
                                   Calibration, ModuleLayout)

__all__ = ["SimulatedDetector", "simulate_detector", "photons_to_raw", "simulate_dark_run", "integrating_frame",
           "IntegratingDetector"]


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
            ModuleLayout.jungfrau_4m() if n_modules == 8 else ModuleLayout.grid(n_modules, 1))

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


def integrating_frame(photons, rng: np.random.Generator, *, gain: Optional[float] = None, read_noise: float = 0.2,
                      dtype="int16", gaps: Optional[np.ndarray] = None, gap_value=None) -> np.ndarray:
    """A pedestal-subtracted frame of an integrating detector (JUNGFRAU, CSPAD, ePix) holding
    `photons` (counts per pixel): photons plus Gaussian read noise of `read_noise` photons, so
    about half of the empty pixels are negative.

    gain: ADU per photon (10-40 for these detectors): integer ADU, rounded, of `dtype`
        (int16 or int32); None: float32 photons (what a JUNGFRAU conversion writes).
    gaps: pixels (module gaps, dead pixels) set to gap_value: by default the dtype's minimum
        (integers) or NaN (floats), the markers of redml's markers="extremes"; -1 for
        Pilatus-style gaps (markers="gaps").
    """
    signal = np.asarray(photons, np.float64) + read_noise * rng.standard_normal(np.shape(photons))
    if gain is None:
        frame = signal.astype(np.float32)
    else:
        info = np.iinfo(dtype)
        frame = np.clip(np.rint(signal * gain), info.min + 1, info.max - 1).astype(dtype)
    if gaps is not None:
        if gap_value is None:
            gap_value = np.nan if gain is None else np.iinfo(dtype).min
        frame[np.asarray(gaps, bool)] = gap_value
    return frame


@dataclass(frozen=True)
class IntegratingDetector:
    """How an integrating detector's pipeline hands on frames (integrating_frame: photons plus
    Gaussian read noise, pedestal subtracted, module gaps at the dtype's minimum or NaN), and
    what redml and DIALS are told about them.

    gain: ADU per photon (integer ADU of `dtype`); None: float32 photons. read_noise: photons.
    """

    gain: Optional[float] = 20.0
    read_noise: float = 0.2
    dtype: str = "int32"

    @property
    def adu_per_photon(self) -> float:
        return 1.0 if self.gain is None else float(self.gain)

    @property
    def frame_dtype(self) -> np.dtype:
        return np.dtype("float32" if self.gain is None else self.dtype)

    def frame(self, photons: np.ndarray, gaps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The detector's frame of `photons` (values in `gaps` are ignored: they become markers)."""
        return integrating_frame(np.where(gaps, 0, photons), rng, gain=self.gain, read_noise=self.read_noise,
                                 dtype=self.dtype, gaps=gaps)

    def redml_options(self) -> dict:
        """What every redml codec gets on these frames: the gain in data units per photon, the
        markers integrating_frame writes ("extremes": the dtype's minimum, NaN) and the read
        noise estimated from each frame, as a user who knows only the gain would set them."""
        return {"gain": self.adu_per_photon, "markers": "extremes", "read_noise": "auto"}

    def nxmx_options(self) -> dict:
        """Trusted range for DIALS: every value but the markers (the writer's default underload
        of 0 would make dxtbx mask the negative half of the background)."""
        if self.gain is None:
            return {"underload_value": -(2**31) + 1}  # NaN gaps: in the pixel mask
        info = np.iinfo(self.dtype)
        return {"underload_value": int(info.min) + 1, "saturation_value": int(info.max) - 1}

    def dials_options(self) -> dict:
        """Dials keywords for these frames: the gain for the spot finder's dispersion test and
        for the summation variances (dxtbx's NXmx reader leaves the panel gain at 1), and the
        simple background model DIALS picks for detectors that are not photon counters (its
        GLM model takes the pixels for Poisson counts)."""
        g = f"{self.adu_per_photon:g}"
        return {"find_spots_options": (f"spotfinder.threshold.dispersion.gain={g}",),
                "integrate_options": ("algorithm=stills", f"integration.summation.detector_gain={g}",
                                      "integration.background.algorithm=simple")}
