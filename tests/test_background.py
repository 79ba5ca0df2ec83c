"""BeamGeometry and the radial background model."""
import h5py
import numpy as np
import pytest

from redml_reduce.background import BeamGeometry, RadialBackground


def ring_profile(r, r0=300.0):
    return 2.0 + 20.0 * np.exp(-((r - r0) ** 2) / (2 * 25.0**2))  # water ring on a flat background


def test_recovers_radial_profile_with_water_ring(rng):
    geom = BeamGeometry(beam_x=400.5, beam_y=380.0)
    shape = (800, 820)
    r = geom.radius_map(shape)
    frame = rng.poisson(ring_profile(r)).astype(np.int32)
    frame[rng.random(shape) < 0.002] += 500  # spots and zingers: clipped away
    frame[:, 200:206] = -1  # a gap: ignored
    bg = RadialBackground(geom, shape, bin_width=2.0).update(frame)
    ok = bg.count > 200
    truth = ring_profile(bg.centres[ok])
    err = (bg.mean[ok] - truth) / (np.sqrt(truth) / np.sqrt(bg.count[ok]))
    # within the statistical error
    assert np.abs(err).max() < 5 and abs(np.median(err)) < 1.0
    # sigma within its own statistical error (relative sd ~ 1/sqrt(2n)) plus 3%
    rel = np.abs(bg.sigma[ok] / np.sqrt(truth) - 1)
    assert (rel < 5 / np.sqrt(2 * bg.count[ok]) + 0.03).all()
    clean = bg.subtract(frame)
    sel = (frame >= 0) & (frame < 100)
    assert abs(clean[sel].mean()) < 0.05


def test_streaming_follows_slow_change(rng):
    geom = BeamGeometry(beam_x=150, beam_y=150)
    bg = RadialBackground(geom, (300, 300), bin_width=3.0, weight=0.5)
    for level in (5.0, 5.0, 10.0, 10.0, 10.0, 10.0):
        bg.update(rng.poisson(level, (300, 300)).astype(np.uint16))
    assert np.median(bg.mean[bg.count > 0]) == pytest.approx(10.0, rel=0.05)
    assert bg.frames == 6


def test_resolution_map_and_nxmx(tmp_path):
    geom = BeamGeometry(beam_x=100.0, beam_y=50.0, distance_mm=200.0, pixel_size_mm=0.1, wavelength_a=1.0)
    d = geom.resolution_map((100, 200))
    # pixel at 100 px = 10 mm from the beam: 2theta = atan(10/200)
    theta = np.arctan(10 / 200) / 2
    assert geom.resolution_at(200.0, 50.0) == pytest.approx(1.0 / (2 * np.sin(theta)))
    assert np.isinf(geom.resolution_at(100.0, 50.0)) and d.min() > 0
    with h5py.File(tmp_path / "g.nxs", "w") as f:
        det = f.create_group("entry/instrument/detector")
        det["beam_center_x"], det["beam_center_y"] = 100.0, 50.0
        det["distance"] = 0.2
        det["distance"].attrs["units"] = "m"
        det["x_pixel_size"] = 0.0001
        det["x_pixel_size"].attrs["units"] = "m"
        f["entry/instrument/beam/incident_wavelength"] = 1.0
    assert BeamGeometry.from_nxmx(tmp_path / "g.nxs") == geom


def test_bad_arguments():
    with pytest.raises(ValueError):
        BeamGeometry(beam_x=1, beam_y=1, distance_mm=0)
    bg = RadialBackground(BeamGeometry(5, 5), (10, 10))
    with pytest.raises(ValueError, match="update"):
        bg.background()
    with pytest.raises(ValueError, match="shape"):
        bg.update(np.zeros((9, 10), np.uint16))
