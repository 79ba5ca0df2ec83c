"""Frame sets shared by the benchmarks: real Pilatus 6M stills and synthetic Poisson frames.

    from _common import FrameSet, load_thaumatin, synthetic_set, best_of
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/thaumatin_grid"
JUNGFRAU_4M = (2068, 2164)


@dataclass
class FrameSet:
    """Frames of one kind: `frames` is (n, h, w); `mu` the true mean per pixel (synthetic only)."""

    name: str
    frames: np.ndarray
    mu: Optional[np.ndarray] = None

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes

    @property
    def npix(self) -> int:
        return self.frames.size


def thaumatin_paths(data_dir: Path | str = DATA_DIR, indices: Optional[Sequence[int]] = None) -> list[Path]:
    """The thau_3_2_NNNN.cbf.bz2 stills (all 19, or those numbered in `indices`)."""
    data_dir = Path(data_dir)
    paths = sorted(data_dir.glob("thau_3_2_*.cbf.bz2"))
    if indices is not None:
        paths = [data_dir / f"thau_3_2_{i:04d}.cbf.bz2" for i in indices]
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        # The 19 stills are the project's reference data (../shared/data beside the checkout);
        # a clone without it gets one clear line, not a traceback.
        raise SystemExit(f"benchmark: thaumatin stills not found in {data_dir} "
                         f"({', '.join(p.name for p in missing) if missing else 'no thau_3_2_*.cbf.bz2'}); "
                         "they come with the project's reference data (../shared/data/thaumatin_grid): "
                         "pass --data DIR where the benchmark has it")
    return paths


def load_thaumatin(data_dir: Path | str = DATA_DIR, indices: Optional[Sequence[int]] = None) -> FrameSet:
    """Real Pilatus 6M stills (int32; -1/-2 mark gaps and bad pixels)."""
    import fabio

    frames = np.stack([np.asarray(fabio.open(str(p)).data) for p in thaumatin_paths(data_dir, indices)])
    return FrameSet("thaumatin", np.ascontiguousarray(frames, dtype=np.int32))


def spot_mean(shape, background: float, n_spots: int, rng: np.random.Generator, sigma: float = 1.2,
              peak_range=(50.0, 2000.0), radius: int = 7) -> np.ndarray:
    """Mean photons per pixel: flat background plus Gaussian spots (log-uniform peak heights)."""
    h, w = shape
    mu = np.full(shape, background, dtype=np.float64)
    ys = rng.uniform(radius, h - radius - 1, n_spots)
    xs = rng.uniform(radius, w - radius - 1, n_spots)
    peaks = np.exp(rng.uniform(np.log(peak_range[0]), np.log(peak_range[1]), n_spots))
    d = np.arange(-radius, radius + 1)
    for y, x, p in zip(ys, xs, peaks):
        iy, ix = int(y), int(x)
        gy = np.exp(-((iy + d - y) ** 2) / (2 * sigma**2))
        gx = np.exp(-((ix + d - x) ** 2) / (2 * sigma**2))
        mu[iy - radius:iy + radius + 1, ix - radius:ix + radius + 1] += p * np.outer(gy, gx)
    return mu


def synthetic_set(background: float, dtype, shape=JUNGFRAU_4M, n_frames: int = 1, n_spots: Optional[int] = None,
                  seed: int = 1234) -> FrameSet:
    """Poisson frames of a flat background plus spots; same seed -> same counts for every dtype.

    n_spots defaults to 300 per JUNGFRAU 4M area.
    """
    if n_spots is None:
        n_spots = max(1, round(300 * shape[0] * shape[1] / (JUNGFRAU_4M[0] * JUNGFRAU_4M[1])))
    mus, frames = [], []
    for i in range(n_frames):
        rng = np.random.default_rng([seed, i])
        mu = spot_mean(shape, background, n_spots, rng)
        mus.append(mu)
        frames.append(rng.poisson(mu).astype(dtype))
    name = f"syn-bg{background:g}-{np.dtype(dtype).name}"
    if shape != JUNGFRAU_4M:
        name += f"-{shape[0]}x{shape[1]}"
    return FrameSet(name, np.stack(frames), np.stack(mus))


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(best wall time in seconds over `repeats` calls of fn, fn's last result)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out
