"""The spot finder on integrating detectors' frames (issue 22): negative values are noise
(markers="extremes"/"gaps", as in the codec) and the model's variance has a read noise,
var = gain*mean + read_noise^2, in the dispersion and strong-pixel tests. The finder then
finds on pedestal-subtracted ADU and float photons what it finds on the photon counts of
the same frame, nothing on pure noise, and its defaults (photon counters) are unchanged."""
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce.codec import CodecSettings, encode_with_spots
from redml_study.detector import integrating_frame
from redml_study.metrics import score_spots
from redml_study.synthetic import still_frame

GAIN, RN = 20.0, 0.2  # ADU per photon; read noise in photons
RN_ADU = math.sqrt((RN * GAIN) ** 2 + 1 / 12)  # with the rounding to integer ADU


def same_peaks(*peak_lists):
    """Equal peak records, field by field (the records' padding bytes are undefined)."""
    a = peak_lists[0]
    return all(len(a) == len(b) and all(np.array_equal(a[k], b[k]) for k in a.dtype.names) for b in peak_lists[1:])


def rn_adu(rn):
    return math.sqrt((rn * GAIN) ** 2 + 1 / 12)


def score(peaks, truth, radius=2.0):
    """Precision, recall and F1 of a peak table against (n, 2) spot positions, matched one to one."""
    return score_spots([np.stack([peaks["x"], peaks["y"]], 1)], [truth], radius=radius)


def weak_still(bg, seed=7, shape=(1024, 1024)):
    """Photon counts of a still with 300 weak spots (3-60 photons at the peak) and their centres."""
    rng = np.random.default_rng(seed)
    photons, truth = still_frame(rng, shape, background=bg, spots=300, dtype="int32", peak_range=(3.0, 60.0),
                                 return_spots=True)
    return photons, truth, rng


