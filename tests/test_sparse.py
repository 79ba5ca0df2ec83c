"""Sparse mode's chunks: how they are stored (codec choice) and what they keep exactly."""
import math

import numpy as np
import pytest

import redml_reduce as rr
from helpers import check_decoded, poisson_frame


def gapped_frame(rng, dtype="int32", marker=-1):
    """A Pilatus-like still: Poisson background with spots, module gaps holding a marker."""
    frame = poisson_frame(rng, 2.0, (384, 320), dtype=dtype, spots=30)
    frame[100:117, :] = marker  # a horizontal module gap, 17 rows
    frame[:, 190:197] = marker  # a vertical one, 7 columns
    return frame


def test_sparse_chunk_with_gaps_is_stored_with_zstd():
    """Asked in rANS (the default), a sparse chunk whose exact values hold long marker runs
    is written with zstd (level 12): the same bytes as asking for it; the same frame decoded."""
    frame = gapped_frame(np.random.default_rng(1))
    chunk = rr.encode(frame, "sparse")
    assert rr.inspect(chunk)["codec"] == "zstd"
    assert bytes(chunk) == bytes(rr.encode(frame, "sparse", codec="zstd", level=12, shuffle="byte"))
    back = rr.decode(chunk)
    check_decoded(frame, back, chunk, "sparse")
    assert np.array_equal(back, rr.decode(rr.encode(frame, "sparse", codec="zstd", level=1, shuffle="byte")))
    gaps = frame == -1
    assert rr.exact_mask(chunk)[gaps].all() and (back[gaps] == -1).all()


def test_sparse_chunk_keeps_rans_where_smaller():
    """Exact values without runs (a Poisson frame kept whole): rANS's order-0 coder beats zstd
    there, and the rANS chunk is kept: the choice never makes a chunk larger."""
    frame = np.random.default_rng(2).poisson(5.0, (256, 256)).astype(np.uint16)
    roi = np.ones(frame.shape, bool)
    chunk = rr.encode(frame, "sparse", roi=roi)
    assert rr.inspect(chunk)["codec"] == "rans"
    assert len(chunk) < len(rr.encode(frame, "sparse", roi=roi, codec="zstd", level=12, shuffle="byte"))
    assert rr.decode(chunk).tobytes() == frame.tobytes()


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_sparse_chunk_other_codec_as_asked(codec):
    """A codec other than rANS is used as asked (no second try)."""
    frame = gapped_frame(np.random.default_rng(3), dtype="uint16", marker=65535)
    chunk = rr.encode(frame, "sparse", codec=codec, level=1)
    assert rr.inspect(chunk)["codec"] == codec
    check_decoded(frame, rr.decode(chunk), chunk, "sparse")


def test_quantized_chunk_codec_unchanged():
    """Only sparse chunks try a second codec: a quantized chunk asked in rANS stays rANS."""
    frame = gapped_frame(np.random.default_rng(4))
    assert rr.inspect(rr.encode(frame, 2))["codec"] == "rans"


def integrating_still(rng, mu, gain, shape=(384, 384), n_isolated=150, extra=3.0):
    """Pedestal-subtracted integrating frame (read noise 0.2 photon) of a flat background of
    mu photons/px, with single pixels holding `extra` photons more (a weak reflection's
    photons: too few for the finder's dispersion test); returns (frame, their map)."""
    from redml_study.detector import integrating_frame

    photons = rng.poisson(mu, shape).astype(np.float64)
    isolated = np.zeros(shape, bool)
    isolated.ravel()[rng.choice(isolated.size, n_isolated, replace=False)] = True
    photons[isolated] += extra
    return integrating_frame(photons, rng, gain=gain, read_noise=0.2, dtype="int32"), isolated


@pytest.mark.parametrize("gain", [20, None])  # int32 ADU, float32 photons
def test_integrating_sparse_keeps_isolated_photons(gain):
    """Integrating data: pixels more than 3 sigma above the model (here 3.3 photons against a
    cut at 2.05) are kept exactly (byte for byte) where the finder sees no spot; the rest of
    the frame is mostly the model."""
    frame, isolated = integrating_still(np.random.default_rng(11), 0.3, gain)
    chunk = rr.encode(frame, "sparse", gain=gain or 1.0, markers="extremes", read_noise="auto")
    back = rr.decode(chunk)
    check_decoded(frame, back, chunk, "sparse")
    exact = rr.exact_mask(chunk)
    assert exact[isolated].all()
    assert exact.mean() < 0.08  # 0.3 photon/px: mostly 2-photon pixels above the cut


