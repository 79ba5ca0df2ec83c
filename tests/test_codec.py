"""Round trips of the standalone codec: lossless byte-exact, lossy within the bound."""
import numpy as np
import pytest

import redml_reduce as rr
from helpers import ALL_DTYPES, assert_lossless, assert_within_bound, poisson_frame

SHAPES = [(1, 1), (1, 37), (41, 1), (97, 89), (257, 263)]


def random_full_range(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        x = rng.normal(0, 1e3, shape).astype(dt)
        x.flat[:: max(1, x.size // 7)] = np.nan
        x.flat[1 :: max(2, x.size // 5)] = np.inf
        x.flat[2 :: max(3, x.size // 3)] = -0.0
        return x
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_lossless_full_range(rng, dtype, shape):
    assert_lossless(random_full_range(rng, dtype, shape))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("codec", ["rans", "zstd", "lz4"])
def test_lossless_poisson_each_codec(rng, dtype, codec):
    frame = poisson_frame(rng, 3.0, (130, 211), dtype, spots=5)
    assert_lossless(frame, codec=codec)
    assert_lossless(frame, codec=codec, shuffle="none")


def test_lossless_4m_frame(rng):
    frame = poisson_frame(rng, 0.5, (2068, 2164), "uint16", spots=50)
    chunk = assert_lossless(frame)
    assert len(chunk) < frame.nbytes / 5  # ~1.6 bit/px expected at 0.5 photons


def test_nan_payloads_and_signed_zero_kept():
    x = np.array([[np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 3.4e38]], dtype=np.float32)
    x.view(np.uint32)[0, 0] = 0x7FC12345  # NaN with a payload
    back = rr.decode(rr.encode(x, 0))
    assert back.view(np.uint32).tolist() == x.view(np.uint32).tolist()
    special = ~np.isfinite(x)
    for q in (1, "sparse"):  # non-finite values are always stored exactly
        back = rr.decode(rr.encode(x, q))
        assert back.view(np.uint32)[special].tolist() == x.view(np.uint32)[special].tolist()


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32"])
@pytest.mark.parametrize("mu", [0.05, 1.0, 20.0, 150.0])
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, 4.0])
def test_lossy_within_bound(rng, dtype, mu, q):
    frame = poisson_frame(rng, mu, (200, 300), dtype, spots=8)
    assert_within_bound(frame, q)


@pytest.mark.parametrize("q", [0.5, 1.0, 4.0])
def test_lossy_float_within_bound(rng, q):
    frame = poisson_frame(rng, 40.0, (150, 170), "float32", spots=5) * np.float32(1.7)
    frame += rng.uniform(-0.5, 0.5, frame.shape).astype(np.float32)  # non-integer values
    assert_within_bound(frame, q, gain=1.7)


def test_lossy_bound_with_gain(rng):
    frame = (poisson_frame(rng, 30.0, (128, 256), "int32") * 7).astype(np.int32)
    _, _, err = assert_within_bound(frame, 2.0, gain=7.0)
    assert np.abs(err).max() > 7  # the step is in photons times gain, not in counts


@pytest.mark.parametrize("mu", [20.0, 300.0])
@pytest.mark.parametrize("q", [1.0, 2.0, 4.0])
def test_lossy_unbiased_with_expected_variance(rng, mu, q):
    frame = poisson_frame(rng, mu, (1024, 1024), "uint16")
    chunk, back, err = assert_within_bound(frame, q)
    bg = ~rr.exact_mask(chunk)
    assert bg.mean() > 0.99
    step = rr.background_model(chunk)["step"]
    s = float(np.median(step))
    assert s > 1, "bright background must be quantized"
    added_var = (s * s - 1) / 12
    e = err[bg]
    # mean error: zero within 5 standard errors (subtractive dither makes it exactly 0 in expectation)
    assert abs(e.mean()) < 5 * np.sqrt(added_var / e.size)
    assert e.var() == pytest.approx(added_var, rel=0.03)
    # noise inflation stays as documented: sqrt(1 + (s^2-1)/(12 mu))
    assert back[bg].astype(float).var() == pytest.approx(frame[bg].astype(float).var() + added_var, rel=0.03)


def test_low_background_stays_lossless_at_q1(rng):
    # below ~12 photons q=1 keeps every pixel (low-count rule, docs/format.md)
    frame = poisson_frame(rng, 2.0, (256, 256), "uint16")
    assert rr.decode(rr.encode(frame, 1.0)).tobytes() == frame.tobytes()


@pytest.mark.parametrize("q", [1.0, 4.0, "sparse"])
def test_masked_and_special_pixels_exact(rng, q):
    frame = poisson_frame(rng, 80.0, (180, 190), "int32")
    mask = rng.random(frame.shape) < 0.05
    frame[rng.random(frame.shape) < 0.01] = -1  # detector gap marks
    frame[rng.random(frame.shape) < 0.01] = -2
    frame[0, :7] = np.iinfo(np.int32).max
    chunk = rr.encode(frame, q, mask=mask)
    back = rr.decode(chunk)
    keep = mask | (frame < 0) | (frame == np.iinfo(np.int32).max)
    assert np.array_equal(back[keep], frame[keep])
    assert rr.exact_mask(chunk)[keep].all()


def test_explicit_roi_kept_exactly(rng):
    frame = poisson_frame(rng, 50.0, (128, 128), "uint16")
    roi = np.zeros(frame.shape, bool)
    roi[10:20, 30:60] = True
    chunk = rr.encode(frame, 4.0, roi=roi)
    back = rr.decode(chunk)
    assert np.array_equal(back[roi], frame[roi])
    assert not np.array_equal(back[~roi], frame[~roi])


def test_builtin_roi_keeps_spots(rng):
    frame = poisson_frame(rng, 20.0, (256, 256), "uint16")
    frame[100:103, 50:53] += 400  # a bright spot
    chunk = rr.encode(frame, 4.0)
    back = rr.decode(chunk)
    assert np.array_equal(back[98:105, 48:55], frame[98:105, 48:55])  # spot + 2 px margin
    assert rr.exact_mask(chunk).mean() < 0.02  # background is not swallowed by the ROI


def test_sparse_keeps_roi_and_model(rng):
    frame = poisson_frame(rng, 10.0, (256, 320), "uint16", spots=10)
    chunk = rr.encode(frame, "sparse")
    assert rr.inspect(chunk)["mode"] == "sparse"
    back = rr.decode(chunk, sparse_noise=False)
    exact = rr.exact_mask(chunk)
    assert np.array_equal(back[exact], frame[exact])
    bg = ~exact
    assert back[bg].mean() == pytest.approx(frame[bg].mean(), rel=0.02)  # dithered rounding is unbiased
    assert back[bg].var() < 0.5 * frame[bg].var()  # the smooth model
    noisy = rr.decode(chunk)  # by default: the noise spot finders and integration rely on
    assert noisy[bg].var() / noisy[bg].mean() == pytest.approx(1.0, abs=0.05)  # Poisson redraw
    assert np.array_equal(noisy, rr.decode(chunk, sparse_noise=True))  # seeded
    assert np.array_equal(rr.decode(rr.encode(frame, np.inf), sparse_noise=False), back)  # q=inf is sparse


def test_q_knob_orders_sizes(rng):
    frame = poisson_frame(rng, 40.0, (512, 512), "uint16", spots=20)
    sizes = [len(rr.encode(frame, q)) for q in (0, 0.5, 1, 2, 4, "sparse")]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] / sizes[3] > 1.8


def test_deterministic_across_threads(rng):
    frame = poisson_frame(rng, 25.0, (700, 500), "uint16", spots=20)
    for q in (0, 1.0, "sparse"):
        ref = rr.encode(frame, q, nthreads=1)
        assert rr.encode(frame, q, nthreads=3) == ref
        assert np.array_equal(rr.decode(ref, nthreads=1), rr.decode(ref, nthreads=4))


def test_non_contiguous_and_big_endian_input(rng):
    frame = poisson_frame(rng, 5.0, (64, 100), "uint16")
    view = frame[:, ::2]
    assert np.array_equal(rr.decode(rr.encode(view)), view)
    be = frame.astype(">u2")
    back = rr.decode(rr.encode(be))
    assert back.dtype == np.dtype("uint16") and np.array_equal(back, frame)


def test_inspect_reports_header(rng):
    frame = poisson_frame(rng, 30.0, (33, 65), "int32")
    info = rr.inspect(rr.encode(frame, 2.0, tile=16, codec="zstd"))
    assert info["shape"] == (33, 65) and info["dtype"] == np.dtype("int32")
    assert info["mode"] == "quantized" and info["q"] == 2.0 and info["tile"] == 16
    assert info["codec"] == "zstd" and info["version"] == 1


def test_real_frames_lossless_and_bounded(thaumatin):
    for n, frame in thaumatin.items():
        chunk = assert_lossless(frame)
        assert frame.nbytes / len(chunk) > 9.0, f"frame {n}: lossless ratio too low"
        lossy, back, _ = assert_within_bound(frame, 2.0)
        gaps = frame < 0
        assert gaps.sum() > 100000 and np.array_equal(back[gaps], frame[gaps])
        assert len(lossy) <= len(chunk)


def test_sparse_keeps_outliers_beside_bad_pixels(thaumatin):
    # frame 10 has hot pixels (1e5-1e6 counts) between bad (-2) pixels: not spots for
    # DIALS, but never background: every mode must keep them exactly
    frame = thaumatin[10]
    hot = frame > 100000
    assert hot.sum() >= 2
    for q in (2.0, "sparse"):
        back = rr.decode(rr.encode(frame, q))
        assert np.array_equal(back[hot], frame[hot])


# ---- the encoder's and decoder's per-thread work buffers, and the two decoder paths ----

@pytest.mark.parametrize("q", [0, 2, "sparse", 4])
def test_work_buffers_carry_nothing_between_frames(rng, q):
    """Buffers kept from frame to frame (per thread) leave no trace: a frame encodes and
    decodes the same before and after frames of other shapes and dtypes."""
    recon = {"recon": "draw"} if q == 4 else {}
    a = poisson_frame(rng, 10.0, (150, 233), "uint16", spots=4)
    first = rr.encode(a, q, nthreads=1, **recon)
    back = rr.decode(first, nthreads=1)
    for shape, dtype in [((300, 400), "int32"), ((7, 5), "uint16"), ((150, 233), "float32")]:
        other = poisson_frame(rng, 3.0, shape, dtype, spots=2)
        rr.decode(rr.encode(other, 0 if dtype == "float32" and q == 4 else q, nthreads=1), nthreads=1)
    assert rr.encode(a, q, nthreads=1, **recon) == first
    assert np.array_equal(rr.decode(first, nthreads=1), back)


@pytest.mark.parametrize("q,recon", [(0, "midpoint"), (2, "midpoint"), (4, "draw"), ("sparse", "midpoint")])
def test_one_pass_and_band_parallel_decoders_agree(rng, q, recon):
    """On one thread the decoder reads the streams in one raster pass; on several it first
    counts where each band starts: same pixels."""
    frame = poisson_frame(rng, 10.0, (300, 257), "uint16", spots=6)
    chunk = rr.encode(frame, q, recon=recon) if q != "sparse" else rr.encode(frame, q)
    assert np.array_equal(rr.decode(chunk, nthreads=1), rr.decode(chunk, nthreads=3))


def _move_one_code(chunk: bytes, src: int, dst: int) -> bytes:
    """The chunk with one code fewer in phase `src` and one more in phase `dst` (zero codes,
    stored raw): the total still matches the frame, the phases do not."""
    from chunkforge import CODES, Chunk, raw_stream

    c = Chunk.parse(chunk)
    codes = [s for s in c.sections if s.type == CODES]
    for s, delta in ((codes[src], -1), (codes[dst], 1)):
        s.raw_size += delta * s.elem
        s.data = raw_stream(bytes(s.raw_size))
        s.shuffle = 0
    return c.build()


@pytest.mark.parametrize("q,src,dst", [(0, 0, 1), (2, 0, 1), (2, 1, 0)])  # lossless: all codes in phase 0
@pytest.mark.parametrize("nthreads", [1, 3])
def test_code_streams_that_do_not_match_their_phases_are_refused(rng, q, src, dst, nthreads):
    """Phase streams one code too short or too long (total unchanged): refused by the
    one-pass decoder (it checks every read against its stream) as by the band decoder."""
    frame = poisson_frame(rng, 10.0, (200, 131), "uint16")
    chunk = rr.encode(frame, q)
    with pytest.raises(rr.RedmlError, match="code stream length"):
        rr.decode(_move_one_code(chunk, src, dst), nthreads=nthreads)


def test_stage_times_of_the_encoder():
    """The debug stage timer (benchmarks/speed.py): every stage of an encode, in order, on
    request only."""
    from redml_reduce import _core
    from redml_reduce.codec import CodecSettings

    frame = poisson_frame(np.random.default_rng(3), 1.0, (130, 140), "uint16", spots=3)
    kw = CodecSettings(q=1).core_kwargs()
    _core.stage_timing(True)
    try:
        _core.encode(frame, None, None, nthreads=1, **kw)
        stages = dict(_core.last_stages())
    finally:
        _core.stage_timing(False)
    assert list(stages)[0] == "mask" and list(stages)[-1] == "write chunk"
    assert {"dispersion 7x7", "background model", "quantize", "entropy"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    _core.encode(frame, None, None, nthreads=1, **kw)
    assert dict(_core.last_stages()) == stages  # disabled: the record is left alone
