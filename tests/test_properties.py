"""Property tests (hypothesis): any shape, dtype, q, codec, tile, roi and mask; frames with
NaN, +-inf, negative, saturated, all-zero and full-range values.

Properties:
- q = 0 decodes byte for byte;
- q > 0 and sparse: exact pixels (exact_mask) byte-exact, and the exact mask covers the
  roi, the mask and every special value (non-finite, negative, dtype maximum);
- q > 0: every other pixel within q*sigma/2 of the stored model (tests/helpers.py);
- nonnegative inputs never decode negative; finite inputs never decode non-finite;
- a NaN or infinity affects nothing but its own pixel: the frame decodes exactly as the
  same frame with that pixel masked instead (docs/reliability.md).

REDML_HYPOTHESIS_EXAMPLES scales the number of examples (default: a fast suite).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import redml_reduce as rr
from helpers import ALL_DTYPES, assert_within_bound

EXAMPLES = int(os.environ.get("REDML_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# NaN payloads and signalling NaNs make numpy warn when cast; they are meant.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

SPECIAL_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 7), (7, 1), (1, 300), (300, 1), (13, 17), (31, 37), (97, 101),
                  (61, 67), (257, 263), (300, 300)]
shapes = st.one_of(st.sampled_from(SPECIAL_SHAPES), st.tuples(st.integers(1, 48), st.integers(1, 48)),
                   st.tuples(st.integers(1, 160), st.integers(1, 160)))
tiles = st.one_of(st.sampled_from([1, 2, 3, 7, 16, 32, 64, 301]), st.integers(1, 40))
codecs = st.sampled_from([("rans", None), ("rans", "none"), ("zstd", None), ("zstd", "byte"), ("lz4", None),
                          ("lz4", "none")])
lossy_q = st.one_of(st.sampled_from([0.05, 0.5, 1.0, 2.0, 4.0, 10.0, 100.0]), st.floats(0.01, 60.0))


def special_values(dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF], dtype="<u4").view(np.float32)
        return [np.nan, np.inf, -np.inf, -1.0, -0.0, 1e-45, 1e-38, 3.4e38, -3.4e38, *bits]
    info = np.iinfo(dt)
    vals = [info.max, info.max - 1, 0]
    if info.min < 0:
        vals += [-1, -2, info.min]
    return vals


@st.composite
def frames(draw, dtypes=ALL_DTYPES):
    shape = draw(shapes)
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["poisson", "poisson", "poisson", "zeros", "constant", "full_range", "steps"]))
    if kind == "poisson":
        mu = draw(st.sampled_from([0.0, 0.2, 2.0, 30.0, 700.0, 40000.0]))
        f = rng.poisson(mu, shape).astype(np.float64)
        for _ in range(draw(st.integers(0, 3))):  # spots
            y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            f[max(0, y - 2):y + 3, max(0, x - 2):x + 3] += rng.uniform(50, 5000)
    elif kind == "zeros":
        f = np.zeros(shape)
    elif kind == "constant":
        f = np.full(shape, draw(st.sampled_from([1.0, 17.0, 65534.0, 1e6])))
    elif kind == "steps":  # large jumps between tiles
        f = np.kron(rng.uniform(0, 1e4, (shape[0] // 8 + 1, shape[1] // 8 + 1)), np.ones((8, 8)))[: shape[0], : shape[1]]
    if kind == "full_range":
        if dtype.kind == "f":
            frame = rng.integers(0, 2**32, shape, dtype=np.uint64).astype("<u4").view(np.float32)
        else:
            info = np.iinfo(dtype)
            frame = rng.integers(int(info.min), int(info.max), shape, endpoint=True, dtype=np.int64).astype(dtype)
    else:
        if dtype.kind != "f":
            info = np.iinfo(dtype)
            f = np.clip(np.round(f), info.min, info.max)
        frame = f.astype(dtype)
    # sprinkle special values
    specials = draw(st.lists(st.sampled_from(special_values(dtype)), max_size=4))
    frac = draw(st.sampled_from([0.0, 0.002, 0.05, 0.5, 1.0]))
    for v in specials:
        sel = rng.random(shape) < frac
        if not sel.any():
            sel.flat[rng.integers(0, sel.size)] = True
        frame[sel] = np.asarray(v).astype(dtype)
    return frame


@st.composite
def maps(draw, shape):
    kind = draw(st.sampled_from(["none", "none", "random", "all", "empty", "stripes", "checker", "one", "border"]))
    if kind == "none":
        return None
    h, w = shape
    if kind == "random":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return rng.random(shape) < draw(st.sampled_from([0.01, 0.1, 0.5, 0.9]))
    if kind == "all":
        return np.ones(shape, bool)
    if kind == "empty":
        return np.zeros(shape, bool)
    if kind == "stripes":
        m = np.zeros(shape, bool)
        m[:, :: draw(st.integers(2, 9))] = True
        return m
    if kind == "checker":
        return (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    if kind == "one":
        m = np.zeros(shape, bool)
        m[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
        return m
    m = np.zeros(shape, bool)  # border
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def is_special(frame):
    if frame.dtype.kind == "f":
        return ~np.isfinite(frame) | (frame < 0)
    return (frame < 0) | (frame == np.iinfo(frame.dtype).max)


def codec_kw(codec):
    name, shuffle = codec
    return dict(codec=name) if shuffle is None else dict(codec=name, shuffle=shuffle)


def check_common(frame, chunk, back, roi=None, mask=None):
    """Exact pixels exact and covering roi, mask and special values; finite stays finite;
    nonnegative stays nonnegative."""
    assert back.dtype == frame.dtype and back.shape == frame.shape
    exact = rr.exact_mask(chunk)
    must = is_special(frame)
    if roi is not None:
        must |= roi
    if mask is not None:
        must |= mask
    assert exact[must].all(), "a roi, masked or special pixel was not stored exactly"
    assert back[exact].tobytes() == frame[exact].tobytes(), "an exact pixel changed"
    x = frame.astype(np.float64)
    y = back.astype(np.float64)
    assert np.isfinite(y[np.isfinite(x)]).all(), "a finite pixel decoded non-finite"
    assert not (y[x >= 0] < 0).any(), "a nonnegative pixel decoded negative"
    # non-finite inputs are kept bit for bit (NaN payloads, signs)
    if frame.dtype.kind == "f":
        nf = ~np.isfinite(frame)
        assert back[nf].tobytes() == frame[nf].tobytes()
    return exact


@SETTINGS
@given(data=st.data(), frame=frames(), codec=codecs, tile=tiles)
def test_lossless_is_byte_exact(data, frame, codec, tile):
    mask = data.draw(maps(frame.shape), "mask")
    roi = data.draw(maps(frame.shape), "roi")
    chunk = rr.encode(frame, 0, roi=roi, mask=mask, tile=tile, block_elems=256, **codec_kw(codec))
    back = rr.decode(chunk)
    assert back.dtype == frame.dtype and back.shape == frame.shape
    assert back.tobytes() == frame.tobytes()
    info = rr.inspect(chunk)
    assert info["mode"] == "lossless" and info["shape"] == frame.shape


@SETTINGS
@given(data=st.data(), frame=frames(), q=lossy_q, codec=codecs, tile=tiles,
       gain=st.sampled_from([1.0, 1.0, 0.5, 7.3]), mu_min=st.sampled_from([1.0, 1.0, 0.0, 4.0]))
def test_lossy_within_bound(data, frame, q, codec, tile, gain, mu_min):
    mask = data.draw(maps(frame.shape), "mask")
    roi = data.draw(maps(frame.shape), "roi")
    chunk, back, _ = assert_within_bound(frame, q, roi=roi, mask=mask, tile=tile, gain=gain, mu_min=mu_min,
                                         block_elems=256, **codec_kw(codec))
    check_common(frame, chunk, back, roi, mask)
    assert rr.inspect(chunk)["mode"] == "quantized"


@SETTINGS
@given(data=st.data(), frame=frames(), codec=codecs, tile=tiles, noise=st.booleans())
def test_sparse_keeps_exact_pixels(data, frame, codec, tile, noise):
    mask = data.draw(maps(frame.shape), "mask")
    roi = data.draw(maps(frame.shape), "roi")
    chunk = rr.encode(frame, "sparse", roi=roi, mask=mask, tile=tile, sparse_noise=noise, **codec_kw(codec))
    back = rr.decode(chunk)
    check_common(frame, chunk, back, roi, mask)
    # the other reconstruction decodes the same exact pixels
    other = rr.decode(chunk, sparse_noise=not noise)
    check_common(frame, chunk, other, roi, mask)


@SETTINGS
@given(data=st.data(), frame=frames(dtypes=("float32",)), q=st.one_of(st.just(0), lossy_q, st.just("sparse")),
       tile=tiles, value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_pixel_never_propagates(data, frame, q, tile, value):
    """A NaN/inf pixel decodes exactly as itself, and every other pixel decodes exactly as
    if that pixel had been masked (it takes no part in the model, the spots or the codes)."""
    frame = np.where(np.isfinite(frame), frame, np.float32(1.0)).astype(np.float32)  # one non-finite pixel only
    y = data.draw(st.integers(0, frame.shape[0] - 1), "y")
    x = data.draw(st.integers(0, frame.shape[1] - 1), "x")
    with_value = frame.copy()
    with_value[y, x] = value
    masked = np.zeros(frame.shape, bool)
    masked[y, x] = True
    a = rr.decode(rr.encode(with_value, q, tile=tile))
    b = rr.decode(rr.encode(frame, q, tile=tile, mask=masked))
    assert a[y, x].tobytes() == with_value[y, x].tobytes()
    a[y, x] = b[y, x] = 0
    assert a.tobytes() == b.tobytes(), "a non-finite pixel changed other pixels"


@SETTINGS
@given(frame=frames(), q=st.one_of(st.just(0), lossy_q, st.just("sparse")), tile=tiles, codec=codecs)
def test_encoding_is_deterministic(frame, q, tile, codec):
    a = rr.encode(frame, q, tile=tile, nthreads=1, **codec_kw(codec))
    b = rr.encode(frame, q, tile=tile, nthreads=2, **codec_kw(codec))
    assert a == b
    assert rr.decode(a, nthreads=1).tobytes() == rr.decode(a, nthreads=2).tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("q", [0, 1.0, "sparse"])
def test_all_special_frames(dtype, q):
    """Frames made only of special values (every pixel exact), of one value, or empty of signal."""
    for v in special_values(dtype):
        frame = np.full((5, 7), np.asarray(v).astype(dtype))
        back = rr.decode(rr.encode(frame, q, tile=2))
        assert back.tobytes() == frame.tobytes() or not is_special(frame).all()
        check_common(frame, rr.encode(frame, q, tile=2), back)
