"""Learned spot finding: training, shipped weights, tiling, artefacts, the ROI interface."""
from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import redml_reduce as rr  # noqa: E402
from redml_study.metrics import score_spots  # noqa: E402
from redml_study.ml.data import LATTICE, make_set  # noqa: E402
from redml_reduce.ml.infer import MODEL_FILES, WEIGHTS_DIR, Predictor, load  # noqa: E402
from redml_study.ml.train import TEST_SEED, Prepared, make_blob, train_one  # noqa: E402
from redml_reduce.pipeline import require_torch, resolve_roi  # noqa: E402

# F1 of the shipped weights on make_set("strong", 2, TEST_SEED) + make_set("weak", 2, TEST_SEED)
# (docs/ml.md); a retrained model must land within TOLERANCE.
DOCUMENTED_F1 = {"logistic": 0.601, "cnn": 0.729, "ensemble": 0.753, "unet": 0.695}
TOLERANCE = 0.03


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return Prepared(make_set("strong", 1, seed=7) + make_set("artefact", 1, seed=7))


@pytest.fixture(scope="module")
def test_frames():
    return make_set("strong", 2, TEST_SEED) + make_set("weak", 2, TEST_SEED)


def average_precision(scores, labels):
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    tp = np.cumsum(hits)
    return float((tp / np.arange(1, len(hits) + 1))[hits].sum() / max(hits.sum(), 1))


def test_training_is_deterministic_and_beats_chance(tiny):
    spec = {"arch": "cnn", "transform": "gfr", "patch": 9, "width": 4}
    a = train_one(spec, "wbce", 150, 0, tiny)
    b = train_one(spec, "wbce", 150, 0, tiny)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    c = train_one(spec, "wbce", 10, 1, tiny)
    d = train_one(spec, "wbce", 10, 2, tiny)
    assert not all(torch.equal(x, y) for x, y in zip(c.state_dict().values(), d.state_dict().values()))
    # On a frame it never saw: pixel average precision far above chance (the positives' share).
    held = make_set("strong", 1, seed=8)[0]
    pred = Predictor(make_blob("t", {"specs": [spec], "loss": "wbce", "steps": 150, "seeds": [0]}, [a], 0.5), "cpu")
    prob, _ = pred.probability(held.frame, held.mask, held.geometry)
    keep = held.label != 255
    labels = held.label[keep] == LATTICE
    chance = labels.mean()
    ap = average_precision(prob[keep], labels)
    assert ap > 10 * chance, (ap, chance)


# Retraining on another x86-64 CPU (other SIMD paths in torch and numpy) moves the weights in
# the 4th-5th significant digit: here, inputs changed in their last float32 bit moved them by
# 5e-5 (relative, per tensor), while 10 fewer training steps moved them by 8e-3 and an artefact
# weight of 2.5 instead of 3 by 8e-2. So the recipe's reproduction is checked to 1e-3, and its
# operating point (validation F1 at every threshold) to 0.002 (those changes: 0.006 and 0.07).
WEIGHT_RTOL = 1e-3
F1_TOL = 0.002


def test_recipe_reproduces_shipped_weights_and_operating_point():
    """The recipe of the ensemble's first member (data from the seeds, 600 steps, one
    thread) gives the shipped tensors within WEIGHT_RTOL and the same validation F1 at
    every threshold, so the same operating point: any change to the data, the inputs or
    the training arithmetic shows here, on any x86-64 CPU."""
    from redml_study.ml.data import make_sets
    from redml_study.ml.train import (RECIPES, TRAIN_FRAMES, TRAIN_SEED, VAL_FRAMES, VAL_SEED, score_at,
                                       train_member)

    r = RECIPES["ensemble"]
    torch.use_deterministic_algorithms(True)
    try:
        model = train_member(r["specs"][0], r["seeds"][0], r, Prepared(make_sets(TRAIN_FRAMES, TRAIN_SEED)))
    finally:
        torch.use_deterministic_algorithms(False)
    shipped = load("ensemble").blob["states"][0]
    for key, value in model.state_dict().items():
        change = float((value - shipped[key]).norm() / shipped[key].norm())
        assert change <= WEIGHT_RTOL, (key, change)

    one = dict(r, specs=r["specs"][:1], seeds=r["seeds"][:1])
    val = Prepared(make_sets(VAL_FRAMES, VAL_SEED))
    retrained = score_at(Predictor(make_blob("retrained", one, [model], 0.5), "cpu"), val)
    model.load_state_dict(shipped)
    reference = score_at(Predictor(make_blob("shipped", one, [model], 0.5), "cpu"), val)
    assert max(reference, key=lambda t: reference[t].f1) == max(retrained, key=lambda t: retrained[t].f1)
    for t in reference:
        assert abs(retrained[t].f1 - reference[t].f1) <= F1_TOL, (t, retrained[t].f1, reference[t].f1)


