"""JUNGFRAU raw frames: conversion in the core against the numpy reference, photons -> raw ->
photons, special words, calibration from dark runs, pedestal tracking, geometry, storage."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from redml_reduce import jungfrau as jf
from redml_reduce.formats.jungfrau_raw import load_calibration
from redml_reduce.cli import main as cli
from redml_reduce.codec import error_bound
from redml_study.detector import photons_to_raw, simulate_detector
from redml_study.synthetic import JUNGFRAU_4M_SHAPE, still_frame

from jungfrau_reference import STATUS, assemble_reference, convert_reference, track_reference

E = 12.4  # keV


def make_calib(rng, shape, signs=(1, -1, -1), energy=E, geometry=None, noise=None, mask=None):
    """Pedestals and gains per stage with the given gain signs: a positive gain starts low in
    the ADC range, a negative one high (the ADC falls with charge)."""
    mag = np.array([41.0, 1.44, 0.11])[:, None, None] * (1 + 0.03 * rng.standard_normal((3, *shape)))
    gain = np.array(signs, float)[:, None, None] * mag
    ped = np.where(gain > 0, 1500.0, 14000.0) + 50 * rng.standard_normal((3, *shape))
    return jf.Calibration(ped, gain, energy, mask, geometry, noise)


def photons_all_stages(rng, shape):
    """Counts spread over the three gain stages at 12.4 keV: G0 switches near 24 photons, G1 near
    700, G2 overloads near 9000 (6600 for a pixel 5 sigma off in pedestal and gain)."""
    choice = rng.integers(0, 3, shape)
    return np.choose(choice, [rng.integers(0, 20, shape), rng.integers(40, 600, shape),
                              rng.integers(1000, 6000, shape)])


def random_words(rng, shape, n_special=300):
    raw = rng.integers(0, 1 << 16, shape).astype(np.uint16)
    for word in (0xC000, 0xFFFF):
        raw.flat[rng.choice(raw.size, n_special, replace=False)] = word
    return raw


# ----------------------------------------------------------------------------- photons -> raw -> photons

@pytest.mark.parametrize("signs", [(1, -1, -1), (-1, 1, 1), (1, 1, -1)])
@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_roundtrip_exact_without_noise(rng, signs, dtype):
    calib = make_calib(rng, (64, 256), signs)
    photons = photons_all_stages(rng, calib.frame_shape)
    raw = photons_to_raw(photons, calib, rng, noise=False)
    back, info = jf.convert(raw, calib, dtype, status=True)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, photons)
    for stage in ("g0", "g1", "g2"):  # every stage exercised, nothing marked
        assert info.counts[stage] > 3000
    assert info.n_marked == 0
    assert set(np.unique(raw >> 14)) == {0, 1, 3}


def test_roundtrip_with_noise_within_stated_rounding(rng):
    det = simulate_detector(rng, frame_shape=(128, 256), dead_fraction=0, noisy_fraction=0)
    calib = det.calibration
    photons = photons_all_stages(rng, calib.frame_shape)
    back, info = jf.convert(det.raw(photons, rng), calib, status=True)
    stage = info.status.astype(np.intp)
    assert stage.max() <= 2
    sigma = np.take_along_axis(calib.noise, stage[None], 0)[0]
    adu_per_photon = np.abs(np.take_along_axis(calib.gain, stage[None], 0)[0]) * E
    # ADC rounding (0.5 ADU) plus 6 sigma of electronic noise, then the photon rounding
    bound = 0.5 + (0.5 + 6 * sigma) / adu_per_photon
    assert np.all(np.abs(back - photons) <= bound)
    g0 = stage == 0
    assert np.array_equal(back[g0], photons[g0])  # G0 noise (12 ADU) is far below a photon (~510 ADU)


# ----------------------------------------------------------------------------- core vs numpy reference

def hostile_calibration(rng, shape):
    """Typical calibration plus pixels that must end up masked or saturated."""
    calib = make_calib(rng, shape, mask=rng.random(shape) < 0.01)
    gain = calib.gain.copy()
    n = gain[0].size
    gain.reshape(3, -1)[:, rng.choice(n, 40, replace=False)] = 0.0  # -> non-finite: masked
    gain.reshape(3, -1)[:, rng.choice(n, 40, replace=False)] = np.nan
    gain.reshape(3, -1)[:, rng.choice(n, 200, replace=False)] = 1e-8  # -> huge counts: saturated (int16 and int32)
    gain.reshape(3, -1)[:, rng.choice(n, 200, replace=False)] = -1e-8
    return jf.Calibration(calib.pedestal, gain, E, calib.mask)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_core_equals_reference_on_random_words(rng, dtype):
    calib = hostile_calibration(rng, (96, 320))
    raw = random_words(rng, calib.frame_shape)
    photons, info = jf.convert(raw, calib, dtype, keV=True, status=True, nthreads=2)
    ref, ref_kev, ref_status = convert_reference(raw, calib.pedestal, calib.gain, E, calib.mask, dtype)
    np.testing.assert_array_equal(info.status, ref_status)
    np.testing.assert_array_equal(photons, ref)
    np.testing.assert_array_equal(info.kev, ref_kev)  # NaN == NaN here, bit for bit otherwise
    assert info.counts == {k: int((ref_status == v).sum()) for k, v in STATUS.items()}
    for name in STATUS:  # the frame exercises every status
        assert info.counts[name] > 0, name


def test_core_equals_reference_on_realistic_frames(rng):
    det = simulate_detector(rng, frame_shape=(256, 512), dead_fraction=0.002, noisy_fraction=0.002)
    frame = still_frame(rng, det.calibration.frame_shape, background=0.3, spots=30, peak_range=(50, 5000))
    raw = det.raw(frame, rng)
    for dtype in (np.int16, np.int32):
        photons, _ = jf.convert(raw, det.calibration, dtype)
        ref, _, _ = convert_reference(raw, det.calibration.pedestal, det.calibration.gain, E, det.calibration.mask,
                                      dtype)
        np.testing.assert_array_equal(photons, ref)


def g0_edge_frame(rng, shape, mask=True, geometry=None, other_fraction=0.002):
    """(calibration, raw words) for the vectorized G0 path: mostly-G0 pixels whose counts fall on
    half-integers (ties round away from zero), next to them, and on the edges of the output
    range, among other stages, special words (a fraction `other_fraction`) and a hostile
    calibration (masked, non-finite and saturating gains). 1 keV photons."""
    calib = hostile_calibration(rng, shape)
    ped, gain = calib.pedestal.copy(), calib.gain.copy()
    edges = rng.random(shape) < 0.5  # E keV per ADU: count = adc - pedestal
    ped[0][edges] = rng.choice([0.0, 0.5, -0.5, 0.25, 0.49999997, 0.50000006], edges.sum())
    gain[0][edges] = 1.0
    near_max = rng.random(shape) < 0.05  # counts about the int16 maximum (adc up to 16383, 2 per ADU)
    gain[0][near_max], ped[0][near_max] = 0.5, rng.choice([0.0, 0.25, 0.5, 0.75], near_max.sum())
    calib = jf.Calibration(ped, gain, 1.0, calib.mask if mask else None, geometry)
    raw = rng.integers(0, 1 << 14, shape).astype(np.uint16)  # G0 words
    raw[near_max] = rng.integers(16370, 1 << 14, near_max.sum())
    other = rng.random(shape) < other_fraction  # other stages and special words among them
    raw[other] = random_words(rng, shape)[other]
    return calib, raw


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("masked", [False, True])
def test_vectorized_g0_path_equals_reference_at_rounding_and_range_edges(rng, dtype, masked):
    """Photons alone (no keV, status or tracking) take the vectorized G0 path."""
    calib, raw = g0_edge_frame(rng, (64, 1024), masked)
    for nthreads in (1, 2):
        photons, info = jf.convert(raw, calib, dtype, nthreads=nthreads)
        ref, _, ref_status = convert_reference(raw, calib.pedestal, calib.gain, 1.0, calib.mask, dtype)
        np.testing.assert_array_equal(photons, ref)
        assert info.counts == {k: int((ref_status == v).sum()) for k, v in STATUS.items()}
    assert np.isin([-1, 1, 32765, 32766], ref).all()  # ties and counts next to the int16 edge were exercised


# The eight ways a module can lie: fast axis along the image rows or columns, either way, and the
# slow axis either way (row_step -1: the band's rows written in reverse), each in its own
# 1033 x 1033 slot of a 2 x 4 grid.
ORIENTATIONS = [((0, 1), (1, 0)), ((0, 1), (-1, 0)), ((0, -1), (1, 0)), ((0, -1), (-1, 0)),
                ((1, 0), (0, 1)), ((1, 0), (0, -1)), ((-1, 0), (0, 1)), ((-1, 0), (0, -1))]


def every_orientation_layout():
    slot, side = 1030 + 3, (513, 1029)  # the last assembled row and column
    mods = []
    for k, ((fy, fx), (sy, sx)) in enumerate(ORIENTATIONS):
        y, x = (k // 4) * slot, (k % 4) * slot
        # the origin is assembled pixel (0, 0): at the slot's far side along an axis run backwards
        oy = y + (side[0] if sy < 0 else 0) + (side[1] if fy < 0 else 0)
        ox = x + (side[0] if sx < 0 else 0) + (side[1] if fx < 0 else 0)
        mods.append((oy, ox, fy, fx, sy, sx))
    return jf.ModuleLayout(np.array(mods), (2 * slot, 4 * slot))


@pytest.fixture(params=(1, 2, 3), ids=["portable", "avx2", "avx512"])
def simd_level(request):
    """The core's SIMD build (csrc/pixels.h: one level for every dispatched loop; a CPU without
    a build runs the best it has below it)."""
    _core._codec_force_simd(request.param)
    yield request.param
    _core._codec_force_simd(0)


@pytest.fixture(scope="module")
def oriented_frame():
    """An 8-module frame of every orientation (g0_edge_frame's words, a fixed seed: built once
    for the module) and its reference photons, assembled, per output type."""
    rng = np.random.default_rng(2020)
    geometry = every_orientation_layout()
    calib, raw = g0_edge_frame(rng, geometry.raw_shape, other_fraction=0.01, geometry=geometry)
    refs = {}
    for dtype in (np.int16, np.int32):
        ref, ref_kev, ref_status = convert_reference(raw, calib.pedestal, calib.gain, 1.0, calib.mask, dtype)
        lo = jf.markers(dtype)[0]
        refs[dtype] = (assemble_reference(ref, geometry.modules, geometry.shape, lo), ref_status)
    kev = assemble_reference(ref_kev, geometry.modules, geometry.shape, np.float32(np.nan))
    return calib, raw, refs, kev, ref_kev


def check_tracked(raw, calib, dtype, ref, ref_status, ref_kev, kev=None, threshold=100.0):
    """One tracked conversion with keV and status (the lanes' extras): photons, statuses and
    keV (`kev`: assembled) equal the reference's, the tracked G0 pedestal too bit for bit, and
    some pedestals moved (a threshold of many photons: many dark pixels)."""
    tracker = jf.PedestalTracker(calib, window=7, threshold=threshold)
    before = tracker.pedestal_g0.copy()
    photons, info = jf.convert(raw, calib, dtype, keV=True, status=True, track=tracker)
    np.testing.assert_array_equal(photons, ref)
    np.testing.assert_array_equal(info.status, ref_status)
    np.testing.assert_array_equal(info.kev, ref_kev if kev is None else kev)
    expect = track_reference(before, raw, ref_status, ref_kev, calib.energy_keV, 1 / 7, threshold)
    np.testing.assert_array_equal(tracker.pedestal_g0, expect)
    assert (expect != before).sum() > 10


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_every_simd_build_assembles_every_orientation_exactly(simd_level, oriented_frame, dtype):
    """Each SIMD build's G0 lanes and block transposes give the reference photons, pixel for
    pixel, on modules lying every way, with all gain stages, masked pixels, overloads, error
    words, saturation and rounding ties."""
    calib, raw, refs, kev, raw_kev = oriented_frame
    ref, ref_status = refs[dtype]
    for nthreads in (1, 2):
        photons, info = jf.convert(raw, calib, dtype, nthreads=nthreads)
        np.testing.assert_array_equal(photons, ref)
        assert info.counts == {k: int((ref_status == v).sum()) for k, v in STATUS.items()}
    for name in STATUS:  # the frame exercises every status
        assert info.counts[name] > 0, name
    check_tracked(raw, calib, dtype, ref, ref_status, raw_kev, kev)


@pytest.mark.parametrize("width", [1, 7, 15, 16, 17, 31, 33, 100, 1030])
def test_every_simd_build_converts_odd_raw_frames_exactly(simd_level, rng, width):
    """Raw frames without modules, of widths on either side of the lane counts (the scalar
    tail) and heights across a band edge, converted straight into the output."""
    height = max(70, -(-700 // width))  # room for random_words' 600 special words
    for dtype in (np.int16, np.int32):
        for masked in (False, True):
            calib, raw = g0_edge_frame(rng, (height, width), masked, other_fraction=0.05)
            ref, ref_kev, ref_status = convert_reference(raw, calib.pedestal, calib.gain, 1.0, calib.mask, dtype)
            photons, info = jf.convert(raw, calib, dtype, nthreads=2)
            np.testing.assert_array_equal(photons, ref)
            assert info.counts == {k: int((ref_status == v).sum()) for k, v in STATUS.items()}
            check_tracked(raw, calib, dtype, ref, ref_status, ref_kev)


def test_special_words_masked_and_counted(rng):
    calib = make_calib(rng, (32, 64))
    raw = photons_to_raw(rng.integers(0, 5, calib.frame_shape), calib, rng, noise=False)
    places = rng.choice(raw.size, 30, replace=False)
    invalid, over, err = places[:10], places[10:20], places[20:]
    raw.flat[invalid] = 0x8000 | rng.integers(0, 0x4000, 10)  # gain bits 10
    raw.flat[over] = 0xC000
    raw.flat[err] = 0xFFFF
    for dtype in (np.int16, np.int32):
        lo, hi = jf.markers(dtype)
        assert (lo, hi) == (np.iinfo(dtype).min, np.iinfo(dtype).max)
        photons, info = jf.convert(raw, calib, dtype, keV=True)
        assert info.counts["invalid_gain"] == 10 and info.counts["overload"] == 10 and info.counts["error"] == 10
        assert info.counts["masked"] == info.counts["saturated"] == 0
        assert (photons.flat[invalid] == lo).all() and (photons.flat[err] == lo).all()
        assert (photons.flat[over] == hi).all()
        assert np.isnan(info.kev.flat[invalid]).all() and np.isnan(info.kev.flat[err]).all()
        assert np.isposinf(info.kev.flat[over]).all()
        rest = np.ones(raw.size, bool)
        rest[places] = False
        assert (photons.ravel()[rest] >= 0).all() and (photons.ravel()[rest] < 5).all()


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_infinite_gain_masks_the_pixel_in_every_build(simd_level, rng, dtype):
    """A non-finite gain is a broken calibration (redml_jungfrau.h: masked), +-inf as much as
    nan: its division gives 0 keV, which must not pass for a count of 0 photons (nor move
    the tracked pedestal), in the vector lanes as in the scalar rule."""
    calib = make_calib(rng, (4, 64))
    raw = photons_to_raw(rng.integers(0, 5, calib.frame_shape), calib, rng, noise=False)
    gain = calib.gain.copy()
    broken = np.zeros(calib.frame_shape, bool)
    broken[:, 3::7] = True
    for s in range(3):
        gain[s][broken] = np.inf if s != 1 else -np.inf
    calib = jf.Calibration(calib.pedestal, gain, E)
    for bits in GAIN_BITS_WORDS:  # each stage's words on the broken pixels (G0 in the lanes)
        words = raw.copy()
        words[broken] = bits | rng.integers(1, (1 << 14) - 1, broken.sum())  # not the overload or error word
        tracker = jf.PedestalTracker(calib, window=3, threshold=100.0)
        photons, info = jf.convert(words, calib, dtype, keV=True, status=True, track=tracker)
        assert (photons[broken] == jf.markers(dtype)[0]).all()
        assert (info.status[broken] == STATUS["masked"]).all() and np.isnan(info.kev[broken]).all()
        assert info.counts["masked"] == broken.sum()
        np.testing.assert_array_equal(tracker.pedestal_g0[broken], calib.pedestal[0][broken])
        assert (photons[~broken] >= 0).all() and (photons[~broken] < 5).all()  # the others are counts


GAIN_BITS_WORDS = (0x0000, 0x4000, 0xC000)  # G0, G1, G2


@pytest.mark.parametrize("word, status, marker", [(0xFFFF, "error", "lo"), (0x8123, "invalid_gain", "lo"),
                                                  (0xC000, "overload", "hi")])
def test_all_invalid_frame(rng, word, status, marker):
    calib = make_calib(rng, (64, 64))
    raw = np.full(calib.frame_shape, word, np.uint16)
    photons, info = jf.convert(raw, calib)
    lo, hi = jf.markers(np.int32)
    assert (photons == (lo if marker == "lo" else hi)).all()
    assert info.counts[status] == raw.size and info.n_marked == raw.size
    chunk = rr.encode(raw, calibration=calib, q=1)  # the codec keeps every marker exactly
    np.testing.assert_array_equal(rr.decode(chunk), photons)


@pytest.mark.parametrize("bad", [-1, 0, "mid"])
def test_gap_index_outside_the_image_is_refused(bad):
    """The core checks every gap index before writing (the largest one, wherever it is)."""
    g = jf.ModuleLayout.grid(1, gap_x=0, gap_y=0)
    shape = (g.shape[0] + 1, g.shape[1])  # one row of gap below the module
    gap = np.arange(g.shape[0] * g.shape[1], shape[0] * shape[1], dtype=np.uint32)
    gap[{-1: -1, 0: 0, "mid": len(gap) // 2}[bad]] = shape[0] * shape[1]  # one past the end
    ped, gain = np.zeros((3, *g.raw_shape), np.float32), np.ones((3, *g.raw_shape), np.float32)
    out = np.full(shape, 7, np.int16)
    with pytest.raises(ValueError, match="gap index outside the image"):
        _core.jf_convert(np.zeros(g.raw_shape, np.uint16), ped, gain, None, None, g.modules, gap, *shape, 1.0, 16,
                         False, False, 0.0, 0.0, 1, out)
    assert (out == 7).all()  # nothing written


def test_shape_and_type_errors_are_clear(rng):
    calib = make_calib(rng, (64, 128))
    with pytest.raises(ValueError, match=r"calibration is for raw frames of shape \(64, 128\).*\(64, 64\)"):
        jf.convert(np.zeros((64, 64), np.uint16), calib)
    with pytest.raises(TypeError, match="uint16"):
        jf.convert(np.zeros((64, 128), np.int16), calib)
    with pytest.raises(TypeError, match="int16 or int32"):
        jf.convert(np.zeros((64, 128), np.uint16), calib, np.float32)
    with pytest.raises(ValueError, match="gain has shape"):
        jf.Calibration(calib.pedestal, calib.gain[:, :32], E)
    with pytest.raises(ValueError, match="mask has shape"):
        jf.Calibration(calib.pedestal, calib.gain, E, mask=np.zeros((32, 32)))
    with pytest.raises(ValueError, match="energy_keV"):
        jf.Calibration(calib.pedestal, calib.gain, 0.0)
    with pytest.raises(ValueError, match="geometry has 1 modules"):
        jf.Calibration(calib.pedestal, calib.gain, E, geometry=jf.ModuleLayout.grid(1))
    other = jf.PedestalTracker(make_calib(rng, (32, 32)))
    with pytest.raises(ValueError, match="tracker"):
        jf.convert(np.zeros((64, 128), np.uint16), calib, track=other)


# ----------------------------------------------------------------------------- dark runs, tracking

def test_pedestal_from_simulated_dark_runs(rng):
    det = simulate_detector(rng, frame_shape=(64, 128), dead_fraction=0.004, noisy_fraction=0.004)
    truth, n = det.calibration, 200
    dark = jf.pedestal_from_dark(*(det.dark_run(rng, n, stage) for stage in range(3)))
    good = ~det.dead & ~det.noisy
    # within the noise of a mean of n frames (6 sigma over all pixels and stages)
    z = (dark.pedestal - truth.pedestal) / (truth.noise / np.sqrt(n))
    assert np.abs(z[:, good]).max() < 6
    rel = dark.noise[:, good] / truth.noise[:, good] - 1  # standard deviation of a std: 1/sqrt(2n) = 5%
    assert np.abs(rel).max() < 0.35
    assert dark.bad[det.dead].all() and dark.bad[det.noisy].all() and det.dead.any() and det.noisy.any()
    assert dark.bad[good].mean() < 0.002
    assert dark.reasons["noisy"][det.noisy].all()


def test_dark_run_bad_gain_detected(rng):
    det = simulate_detector(rng, frame_shape=(16, 32), dead_fraction=0, noisy_fraction=0)
    runs = [det.dark_run(rng, 50, s) for s in range(3)]
    runs[1][:5, 3, 7] = runs[1][:5, 3, 7] & 0x3FFF  # pixel (3, 7) stays in G0 in 5 of the G1 frames
    dark = jf.pedestal_from_dark(*runs)
    assert dark.reasons["wrong_gain"][3, 7] and dark.bad.sum() == 1
    acc = jf.DarkAccumulator(0, (16, 32))  # streaming in pieces gives the same result
    for chunk in np.array_split(runs[0], 7):
        acc.add(chunk)
    np.testing.assert_allclose(acc.result()[0], jf.pedestal_from_dark(runs[0], runs[1], runs[2]).pedestal[0],
                               rtol=1e-6)


def test_tracking_follows_slow_drift(rng):
    det = simulate_detector(rng, frame_shape=(32, 64), dead_fraction=0, noisy_fraction=0)
    start = det.calibration
    tracker = jf.PedestalTracker(start, window=20, threshold=0.5, snapshot_every=100)
    drift_per_frame, n = 0.25, 400  # ADU: 100 ADU in all, 0.2 photon at 12.4 keV
    lit = np.zeros(start.frame_shape, bool)
    lit[::7, ::5] = True  # pixels with 5 photons in every frame: never dark, never updated
    for t in range(n):
        ped = start.pedestal.copy()
        ped[0] += drift_per_frame * (t + 1)
        truth = jf.Calibration(ped, start.gain, E, noise=start.noise)
        photons = np.where(lit, 5, rng.poisson(0.05, start.frame_shape))
        raw = photons_to_raw(photons, truth, rng)
        before = tracker.pedestal_g0.copy()
        _, info = jf.convert(raw, start, track=tracker, keV=True, status=True)
        if t < 3:  # the fused update is the reference rule
            expect = track_reference(before, raw, info.status, info.kev, E, 1 / 20, 0.5)
            np.testing.assert_allclose(tracker.pedestal_g0, expect, rtol=0, atol=1e-3)
    err = (tracker.pedestal_g0 - ped[0])[~lit]
    lag = drift_per_frame * 20  # an exponential mean lags a linear drift by drift * window
    assert abs(np.median(err) + lag) < 2.5 and np.abs(err).max() < 25
    assert np.abs((start.pedestal[0] - ped[0])[~lit]).min() >= 99  # untracked: off by the whole drift
    np.testing.assert_array_equal(tracker.pedestal_g0[lit], start.pedestal[0][lit])
    assert [f for f, _ in tracker.snapshots] == [100, 200, 300, 400] and tracker.frames == n


# ----------------------------------------------------------------------------- geometry

def unit_calibration(geometry):
    """ped 0, gain 1 ADU/keV, 1 keV: photons = ADC value of G0 words."""
    shape = (3, *geometry.raw_shape)
    return jf.Calibration(np.zeros(shape), np.ones(shape), 1.0, geometry=geometry)


def test_4m_pattern_lands_where_the_geometry_says():
    g = jf.ModuleLayout.jungfrau_4m()
    assert g.shape == (2068, 2164) == JUNGFRAU_4M_SHAPE
    value = 400 * (np.arange(8) + 1)  # per module, divisible by 4: split parts are exact quarters/halves
    raw = np.repeat(value, 512)[:, None].repeat(1024, 1).astype(np.uint16)
    photons, info = jf.convert(raw, unit_calibration(g))
    assert info.counts["g0"] == raw.size
    for k in range(8):
        # transposed 2 x 4 grid: module k's assembled pixel (r, c) sits at (oy + c, ox + r) with
        # oy = (k % 2) * (1030 + 8), ox = (k // 2) * (514 + 36)
        oy, ox = (k % 2) * 1038, (k // 2) * 550
        v = value[k]
        assert photons[oy, ox] == v and photons[oy + 1029, ox + 513] == v  # corners of the module
        assert photons[oy + 300 + 2, ox + 10] == v  # raw (10, 300): chip 1 -> column + 2
        assert photons[oy + 900 + 6, ox + 400 + 2] == v  # raw (400, 900): chip 3, lower chip row
        assert photons[oy + 255, ox + 10] == v // 2 == photons[oy + 256, ox + 10]  # double column split
        assert photons[oy + 10, ox + 255] == v // 2 == photons[oy + 10, ox + 256]  # double row split
        assert (photons[oy + 255:oy + 259, ox + 255:ox + 259] == v // 4).all()  # chip corners: a quarter each
        block = photons[oy:oy + 1030, ox:ox + 514]
        assert block.sum() == v * 512 * 1024  # the module's total is conserved
    lo = jf.markers(np.int32)[0]
    assert (photons == lo).sum() == 2068 * 2164 - 8 * 514 * 1030 == g.gap_index.size
    assert (photons[:, 514:550] == lo).all() and (photons[1030:1038] == lo).all()  # module gaps


@pytest.mark.parametrize("geometry", [
    jf.ModuleLayout.grid(2, 2, gap_x=3, gap_y=5),
    jf.ModuleLayout.grid(2, 1, gap_x=0, gap_y=2, transpose=True),
    # flipped and rotated modules, with a margin
    jf.ModuleLayout(np.array([[513 + 4, 1029 + 4, 0, -1, -1, 0], [4, 1040 + 513, 1, 0, 0, -1]]), (1040, 1560)),
])
def test_assembly_equals_reference_and_conserves_totals(rng, geometry):
    calib = unit_calibration(geometry)
    raw = rng.integers(0, 0x4000, geometry.raw_shape).astype(np.uint16)  # G0, odd and even values
    photons, info = jf.convert(raw, calib, keV=True)
    lo = jf.markers(np.int32)[0]
    ref, ref_kev, _ = convert_reference(raw, calib.pedestal, calib.gain, 1.0)
    np.testing.assert_array_equal(photons, assemble_reference(ref, geometry.modules, geometry.shape, lo))
    np.testing.assert_array_equal(info.kev, assemble_reference(ref_kev, geometry.modules, geometry.shape,
                                                               np.float32(np.nan)))
    covered = photons != lo
    assert photons[covered].sum(dtype=np.int64) == raw.sum(dtype=np.int64)  # double pixels conserve the total
    np.testing.assert_array_equal(geometry.disassemble(np.where(covered, photons, 0)), raw.astype(np.int32))
    unassembled, _ = jf.convert(raw, calib, assemble=False)
    np.testing.assert_array_equal(unassembled, raw.astype(np.int32))


def test_geometry_parameters():
    g16 = jf.ModuleLayout.grid(32, 4)
    assert g16.shape == (8 * 514 + 7 * 36, 4 * 1030 + 3 * 8) and g16.raw_shape == (32 * 512, 1024)
    assert jf.ModuleLayout.grid(2, 1).shape == (2 * 514 + 36, 1030)  # 1M
    with pytest.raises(ValueError, match="overlap"):
        jf.ModuleLayout(np.array([[0, 0, 0, 1, 1, 0], [10, 10, 0, 1, 1, 0]]), (600, 1100))
    with pytest.raises(ValueError, match="outside"):
        jf.ModuleLayout(np.array([[0, 0, 0, 1, 1, 0]]), (514, 1029))
    with pytest.raises(ValueError, match="perpendicular"):
        jf.ModuleLayout(np.array([[0, 0, 0, 1, 0, 1]]), (1030, 1030))


def test_simulator_takes_assembled_frames(rng):
    det = simulate_detector(rng, 2, dead_fraction=0, noisy_fraction=0)
    g = det.calibration.geometry
    frame = still_frame(rng, g.shape, background=0.5, spots=20)
    back, _ = jf.convert(det.raw(frame, rng, noise=False), det.calibration)
    inside = g.source_index >= 0
    # each raw pixel saw the sum of its output pixels; totals survive, gaps are lost
    assert back[inside].sum(dtype=np.int64) == frame[inside].sum(dtype=np.int64)
    single = np.bincount(g.source_index[inside], minlength=g.raw_shape[0] * g.raw_shape[1]).reshape(
        g.raw_shape)[g.source_index.clip(0) // 1024, g.source_index.clip(0) % 1024] == 1
    np.testing.assert_array_equal(back[inside & single], frame[inside & single])


# ----------------------------------------------------------------------------- pipeline and storage

def test_encode_with_calibration(rng):
    det = simulate_detector(rng, 1)
    frame = still_frame(rng, det.calibration.geometry.shape, background=2.0, spots=10)
    raw = det.raw(frame, rng)
    photons, _ = jf.convert(raw, det.calibration)
    chunk = rr.encode(raw, calibration=det.calibration, q=1)
    assert chunk == rr.encode(photons, q=1)
    back = rr.decode(chunk)
    bg = ~rr.exact_mask(chunk)
    assert (np.abs(back - photons)[bg] <= error_bound(chunk)[bg] + 1e-9).all()
    marked = photons == jf.markers(np.int32)[0]
    assert marked.any() and (back[marked] == photons[marked]).all()  # dead/noisy pixels and gaps kept


def test_psi_gain_file_layout(tmp_path, rng):
    maps = rng.normal(size=(6, 512, 1024))
    path = tmp_path / "gainMaps_M001.bin"
    jf.write_psi_gain_file(path, maps)
    assert path.stat().st_size == 6 * 512 * 1024 * 8
    flat = np.fromfile(path, "<f8")
    assert flat[0] == maps[0, 0, 0] and flat[1] == maps[0, 0, 1] and flat[1024] == maps[0, 1, 0]
    assert flat[3 * 512 * 1024] == maps[3, 0, 0]  # HG0 after G0, G1, G2
    np.testing.assert_array_equal(jf.read_psi_gain_file(path), maps)
    two = jf.gain_maps([path, path], high_gain=True)
    assert two.shape == (3, 1024, 1024) and two.dtype == np.float32
    np.testing.assert_array_equal(two[:, 512:], maps[3:].astype(np.float32))
    (tmp_path / "short.bin").write_bytes(b"\0" * 800)
    with pytest.raises(ValueError, match="6 x 512 x 1024 float64"):
        jf.read_psi_gain_file(tmp_path / "short.bin")


def write_calibration_dir(tmp_path, det, rng, n_dark=6):
    """What a facility ships: PSI gain files and dark runs per stage, plus calibration.json."""
    tmp_path.mkdir()
    c = det.calibration
    maps = np.concatenate([c.gain, c.gain * 1.5]).astype(np.float64)  # G0..G2, HG0..HG2
    jf.write_psi_gain_file(tmp_path / "gainMaps_M001.bin", maps)
    runs = {}
    for s in range(3):
        with h5py.File(tmp_path / f"dark_g{s}.h5", "w") as f:
            f["data"] = det.dark_run(rng, n_dark, s)
        runs[f"g{s}"] = f"dark_g{s}.h5:/data"
    cfg = dict(energy_keV=E, gain_files=["gainMaps_M001.bin"], dark_runs=runs, geometry={"n_modules": 1})
    (tmp_path / "calibration.json").write_text(json.dumps(cfg))
    return tmp_path


def test_compress_cli_stores_calibration_and_redoes_conversion(tmp_path, rng, capsys):
    det = simulate_detector(rng, 1, dead_fraction=1e-3, noisy_fraction=0)
    caldir = write_calibration_dir(tmp_path / "cal", det, rng)
    calib = load_calibration(caldir)
    assert calib.geometry.shape == (514, 1030) and calib.meta["gain_files"] == ["gainMaps_M001.bin"]
    np.testing.assert_array_equal(calib.gain, det.calibration.gain)
    assert calib.mask[det.dead].all()  # dead pixels found in the dark runs
    frames = np.stack([det.raw(still_frame(rng, (514, 1030), background=1.0, spots=5), rng) for _ in range(3)])
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["entry/data/data"] = frames
    out = tmp_path / "out.h5"
    assert cli(["compress", str(tmp_path / "raw.h5"), "-o", str(out), "--jungfrau-calibration", str(caldir),
                "-q", "0", "--track-window", "10", "--snapshot-every", "1"]) == 0
    assert "3 raw frames converted" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        stored = jf.read_calibration(f["entry/instrument/detector/jungfrau_calibration"])
        updates = jf.read_pedestal_updates(f["entry/instrument/detector/jungfrau_calibration"])
        assert f["entry/instrument/detector"].attrs["NX_class"] == "NXdetector"
        data = f["entry/data/data"][...]
    assert data.dtype == np.int16 == calib.photon_dtype()  # the default, auto: no count of 12.4 keV reaches int16's ends
    for name in ("pedestal", "gain", "noise", "mask"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(calib, name))
    assert stored.energy_keV == E and np.array_equal(stored.geometry.modules, calib.geometry.modules)
    # redo the conversion from what the file holds: tracking replayed from the stored start
    tracker = jf.PedestalTracker(stored, window=updates["window"], threshold=updates["threshold_photons"])
    for i, raw in enumerate(frames):
        photons, _ = jf.convert(raw, stored, out_dtype=np.int16, track=tracker)
        np.testing.assert_array_equal(data[i], photons)  # q=0: lossless
        np.testing.assert_array_equal(updates["pedestal_g0"][i], tracker.pedestal_g0)
    assert list(updates["frames"]) == [1, 2, 3]
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 frames of 514 x 1030 int16, 3 redml chunks: 3 lossless" in text
    assert "photon energy 12.4 keV" in text and "pedestal tracking: window 10" in text
    assert f"bad pixels: {int(calib.mask.sum())}" in text


def test_calibration_as_plain_dict(rng):
    small = simulate_detector(rng, frame_shape=(16, 32)).calibration
    d = small.to_dict()
    assert set(d) == {"energy_keV", "pedestal", "gain", "mask", "noise", "geometry", "meta"}
    plain = json.loads(json.dumps({k: v.tolist() if hasattr(v, "tolist") else v for k, v in d.items()}))
    back = jf.Calibration.from_dict(plain)
    raw = random_words(rng, small.frame_shape, 20)
    np.testing.assert_array_equal(jf.convert(raw, back)[0], jf.convert(raw, small)[0])
    assert back.mask.sum() == small.mask.sum() and back.energy_keV == E and back.geometry is None
    g = jf.ModuleLayout.jungfrau_4m()
    again = jf.ModuleLayout(**json.loads(json.dumps(g.to_dict())))
    assert again.shape == g.shape and np.array_equal(again.modules, g.modules)


def test_write_calibration_to_file_root(tmp_path, rng):
    det = simulate_detector(rng, frame_shape=(8, 16))
    with h5py.File(tmp_path / "c.h5", "w") as f:
        jf.write_calibration(f, det.calibration, photon_dtype=np.int16)
    back = load_calibration(tmp_path / "c.h5")  # finds the group
    np.testing.assert_array_equal(back.pedestal, det.calibration.pedestal)
    assert back.geometry is None and back.meta == {"simulated": True}
    with h5py.File(tmp_path / "c.h5") as f:
        assert "-32768: masked" in f["entry/instrument/detector/jungfrau_calibration"].attrs["markers"]


# ----------------------------------------------------------------------------- raw streams: one geometry

def acquire_raw_stream(out, raw, calibration: dict, pixel_mask=None):
    """`redml acquire` (q=0) of raw frames sent with `calibration` in the start message."""
    from redml_reduce.acquire import protocol as s
    from redml_reduce.acquire import AcquireSettings, Acquisition
    from redml_reduce.background import BeamGeometry

    beam = BeamGeometry(beam_x=500.0, beam_y=520.0, distance_mm=80.0, pixel_size_mm=0.075, wavelength_a=1.0)
    acq = Acquisition(out, AcquireSettings(q=0, workers=1))
    acq.feed(s.encode_start(raw[0].shape, "uint16", beam, number_of_images=len(raw), compression="bslz4",
                            jungfrau_calibration=calibration, pixel_mask=pixel_mask))
    for i, r in enumerate(raw):
        acq.feed(s.encode_image(r, i, compression="bslz4"))
    acq.feed(s.encode_end())
    assert acq.wait(60)
    (summary,) = acq.close()
    return summary


def test_acquire_stores_the_frames_compress_stores(tmp_path, rng):
    """A raw JUNGFRAU stream whose start message carries the calibration (with its module
    geometry) is stored as `redml compress --jungfrau-calibration` stores the same raw frames:
    assembled, same shape, same pixel positions (q=0: byte for byte), same geometry record."""
    det = simulate_detector(rng, 2)  # two modules, assembled in a column: 1064 x 1030
    calib = det.calibration
    raw = [det.raw(still_frame(rng, calib.geometry.shape, background=1.0, spots=10), rng) for _ in range(3)]
    raw[1][5, 7] = jf.OVERLOAD_WORD
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["entry/data/data"] = np.stack(raw)
    with h5py.File(tmp_path / "cal.h5", "w") as f:
        jf.write_calibration(f, calib)
    assert cli(["compress", str(tmp_path / "raw.h5"), "-o", str(tmp_path / "compress.h5"),
                "--jungfrau-calibration", str(tmp_path / "cal.h5"), "-q", "0"]) == 0
    summary = acquire_raw_stream(tmp_path / "acquire.nxs", raw, calib.to_dict(), calib.mask.astype(np.uint32))
    assert summary["counts"]["written"] == 3 and summary["counts"]["rejected"] == 0
    stored = {}
    for name in ("compress.h5", "acquire.nxs"):
        with h5py.File(tmp_path / name, "r") as f:
            stored[name] = (f["entry/data/data"][...],
                            jf.read_calibration(f["entry/instrument/detector/jungfrau_calibration"]).geometry,
                            f["entry/instrument/detector/pixel_mask"][...]
                            if "entry/instrument/detector/pixel_mask" in f else None)
    (c_data, c_geom, _), (a_data, a_geom, a_mask) = stored["compress.h5"], stored["acquire.nxs"]
    assert c_data.shape == a_data.shape == (3, *calib.geometry.shape)
    assert c_data.dtype == a_data.dtype == calib.photon_dtype() == np.int16  # 12.4 keV: int16 holds every count
    assert a_data.tobytes() == c_data.tobytes()
    assert a_geom.shape == c_geom.shape and np.array_equal(a_geom.modules, c_geom.modules)
    # the raw-layout pixel mask of the stream is assembled like the images: gaps flagged, bad pixels in place
    src = calib.geometry.source_index
    assert a_mask.shape == calib.geometry.shape and (a_mask[src < 0] & 1).all()
    np.testing.assert_array_equal(a_mask[src >= 0] != 0, calib.mask.ravel()[src[src >= 0]])


def test_stream_geometry_out_of_bounds_rejects_the_series_not_the_service(tmp_path, rng):
    det = simulate_detector(rng, 1)
    raw = [det.raw(still_frame(rng, det.calibration.geometry.shape, background=1.0), rng)]
    for bad in ({"modules": [[0, 0, 0, 1, 1, 0]], "shape": [10**6, 10**6]},  # 10^12 pixels: refused before allocating
                {"modules": [[0, 0, 0, 1, 1, 0]] * 2, "shape": [1064, 1030]},  # 2 modules, the frames hold 1
                {"modules": [[10**400, 0, 0, 1, 1, 0]], "shape": [514, 1030]},
                {"modules": "x", "shape": [514, 1030]}, {"shape": [514, 1030]}, [1, 2]):
        with pytest.raises(ValueError):
            jf.ModuleLayout.from_dict(bad, n_modules=1)
        if not isinstance(bad, dict) or "modules" not in bad:
            continue  # our sender cannot even encode it
        summary = acquire_raw_stream(tmp_path / "bad.nxs", raw, dict(det.calibration.to_dict(), geometry=bad))
        assert summary["counts"]["rejected"] == 1 and summary["counts"]["written"] == 0


@pytest.mark.parametrize("detector", ["0.5m", "1m"])
def test_simulated_raw_stream_carries_the_geometry_of_its_shots(detector):
    """`redml-study simulate-detector --jungfrau-raw`: the shots are simulated on the assembled
    detector (their beam centre refers to it) and the calibration sent places the modules there."""
    from argparse import Namespace

    from redml_study.cli import _jungfrau_raw_frames, _simulated_layout

    args = Namespace(detector=detector, background=0.5, hit_rate=1.0, seed=0, pool=1, frames=1)
    frames, beam, mask, calib = _jungfrau_raw_frames(args)
    layout = _simulated_layout(detector)
    assert frames[0].shape == calib.frame_shape == mask.shape and calib.geometry.shape == layout.shape
    np.testing.assert_array_equal(calib.geometry.source_index < 0, layout.gap_mask())
    photons = jf.convert(frames[0], calib)[0]
    assert photons.shape == layout.shape and 0 < beam.beam_x < layout.shape[1] and 0 < beam.beam_y < layout.shape[0]
