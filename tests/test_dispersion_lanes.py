"""The dispersion screen of every SIMD build (issue 20: 4, 8 or 16 lanes, the AVX-512 build's
last partial vector by masked loads and stores) finds on integer frames exactly what the
double-precision box sums find on their float copies, for widths on either side of the lane
counts, photon counts and integrating ADU with read noise."""
import math

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from redml_study.detector import integrating_frame
from redml_study.synthetic import still_frame

WIDTHS = (1, 7, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100)
ADU = dict(gain=20.0, markers="extremes", read_noise=math.sqrt(4.0**2 + 1 / 12))


@pytest.fixture(params=(1, 2, 3), ids=["portable", "avx2", "avx512"])
def simd_level(request):
    _core._spots_force_simd(request.param)
    yield request.param
    _core._spots_force_simd(0)


def same_spots(frame, mask, **kw):
    ref = rr.find_spots(frame.astype(np.float32), mask, nthreads=1, **kw)
    got = rr.find_spots(frame, mask, nthreads=1, **kw)
    assert np.array_equal(got[1], ref[1])
    return got[1]


@pytest.mark.parametrize("width", WIDTHS)
def test_photon_counts_every_width(simd_level, width):
    rng = np.random.default_rng(width)
    frame = still_frame(rng, (41, width), background=2.0, spots=3, dtype="uint16")
    mask = rng.random(frame.shape) < 0.03
    same_spots(frame, mask, min_pixels=1)


@pytest.mark.parametrize("width", WIDTHS)
def test_integrating_adu_every_width(simd_level, width):
    rng = np.random.default_rng(100 + width)
    photons = still_frame(rng, (41, width), background=0.5, spots=3, dtype="int32")
    frame = integrating_frame(photons, rng, gain=20.0, read_noise=0.2).astype(np.int16)
    same_spots(frame, None, min_pixels=1, **ADU)


def test_some_width_finds_spots():
    """The frames above are not blank to the finder (the comparisons test something)."""
    rng = np.random.default_rng(7)
    frame = still_frame(rng, (41, 100), background=2.0, spots=3, dtype="uint16")
    assert same_spots(frame, None, min_pixels=1).any()
