"""The spot finder's fast stages (issue 20: integer dispersion sums in SIMD builds of every
width, bit-packed erosion and ROI dilation, the 11x11 background at the tested pixels only)
find exactly what the implementation before them found: the same peaks and spot maps, and
the same ROI in the chunks, on Poisson frames at several levels, integrating ADU frames with
read noise and markers, a real still, masked pixels and gaps, odd sizes, and large values
(the double-precision path). The digests were written by that implementation
(`python tests/test_spots_fast.py` prints them for the installed build)."""
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from redml_study.detector import integrating_frame
from redml_study.synthetic import still_frame

THAUMATIN = Path(__file__).resolve().parent / "data" / "thaumatin" / "thau_3_2_0001.cbf.bz2"
ADU = dict(gain=20.0, markers="extremes", read_noise=math.sqrt(4.0**2 + 1 / 12))
SIMD_LEVELS = (1, 2, 3)  # portable, AVX2, AVX-512 (a level the CPU lacks runs the best it has)


def poisson(seed, mu, shape, dtype="uint16", spots=30):
    return still_frame(np.random.default_rng(seed), shape, background=mu, spots=spots, dtype=dtype)


def with_gaps(frame):
    """Module gaps and a dead column as the dtype's maximum (markers), a few hot pixels."""
    f = frame.copy()
    f[:, 100:104] = np.iinfo(f.dtype).max
    f[60:62, :] = np.iinfo(f.dtype).max
    f[:, 7] = 0
    f[5::37, 11::53] = 5000
    return f


def adu_frame(seed, mu, shape):
    """Pedestal-subtracted int16 ADU (20 ADU a photon, read noise 0.2 photon), with markers."""
    rng = np.random.default_rng(seed)
    photons = still_frame(rng, shape, background=mu, spots=30, dtype="int32")
    f = integrating_frame(photons, rng, gain=20.0, read_noise=0.2).astype(np.int16)
    f[:, 50:52] = np.iinfo(np.int16).min
    f[90, :] = np.iinfo(np.int16).max
    return f