def test_shipped_weights_are_small_and_load():
    total = 0
    for name, file in MODEL_FILES.items():
        size = (WEIGHTS_DIR / file).stat().st_size
        total += size
        assert size < 1_000_000, (name, size)
        blob = load(name).blob
        assert blob["version"] == 1 and blob["recipe"]["train_seed"] == 101
    assert total < 1_000_000


@pytest.mark.parametrize("name", list(MODEL_FILES))
def test_shipped_weights_give_documented_f1(name, test_frames):
    model = load(name, device="cpu")
    found = [model.spots(s.frame, s.mask, s.geometry) for s in test_frames]
    f1 = score_spots(found, [s.truth for s in test_frames]).f1
    assert DOCUMENTED_F1[name] is not None
    assert abs(f1 - DOCUMENTED_F1[name]) <= TOLERANCE, (name, f1)


@pytest.mark.parametrize("name", ["logistic", "cnn", "ensemble"])
def test_probability_map_same_in_tiles(name, test_frames):
    s = test_frames[0]
    model = load(name, device="cpu")
    whole, spread = model.probability(s.frame, s.mask, s.geometry, tile=None)
    for tile in (96, "auto"):  # "auto": the CPU default (CPU_TILE)
        tiled, spread_t = model.probability(s.frame, s.mask, s.geometry, tile=tile)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
        np.testing.assert_allclose(spread_t, spread, atol=1e-5)
    assert whole.max() > 0.5  # the frame has spots: the comparison is not between two empty maps


