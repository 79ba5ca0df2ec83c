"""Peak-list files, automatic bad-pixel masks, finder tuning, the redml CLI."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce.automask import find_bad_pixels, load_masks, save_masks
from redml_reduce.formats.peaklist import read_cxi_peaks, write_cxi_peaks
from redml_study.synthetic import still_frame
from redml_study.tune import tune


def test_cxi_peak_lists_round_trip(tmp_path, rng):
    frames = [still_frame(rng, (300, 300), background=2.0, spots=n, dtype="uint16") for n in (0, 5, 40)]
    peaks = [rr.find_spots(f)[0] for f in frames]
    path = tmp_path / "peaks.cxi"
    write_cxi_peaks(path, peaks)
    with h5py.File(path) as f:
        g = f["entry_1/result_1"]
        assert g["nPeaks"][...].tolist() == [len(p) for p in peaks]
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            assert g[name].shape == (3, max(len(p) for p in peaks))
        k = len(peaks[2])
        assert np.allclose(g["peakXPosRaw"][2, :k], peaks[2]["x"] - 0.5)  # CXI: first pixel centre at 0
    back = read_cxi_peaks(path)
    for a, b in zip(peaks, back):
        assert len(a) == len(b)
        assert np.allclose(a["x"], b["x"], atol=1e-4) and np.allclose(a["y"], b["y"], atol=1e-4)
        assert np.allclose(a["total"], b["total"], rtol=1e-6) and (a["npix"] == b["npix"]).all()


def test_cxi_keeps_strongest_when_capped(tmp_path, rng):
    frame = still_frame(rng, (300, 300), background=1.0, spots=30, dtype="uint16")
    peaks = rr.find_spots(frame)[0]
    write_cxi_peaks(tmp_path / "p.cxi", [peaks], max_peaks=5)
    back = read_cxi_peaks(tmp_path / "p.cxi")[0]
    assert len(back) == 5 and np.allclose(np.sort(back["total"]), np.sort(peaks["total"])[-5:], rtol=1e-6)


def planted_run(rng, n=10, shape=(200, 240)):
    frames = np.stack([still_frame(rng, shape, background=4.0, water_ring=6.0, spots=15, dtype="int32")
                       for _ in range(n)])
    truth = {name: np.zeros(shape, bool) for name in ("gap", "dead", "stuck", "hot")}
    frames[:, :, 100:104] = -1
    truth["gap"][:, 100:104] = True
    for cls, value in (("dead", 0), ("stuck", 37)):
        ys, xs = rng.integers(5, 195, 6), rng.choice(np.r_[5:95, 110:235], 6)
        frames[:, ys, xs] = value
        truth[cls][ys, xs] = True
    ys, xs = rng.integers(5, 195, 6), rng.choice(np.r_[5:95, 110:235], 6)
    frames[:, ys, xs] += rng.integers(200, 2000, (n, 6)).astype(np.int32)
    truth["hot"][ys, xs] = True
    return frames, truth


def test_automask_finds_planted_bad_pixels(rng):
    frames, truth = planted_run(rng)
    masks = find_bad_pixels(frames)
    for cls, t in truth.items():
        assert np.array_equal(masks[cls] & t, t), f"missed {cls}"
    planted = np.logical_or.reduce(list(truth.values()))
    assert (masks["bad"] & ~planted).sum() <= 2  # spots move between frames: not hot


def test_automask_saved_and_reused(tmp_path, rng):
    frames, truth = planted_run(rng)
    user = np.zeros(frames.shape[1:], bool)
    user[0, :10] = True
    masks = find_bad_pixels(frames, user_mask=user)
    assert masks["bad"][0, :10].all()
    save_masks(tmp_path / "mask.h5", masks)
    back = load_masks(tmp_path / "mask.h5")
    assert set(back) == set(masks) and all(np.array_equal(back[k], masks[k]) for k in masks)


def test_automask_no_false_flags_on_clean_frames(rng):
    frames = np.stack([still_frame(rng, (256, 256), background=b, water_ring=5.0, spots=20, dtype="uint16")
                       for b in [0.5] * 10])
    assert find_bad_pixels(frames)["bad"].sum() == 0


def test_automask_mask_removes_hot_pixel_spots(rng):
    frames, truth = planted_run(rng)
    mask = find_bad_pixels(frames)["bad"]
    peaks, spot_mask = rr.find_spots(frames[0], mask=mask)
    assert not (spot_mask & truth["hot"]).any()


def test_tune_improves_f1_against_reference(rng):
    frames, truth = [], []
    for _ in range(2):
        f, c = still_frame(rng, (400, 400), background=1.0, spots=60, peak_range=(3, 20), dtype="uint16",
                           return_spots=True)
        frames.append(f)
        truth.append(c)
    result = tune(frames, truth, radius=2.0)
    assert result.best_score["f1"] >= result.default_score["f1"]
    assert result.best_score["f1"] > result.default_score["f1"] + 0.02  # weak spots: defaults too strict
    assert len(result.table) >= 10 and "best F1" in result.report()


def test_cli_find_spots_and_tune(tmp_path, rng):
    frame, centres = still_frame(rng, (300, 300), background=2.0, spots=25, dtype="int32", return_spots=True)
    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f.create_dataset("data", data=frame[None])
    (tmp_path / "ref.json").write_text(json.dumps({"0": centres.tolist()}))
    out = subprocess.run([sys.executable, "-m", "redml_reduce.cli", "find-spots", f"{tmp_path}/frames.h5:/data",
                          "--cxi", str(tmp_path / "p.cxi")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "frame 0:" in out.stdout and len(read_cxi_peaks(tmp_path / "p.cxi")) == 1
    out = subprocess.run([sys.executable, "-m", "redml_study.cli", "tune", f"{tmp_path}/frames.h5:/data",
                          "--reference", str(tmp_path / "ref.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "best F1" in out.stdout and "best settings" in out.stdout
