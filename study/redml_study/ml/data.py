"""Training and test frames made by the project: simulated stills with per-pixel labels.

    samples = make_set("weak", n=8, seed=1)        # list of Sample
    s.frame, s.mask, s.geometry, s.label, s.truth (n, 2) x, y, s.artefacts (k, 2)

Kinds (redml_study.sim, one JUNGFRAU module of 514 x 1030 pixels by default):
  strong    lysozyme (P43212), bright spots;
  weak      a large cell (thaumatin, P41212 58.6 58.6 151.5), weak signal: most detectable
            reflections at SNR ~1-2;
  artefact  blank shots (no crystal) with planted non-lattice features
            (redml_study.ml.artefacts): every spot found there is false;
  mixed     strong hits with planted features.
A reflection is *detectable* (a positive, and counted by recall) when its expected SNR
I / sqrt(I + B) >= SNR_FLOOR, B the background under a 3x3 box (the simulator's
definition); fainter reflections are left out of the loss (label IGNORE) and of the truth.

Labels per pixel: 0 background, 1 lattice reflection (pixel centres within 1.5 px of a
detectable reflection), 2 planted artefact or a hot pixel (negative, weighted up in
training), 255 ignore. Every frame is a pure function of (kind, seed, index).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..sim import Crystal, DetectorLayout, ShotSettings, StillSimulator
from .artefacts import plant

__all__ = ["Sample", "KINDS", "SNR_FLOOR", "make_set", "make_sets", "small_detector", "BACKGROUND", "LATTICE",
           "ARTEFACT", "IGNORE"]

BACKGROUND, LATTICE, ARTEFACT, IGNORE = 0, 1, 2, 255
SNR_FLOOR = 1.0
THAUMATIN = Crystal("P41212", (58.6, 58.6, 151.5, 90.0, 90.0, 90.0))


def small_detector() -> DetectorLayout:
    return DetectorLayout(modules=(1, 1), name="JUNGFRAU module (simulated)")


# kind -> (crystal, shot settings, plant artefacts)
KINDS = {
    "strong": (Crystal(), ShotSettings(background=1.0, water_ring=2.0, signal=2000, hit_rate=1.0, distance_mm=80.0), False),
    "weak": (THAUMATIN, ShotSettings(background=1.0, water_ring=2.0, signal=40, hit_rate=1.0, distance_mm=100.0), False),
    "artefact": (Crystal(), ShotSettings(background=1.0, water_ring=2.0, signal=2000, hit_rate=0.0, distance_mm=80.0), True),
    "mixed": (Crystal(), ShotSettings(background=1.0, water_ring=2.0, signal=2000, hit_rate=1.0, distance_mm=80.0), True),
}
_KIND_IDS = {k: i for i, k in enumerate(KINDS)}


@dataclass
class Sample:
    kind: str
    frame: np.ndarray           # int32 photons, gaps -1
    mask: np.ndarray            # bool: module gaps
    geometry: object            # redml_reduce.background.BeamGeometry
    label: np.ndarray           # uint8 per pixel (see module doc)
    truth: np.ndarray           # (n, 2) x, y of the detectable reflections
    truth_d: np.ndarray         # their d-spacings (Angstrom)
    artefacts: np.ndarray       # (k, 2) x, y of spot-like planted artefacts
    hit: bool
    counts: dict = field(default_factory=dict)

    @property
    def d_min(self) -> float:
        """Resolution limit of the detectable reflections (their 5th percentile of d); nan on blanks."""
        return float(np.percentile(self.truth_d, 5)) if len(self.truth_d) >= 5 else float("nan")


def _disc(shape, xy, radius):
    """Pixels whose centres are within radius of any position."""
    h, w = shape
    out = np.zeros(shape, bool)
    r = int(np.ceil(radius))
    for dy in range(-r - 1, r + 2):
        for dx in range(-r - 1, r + 2):
            i = np.floor(xy[:, 1]).astype(int) + dy
            j = np.floor(xy[:, 0]).astype(int) + dx
            ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
            ok &= np.hypot(j + 0.5 - xy[:, 0], i + 0.5 - xy[:, 1]) <= radius
            out[i[ok], j[ok]] = True
    return out


def simulator(kind: str, seed: int, detector: DetectorLayout | None = None) -> StillSimulator:
    crystal, settings, _ = KINDS[kind]
    return StillSimulator(detector or small_detector(), crystal, settings, seed=seed)


def sample(sim: StillSimulator, kind: str, index: int, seed: int) -> Sample:
    shot = sim.shot(index)
    frame = shot.frame.astype(np.int64)
    label = np.zeros(frame.shape, np.uint8)
    artefacts, counts = np.zeros((0, 2)), {}
    if KINDS[kind][2]:
        rng = np.random.default_rng([seed, _KIND_IDS[kind], index, 0xA27E])
        extra, added, artefacts, counts = plant(rng, frame.shape, sim.geometry, sim.mask)
        frame = frame + rng.poisson(extra) + added
        label[(extra >= 1.0) | (added > 0)] = ARTEFACT
        label[_disc(frame.shape, artefacts, 1.5)] = ARTEFACT
    label[sim.hot] = ARTEFACT
    refl = shot.reflections
    snr = refl["intensity"] / np.sqrt(refl["intensity"] + refl["background"])
    good = snr >= SNR_FLOOR
    xy = np.stack([refl["x"], refl["y"]], axis=1)
    label[_disc(frame.shape, xy[~good & (refl["intensity"] >= 1)], 1.5)] = IGNORE
    label[_disc(frame.shape, xy[good], 1.5)] = LATTICE
    frame[sim.mask] = -1
    label[sim.mask] = IGNORE
    return Sample(kind, frame.astype(np.int32), sim.mask.copy(), sim.geometry, label, xy[good], refl["d"][good],
                  artefacts, shot.hit, counts)


def make_set(kind: str, n: int, seed: int, detector: DetectorLayout | None = None, start: int = 0) -> list:
    """n frames of one kind; a pure function of (kind, seed, start, n, detector)."""
    sim = simulator(kind, seed, detector)
    return [sample(sim, kind, i, seed) for i in range(start, start + n)]


def make_sets(n_per_kind: int, seed: int, kinds=tuple(KINDS), detector=None) -> list:
    return [s for k in kinds for s in make_set(k, n_per_kind, seed, detector)]
