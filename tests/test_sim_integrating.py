"""The sim-integrating data set of the yield and fidelity benchmarks (benchmarks/yield.py):
simulated stills as an integrating detector writes them (pedestal-subtracted int32 ADU, read
noise, gaps at the dtype's minimum), the integrating settings every redml codec gets on them,
what DIALS is told (gain, trusted range), and the chain end to end on a few small shots."""
import importlib
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce.codec import CodecSettings
from redml_study.detector import IntegratingDetector
from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator
from redml_study.yardstick import INTEGRATED_DTYPE, Dials
from redml_study.yield_study import _dials_geometry, cached, series_from_simulator, study, truth_error, write_series

from helpers import check_decoded

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = importlib.import_module("yield")

ONE_MODULE = DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")
GAIN = 20.0


@pytest.fixture(scope="module")
def sim():
    s = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=0.3,
                                                           water_ring=0.6, signal=1000), seed=5)
    s.mask[:, :4] = True  # gap columns (one module has none)
    return s


@pytest.fixture(scope="module")
def series(sim):
    return cached(series_from_simulator(sim, 2, name="int", detector=IntegratingDetector(gain=GAIN)))


def test_integrating_frames_are_the_shots_in_adu(sim, series):
    """Each frame is the shot's photons x 20 ADU plus 0.2 photon of read noise, about half the
    empty pixels negative, the gaps at int32's minimum; made the same on every pass."""
    frames = list(series.frames())
    assert series.dtype == np.int32 and all(f.dtype == np.int32 for f in frames)
    assert [f.tobytes() for f in frames] == [f.tobytes() for f in series_from_simulator(
        sim, 2, detector=IntegratingDetector(gain=GAIN)).frames()]
    for i, f in enumerate(frames):
        gaps = series.pixel_mask != 0
        assert gaps.any() and (f[gaps] == np.iinfo(np.int32).min).all()
        noise = f[~gaps] / GAIN - sim.shot(i).frame[~gaps]
        assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(0.2, rel=0.05)
        empty = sim.shot(i).frame[~gaps] == 0
        assert 0.4 < (f[~gaps][empty] < 0).mean() < 0.6
    assert series.redml_options == {"gain": GAIN, "markers": "extremes", "read_noise": "auto"}
    assert series.adu_per_photon == GAIN and series.integrating
    assert series.nxmx["underload_value"] == np.iinfo(np.int32).min + 1


def test_benchmark_set_is_integrating_and_dials_is_told_the_gain():
    series = bench.simulated_series("sim-integrating", 2026, 1)
    assert series.dtype == np.int32 and series.redml_options["gain"] == GAIN
    assert series.shape == bench.SIMULATED["sim-quick"][0].shape  # the quick set's JUNGFRAU 1M
    dials = bench.dials_for("sim-integrating", bench.LYSOZYME, 1, False)
    assert "spotfinder.threshold.dispersion.gain=20" in dials.find_spots_options
    assert "integration.summation.detector_gain=20" in dials.integrate_options
    assert "algorithm=stills" in dials.integrate_options
    assert bench.dials_for("sim-weak", bench.LYSOZYME, 1, False).find_spots_options == ()
    assert bench.codecs_for("sim-integrating", None, True) == bench.INTEGRATING_CODECS
    assert "sz3-abs20" in bench.INTEGRATING_CODECS and "sz3-abs1" not in bench.INTEGRATING_CODECS


@pytest.mark.parametrize("codec,q", [("redml-lossless", 0), ("redml-q2", 2), ("redml-mean-q4", 4),
                                     ("redml-draw-q8", 8), ("redml-sparse", "sparse")])
def test_redml_codecs_get_the_integrating_settings(series, tmp_path, codec, q):
    """Every redml codec writes the detector's settings into the file's filter and each chunk
    decodes within its bound (lossless: byte for byte); gaps stay markers."""
    r = write_series(series, codec, tmp_path / "f.nxs")
    with h5py.File(tmp_path / "f.nxs", "r") as f:
        d = f["entry/data/data"]
        cd = d.id.get_create_plist().get_filter_by_id(rr.FILTER_ID)[1]
        settings = CodecSettings.from_cd_values(cd)
        for i, frame in enumerate(series.frames()):
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            back = d[i]
            check_decoded(frame, back, chunk, q)
            gaps = series.pixel_mask != 0
            assert np.array_equal(back[gaps], frame[gaps])
    assert settings.gain == GAIN and settings.markers == "extremes"
    if q not in (0, "sparse"):
        assert settings.read_noise == "auto"
        assert r["max_abs_error"] > 0  # measured over the negative pixels too
    assert r["identical"] == (q == 0)


def test_max_abs_error_counts_negative_pixels_of_integrating_frames(series, tmp_path):
    """On integrating frames negative values are data: an error on one of them is measured
    (photon counts leave negative values out as markers)."""
    from redml_study.yield_study import measure_file

    write_series(series, "uncompressed", tmp_path / "u.nxs")
    frame = next(series.frames())
    y, x = np.argwhere((frame < 0) & (series.pixel_mask == 0))[0]
    with h5py.File(tmp_path / "u.nxs", "r+") as f:
        f["entry/data/data"][0, y, x] = frame[y, x] + 7
    r = measure_file(series, "uncompressed", tmp_path / "u.nxs")
    assert not r["identical"] and r["max_abs_error"] == 7