@pytest.mark.parametrize("gain", [20, None])
@pytest.mark.parametrize("mu", [0.05, 0.3, 2.0, 20.0])
def test_integrating_sparse_keeps_the_background_sum(mu, gain):
    """Fresh random backgrounds: the kept pixels and the model under them keep the frame's
    mean within 0.01 sigma (the model is fitted on the pixels it stands for), and the kept
    fraction stays near the Gaussian tail's (the cut is 3 sigma above the model)."""
    rng = np.random.default_rng(int(mu * 100) + (gain or 0))
    frame, _ = integrating_still(rng, mu, gain, n_isolated=0)
    chunk = rr.encode(frame, "sparse", gain=gain or 1.0, markers="extremes", read_noise="auto")
    back = rr.decode(chunk)
    scale = gain or 1.0
    sigma = np.sqrt(mu + 0.2 ** 2) * scale  # one pixel's spread
    assert abs(back.astype(np.float64).mean() - frame.astype(np.float64).mean()) < 0.01 * sigma
    assert rr.exact_mask(chunk).mean() < 0.06


def test_integrating_sparse_with_roi_keeps_the_roi_only():
    """A caller's roi is the exact region as given (with markers): no pixel added above the model."""
    rng = np.random.default_rng(12)
    frame, isolated = integrating_still(rng, 0.3, 20)
    frame[:, 100:104] = np.iinfo(np.int32).min  # a gap
    roi = np.zeros(frame.shape, bool)
    roi[10:20, 10:20] = True
    chunk = rr.encode(frame, "sparse", roi=roi, gain=20.0, markers="extremes", read_noise="auto")
    assert np.array_equal(rr.exact_mask(chunk), roi | (frame == np.iinfo(np.int32).min))
    check_decoded(frame, rr.decode(chunk), chunk, "sparse")


@pytest.mark.parametrize("mu", [0.3, 1.0, 4.0])
def test_sparse_blank_frame_model_is_small(mu):
    """A blank frame's sparse chunk is its model: tile means rounded to a power of two at most
    half their standard error code in under 1 byte a tile (1024 tiles: 0.6-0.75 kB; 2.8-4.6 kB
    unrounded); the decoded tiles still follow their pixels."""
    frame = np.random.default_rng(21).poisson(mu, (1024, 1024)).astype(np.uint16)
    chunk = rr.encode(frame, "sparse")
    assert len(chunk) < 1000
    back = rr.decode(chunk).astype(np.float64)
    lz4 = rr.encode(frame, "sparse", codec="lz4")  # the same model in another codec: the same frame
    assert np.array_equal(rr.decode(lz4), back)
    tiles = back.reshape(32, 32, 32, 32).mean(axis=(1, 3))
    # each tile's decoded mean (the bilinear model, dithered) follows its own pixels' mean
    assert np.abs(tiles - frame.reshape(32, 32, 32, 32).mean(axis=(1, 3))).mean() < 0.1 * np.sqrt(mu)


@pytest.mark.parametrize("gain", [20, None])  # int32 ADU, float32 photons
@pytest.mark.parametrize("mu", [0.05, 0.3, 2.0])
def test_integrating_sparse_noise_has_the_read_noise(mu, gain):
    """Fresh integrating backgrounds decoded with the noisy background: the pixels drawn from
    the model have its variance, gain * model + read_noise^2 (the chunk stores the read noise
    it was encoded with; without it the draw was Poisson alone: 0.55 of that at 0.05
    photon/px, never negative), the frame keeps its mean within 0.01 sigma and the kept
    pixels are exact."""
    rng = np.random.default_rng(int(mu * 1000) + (gain or 0))
    frame, _ = integrating_still(rng, mu, gain, shape=(512, 512), n_isolated=0)
    scale = gain or 1.0
    chunk = rr.encode(frame, "sparse", sparse_noise=True, gain=scale, markers="extremes", read_noise="auto")
    rn = rr.inspect(chunk)["read_noise"]
    assert rn == pytest.approx(0.2 * scale, rel=0.1)
    back = rr.decode(chunk)
    check_decoded(frame, back, chunk, "sparse")
    drawn = back[~rr.exact_mask(chunk)].astype(np.float64)
    model_mean = drawn.mean()  # the model is flat here
    assert drawn.var() == pytest.approx(scale * max(model_mean, 0.0) + rn ** 2, rel=0.05)
    assert (drawn < 0).mean() > (0.2 if mu < 1 else 0.01)
    sigma = np.sqrt(mu + 0.2 ** 2) * scale
    assert abs(back.astype(np.float64).mean() - frame.astype(np.float64).mean()) < 0.01 * sigma
    # the stored reconstruction can still be overridden: the (dithered) model, without noise
    smooth = rr.decode(chunk, sparse_noise=False)[~rr.exact_mask(chunk)].astype(np.float64)
    assert smooth.var() < 0.5 * drawn.var()


def test_photon_counting_sparse_chunk_has_no_read_noise():
    """Photon counters' sparse chunks store no read noise (their bytes as before: decoders
    before the integrating noisy background read them)."""
    frame = gapped_frame(np.random.default_rng(5))
    assert rr.inspect(rr.encode(frame, "sparse", sparse_noise=True))["read_noise"] == 0.0


