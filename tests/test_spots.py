"""Spot finder: recall/precision on synthetic stills, false positives, masks, DIALS."""
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr
from redml_study.metrics import match_spots, score_spots
from redml_study.synthetic import still_frame

DATA = Path(__file__).parent / "data"


def positions(peaks):
    return np.stack([peaks["x"], peaks["y"]], axis=1)


def separated(centres, min_dist=8.0):
    """Keeps spots at least min_dist from every other (overlaps are one spot)."""
    keep = []
    for i, c in enumerate(centres):
        d = np.hypot(*(centres - c).T)
        d[i] = np.inf
        keep.append(d.min() >= min_dist if len(centres) > 1 else True)
    return centres[np.array(keep, bool)]


@pytest.mark.parametrize("background", [0.1, 1.0, 10.0])
def test_recall_and_precision_on_synthetic_stills(rng, background):
    # Four stills pooled: one still's recall at 0.1 photon/px spreads by 0.015 around 0.988
    # (below 0.95 in about 1 run in 25), four together by half that.
    found_all, truth_all, centres_all = [], [], []
    for _ in range(4):
        frame, centres = still_frame(rng, (600, 700), background=background, spots=120, peak_range=(30, 500),
                                     dtype="uint16", return_spots=True)
        inside = (centres[:, 0] > 4) & (centres[:, 0] < 696) & (centres[:, 1] > 4) & (centres[:, 1] < 596)
        peaks, _ = rr.find_spots(frame)
        found_all.append(positions(peaks))
        truth_all.append(separated(centres[inside]))
        centres_all.append(centres)
    score = score_spots(found_all, truth_all, radius=1.5)
    assert score.recall >= 0.95, score.as_dict()
    # the finder may split nothing and invent little; spots that overlap count as one
    matched = sum(len(match_spots(f, c, 1.5)) for f, c in zip(found_all, centres_all))
    assert matched / sum(len(f) for f in found_all) >= 0.97
    err = np.concatenate([np.hypot(*(f[m[:, 0]] - t[m[:, 1]]).T)
                          for f, t in zip(found_all, truth_all) for m in [match_spots(f, t, 1.5)]])
    assert np.median(err) < 0.3  # centroids are sub-pixel


@pytest.mark.parametrize("background", [0.05, 1.0, 20.0])
def test_few_false_spots_on_pure_background(rng, background):
    frames = [still_frame(rng, (1024, 1024), background=background, dtype="int32") for _ in range(3)]
    n = sum(len(rr.find_spots(f)[0]) for f in frames)
    assert n <= 6  # < 2 per Mpx per frame


def test_masked_and_gap_pixels_never_make_spots(rng):
    frame = still_frame(rng, (400, 400), background=2.0, dtype="int32")
    mask = np.zeros(frame.shape, bool)
    hot = [(50, 60), (200, 201), (300, 10)]
    for y, x in hot:
        frame[y - 1 : y + 2, x - 1 : x + 2] = 5000  # bright 3x3 blobs: spots if not masked
        mask[y - 1 : y + 2, x - 1 : x + 2] = True
    frame[:, 150:157] = -1  # a module gap next to bright pixels
    frame[100:103, 157:160] = 4000
    peaks, spot_mask = rr.find_spots(frame, mask=mask)
    assert not spot_mask[mask].any() and not spot_mask[:, 150:157].any()
    for y, x in hot:
        assert not ((np.abs(peaks["x"] - x - 0.5) < 3) & (np.abs(peaks["y"] - y - 0.5) < 3)).any()
    assert ((np.abs(peaks["x"] - 158.5) < 2) & (np.abs(peaks["y"] - 101.5) < 2)).sum() == 1  # unmasked one found


def test_peak_fields(rng):
    frame = still_frame(rng, (200, 200), background=5.0, dtype="uint16")
    frame[100:103, 50:53] += np.array([[50, 100, 50], [100, 400, 100], [50, 100, 50]], dtype=np.uint16)
    peaks, spot_mask = rr.find_spots(frame)
    assert len(peaks) == 1
    p = peaks[0]
    assert abs(p["x"] - 51.5) < 0.2 and abs(p["y"] - 101.5) < 0.2
    assert p["npix"] == spot_mask.sum() and p["max"] >= 400
    assert p["total"] == pytest.approx(1000, rel=0.1) and p["background"] == pytest.approx(5, abs=1.5)
    assert p["snr"] > 20 and (p["x0"], p["y0"]) <= (50, 100) and (p["x1"], p["y1"]) >= (53, 103)


@pytest.mark.parametrize("frame_no", ["0001", "0010"])
def test_agrees_with_dials_on_real_frames(thaumatin, frame_no):
    """Reference: DIALS 3.12 dials.find_spots (default dispersion_extended) on the same
    CBF, positions stored in tests/data (see benchmarks/spotfinding.py to regenerate)."""
    ref = np.load(DATA / f"dials_strong_thau_{frame_no}.npy")
    peaks, _ = rr.find_spots(thaumatin[int(frame_no)])
    score = score_spots([positions(peaks)], [ref], radius=2.0)
    assert score.f1 >= 0.98, score.as_dict()


def test_bad_arguments():
    with pytest.raises(TypeError):
        rr.find_spots(np.zeros((5, 5), np.float64))
    with pytest.raises(ValueError):
        rr.find_spots(np.zeros((5, 5), np.uint16), kernel=0)
    with pytest.raises(ValueError):
        rr.find_spots(np.zeros((5, 5), np.uint16), mask=np.zeros((4, 5), bool))
    peaks, m = rr.find_spots(np.zeros((1, 1), np.uint16))
    assert len(peaks) == 0 and m.shape == (1, 1)


