"""Still shots of serial crystallography with a known crystal and the true reflection list.

    from redml_study.sim import StillSimulator, Crystal, ShotSettings, jungfrau_4m
    sim = StillSimulator(jungfrau_4m(), Crystal(), ShotSettings(background=0.5, hit_rate=0.3), seed=1)
    shot = sim.shot(0)            # shot.frame (int32 photons, gaps -1), shot.reflections, shot.hit
    sim.geometry, sim.mask        # for the NXmx writer and for DIALS

Crystallography comes from cctbx (space group, systematic absences, symmetry-equivalent
reflections, reciprocal basis), run once per crystal under DIALS's interpreter and cached.
Per shot: a random orientation; every reflection's excitation error against the Ewald
sphere gives its partiality (mosaic spread, beam bandwidth and domain size widen the
sphere's shell); Wilson-distributed intensities (one per symmetry-unique reflection) with a
B-factor fall-off; spots are 2-D Gaussians integrated over pixels; background is air and
solvent scatter plus a water ring; Poisson noise; a few dead and hot pixels that no mask
knows about; module gaps set to -1 (and in `mask`).

Conventions are DIALS's (imgCIF): the beam travels along -z, the detector plane is at
z = -distance, the fast axis is +x and the slow axis -y; pixel (slow i, fast j) covers
[j, j+1) x [i, i+1) and the beam centre is given in those pixel coordinates.
"""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from redml_reduce.background import BeamGeometry

__all__ = ["DetectorLayout", "jungfrau_4m", "Crystal", "ShotSettings", "Shot", "StillSimulator",
           "REFLECTION_DTYPE", "lattice"]


REFLECTION_DTYPE = np.dtype([("frame", "<i4"), ("h", "<i4"), ("k", "<i4"), ("l", "<i4"), ("x", "<f8"),
                             ("y", "<f8"), ("intensity", "<f8"), ("partiality", "<f8"), ("d", "<f8"),
                             ("background", "<f8")])


@dataclass(frozen=True)
class DetectorLayout:
    """Modules of module_shape pixels (slow, fast) in a grid of modules (rows, columns),
    separated by gap (slow, fast) pixels. The default is a JUNGFRAU 4M as assembled by its
    receivers: 8 modules of 514 x 1030 (chip borders already split), 2164 x 2068 pixels."""

    module_shape: tuple = (514, 1030)
    modules: tuple = (4, 2)
    gap: tuple = (36, 8)
    pixel_size_mm: float = 0.075
    name: str = "JUNGFRAU 4M (simulated)"

    @property
    def shape(self) -> tuple:
        (mh, mw), (r, c), (gh, gw) = self.module_shape, self.modules, self.gap
        return (r * mh + (r - 1) * gh, c * mw + (c - 1) * gw)

    def gap_mask(self) -> np.ndarray:
        """True on pixels between modules."""
        (mh, mw), (r, c), (gh, gw) = self.module_shape, self.modules, self.gap
        gaps = np.ones(self.shape, bool)
        for i in range(r):
            for j in range(c):
                y, x = i * (mh + gh), j * (mw + gw)
                gaps[y:y + mh, x:x + mw] = False
        return gaps


def jungfrau_4m() -> DetectorLayout:
    return DetectorLayout()


@dataclass(frozen=True)
class Crystal:
    """The crystal: space group and cell (default tetragonal lysozyme), Wilson B factor,
    mosaic spread and mosaic domain size (both widen the reflections' Ewald-sphere shell)."""

    space_group: str = "P43212"
    unit_cell: tuple = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)
    b_factor: float = 20.0
    mosaicity_deg: float = 0.05
    domain_size_a: float = 5000.0

    def __post_init__(self):
        if len(self.unit_cell) != 6 or min(self.unit_cell[:3]) <= 0:
            raise ValueError(f"unit_cell needs a, b, c > 0 and three angles, not {self.unit_cell}")
        if self.mosaicity_deg < 0 or self.domain_size_a <= 0:
            raise ValueError("mosaicity_deg must be >= 0 and domain_size_a > 0")


