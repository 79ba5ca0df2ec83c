"""Finder parameter tuning against reference spots (DIALS strong spots or a labelled set).

    result = redml_study.tune.tune(frames, reference_positions)
    result.best            # FinderSettings with the highest F1
    result.table           # every setting tried with its precision / recall / F1

Coordinate descent over a small grid: one parameter at a time, keeping the best, two
rounds. A few dozen finder runs instead of a hand-run grid of jobs.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .metrics import score_spots
from redml_reduce.spots import FinderSettings, find_spots

__all__ = ["tune", "TuneResult", "DEFAULT_GRID"]

DEFAULT_GRID = {
    "sigma_s": [2.0, 2.5, 3.0, 3.5, 4.0, 5.0],
    "sigma_b": [3.0, 4.0, 6.0, 8.0],
    "min_pixels": [1, 2, 3, 4, 6],
    "kernel": [2, 3, 4],
    "max_separation": [-1.0, 2.0],
}


@dataclass
class TuneResult:
    best: FinderSettings
    best_score: dict
    default_score: dict
    table: list = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"{'setting':<60} {'P':>6} {'R':>6} {'F1':>6}"]
        for settings, sc in sorted(self.table, key=lambda r: -r[1]["f1"])[:10]:
            desc = ", ".join(f"{k}={v}" for k, v in settings.items())
            lines.append(f"{desc:<60} {sc['precision']:6.3f} {sc['recall']:6.3f} {sc['f1']:6.3f}")
        lines.append(f"best F1 {self.best_score['f1']:.3f} (defaults {self.default_score['f1']:.3f}) "
                     f"after {len(self.table)} settings in {self.seconds:.1f} s")
        return "\n".join(lines)


def tune(frames, reference, *, masks=None, radius: float = 2.0, grid=None, rounds: int = 2,
         start: FinderSettings | None = None, nthreads: int = 0) -> TuneResult:
    """Finds finder settings maximizing F1 of the found spots against `reference` (one
    (n, 2) array of x, y positions per frame, pixel centres at +0.5)."""
    grid = grid or DEFAULT_GRID
    if len(frames) != len(reference):
        raise ValueError("one reference list per frame is needed")
    t0 = time.perf_counter()
    cache: dict = {}

    def evaluate(s: FinderSettings) -> dict:
        key = tuple(sorted(asdict(s).items()))
        if key not in cache:
            found = []
            for i, f in enumerate(frames):
                peaks, _ = find_spots(f, None if masks is None else masks[i], nthreads=nthreads, settings=s)
                found.append(np.stack([peaks["x"], peaks["y"]], axis=1))
            cache[key] = score_spots(found, reference, radius).as_dict()
        return cache[key]

    best = start or FinderSettings()
    default_score = best_score = evaluate(best)
    for _ in range(rounds):
        improved = False
        for name, values in grid.items():
            for v in values:
                try:
                    cand = replace(best, **{name: v})
                except (TypeError, ValueError):
                    continue  # e.g. min_count above the window size
                sc = evaluate(cand)
                if sc["f1"] > best_score["f1"] + 1e-12:
                    best, best_score, improved = cand, sc, True
        if not improved:
            break
    table = [(dict(k), v) for k, v in cache.items()]
    return TuneResult(best, best_score, default_score, table, time.perf_counter() - t0)