def test_sparse_chunks_alternating_codecs_on_one_thread():
    """The encoder keeps the smaller of its rANS and zstd chunks in the thread's two buffers:
    chunks written one after the other, the winner alternating, are the same bytes as each
    written first."""
    zstd_frame = gapped_frame(np.random.default_rng(6))
    rans_frame = np.random.default_rng(7).poisson(5.0, (256, 256)).astype(np.uint16)
    roi = np.ones(rans_frame.shape, bool)
    first = [bytes(rr.encode(zstd_frame, "sparse")), bytes(rr.encode(rans_frame, "sparse", roi=roi))]
    assert [rr.inspect(c)["codec"] for c in first] == ["zstd", "rans"]
    for _ in range(2):
        assert bytes(rr.encode(zstd_frame, "sparse")) == first[0]
        assert bytes(rr.encode(rans_frame, "sparse", roi=roi)) == first[1]


def test_integrating_sparse_keeps_the_neighbours_of_kept_pixels():
    """Integrating data: a pixel 2.5 sigma above the model (under the 3 sigma cut) is kept
    exactly next to a pixel above the cut (a weak reflection's photons cluster), not alone
    (the background's tail)."""
    rng = np.random.default_rng(13)
    frame, _ = integrating_still(rng, 0.3, 20, n_isolated=0)
    sigma = np.sqrt(0.3 + 0.2 ** 2)  # photons, around the model (about 0.3 photon)
    grow = int(round((0.3 + 2.5 * sigma) * 20))  # ADU: between 2 and 3 sigma above the model
    top = int(round((0.3 + 5.0 * sigma) * 20))
    pairs, alone = [], []
    for k in range(40):
        y, x = 20 + 9 * (k // 8), 20 + 40 * (k % 8)
        frame[y - 2:y + 3, x - 2:x + 8] = 0  # quiet surroundings: nothing else above the cut
        frame[y, x], frame[y, x + 1] = top, grow  # a pixel above the cut and its neighbour
        frame[y, x + 5] = grow  # a pixel like the neighbour, alone
        pairs.append((y, x + 1)), alone.append((y, x + 5))
    chunk = rr.encode(frame, "sparse", gain=20.0, markers="extremes", read_noise="auto")
    exact = rr.exact_mask(chunk)
    assert all(exact[p] for p in pairs)
    assert not any(exact[p] for p in alone)
    check_decoded(frame, rr.decode(chunk), chunk, "sparse")


def poisson_definition(lam, seed, i):
    """redml_poisson of csrc/quantize.h for lam < 64 (inversion of the seeded uniform, stream 3)."""
    from redml_reduce import _core

    if not lam > 0:
        return 0
    u = _core.hash_uniform(seed, i, 3)
    p = cdf = math.exp(-lam)
    k = 0
    while u > cdf and k < 1000:
        k += 1
        p *= lam / k
        cdf += p
    return k


@pytest.mark.parametrize("gain", [20, None])  # int32 ADU, float32 photons
def test_integrating_sparse_noise_equals_the_definition(gain):
    """The noisy background of a sparse chunk of integrating data is docs/format.md's
    definition: gain * Poisson(v / gain) + rn * z, z = sqrt(-2 ln(u7 + 2^-33)) cos(2 pi u8)
    (the seeded uniforms of streams 7 and 8), integers rounded half up; v the bilinear model
    clamped at 0, rn the header's read noise."""
    from redml_reduce import _core
    from test_decoder_lanes import bilinear

    rng = np.random.default_rng(14)
    frame, _ = integrating_still(rng, 0.3, gain, shape=(200, 232), n_isolated=0)
    chunk = rr.encode(frame, "sparse", sparse_noise=True, gain=gain or 1.0, markers="extremes", read_noise="auto")
    info, model = rr.inspect(chunk), rr.background_model(chunk)
    seed, rn, g = info["seed"], info["read_noise"], float(np.float32(gain or 1.0))
    assert rn > 0
    back = rr.decode(chunk, nthreads=1)
    coded = np.flatnonzero(~rr.exact_mask(chunk).ravel())
    for i in rng.choice(coded, 1500, replace=False):
        y, x = divmod(int(i), frame.shape[1])
        v = max(0.0, bilinear(model["mean"], model["tile"], y, x))
        z = math.sqrt(-2.0 * math.log(_core.hash_uniform(seed, int(i), 7) + 0.5 / 4294967296.0)) * math.cos(
            6.283185307179586 * _core.hash_uniform(seed, int(i), 8))
        r = g * poisson_definition(v / g, seed, int(i)) + rn * z
        expected = np.float32(r) if gain is None else math.floor(r + 0.5)
        assert back.flat[i] == expected, (y, x)
