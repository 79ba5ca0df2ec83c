"""Pedestals from dark runs: per-pixel statistics of each gain stage and the bad pixels they show."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import ADC_MAX, ERROR_WORD, GAIN_BITS, OVERLOAD_WORD

__all__ = ["DarkAccumulator", "DarkResult", "pedestal_from_dark"]


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
