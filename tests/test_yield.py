"""End to end with DIALS (Debian's dials, run as subprocesses): simulated shots -> NXmx files
-> DIALS reads them (redml through HDF5_PLUGIN_PATH), finds the simulator's spots, indexes,
integrates; the yardstick's numbers come out. A few small frames: heavy runs are
benchmarks/yield.py."""
import json
import subprocess

import h5py
import numpy as np
import pytest

from redml_study.dials_side import script
from redml_study.dials_side import DIALS_PYTHON
from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator
from redml_study.yardstick import Dials, compare
from redml_study.yield_study import format_table, series_from_files, series_from_simulator, study

ONE_MODULE = DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")
LYSOZYME = ("P43212", (79.1, 79.1, 37.9, 90, 90, 90))


def test_dials_finds_the_simulated_spots_where_the_list_says(tmp_path):
    """A noiseless shot: DIALS's strong spots sit on the simulator's reflections."""
    sim = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=1.0), seed=11)
    series = series_from_simulator(sim, 1, name="noiseless")
    series.frames = lambda: iter([sim.shot(0, noise=False).frame])
    from redml_study.yield_study import write_series

    write_series(series, "uncompressed", tmp_path / "noiseless.nxs")
    run = Dials(*LYSOZYME).process(tmp_path / "noiseless.nxs", tmp_path / "dials", index=False)
    truth = sim.shot(0).reflections
    bright = truth[truth["intensity"] > 50]
    assert len(run.spots) > 50 and len(bright) > 50
    d = np.hypot(run.spots["x"][:, None] - truth["x"][None], run.spots["y"][:, None] - truth["y"][None])
    nearest = d.min(axis=1)
    assert np.mean(nearest < 1.0) > 0.95  # DIALS's spots are the simulator's reflections ...
    assert np.median(nearest) < 0.25      # ... centred on them
    found = np.hypot(bright["x"][:, None] - run.spots["x"][None], bright["y"][:, None] - run.spots["y"][None]).min(axis=1)
    assert np.mean(found < 1.0) > 0.9     # and the bright reflections are found


def test_nxmx_geometry_reads_back_through_dxtbx(tmp_path):
    sim = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=80.0, wavelength_a=0.9, hit_rate=0.0), seed=1)
    series = series_from_simulator(sim, 2)
    from redml_study.yield_study import write_series

    write_series(series, "redml-q1", tmp_path / "g.nxs")
    out = subprocess.run([DIALS_PYTHON, script("geometry.py"), str(tmp_path / "g.nxs")], capture_output=True, text=True,
                         check=True)
    g = json.loads(out.stdout)
    assert g["beam_x"] == pytest.approx(sim.geometry.beam_x, abs=1e-6)
    assert g["beam_y"] == pytest.approx(sim.geometry.beam_y, abs=1e-6)
    assert g["distance_mm"] == pytest.approx(80.0) and g["wavelength_a"] == pytest.approx(0.9)
    assert g["pixel_size_mm"] == pytest.approx(0.075) and g["image_size"] == [1030, 514]
    back = series_from_files([tmp_path / "g.nxs"])
    assert back.geometry == sim.geometry and back.n == 2
    np.testing.assert_array_equal(back.pixel_mask != 0, sim.mask)


def test_yield_chain_uncompressed_and_redml(tmp_path):
    """The chain of benchmarks/yield.py on three small shots: the uncompressed file indexes,
    DIALS reads the redml file through the plugin path, the comparison is produced."""
    sim = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0, background=3.0,
                                                             water_ring=3.0), seed=7)
    series = series_from_simulator(sim, 3, name="small")
    results = study(series, ["redml-q2"], Dials(*LYSOZYME), tmp_path, log=lambda m: None)
    ref, q2 = results["uncompressed"], results["redml-q2"]
    assert ref["indexed_uncompressed"] >= 2, "DIALS should index the simulated hits"
    assert ref["reflections_uncompressed"] > 100
    assert not q2["identical"] and q2["dials"] == "run"  # lossy at 3 photons/px: DIALS ran on the redml file
    with h5py.File(tmp_path / "small_redml-q2.nxs", "r") as f:
        assert f["entry/data/data"].id.get_create_plist().get_filter(0)[0] == 310  # the redml filter
    assert q2["ratio"] > 1.2 * results["uncompressed"]["ratio"]
    assert q2["indexed"] >= ref["indexed_uncompressed"] - 1
    assert q2["reflections_matched"] >= 0.95 * q2["reflections_uncompressed"]
    assert q2["cc_intensity"] > 0.98
    assert abs(q2["mean_dsig"]) < 0.2
    table = format_table(results)
    assert "redml-q2" in table and "uncompressed" in table


