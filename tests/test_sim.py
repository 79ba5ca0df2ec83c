"""The still-shot simulator: reproducible, physically placed spots, knobs that do what they say."""
import numpy as np
import pytest

from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator, random_rotation

ONE_MODULE = DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")


@pytest.fixture(scope="module")
def sim():
    return StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=1.0), seed=3)


def test_shot_is_a_function_of_seed_and_index(sim):
    a, b = sim.shot(2), sim.shot(2)
    assert a.frame.tobytes() == b.frame.tobytes()
    np.testing.assert_array_equal(a.reflections, b.reflections)
    assert sim.shot(3).frame.tobytes() != a.frame.tobytes()
    other = StillSimulator(ONE_MODULE, Crystal(), sim.settings, seed=4)
    assert other.shot(2).frame.tobytes() != a.frame.tobytes()


def test_reflections_obey_the_lattice_and_the_ewald_sphere(sim):
    shot = sim.shot(0)
    r = shot.reflections
    assert shot.hit and len(r) > 100
    # P43212: 00l only with l = 4n, h00 only with h = 2n (systematic absences from cctbx).
    axial_l = r[(r["h"] == 0) & (r["k"] == 0)]
    assert np.all(axial_l["l"] % 4 == 0)
    axial_h = r[(r["k"] == 0) & (r["l"] == 0)]
    assert np.all(axial_h["h"] % 2 == 0)
    # Bragg's law: the spot's scattering angle matches the reflection's d-spacing.
    d = sim.geometry.resolution_at(r["x"], r["y"])
    np.testing.assert_allclose(d, r["d"], rtol=0.01)
    assert np.all((r["partiality"] > 0) & (r["partiality"] <= 1))
    # every spot is on a module, none in a gap
    h, w = sim.detector.shape
    assert np.all((r["x"] >= 0) & (r["x"] < w) & (r["y"] >= 0) & (r["y"] < h))


def test_spot_photons_arrive_where_the_list_says():
    dark = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=0.0,
                                                              water_ring=0.0, bad_pixel_fraction=0), seed=3)
    shot = dark.shot(1, noise=False)
    frame = np.where(dark.mask, 0, shot.frame).astype(float)
    r = shot.reflections
    strong = r[r["intensity"] > 300]
    assert len(strong) > 10
    checked = 0
    for refl in strong:
        others = np.hypot(r["x"] - refl["x"], r["y"] - refl["y"])
        if np.sort(others)[1] < 10 or not (8 < refl["x"] < 1022 and 8 < refl["y"] < 506):
            continue  # isolated spots away from the edges only
        x, y = int(refl["x"]), int(refl["y"])
        box = frame[y - 4:y + 5, x - 4:x + 5]
        # the photons are there (to the rounding of 81 pixels) and centred on the listed position
        assert abs(box.sum() - refl["intensity"]) <= 0.02 * refl["intensity"] + 40
        yy, xx = np.mgrid[y - 4:y + 5, x - 4:x + 5] + 0.5
        assert abs((box * xx).sum() / box.sum() - refl["x"]) < 0.1
        assert abs((box * yy).sum() / box.sum() - refl["y"]) < 0.1
        checked += 1
    assert checked >= 5


def test_knobs(sim):
    blanks = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(hit_rate=0.0, background=0.5), seed=1)
    shot = blanks.shot(0)
    assert not shot.hit and len(shot.reflections) == 0
    good = ~(blanks.mask | blanks.hot | blanks.dead)
    valid = shot.frame[good]
    # Poisson background: the model's map times the shot's beam-intensity factor (0.85-1.15),
    # with a variance equal to the mean
    model = blanks.background_map[good]
    factor = valid.mean() / model.mean()
    assert 0.84 < factor < 1.16
    assert abs(np.var(valid - factor * model) / valid.mean() - 1) < 0.03
    hits = sum(StillSimulator(ONE_MODULE, Crystal(), ShotSettings(hit_rate=0.3), seed=5).shot(i).hit for i in range(60))
    assert 8 <= hits <= 30
    weak = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(signal=50, distance_mm=50.0, hit_rate=1.0), seed=3)
    assert weak.shot(0).reflections["intensity"].sum() < sim.shot(0).reflections["intensity"].sum() / 10


def test_gaps_and_bad_pixels():
    det = DetectorLayout(modules=(2, 2), gap=(10, 6))
    s = StillSimulator(det, Crystal(), ShotSettings(hit_rate=0.0, bad_pixel_fraction=1e-3), seed=2)
    assert det.shape == (2 * 514 + 10, 2 * 1030 + 6)
    frame = s.shot(0).frame
    assert np.all(frame[s.mask] == -1) and s.mask.sum() == det.shape[0] * det.shape[1] - 4 * 514 * 1030
    assert np.all(frame[s.hot] == 4000) and np.all(frame[s.dead] == 0) and s.hot.any() and s.dead.any()


def test_rotations_are_uniform():
    rng = np.random.default_rng(0)
    mats = np.array([random_rotation(rng) for _ in range(4000)])
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", mats, mats), np.broadcast_to(np.eye(3), mats.shape), atol=1e-12)
    assert np.allclose(np.linalg.det(mats), 1)
    # the beam direction seen from the crystal is uniform on the sphere: mean ~0, <z^2> ~1/3
    z = mats[:, 2, :]
    assert np.all(np.abs(z.mean(0)) < 0.05) and np.all(np.abs((z**2).mean(0) - 1 / 3) < 0.03)


def test_bad_settings():
    with pytest.raises(ValueError):
        ShotSettings(hit_rate=1.5)
    with pytest.raises(ValueError):
        ShotSettings(dtype="float64")
    with pytest.raises(ValueError):
        Crystal(unit_cell=(0, 1, 1, 90, 90, 90))