def test_metrics_one_to_one():
    found = np.array([[10, 10], [10.5, 10], [50, 50]])
    ref = np.array([[10.2, 10], [80, 80]])
    s = score_spots([found], [ref], radius=2)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 2, 1)
    assert match_spots(found, ref, 2).tolist() == [[0, 0]]


def test_roi_mask_and_hits(rng):
    frame = still_frame(rng, (200, 200), background=2.0, spots=12, dtype="uint16")
    peaks, spot_mask = rr.find_spots(frame)
    roi = rr.roi_mask(spot_mask, margin=2)
    assert roi[spot_mask].all() and roi.sum() > spot_mask.sum()
    ys, xs = np.nonzero(spot_mask)
    assert roi[min(ys.max() + 2, 199), xs[ys.argmax()]] and not rr.roi_mask(spot_mask, 0)[~spot_mask].any()
    keep = np.zeros_like(roi)
    keep[:5, :5] = True
    assert rr.roi_mask(spot_mask, 2, keep=keep)[:5, :5].all()
    assert rr.is_hit(peaks, min_peaks=5) and not rr.is_hit(peaks[:0], min_peaks=1)


def test_roi_margin_beyond_the_frame_covers_it_at_no_extra_cost(rng):
    """A clipped square window wider than the frame covers the whole frame: margin 65535 (the
    largest the format holds) gives what a margin of the frame's side gives, and its cost
    is bounded by the frame (it used to grow with the margin: minutes for a 4M frame)."""
    spots = rng.random((37, 53)) < 0.002
    spots[5, 7] = True
    wide = rr.roi_mask(spots, margin=65535)
    assert np.array_equal(wide, rr.roi_mask(spots, margin=53)) and wide.all()
    one_row = np.zeros((1, 40), bool)
    one_row[0, 3] = True
    assert np.array_equal(rr.roi_mask(one_row, margin=65535), np.ones((1, 40), bool))
    assert np.array_equal(rr.roi_mask(one_row, margin=2)[0, :7], [0, 1, 1, 1, 1, 1, 0])


@pytest.mark.parametrize("kernel, sigma_b, gain, level", [(1, 0.5, 1.0, 2.0), (2, 1.5, 1.0, 0.3), (3, 6.0, 0.7, 3.0),
                                                          (3, 2.0, 1.0, 2000.0)])
def test_integer_frames_find_what_their_float_copies_find(rng, kernel, sigma_b, gain, level):
    """The dispersion test of integer frames (integer window sums, a float screen, the double
    test where the screen cannot decide) finds the spots the double box sums find on the same
    values as float32, at the threshold too: with a 3x3 window and sigma_b 0.5 the bound is
    10 and many windows have var = rhs exactly; at 2000 counts the float sums are inexact;
    all-zero windows at 0.3 counts."""
    frame = rng.poisson(level, (260, 300)).astype(np.int64)
    ys, xs = rng.integers(5, 255, 40), rng.integers(5, 295, 40)
    for y, x, h in zip(ys, xs, rng.integers(2, 4 * level + 20, 40)):
        frame[y - 1:y + 2, x - 1:x + 2] += rng.poisson(h, (3, 3))
    frame = np.minimum(frame, 6000)  # within the integer path's range for 7x7 windows
    settings = rr.FinderSettings(kernel=kernel, sigma_b=sigma_b, sigma_s=0.0, gain=gain, min_pixels=1,
                                 max_separation=-1)
    ref_peaks, ref_mask = rr.find_spots(frame.astype(np.float32), settings=settings, nthreads=1)
    assert ref_mask.sum() > 0
    for dtype in (np.uint16, np.int32):
        peaks, mask = rr.find_spots(frame.astype(dtype), settings=settings, nthreads=1)
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_array_equal(peaks, ref_peaks)


def test_integer_frames_decide_windows_a_few_counts_from_the_threshold_exactly():
    """A 3x3 window of eight pixels a and one b has var = 8 (a - b)^2 and, with sigma_b 0.5,
    rhs = 10 (8a + b): pairs (a, b) with var - rhs in [-40, 40] at a few thousand counts, where
    float sums are off by hundreds, must decide as the double test does."""
    pairs = []
    for a in range(1000, 6000):
        b = a + int(np.sqrt(10 * 9 * a / 8))  # about where var = rhs
        for bb in range(b - 3, b + 4):
            if abs(8 * (bb - a) ** 2 - 10 * (8 * a + bb)) <= 40:
                pairs.append((a, bb))
    assert len(pairs) > 100
    side = int(np.ceil(np.sqrt(len(pairs))))
    frame = np.zeros((4 * side, 4 * side), np.int64)
    for k, (a, b) in enumerate(pairs):
        y, x = 4 * (k // side), 4 * (k % side)
        frame[y:y + 4, x:x + 4] = a
        frame[y + 1, x + 1] = b
    settings = rr.FinderSettings(kernel=1, sigma_b=0.5, sigma_s=0.0, min_pixels=1, max_separation=-1)
    ref_peaks, ref_mask = rr.find_spots(frame.astype(np.float32), settings=settings, nthreads=1)
    assert 0 < ref_mask.sum() < ref_mask.size
    peaks, mask = rr.find_spots(frame.astype(np.uint16), settings=settings, nthreads=1)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(peaks, ref_peaks)