def test_compare_counts_lost_and_gained_frames():
    from redml_study.yardstick import INTEGRATED_DTYPE, DialsRun

    def run(indexed, intensities):
        t = np.zeros(len(intensities), INTEGRATED_DTYPE)
        t["image"], t["h"], t["k"], t["l"] = 0, np.arange(len(intensities)), 1, -2
        t["intensity"], t["variance"] = intensities, 4.0
        return DialsRun("x", ".", np.zeros(4, int), np.array(indexed), t, np.zeros(0))

    ref = run([True, True, False, True], [10.0, 20.0, 1.0, 0.5])
    test = run([True, False, True, True], [12.0, 20.0, 1.0])
    c = compare(ref, test)
    assert c["lost"] == [1] and c["gained"] == [2] and c["indexed_both"] == 2
    assert c["yield"] == pytest.approx(2 / 3) and c["reflections_matched"] == 3
    assert c["mean_dsig"] == pytest.approx((2 / 2 + 0 + 0) / 3)
    assert c["weak_mean_dsig"] == pytest.approx(0.0)  # I/sigma < 2: the last two


def test_truth_error_matches_by_symmetry_unique_index():
    from redml_study.yardstick import INTEGRATED_DTYPE
    from redml_study.yield_study import truth_error

    sim = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(distance_mm=50.0, hit_rate=1.0), seed=2)
    series = series_from_simulator(sim, 2)
    t = series.truth
    integ = np.zeros(len(t), INTEGRATED_DTYPE)
    # DIALS may index in another setting: (k, h, -l) is the same reflection in P43212
    integ["image"], integ["h"], integ["k"], integ["l"] = t["frame"], t["k"], t["h"], -t["l"]
    integ["intensity"], integ["variance"] = t["intensity"] + 3.0, 9.0
    e = truth_error(integ, series)
    assert e["matched"] > 0.9 * len(t)
    assert e["mean_dsig"] == pytest.approx(1.0)
    integ["image"] = 1 - integ["image"]  # the other shot: nothing should match
    assert truth_error(integ, series).get("matched", 0) < 0.05 * len(t)


def test_clipped_copy_sets_negative_counts_to_zero_outside_the_mask(tmp_path):
    from redml_study.yield_study import write_series

    sim = StillSimulator(ONE_MODULE, Crystal(), ShotSettings(hit_rate=0.0, background=0.3), seed=4)
    sim.mask[:, :3] = True  # pretend gap columns
    series = series_from_simulator(sim, 1)
    r = write_series(series, "sz3-abs2-clip0", tmp_path / "s.nxs")
    assert r["dials_path"].endswith(".clipped.nxs") and r["ratio"] > 1
    with h5py.File(tmp_path / "s.nxs", "r") as f:
        lossy = f["entry/data/data"][0]
    with h5py.File(r["dials_path"], "r") as f:
        clipped = f["entry/data/data"][0]
    gaps = series.pixel_mask != 0
    assert (lossy[~gaps] < 0).any()  # SZ3 did make negative counts ...
    assert (clipped[~gaps] >= 0).all()  # ... and the copy has none outside the mask
    np.testing.assert_array_equal(clipped[~gaps], np.maximum(lossy[~gaps], 0))
    np.testing.assert_array_equal(clipped[gaps], lossy[gaps])
