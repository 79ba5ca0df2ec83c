"""One spot search per frame: the encoder finds the spots for its ROI and returns their peaks
(codec.encode_with_spots, redml_encode_spots), the same peaks and the same chunk as
find_spots followed by encode with the dilated spot mask as ROI."""
import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from redml_reduce.acquire.indicators import analyse
from redml_reduce.codec import encode, encode_with_spots
from redml_reduce.spots import FinderSettings, find_spots, roi_mask
from redml_study.synthetic import still_frame


def two_searches(frame, bad, settings, finder, nthreads):
    """(chunk, peaks) the way the acquisition worker made them before: find_spots, then encode."""
    peaks, spot_mask = find_spots(frame, mask=bad, nthreads=nthreads, settings=finder)
    roi = roi_mask(spot_mask, settings.roi_margin, nthreads=nthreads)
    return encode(frame, roi=roi, mask=bad, nthreads=nthreads, settings=settings), peaks


def same_peaks(a, b):
    """Equal peak records, field by field (the records' padding bytes are undefined)."""
    return a.dtype == b.dtype and len(a) == len(b) and all(np.array_equal(a[k], b[k]) for k in a.dtype.names)


def assert_same(frame, bad, settings, finder=None, nthreads=1):
    chunk, peaks = encode_with_spots(frame, mask=bad, nthreads=nthreads, settings=settings, finder=finder)
    ref_chunk, ref_peaks = two_searches(frame, bad, settings, finder or FinderSettings(), nthreads)
    assert same_peaks(peaks, ref_peaks)
    assert chunk == ref_chunk
    return peaks


def with_defects(rng, frame):
    """A bad-pixel map (a dead column and a hot cluster) and gaps and saturation in the frame."""
    bad = np.zeros(frame.shape, bool)
    bad[:, 37] = True
    bad[50:53, 80:83] = True
    frame[50:53, 80:83] = 3000
    frame[:, 120:126] = -1 if frame.dtype.kind != "u" else np.iinfo(frame.dtype).max
    frame[rng.integers(0, frame.shape[0], 20), rng.integers(0, frame.shape[1], 20)] = (
        np.nan if frame.dtype.kind == "f" else np.iinfo(frame.dtype).max)
    return bad


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("q", [0, 1, 2, "sparse"])
def test_same_chunk_and_peaks_as_two_searches_on_simulated_stills(rng, dtype, q):
    frame = still_frame(rng, (300, 340), background=1.0, spots=60, peak_range=(20, 400), dtype=dtype)
    bad = with_defects(rng, frame)
    peaks = assert_same(frame, bad, rr.CodecSettings(q=q))
    assert len(peaks) >= 20  # spots were found, so the ROI is not trivially empty


@pytest.mark.parametrize("nthreads", [1, 3])
def test_same_with_other_finder_settings_margins_and_threads(rng, nthreads):
    frame = still_frame(rng, (257, 301), background=5.0, spots=50, peak_range=(30, 600), dtype="int32")
    bad = with_defects(rng, frame)
    finder = FinderSettings(kernel=2, sigma_s=4.0, min_pixels=2, max_separation=-1)
    for margin in (0, 1, 4):
        assert_same(frame, bad, rr.CodecSettings(q=1, roi_margin=margin), finder, nthreads)
    assert_same(frame, None, rr.CodecSettings(q=1), finder, nthreads)


def test_integrating_markers_do_not_change_the_finders_pixels(rng):
    """With markers other than "negative" the codec uses negative pixels, the finder never
    does: its peaks stay find_spots' (a map of its own inside the encoder)."""
    frame = still_frame(rng, (200, 220), background=20.0, spots=30, peak_range=(100, 900), dtype="int32")
    frame -= 20  # pedestal-subtracted: negative values are noise
    frame[10:13, 10:13] = -5000  # a negative blob next to a spot: usable to the codec only
    frame[10:13, 14:17] = 2000
    bad = np.zeros(frame.shape, bool)
    bad[100, :] = True
    for markers in ("extremes", "gaps"):
        # a photon counter's finder, given (the default takes the codec's markers)
        assert_same(frame, bad, rr.CodecSettings(q=1, markers=markers, read_noise=1.0), finder=FinderSettings())