@pytest.mark.parametrize("bg", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("kind", ["adu", "photons"])
def test_finds_the_spots_of_the_photon_counts(bg, kind):
    """Recall and precision on the integrating frame within 0.03 of the photon counts' (before:
    negative values were markers and the test Poisson's: recall 0.41 against 0.95 at 0.05
    photon/px in ADU, 0.61 against 0.90 at 0.5)."""
    photons, truth, rng = weak_still(bg)
    if kind == "adu":
        frame = integrating_frame(photons, rng, gain=GAIN, read_noise=RN)
        kw = dict(gain=GAIN, markers="extremes", read_noise=RN_ADU)
    else:
        frame = integrating_frame(photons, rng, read_noise=RN)
        kw = dict(markers="extremes", read_noise=RN)
    counts = score(rr.find_spots(photons)[0], truth)
    for read_noise in (kw["read_noise"], "auto"):
        got = score(rr.find_spots(frame, **{**kw, "read_noise": read_noise})[0], truth)
        assert got.recall > counts.recall - 0.03 and got.precision > counts.precision - 0.03, (got, counts)


@pytest.mark.parametrize("rn", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("bg", [0.0, 0.05, 1.0])
def test_no_spots_on_pure_noise(rng, rn, bg):
    """Pure backgrounds at several read noises: no spot, few strong pixels (the encoder's ROI)."""
    blank = integrating_frame(rng.poisson(bg, (512, 1024)), rng, gain=GAIN, read_noise=rn)
    assert (blank < 0).mean() > (0.2 if bg < 1 else 0.05)
    for read_noise in (rn_adu(rn), "auto"):
        peaks, spot_mask = rr.find_spots(blank, gain=GAIN, markers="extremes", read_noise=read_noise)
        assert len(peaks) == 0 and not spot_mask.any()
    photons = integrating_frame(rng.poisson(bg, (512, 1024)), rng, read_noise=rn)
    assert len(rr.find_spots(photons, markers="gaps", read_noise=rn)[0]) == 0


def test_without_read_noise_negative_windows_are_never_candidates(rng):
    """markers="extremes" with read_noise 0: windows of mean <= 0 (a photon mean is never
    negative) hold no spot. The noise is centred one read-noise sigma below zero, so every
    7x7 window's mean is negative (about 7 of its sigmas): centred on zero, a window of positive
    mean now and then held a 'spot' of read noise under the Poisson-only variance (1 run in 20)."""
    blank = integrating_frame(np.full((256, 256), -0.3), rng, gain=GAIN, read_noise=0.3)
    assert (blank < 0).mean() > 0.8
    peaks, spot_mask = rr.find_spots(blank, gain=GAIN, markers="extremes")
    assert len(peaks) == 0


def test_integer_and_float_paths_agree_with_negative_values(rng):
    """The integer fast path (32-bit window sums) and the double path decide alike on frames
    with negative values, large ones included (their squares bound the 32-bit sums)."""
    photons, _, rng = weak_still(0.5, seed=3, shape=(384, 512))
    f = integrating_frame(photons, rng, gain=GAIN, read_noise=RN)
    f[100:140, 100:140] = -20000  # a deep pedestal dip
    f[200:203, 300:303] = 20000
    # windows of positive sum whose squares pass 2^31 through their negative values alone
    f[20:40, 20:40] = 3000
    f[20:40:3, 20:40:3] = -20000
    kw = dict(gain=GAIN, markers="extremes", read_noise=RN_ADU)
    a, ma = rr.find_spots(f, **kw)
    b, mb = rr.find_spots(f.astype(np.float32), **kw)
    c, mc = rr.find_spots(f.astype(np.int32), **kw)
    assert len(a) > 50
    assert same_peaks(a, b, c)
    assert np.array_equal(ma, mb) and np.array_equal(ma, mc)


def test_gap_markers_are_ignored_as_masked_pixels():
    photons, _, rng = weak_still(0.5, seed=5, shape=(256, 256))
    f = integrating_frame(photons, rng, gain=GAIN, read_noise=RN, dtype="int32")
    g = f.copy()
    g[:, 64:66] = -1  # Pilatus-style gap columns
    gaps = np.isin(g, (-1, -2))  # "gaps": every -1 and -2 is a marker (as in the codec), noise with "extremes"
    ref, _ = rr.find_spots(g, mask=gaps, gain=GAIN, markers="extremes", read_noise=RN_ADU)
    got, _ = rr.find_spots(g, gain=GAIN, markers="gaps", read_noise=RN_ADU)
    assert same_peaks(got, ref)


def test_settings_refusals():
    with pytest.raises(ValueError, match="read_noise models integrating"):
        rr.FinderSettings(read_noise=2.0)
    with pytest.raises(ValueError, match="markers"):
        rr.FinderSettings(markers="zeros")
    with pytest.raises(ValueError):
        rr.FinderSettings(markers="extremes", read_noise=-1.0)
    with pytest.raises(TypeError):
        rr.FinderSettings(markers="extremes", read_noise="estimate")
    assert rr.FinderSettings(markers="extremes", read_noise="auto").core_fields()[-2:] == (-1.0, 1)


def test_agrees_with_dials_on_a_simulated_integrating_still():
    """Reference: DIALS 3.12 `dials.find_spots gain=20` on this frame (0.05 photon/px, int16
    ADU written as NXmx with underload -32767, so negative values are trusted), positions
    stored in tests/data. Without read noise the criterion is DIALS's (with gain); with it
    the finder stays as close to DIALS and to the truth."""
    photons, truth, rng = weak_still(0.05)
    frame = integrating_frame(photons, rng, gain=GAIN, read_noise=RN)
    dials = np.load(Path(__file__).parent / "data" / "dials_strong_integrating_adu20.npy").astype(np.float64)
    same = score(rr.find_spots(frame, gain=GAIN, markers="extremes")[0], dials, radius=1.0)
    assert same.f1 >= 0.98, same.as_dict()
    ours = rr.find_spots(frame, gain=GAIN, markers="extremes", read_noise=RN_ADU)[0]
    assert score(ours, dials, radius=1.0).f1 >= 0.98
    # against the truth, F1 at least DIALS's: 0.966 (0.960 without read noise) against 0.959 (before: 0.573)
    assert score(ours, truth).f1 >= score_spots([dials], [truth]).f1 - 0.005


# ---- the encoder's exact ROI and the sparse mode

def test_encoder_roi_uses_the_read_noise(rng):
    """The built-in ROI on integrating data at 0.05 photon/px: the finder with the codec's read
    noise keeps the few true strong pixels, not 5% of the frame (the Poisson-only test's); sparse
    mode adds the pixels 3 sigma above its model (about half of the single photons: 2.9%)."""
    blank = integrating_frame(rng.poisson(0.05, (512, 1024)), rng, gain=GAIN, read_noise=RN)
    for q, most in ((2, 0.002), ("sparse", 0.04)):
        for read_noise in (RN_ADU, "auto"):
            c = rr.encode(blank, q=q, gain=GAIN, markers="extremes", read_noise=read_noise)
            assert rr.exact_mask(c).mean() < most, (q, read_noise, rr.exact_mask(c).mean())


def test_encode_with_spots_follows_the_codec_settings(rng):
    """encode_with_spots' default finder takes the codec settings' gain, markers and read noise:
    its peaks are find_spots' with them, its chunk encode()'s with their dilated mask."""
    photons, truth, rng = weak_still(0.3, seed=11, shape=(512, 512))
    f = integrating_frame(photons, rng, gain=GAIN, read_noise=RN)
    for q in (2, "sparse"):
        s = CodecSettings(q=q, gain=GAIN, markers="extremes", read_noise=RN_ADU)
        chunk, peaks = encode_with_spots(f, settings=s)
        ref, spot_mask = rr.find_spots(f, gain=GAIN, markers="extremes", read_noise=RN_ADU)
        assert same_peaks(peaks, ref) and len(ref) > 50
        roi = rr.roi_mask(spot_mask, s.roi_margin)
        if q == "sparse":  # the built-in region adds the pixels above the model (a caller's roi does not)
            assert rr.exact_mask(chunk)[roi].all()
        else:
            assert chunk == rr.encode(f, roi=roi, settings=s)
        assert score(peaks, truth).recall > 0.8


def test_sparse_mode_takes_the_read_noise():
    s = CodecSettings(q="sparse", gain=GAIN, markers="extremes", read_noise="auto")
    assert s.read_noise == "auto" and CodecSettings.from_cd_values(s.cd_values()) == s
    assert CodecSettings(q=0, markers="extremes", read_noise=2.0).read_noise == 0  # lossless: no effect


# ---- defaults unchanged (digests of this frame's results before the change)

def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype.names:  # peaks: field by field (padding undefined)
            for k in p.dtype.names:
                h.update(np.ascontiguousarray(p[k]).tobytes())
        else:
            h.update(p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:16]


def _counting_frame(kind="int32"):
    """A photon-counting still with gaps (-1: markers of photon counters; uint16: its maximum);
    "scaled": float values that are not integers (the double path's rounding)."""
    rng = np.random.default_rng(2024)
    f = still_frame(rng, (512, 768), background=0.8, spots=60, water_ring=2.0, dtype="int32", peak_range=(5.0, 3000.0))
    f[:, 300:302] = -1
    if kind == "scaled":
        return (f * 1.37).astype(np.float32)
    return f.astype(kind)


DEFAULT_DIGESTS = {
    "uint16": {
        "find_spots": "a6177a40c2304c8a",
        "roi q=0": "5bba7b1428900da2",
        "roi q=1": "5bba7b1428900da2",
        "roi q=2": "c6d9b66a7427ee09",
        "roi q=sparse": "5bba7b1428900da2",
    },
    "int32": {
        "find_spots": "a6177a40c2304c8a",
        "roi q=0": "5bba7b1428900da2",
        "roi q=1": "5bba7b1428900da2",
        "roi q=2": "c6d9b66a7427ee09",
        "roi q=sparse": "5bba7b1428900da2",
    },
    "float32": {
        "find_spots": "a6177a40c2304c8a",
        "roi q=0": "005f2f6fb9bcaf75",
        "roi q=1": "de266b336acd9141",
        "roi q=2": "5f8a28c17422d715",
        "roi q=sparse": "5bba7b1428900da2",
    },
    "scaled": {
        "find_spots": "c43d21792f496059",
        "roi q=0": "005f2f6fb9bcaf75",
        "roi q=1": "e78a081045da2a21",
        "roi q=2": "01e9aa6ec291c7d7",
        "roi q=sparse": "e33515aae233c377",
    },
}


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "scaled"])
def test_photon_counting_defaults_unchanged(dtype):
    """Peaks and spot masks, and the encoder's exact regions (its built-in ROI) at default
    settings, on a photon-counting frame with gaps: the digests of what the finder gave before
    integrating detectors were added (the chunks themselves were checked byte for byte then)."""
    f = _counting_frame(dtype)
    peaks, spot_mask = rr.find_spots(f)
    assert len(peaks) > 30
    got = {"find_spots": _digest(peaks, spot_mask)}
    for q in (0, 1, 2, "sparse"):
        got[f"roi q={q}"] = _digest(rr.exact_mask(rr.encode(f, q=q)))
    expected = DEFAULT_DIGESTS.get(dtype)
    assert expected is not None, got
    assert got == expected