def cases():
    """name -> (frame, mask, finder settings, encode settings)."""
    mask = np.zeros((200, 300), np.uint8)
    mask[20:40, 30:90] = 1
    mask[150:, 250:] = 1
    big = poisson(9, 1.0, (150, 170), "int32")
    big[40:43, 60:63] = 200000  # beyond the 32-bit sums: the double path
    out = {
        "poisson_0.05": (poisson(1, 0.05, (200, 300)), None, {}, {}),
        "poisson_1": (poisson(2, 1.0, (200, 300)), None, {}, {}),
        "poisson_10": (poisson(3, 10.0, (200, 300)), None, {}, {}),
        "poisson_1_int32": (poisson(2, 1.0, (200, 300), "int32"), None, {}, {}),
        "poisson_1_masked": (poisson(4, 1.0, (200, 300)), mask, {}, {}),
        "poisson_1_gaps": (with_gaps(poisson(5, 1.0, (200, 300))), None, {}, {}),
        "poisson_1_large_values": (big, None, {}, {}),
        "kernel_2": (poisson(6, 2.0, (120, 130)), None, dict(kernel=2, sigma_b=4.0), {}),
        "adu": (adu_frame(7, 1.0, (200, 300)), None, ADU, dict(gain=20.0, markers="extremes")),
        "adu_weak": (adu_frame(8, 0.1, (160, 190)), None, ADU, dict(gain=20.0, markers="extremes")),
        "odd_1x600": (poisson(10, 3.0, (1, 600), spots=0), None, dict(min_pixels=1), {}),
        "odd_600x1": (poisson(11, 3.0, (600, 1), spots=0), None, dict(min_pixels=1), {}),
        "odd_7x7": (poisson(12, 3.0, (7, 7), spots=1), None, dict(min_pixels=1), {}),
        "odd_13x1031": (poisson(13, 1.0, (13, 1031), spots=8), None, {}, {}),
        "odd_67x129": (poisson(14, 1.0, (67, 129), spots=5), None, {}, {}),
    }
    for name in ("odd_1x600", "odd_600x1", "odd_7x7"):
        f = out[name][0]
        f.flat[:: max(1, f.size // 5)] += np.uint16(40)  # a few bright pixels
    return out


def thaumatin_frame():
    import fabio

    return fabio.open(str(THAUMATIN)).data


def peaks_digest(peaks):
    """The peak records field by field (their padding bytes are undefined)."""
    h = hashlib.sha256()
    for k in peaks.dtype.names:
        h.update(np.ascontiguousarray(peaks[k]).tobytes())
    return h.hexdigest()


def finder_digest(frame, mask, finder):
    peaks, spot_mask = rr.find_spots(frame, mask, nthreads=1, **finder)
    return peaks_digest(peaks) + ":" + hashlib.sha256(spot_mask.tobytes()).hexdigest()


def roi_digest(frame, mask, enc, nthreads=1):
    chunk = rr.encode(frame, 1, mask=mask, nthreads=nthreads, **enc)
    return hashlib.sha256(np.ascontiguousarray(rr.exact_mask(chunk)).tobytes()).hexdigest()


def digests():
    out = {}
    for name, (frame, mask, finder, enc) in cases().items():
        out[name] = [finder_digest(frame, mask, finder), roi_digest(frame, mask, enc)]
    frame = thaumatin_frame()
    out["thaumatin_0001"] = [finder_digest(frame, None, {}), roi_digest(frame, None, {})]
    return out


# Written by the implementation before the fast stages (main at 94a1487).
REFERENCE_FILE = Path(__file__).resolve().parent / "golden" / "spots_fast_digests.json"


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE_FILE.read_text())


@pytest.fixture
def simd_level(request):
    _core._spots_force_simd(request.param)
    yield request.param
    _core._spots_force_simd(0)


@pytest.mark.parametrize("simd_level", SIMD_LEVELS, indirect=True)
@pytest.mark.parametrize("name", sorted(cases()))
def test_same_spots_and_roi_as_before(name, simd_level, reference):
    frame, mask, finder, enc = cases()[name]
    assert finder_digest(frame, mask, finder) == reference[name][0]
    assert roi_digest(frame, mask, enc) == reference[name][1]


@pytest.mark.parametrize("simd_level", SIMD_LEVELS, indirect=True)
def test_same_spots_and_roi_on_a_real_still(simd_level, reference):
    frame = thaumatin_frame()
    assert finder_digest(frame, None, {}) == reference["thaumatin_0001"][0]
    assert roi_digest(frame, None, {}) == reference["thaumatin_0001"][1]


def test_threads_do_not_change_the_roi(reference):
    frame, mask, finder, enc = cases()["poisson_1_gaps"]
    assert roi_digest(frame, mask, enc, nthreads=3) == reference["poisson_1_gaps"][1]


@pytest.mark.parametrize("simd_level", SIMD_LEVELS, indirect=True)
@pytest.mark.parametrize("mu", [0.05, 1.0, 10.0])
def test_integer_frames_match_their_float_copies(rng, mu, simd_level):
    """Random frames (fresh each run): the integer path (32-bit sums, packed counts) finds what
    the double-precision box sums find on the float copy, masked pixels included."""
    frame = poisson(rng.integers(1 << 30), mu, (97, 211), "int32", spots=12)
    mask = rng.random(frame.shape) < 0.02
    ref = rr.find_spots(frame.astype(np.float32), mask, nthreads=1)
    got = rr.find_spots(frame, mask, nthreads=1)
    assert peaks_digest(got[0]) == peaks_digest(ref[0])
    assert np.array_equal(got[1], ref[1])


def dilate_reference(m, r):
    """OR over the (2r+1)^2 window clipped to the map: nonzero window counts, from cumulative
    sums along each axis (the square window is separable)."""
    out = m != 0
    for axis in (0, 1):
        n = out.shape[axis]
        k = min(r, n - 1)
        c = np.cumsum(np.pad(out.astype(np.int64), [(k + 1, k) if a == axis else (0, 0) for a in (0, 1)]), axis)
        hi, lo = np.take(c, np.arange(2 * k + 1, 2 * k + 1 + n), axis), np.take(c, np.arange(n), axis)
        out = hi - lo > 0
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 130), (130, 1), (7, 7), (13, 1031), (64, 64), (65, 129)])
@pytest.mark.parametrize("margin", [0, 1, 2, 3, 31, 63, 64, 65, 200, 65535])
def test_dilate_matches_the_window_definition(rng, shape, margin):
    for density in (0.002, 0.1, 0.7):
        m = (rng.random(shape) < density).astype(np.uint8) * rng.integers(1, 256, shape).astype(np.uint8)
        ref = dilate_reference(m, margin)
        assert np.array_equal(rr.roi_mask(m, margin, nthreads=1), ref), density
        assert np.array_equal(_core.dilate(m, margin, 2), ref), density



@pytest.mark.parametrize("shape", [(5, 0), (0, 5), (0, 0)])
def test_dilate_of_an_empty_map(shape):
    """Was: a width of 0 made the packed rows' last word row[-1], written before the buffer."""
    for margin in (1, 3, 65535):
        assert _core.dilate(np.zeros(shape, np.uint8), margin, 1).shape == shape
        assert rr.roi_mask(np.zeros(shape, np.uint8), margin, nthreads=1).shape == shape

if __name__ == "__main__":
    json.dump(digests(), sys.stdout, indent=1)
    print()