@pytest.mark.parametrize("frame_no", [1, 10])
def test_same_on_thaumatin_stills(thaumatin, frame_no):
    peaks = assert_same(thaumatin[frame_no], None, rr.CodecSettings(q=1))
    assert len(peaks) > 0


def test_find_spots_keeps_nothing_from_a_previous_frame(rng):
    """find_spots reuses its thread's pixel map: a larger, masked frame searched in between
    changes nothing on the next one."""
    small = still_frame(rng, (128, 150), background=2.0, spots=20, peak_range=(50, 300), dtype="uint16")
    first, first_mask = find_spots(small, nthreads=1)
    big = still_frame(rng, (400, 420), background=2.0, spots=40, peak_range=(50, 300), dtype="uint16")
    find_spots(big, mask=np.ones(big.shape, bool), nthreads=1)
    again, again_mask = find_spots(small, nthreads=1)
    assert same_peaks(again, first) and np.array_equal(again_mask, first_mask)


def test_analyse_takes_the_peaks_it_is_given(rng):
    frame = still_frame(rng, (200, 200), background=1.0, spots=30, peak_range=(50, 500), dtype="uint16")
    st, peaks, spot_mask = analyse(frame, min_spots=5)
    _, given = encode_with_spots(frame, settings=rr.CodecSettings(q=1))
    st2, peaks2, spot_mask2 = analyse(frame, min_spots=5, peaks=given)
    assert peaks2 is given and spot_mask2 is None and spot_mask is not None
    assert (st2.n_spots, st2.hit, st2.background) == (st.n_spots, st.hit, st.background)
    assert st2.n_spots == len(peaks) >= 5 and st2.hit


def test_bad_arguments(rng):
    frame = still_frame(rng, (64, 64), background=1.0, dtype="uint16")
    with pytest.raises(TypeError):
        encode_with_spots(frame, finder={"sigma_s": 4})
    with pytest.raises(ValueError):
        encode_with_spots(frame, mask=np.zeros((3, 3), bool))
    kw = rr.CodecSettings(q=1).core_kwargs()
    spots = FinderSettings().core_fields()
    with pytest.raises(ValueError):  # an ROI map and a spot search are exclusive
        _core.encode(frame, np.zeros(frame.shape, np.uint8), None, nthreads=1, spots=spots, **kw)
    with pytest.raises(Exception, match="invalid spot finder parameters"):
        _core.encode(frame, None, None, nthreads=1, spots=(0,) + spots[1:], **kw)
    with pytest.raises(Exception, match="read_noise models integrating"):
        _core.encode(frame, None, None, nthreads=1, spots=spots[:9] + (2.0, 0), **kw)
    with pytest.raises(ValueError):
        _core.encode(frame, None, None, nthreads=1, spots=spots[:5], **kw)


@pytest.mark.parametrize("veto", ["none", "sparse"])
def test_acquisition_worker_stores_the_chunk_of_its_spots(rng, veto):
    """The worker's frame (veto none: one spot search in the encoder; sparse: find_spots first,
    the hit decides the mode): the chunk and indicators of find_spots + encode(roi)."""
    from types import SimpleNamespace

    from redml_reduce.acquire.indicators import LiveStats
    from redml_reduce.acquire.server import AcquireSettings
    from redml_reduce.acquire.worker import work

    frame = still_frame(rng, (256, 300), background=1.0, spots=40, peak_range=(30, 400), dtype="uint16")
    bad = with_defects(rng, frame)
    series = SimpleNamespace(id=1, calibration=None, bad=bad,
                             start=SimpleNamespace(geometry=None, saturation_value=65535))
    settings = AcquireSettings(q=1, veto=veto, min_spots=5, finder={"sigma_s": 3.5})
    codecs = {"q": rr.CodecSettings(q=1), "sparse": rr.CodecSettings(q="sparse")}
    res = work(series, 7, SimpleNamespace(decode=lambda: frame), 0.0, settings, codecs, LiveStats())
    assert res.error is None
    chunk, peaks = two_searches(frame, bad, codecs["q"], FinderSettings(sigma_s=3.5), 1)
    assert res.chunk == chunk and same_peaks(res.peaks, peaks)
    assert (res.stats.n_spots, res.stats.hit, res.stats.mode) == (len(peaks), True, "q")
