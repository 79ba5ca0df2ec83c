"""The pyFAI sparsify-Bragg peer of the fidelity benchmark (benchmarks/peers_pyfai.py): the
geometry handed to pyFAI, its sparse frames rebuilt by fabio's densify (peak pixels exact,
background the azimuthal profile), and the codec the study runs. pyFAI, pyopencl (test extra)
and an OpenCL device (Debian's pocl-opencl-icd on the CPU, `make deps`) are needed."""
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

from redml_reduce.background import BeamGeometry
from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator
from redml_study.yield_study import FILE_PEERS, cached, series_from_simulator, write_series

_spec = importlib.util.spec_from_file_location(
    "redml_peers_pyfai", Path(__file__).resolve().parents[1] / "benchmarks" / "peers_pyfai.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)

ONE_MODULE = DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")


@pytest.fixture(scope="module")
def sim():
    assert peers.unavailable() is None, peers.unavailable()
    return StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=4.0,
                                                              water_ring=6.0, signal=2000), seed=7)


@pytest.fixture(scope="module")
def sparsified(sim, tmp_path_factory):
    """One hit sparsified with sparsify-Bragg's defaults and saved in pyFAI's file."""
    shot = sim.shot(0)
    sparsifier = peers.Sparsifier(sim.geometry, shot.frame.shape, sim.mask)
    frame = sparsifier(shot.frame)
    path = tmp_path_factory.mktemp("pyfai") / "shot_sparse.h5"
    peers.save(path, [frame], sparsifier)
    return shot, frame, path


def test_pyfai_sees_the_frames_geometry():
    """Beam centre, distance, pixel size and wavelength reach pyFAI: its radius and 2theta of
    every pixel are BeamGeometry's."""
    g = BeamGeometry(beam_x=400.3, beam_y=120.8, distance_mm=87.5, pixel_size_mm=0.075, wavelength_a=1.1)
    shape = (300, 700)
    ai = peers.azimuthal_integrator(g, shape)
    np.testing.assert_allclose(ai.array_from_unit(shape, unit="r_m", scale=False),
                               g.radius_map(shape) * g.pixel_size_mm * 1e-3, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ai.twoThetaArray(shape), g.two_theta_map(shape), atol=1e-7)
    assert ai.wavelength == pytest.approx(1.1e-10)


def test_densify_keeps_the_peak_pixels_exactly(sim, sparsified):
    shot, frame, path = sparsified
    dense = next(peers.densified(path, noise=0))
    assert dense.dtype == shot.frame.dtype and dense.shape == shot.frame.shape
    assert 0 < frame.index.size < shot.frame.size // 20
    # every kept pixel comes back as it was ...
    np.testing.assert_array_equal(dense.ravel()[frame.index], shot.frame.ravel()[frame.index])
    # ... and the kept pixels hold the bright reflections' centres
    bright = shot.reflections[shot.reflections["intensity"] > 300]
    assert len(bright) >= 5
    centres = bright["y"].astype(int) * shot.frame.shape[1] + bright["x"].astype(int)
    assert np.isin(centres, frame.index).all()
    np.testing.assert_array_equal(dense.ravel()[centres], shot.frame.ravel()[centres])


def test_densify_background_is_the_azimuthal_profile(sim, sparsified):
    """Without noise, every other pixel is the stored profile at its radius (rounded), and that
    profile is the simulator's background; with densify-Bragg's noise, the same profile plus a
    seeded draw of its spread."""
    shot, frame, path = sparsified
    dense = next(peers.densified(path, noise=0))
    background = np.ones(shot.frame.size, bool)
    background[frame.index] = False
    background &= ~sim.mask.ravel()
    r = peers.azimuthal_integrator(sim.geometry, shot.frame.shape).array_from_unit(unit="r_m", scale=False)
    profile = np.interp(r.ravel(), frame.radius, frame.background_avg)
    np.testing.assert_array_equal(dense.ravel()[background], np.floor(profile[background] + 0.5))
    truth = sim.shot(0, noise=False).frame.ravel()[background]  # expected photons, rounded
    off = dense.ravel()[background].astype(float) - truth
    assert abs(off.mean()) < 0.1 and np.mean(np.abs(off) <= 1) > 0.99
    assert (dense.ravel()[sim.mask.ravel()] == 0).all()  # masked: the file's dummy

    noisy = next(peers.densified(path, dummy=-1))
    np.testing.assert_array_equal(noisy, next(peers.densified(path, dummy=-1)))  # seeded
    np.testing.assert_array_equal(noisy.ravel()[frame.index], shot.frame.ravel()[frame.index])
    assert (noisy.ravel()[sim.mask.ravel()] == -1).all() and (noisy.ravel()[background] >= 0).all()
    spread = np.interp(r.ravel(), frame.radius, frame.background_std)[background]
    drawn = noisy.ravel()[background] - profile[background]
    assert abs(drawn.mean()) < 0.2 * spread.mean() and 0.8 < drawn.std() / spread.mean() < 1.25


def test_study_codec_writes_the_densified_frames_and_pyfai_bytes(sim, tmp_path):
    series = cached(series_from_simulator(sim, 2, name="two"))
    codecs, skipped = peers.register(["redml-sparse", peers.NAME])
    assert codecs == ["redml-sparse", peers.NAME] and skipped == {}
    try:
        r = write_series(series, peers.NAME, tmp_path / "two_pyfai.nxs")
    finally:
        FILE_PEERS.pop(peers.NAME, None)
    sparse = Path(r["sparse_path"])
    assert r["stored_bytes"] == peers.stored_bytes(sparse)["stored_bytes"] < r["sparse_file_bytes"]
    assert r["ratio"] == r["raw_bytes"] / r["stored_bytes"] and r["raw_bytes"] == 2 * sim.shot(0).frame.nbytes
    assert not r["identical"] and r["sparsify"]["error_model"] == "poisson"
    with h5py.File(r["dials_path"], "r") as f:
        decoded = f["entry/data/data"][()]
    np.testing.assert_array_equal(decoded, np.stack(list(peers.densified(sparse, dummy=-1))))


def test_register_drops_the_peer_where_pyfai_cannot_run(monkeypatch):
    monkeypatch.setattr(peers, "unavailable", lambda: "no OpenCL device")
    codecs, skipped = peers.register(["bslz4", peers.NAME, "redml-sparse"])
    assert codecs == ["bslz4", "redml-sparse"] and skipped == {peers.NAME: "no OpenCL device"}
    assert peers.NAME not in FILE_PEERS


def test_error_model_follows_the_data():
    bad = np.zeros((4, 4), bool)
    counts = np.arange(16, dtype=np.int32).reshape(4, 4)
    assert peers.error_model_for(counts, bad) == "poisson"
    assert peers.error_model_for(counts - 3, bad) == "azimuthal"  # pedestal-subtracted: negatives are noise
    bad[0, :] = True
    assert peers.error_model_for(counts - 3, bad) == "poisson"  # only masked pixels were negative
    assert peers.error_model_for(counts.astype(np.float32), np.zeros((4, 4), bool)) == "azimuthal"


def test_masked_pixels_get_the_detectors_markers():
    assert peers.gap_marker(np.int32) == -1 and peers.gap_marker(np.uint16) == 65535
    assert np.isnan(peers.gap_marker(np.float32))