@dataclass(frozen=True)
class ShotSettings:
    """What changes between experiments: beam, geometry, background and signal levels.

    background: air/solvent scatter in photons per pixel near the beam (falls off with angle);
    water_ring: extra photons per pixel at the peak of the ring (d = 3.3 Angstrom);
    signal: photons of a full reflection of average Wilson intensity at low resolution
    (crystal size and beam flux in one number; 'weak data' is a small signal);
    hit_rate: fraction of shots with a crystal; the rest are blanks.
    """

    wavelength_a: float = 1.0
    bandwidth: float = 0.002
    distance_mm: float = 120.0
    beam_center: Optional[tuple] = None  # (fast, slow) pixels; None = centre of the detector
    background: float = 0.5
    water_ring: float = 1.0
    signal: float = 2000.0
    hit_rate: float = 0.5
    spot_sigma_px: float = 0.9
    d_min: float = 1.4
    bad_pixel_fraction: float = 2e-5
    dtype: str = "int32"
    sensor_material: str = "Si"
    sensor_thickness_mm: float = 0.32

    def __post_init__(self):
        for name in ("wavelength_a", "distance_mm", "spot_sigma_px", "d_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("background", "water_ring", "signal", "bandwidth", "bad_pixel_fraction", "sensor_thickness_mm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.hit_rate <= 1:
            raise ValueError("hit_rate must be in [0, 1]")
        if np.dtype(self.dtype) not in (np.dtype("int32"), np.dtype("uint16"), np.dtype("uint32")):
            raise ValueError("dtype must be int32, uint16 or uint32")


@dataclass
class Shot:
    frame: np.ndarray
    reflections: np.ndarray  # REFLECTION_DTYPE, the reflections whose spots are on the detector
    hit: bool
    orientation: Optional[np.ndarray] = None  # U (3, 3): r_lab = U @ B @ hkl


def _cache_dir() -> Path:
    d = Path(os.environ.get("REDML_CACHE", Path.home() / ".cache" / "redml_reduce"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def lattice(crystal: Crystal, d_min: float) -> dict:
    """Every reflection to d_min (from cctbx, cached): hkl, asu, d, B (see dials_side/lattice.py)."""
    from .dials_side import DIALS_PYTHON, script

    cell = ",".join(f"{v:g}" for v in crystal.unit_cell)
    key = hashlib.sha1(f"{crystal.space_group}|{cell}|{d_min:g}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"lattice_{key}.npz"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        try:
            subprocess.run([DIALS_PYTHON, script("lattice.py"), crystal.space_group, cell, f"{d_min:g}", str(tmp)],
                           check=True, capture_output=True, text=True, timeout=300)
        except FileNotFoundError as e:
            raise RuntimeError(f"the simulator needs cctbx: {DIALS_PYTHON} not found "
                               "(install Debian's dials, or set REDML_DIALS_PYTHON)") from e
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"cctbx could not build the lattice of {crystal.space_group} {cell}: "
                               f"{e.stderr.strip()[-500:]}") from e
        os.replace(tmp, path)
    with np.load(path) as z:
        return {k: z[k] for k in ("hkl", "asu", "d", "B")}


def attenuation_per_mm(material: str, wavelength_a: float) -> float:
    """The sensor's linear attenuation coefficient (1/mm), the value dxtbx uses."""
    from .dials_side import DIALS_PYTHON, script

    out = subprocess.run([DIALS_PYTHON, script("attenuation.py"), material, f"{wavelength_a!r}"],
                         check=True, capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip())


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3) (from a uniform unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


_erf = np.frompyfunc(math.erf, 1, 1)


def _pixel_weights(centre: np.ndarray, sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per spot, the first pixel of its box and the Gaussian's integral over each of the
    box's 2*radius+1 pixels along one axis."""
    first = np.floor(centre).astype(np.int64) - radius
    edges = first[:, None] + np.arange(2 * radius + 2)[None, :]
    cdf = 0.5 * (1 + _erf((edges - centre[:, None]) / (sigma * math.sqrt(2))).astype(np.float64))
    return first, np.diff(cdf, axis=1)


@dataclass
class StillSimulator:
    """Shot i of a run is a pure function of (seed, i): frames can be made in any order or
    in parallel processes."""

    detector: DetectorLayout = field(default_factory=jungfrau_4m)
    crystal: Crystal = field(default_factory=Crystal)
    settings: ShotSettings = field(default_factory=ShotSettings)
    seed: int = 0

    def __post_init__(self):
        s, det = self.settings, self.detector
        h, w = det.shape
        bx, by = s.beam_center if s.beam_center is not None else (w / 2 + 0.3, h / 2 + 0.7)
        self.geometry = BeamGeometry(beam_x=float(bx), beam_y=float(by), distance_mm=s.distance_mm,
                                 pixel_size_mm=det.pixel_size_mm, wavelength_a=s.wavelength_a)
        self.mask = det.gap_mask()
        self.mu = attenuation_per_mm(s.sensor_material, s.wavelength_a) if s.sensor_thickness_mm > 0 else 0.0
        lat = lattice(self.crystal, s.d_min)
        self.hkl, self.d, self.asu = lat["hkl"], lat["d"], lat["asu"]
        keys = self._hkl_key(self.hkl)
        self._key_order = np.argsort(keys)
        self._sorted_keys = keys[self._key_order]
        self.r_crystal = self.hkl @ lat["B"].T  # reciprocal vectors in the crystal frame
        rlen = 1.0 / self.d
        # Width of the Ewald-sphere shell a reflection is excited in (1/Angstrom): mosaic
        # spread turns the vector by eta, a bandwidth dl/l moves the sphere by
        # (dl/l) |r|^2 lambda / 2, and a finite domain blurs each point by ~1/size.
        eta = math.radians(self.crystal.mosaicity_deg)
        self.shell = np.sqrt((eta * rlen) ** 2 + (s.bandwidth * rlen**2 * s.wavelength_a / 2) ** 2
                             + (1.0 / self.crystal.domain_size_a) ** 2)
        # Structure: one Wilson (exponential) intensity per symmetry-unique reflection.
        wilson = np.random.default_rng([self.seed, 0xC0FFEE]).exponential(size=int(lat["asu"].max()) + 1)
        self.full_intensity = s.signal * wilson[lat["asu"]] * np.exp(-self.crystal.b_factor / (2 * self.d**2))
        self.background_map = self._background_map()
        bad = np.random.default_rng([self.seed, 0xBAD]).random(det.shape) < s.bad_pixel_fraction
        bad &= ~self.mask
        self.hot = bad & (np.random.default_rng([self.seed, 0x407]).random(det.shape) < 0.5)
        self.dead = bad & ~self.hot

    @staticmethod
    def _hkl_key(hkl) -> np.ndarray:
        hkl = np.asarray(hkl, np.int64) + 1024
        return (hkl[:, 0] << 22) | (hkl[:, 1] << 11) | hkl[:, 2]

    def asu_of(self, hkl) -> np.ndarray:
        """The symmetry-unique reflection (cctbx's asymmetric unit) of each (h, k, l); -1
        for indices outside the lattice to d_min or systematically absent."""
        keys = self._hkl_key(np.asarray(hkl).reshape(-1, 3))
        pos = np.clip(np.searchsorted(self._sorted_keys, keys), 0, len(self._sorted_keys) - 1)
        found = self._sorted_keys[pos] == keys
        return np.where(found, self.asu[self._key_order[pos]], -1).astype(np.int64)

    def nxmx_options(self) -> dict:
        """The detector description for FrameWriter(nxmx=...)."""
        s = self.settings
        return {"detector_name": self.detector.name, "sensor_material": s.sensor_material,
                "sensor_thickness_mm": s.sensor_thickness_mm}

    def _background_map(self) -> np.ndarray:
        s = self.settings
        two_theta = self.geometry.two_theta_map(self.detector.shape)
        inv_d = 2 * np.sin(two_theta / 2) / s.wavelength_a
        obliquity = np.cos(two_theta) ** 3  # solid angle of a flat pixel
        air = s.background * (0.4 + 0.6 * np.exp(-two_theta / 0.4))
        ring = s.water_ring * np.exp(-((inv_d - 1 / 3.3) ** 2) / (2 * 0.02**2))
        return ((air + ring) * obliquity).astype(np.float64)

    def predict(self, rotation: np.ndarray) -> np.ndarray:
        """The reflections excited in this orientation whose spots fall on a module."""
        s, k = self.settings, 1.0 / self.settings.wavelength_a
        r = self.r_crystal @ rotation.T
        s1 = r + np.array([0.0, 0.0, -k])
        s1_len = np.linalg.norm(s1, axis=1)
        excitation = s1_len - k
        near = np.abs(excitation) < 4 * self.shell
        near &= s1[:, 2] < 0  # towards the detector
        idx = np.flatnonzero(near)
        partiality = np.exp(-0.5 * (excitation[idx] / self.shell[idx]) ** 2)
        direction = s1[idx] / s1_len[idx, None]
        t = -s.distance_mm / direction[:, 2]
        if self.mu > 0:
            # Parallax: photons are absorbed at a depth in the sensor and keep travelling
            # along the ray until then (dxtbx's mean absorption path, which DIALS undoes).
            cos_t = -direction[:, 2]
            t0 = s.sensor_thickness_mm
            t = t + 1 / self.mu - (t0 / cos_t + 1 / self.mu) * np.exp(-self.mu * t0 / cos_t)
        px = self.detector.pixel_size_mm
        x = direction[:, 0] * t / px + self.geometry.beam_x
        y = self.geometry.beam_y - direction[:, 1] * t / px
        h, w = self.detector.shape
        on = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        on[on] &= ~self.mask[y[on].astype(int), x[on].astype(int)]
        idx, x, y, partiality = idx[on], x[on], y[on], partiality[on]
        out = np.zeros(len(idx), REFLECTION_DTYPE)
        out["h"], out["k"], out["l"] = self.hkl[idx].T
        out["x"], out["y"], out["partiality"], out["d"] = x, y, partiality, self.d[idx]
        out["intensity"] = self.full_intensity[idx] * partiality
        return out[out["intensity"] >= 0.5]

    def shot(self, index: int, noise: bool = True) -> Shot:
        """Shot `index`; noise=False gives the expected photons rounded (no Poisson draw)."""
        s = self.settings
        rng = np.random.default_rng([self.seed, 1, int(index)])
        hit = bool(rng.random() < s.hit_rate)
        expected = self.background_map * rng.uniform(0.85, 1.15)
        rotation, refl = None, np.zeros(0, REFLECTION_DTYPE)
        if hit:
            rotation = random_rotation(rng)
            refl = self.predict(rotation)
            refl["frame"] = index
            self._render(expected, refl)
        frame = rng.poisson(expected) if noise else np.rint(expected).astype(np.int64)
        frame[self.dead] = 0
        frame[self.hot] = 4000
        frame[self.mask] = -1 if np.dtype(s.dtype).kind == "i" else np.iinfo(s.dtype).max
        return Shot(frame.astype(s.dtype), refl, hit, rotation)

    def _render(self, expected: np.ndarray, refl: np.ndarray) -> None:
        """Adds the spots' expected photons to the map; records the background under each."""
        sigma = self.settings.spot_sigma_px
        radius = int(math.ceil(3.5 * sigma))
        x0, wx = _pixel_weights(refl["x"], sigma, radius)
        y0, wy = _pixel_weights(refl["y"], sigma, radius)
        h, w = expected.shape
        ys = y0[:, None, None] + np.arange(2 * radius + 1)[None, :, None]
        xs = x0[:, None, None] + np.arange(2 * radius + 1)[None, None, :]
        ys, xs = np.broadcast_arrays(ys, xs)
        values = refl["intensity"][:, None, None] * wy[:, :, None] * wx[:, None, :]
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        flat = ys[inside] * w + xs[inside]
        # Background photons under a 3x3 box around each spot: what its SNR is measured against.
        cy, cx = refl["y"].astype(int), refl["x"].astype(int)
        refl["background"] = sum(expected[np.clip(cy + dy, 0, h - 1), np.clip(cx + dx, 0, w - 1)]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        np.add.at(expected.reshape(-1), flat, values[inside])

    def run(self, n: int, start: int = 0):
        """Shots start .. start+n-1, one at a time."""
        for i in range(start, start + n):
            yield self.shot(i)