def test_radial_background_of_integrating_frames(rng):
    """The radial profile with markers="extremes": negative values are noise and count (the
    profile's mean is the frame's, not the mean of its positive half), markers are ignored."""
    from redml_reduce.background import BeamGeometry, RadialBackground

    f = integrating_frame(np.zeros((256, 256), int), rng, gain=GAIN, read_noise=RN, gaps=np.eye(256, dtype=bool))
    geom = BeamGeometry(128.0, 128.0)
    # a clip far out in the read noise's tail (at 3 sigma about 1 run in 20 clipped a pixel)
    mean, sigma, count = RadialBackground(geom, f.shape, bin_width=200.0, clip=8.0, markers="extremes").fit(f)
    used = f[~np.eye(256, dtype=bool)].astype(np.float64)
    assert count[0] == used.size  # read noise alone: no value beyond the clip, only the markers go
    assert mean[0] == pytest.approx(used.mean(), rel=1e-9)
    assert sigma[0] == pytest.approx(used.std(ddof=1), rel=1e-9)
    counting, _, n = RadialBackground(geom, f.shape, bin_width=200.0).fit(f)  # photon counters': negatives out
    assert n[0] < 0.8 * used.size and counting[0] > mean[0]
    with pytest.raises(ValueError, match="markers"):
        RadialBackground(geom, f.shape, markers="zeros")


def test_hdf5_filter_passes_the_read_noise_to_the_sparse_modes_finder(rng, tmp_path):
    """Sparse mode's read noise (cd_values slot 17) reaches the plugin's encoder: its chunks
    are encode()'s. Their exact pixels: the finder's small ROI and the pixels 3 sigma above
    the model (at 0.05 photon/px, about half of the single photons: 2.9%), not the 4.7% that
    a read noise of 0 keeps (every photon)."""
    h5py = pytest.importorskip("h5py")
    frames = np.stack([integrating_frame(rng.poisson(0.05, (128, 192)), rng, gain=GAIN, read_noise=RN)
                       for _ in range(2)])
    settings = dict(q="sparse", gain=GAIN, markers="extremes", read_noise="auto")
    with h5py.File(tmp_path / "s.h5", "w") as fh:
        fh.create_dataset("d", data=frames, chunks=(1, 128, 192), **rr.Redml(**settings))
    with h5py.File(tmp_path / "s.h5") as fh:
        for k in range(2):
            chunk = fh["d"].id.read_direct_chunk((k, 0, 0))[1]
            assert chunk == rr.encode(frames[k], **settings)
            assert rr.exact_mask(chunk).mean() < 0.04