def test_sz3_bounds_in_adu(series, tmp_path):
    r = write_series(series, "sz3-abs20", tmp_path / "s.nxs")
    assert 0 < r["max_abs_error"] <= 20 and r["ratio"] > 1


def test_truth_error_compares_in_the_frames_units(series):
    """DIALS integrates ADU: the simulator's photons are scaled by the gain before comparing."""
    t = series.truth
    integ = np.zeros(len(t), INTEGRATED_DTYPE)
    integ["image"], integ["h"], integ["k"], integ["l"] = t["frame"], t["h"], t["k"], t["l"]
    integ["intensity"], integ["variance"] = t["intensity"] * GAIN, 400.0
    e = truth_error(integ, series)
    assert e["matched"] > 0.9 * len(t) and e["mean_dsig"] == pytest.approx(0.0, abs=1e-9)


def test_nxmx_trusts_the_negative_values(series, tmp_path):
    """dxtbx's trusted range of the written file starts just above the gap marker: the negative
    half of the background is data for DIALS, not masked pixels."""
    write_series(series, "uncompressed", tmp_path / "u.nxs")
    low, high = _dials_geometry(str(tmp_path / "u.nxs"))["trusted_range"]
    assert np.iinfo(np.int32).min <= low < -1000 and high >= 10**6


def test_integrating_chain_indexes_like_photon_counts(sim, tmp_path):
    """The uncompressed ADU file, with the gain given to DIALS, indexes the shots the photon
    file indexes; a redml setting is then run through DIALS with the integrating settings."""
    photons = cached(series_from_simulator(sim, 2, name="photons"))
    ref = study(photons, [], Dials(*bench.LYSOZYME), tmp_path / "p", log=lambda m: None)["uncompressed"]
    detector = IntegratingDetector(gain=GAIN)
    adu = cached(series_from_simulator(sim, 2, name="adu", detector=detector))
    results = study(adu, ["redml-q2"], Dials(*bench.LYSOZYME, **detector.dials_options()), tmp_path / "a",
                    log=lambda m: None)
    u, q2 = results["uncompressed"], results["redml-q2"]
    assert ref["indexed_uncompressed"] >= 1
    assert u["indexed_uncompressed"] >= ref["indexed_uncompressed"]
    assert u["reflections_uncompressed"] >= 0.8 * ref["reflections_uncompressed"]
    assert q2["dials"] == "run" and q2["ratio"] > 2 * u["ratio"]
    assert q2["reflections_matched"] >= 0.95 * q2["reflections_uncompressed"]
    assert abs(q2["mean_dsig"]) < 0.2


def test_pyfai_sparsify_keeps_the_negative_background(series, tmp_path):
    """pyFAI's peer on integrating frames: the azimuthal error model, the background rebuilt
    with its noise unclipped (fabio's densify clips at 0, which raised this set's background by
    0.1 photon) and the gaps at the detector's marker."""
    peers = importlib.import_module("peers_pyfai")
    assert peers.unavailable() is None, peers.unavailable()
    peers.register([peers.NAME])
    r = write_series(series, peers.NAME, tmp_path / "p.nxs")
    assert r["sparsify"]["error_model"] == "azimuthal" and r["ratio"] > 10
    with h5py.File(tmp_path / "p.nxs", "r") as f:
        back = f["entry/data/data"][:]
    frames = np.stack(list(series.frames()))
    gaps = np.broadcast_to(series.pixel_mask != 0, frames.shape)
    assert (back[gaps] == np.iinfo(np.int32).min).all()
    assert (back[~gaps] < 0).mean() > 0.5 * (frames[~gaps] < 0).mean()
    assert abs(back[~gaps].mean() - frames[~gaps].mean()) < 0.03 * GAIN  # photons


def test_aim_picks_the_best_safe_settings():
    """fidelity.aim: the issue's bar (no frame lost, >= 99.5% reflections, |dsig| <= 0.02 all
    and weak) picks the best redml and SZ3 settings; sparse against pyFAI on ratio, yield, bias
    (all and weak)."""
    fidelity = importlib.import_module("fidelity")

    def row(ratio, dsig=0.0, weak=0.0, matched=1000, lost=()):
        return {"ratio": ratio, "lost": list(lost), "reflections_matched": matched,
                "reflections_uncompressed": 1000, "mean_dsig": dsig, "weak_mean_dsig": weak}

    results = {"bslz4": row(5), "redml-q2": row(30, -0.01), "redml-q4": row(45, weak=-0.03),
               "redml-draw-q8": row(50, matched=990), "sz3-abs20": row(25), "sz3-abs40": row(90, lost=[3]),
               "redml-sparse": row(90, -0.3, weak=-0.2), "pyfai-sparsify": row(60, -0.4, weak=-0.3),
               "_commands": []}
    a = fidelity.aim(results)
    assert a["best_redml"] == "redml-q2" and a["best_sz3"] == "sz3-abs20"
    assert a["twice_bslz4"] and a["beats_sz3"] and a["redml_over_bslz4"] == 6
    assert a["sparse_beats_pyfai"]
    results["pyfai-sparsify"] = row(60, -0.2)
    assert not fidelity.aim(results)["sparse_beats_pyfai"]
    results["redml-sparse"], results["pyfai-sparsify"] = row(90, -0.3, weak=-0.5), row(60, -0.4, weak=0.4)
    assert not fidelity.aim(results)["sparse_beats_pyfai"]  # the weak reflections' bias counts too