def test_ensemble_spread_is_the_standard_deviation():
    from redml_reduce.ml.infer import maps_of

    logits = torch.randn(5, 37, 41, generator=torch.Generator().manual_seed(0)) * 4
    mean, spread, logit = maps_of(logits)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(mean, p.mean(0))
    torch.testing.assert_close(spread, p.std(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(logit, logits.mean(0))


@pytest.mark.parametrize("name", ["gfr", "gfr+sqrt"])
def test_inference_transform_equals_training_transform(name, test_frames):
    from redml_reduce.ml.infer import inputs_for
    from redml_reduce.ml.models import Transform

    s = test_frames[2]
    x = torch.from_numpy(inputs_for(s.frame, s.mask, s.geometry))[None]
    t = Transform(name)
    with torch.no_grad():
        np.testing.assert_allclose(t.eval()(x).numpy(), t.train()(x).numpy(), atol=1e-5)


def _peaks_by_brute_force(prob, logit, threshold):
    """The spot rule of peaks_from_map, pixel by pixel."""
    h, w = prob.shape
    out = []
    for y, x in zip(*np.nonzero(prob >= threshold)):
        win5 = logit[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
        win3 = logit[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        if logit[y, x] == win5.max() and logit[y, x] > win3.mean() + 1e-6:
            p = np.pad(prob, 1)[y:y + 3, x:x + 3]
            off = np.array([-1.0, 0.0, 1.0])
            out.append((x + 0.5 + (p.sum(0) * off).sum() / p.sum(), y + 0.5 + (p.sum(1) * off).sum() / p.sum()))
    return np.array(out).reshape(-1, 2)


def test_peaks_match_the_rule_pixel_by_pixel():
    from redml_reduce.ml.infer import peaks_from_map

    rng = np.random.default_rng(5)
    logit = rng.normal(0, 2, (40, 50)).astype(np.float32)
    logit[0, :3] = 9  # maxima and plateaus on the border
    logit[10, 10:12] = 7
    prob = 1 / (1 + np.exp(-logit))
    ref = _peaks_by_brute_force(prob, logit, 0.8)
    assert len(ref) > 5
    for found in (peaks_from_map(torch.from_numpy(prob), 0.8, torch.from_numpy(logit)),
                  peaks_from_map(None, 0.8, torch.from_numpy(logit))):  # one model: from the logits alone
        order = np.lexsort((found[:, 0], found[:, 1]))
        np.testing.assert_allclose(found[order], ref[np.lexsort((ref[:, 0], ref[:, 1]))], atol=1e-5)


def test_unet_finds_few_lattice_spots_on_artefact_frames():
    frames = make_set("artefact", 3, TEST_SEED)
    unet = load("unet", device="cpu")
    classical = sum(len(rr.find_spots(s.frame, s.mask)[0]) for s in frames)
    learned = sum(len(unet.spots(s.frame, s.mask, s.geometry)) for s in frames)
    assert classical > 100  # the artefacts fool the classical finder
    # The aim: at least 90% fewer false lattice spots than the classical finder
    # (measured ~95% fewer, docs/ml.md).
    assert learned <= 0.10 * classical, (learned, classical)


def test_unet_frame_outputs(test_frames):
    unet = load("unet", device="cpu")
    blank = make_set("artefact", 1, TEST_SEED)[0]
    hit = test_frames[0]
    out_hit = unet.frame_outputs(hit.frame, hit.mask, hit.geometry)
    out_blank = unet.frame_outputs(blank.frame, blank.mask, blank.geometry)
    assert out_hit["hit_probability"] > 0.9 and out_blank["hit_probability"] < 0.5, (out_hit, out_blank)
    assert np.isfinite(out_hit["resolution_a"])
    assert abs(out_hit["resolution_a"] - hit.d_min) < 0.5 * hit.d_min


def test_encode_with_ml_roi_keeps_the_map_exactly(test_frames):
    s = test_frames[0]
    frame = s.frame
    ml = resolve_roi(frame, "ml", s.mask)
    assert ml.dtype == bool and ml.shape == frame.shape and 0 < ml.sum() < 0.2 * ml.size
    chunk = rr.encode(frame, 2, roi="ml", mask=s.mask)
    exact = rr.exact_mask(chunk)
    assert exact[ml].all()
    back = rr.decode(chunk)
    np.testing.assert_array_equal(back[ml], frame[ml])
    union = resolve_roi(frame, "union", s.mask)
    assert (union >= ml).all() and union.sum() > ml.sum()
    assert resolve_roi(frame, "classical") is None
    with pytest.raises(ValueError, match="roi must be"):
        rr.encode(frame, 2, roi="learned")


def test_writer_and_cli_take_a_roi_source(tmp_path, test_frames):
    s = test_frames[0]
    with rr.FrameWriter(tmp_path / "ml.h5", s.frame.shape, s.frame.dtype, q="sparse", roi="ml",
                        geometry=s.geometry) as w:
        w.write(s.frame)
    with rr.FrameWriter(tmp_path / "classical.h5", s.frame.shape, s.frame.dtype, q="sparse") as w:
        w.write(s.frame)
    with h5py.File(tmp_path / "ml.h5") as f, h5py.File(tmp_path / "classical.h5") as g:
        ml, cl = f["entry/data/data"][0], g["entry/data/data"][0]
    spots = np.floor(s.truth).astype(int)
    # the ML region keeps more of the true reflections' centre pixels exactly than the classical one
    centre = s.frame[spots[:, 1], spots[:, 0]]
    assert (ml[spots[:, 1], spots[:, 0]] == centre).sum() > (cl[spots[:, 1], spots[:, 0]] == centre).sum()
    with pytest.raises(ValueError, match="roi must be"):
        rr.FrameWriter(tmp_path / "x.h5", s.frame.shape, s.frame.dtype, roi="bogus")
    from redml_reduce.cli import main as cli

    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["entry/data/data"] = s.frame[None]
    assert cli(["compress", str(tmp_path / "in.h5"), "-o", str(tmp_path / "cli.h5"), "-q", "sparse", "--roi", "ml"]) == 0
    with h5py.File(tmp_path / "cli.h5") as f:
        assert f["entry/data/data"].shape == (1, *s.frame.shape)


def test_ml_roi_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"redml_reduce\[ml\]"):
        require_torch()
    frame = np.zeros((64, 64), np.uint16)
    with pytest.raises(ImportError, match=r"redml_reduce\[ml\]"):
        rr.encode(frame, 1, roi="ml")
    rr.encode(frame, 1, roi="classical")  # the classical path needs no torch


def test_hit_model_drives_the_indicators(test_frames):
    from redml_reduce.acquire import AcquireSettings
    from redml_reduce.acquire.indicators import analyse

    blank = make_set("artefact", 1, TEST_SEED)[0]
    classical, _, _ = analyse(blank.frame, bad=blank.mask, geometry=blank.geometry)
    learned, _, _ = analyse(blank.frame, bad=blank.mask, geometry=blank.geometry, hit_model="unet")
    assert classical.hit and classical.n_spots >= 10  # planted artefacts pass the spot-count rule
    assert learned.hit is False and learned.hit_probability < 0.5
    hit = test_frames[0]
    st, _, _ = analyse(hit.frame, bad=hit.mask, geometry=hit.geometry, hit_model="unet")
    assert st.hit is True and st.hit_probability > 0.9 and np.isfinite(st.resolution_a)
    assert AcquireSettings(veto="sparse", hit_model="unet").hit_model == "unet"
    with pytest.raises(FileNotFoundError):
        AcquireSettings(hit_model="no-such-model")
