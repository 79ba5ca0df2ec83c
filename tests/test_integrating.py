"""Integrating detectors (JUNGFRAU, CSPAD, ePix): pedestal-subtracted ADU or float photons with
read noise. Negative values are noise (only the markers are exact), the noise model has a read
noise (given or estimated), every background pixel decodes within the bound, and the
conditional reconstructions keep the background's mean (within 0.005 sigma) and, for the
draw, its variance (within 2%), as they do for photon counts (tests/test_reconstruction.py)."""
import math

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce.codec import CodecSettings
from redml_study.detector import integrating_frame

from chunkforge import repair_checksums
from helpers import check_decoded

GAIN, RN = 20.0, 0.2  # ADU per photon; read noise in photons
# the read noise of the rounded ADU values: the Gaussian's and the rounding's
RN_ADU = math.sqrt((RN * GAIN) ** 2 + 1 / 12)
LEVELS = [0.05, 0.3, 1.0, 5.0, 50.0]  # photons per pixel; 50 is in the model's Gaussian limit


def adu_blank(rng, mu, shape=(1024, 2048), dtype="int16"):
    return integrating_frame(rng.poisson(mu, shape), rng, gain=GAIN, read_noise=RN, dtype=dtype)


def photon_blank(rng, mu, shape=(1024, 2048)):
    return integrating_frame(rng.poisson(mu, shape), rng, read_noise=RN)


def no_roi(frame):
    return np.zeros(frame.shape, bool)


def sigma_adu(mu):
    return math.sqrt(GAIN * GAIN * mu + RN_ADU ** 2)


@pytest.mark.parametrize("mu", LEVELS)
def test_conditional_reconstructions_keep_mean_and_variance_adu(rng, mu):
    f = adu_blank(rng, mu)
    if mu < 0.5:
        assert (f < 0).mean() > 0.25  # negative values everywhere
    kw = dict(q=4, gain=GAIN, mu_min=0.0, markers="extremes", read_noise=RN_ADU, roi=no_roi(f))
    mean = rr.decode(rr.encode(f, recon="mean", **kw)).astype(np.float64)
    c = rr.encode(f, recon="draw", **kw)
    draw = rr.decode(c).astype(np.float64)
    assert not np.array_equal(draw, f)  # lossy at every level
    assert rr.exact_mask(c).sum() == 0  # no value is a marker: negative ones are noise
    sigma = sigma_adu(mu)
    assert abs(mean.mean() - f.mean()) / sigma < 0.005
    assert abs(draw.mean() - f.mean()) / sigma < 0.005
    assert abs(draw.var() / f.var() - 1) < 0.02, draw.var() / f.var()


@pytest.mark.parametrize("mu", LEVELS)
def test_conditional_reconstructions_keep_mean_and_variance_float_photons(rng, mu):
    f = photon_blank(rng, mu)
    kw = dict(q=4, mu_min=0.0, markers="extremes", read_noise=RN, roi=no_roi(f))
    mean = rr.decode(rr.encode(f, recon="mean", **kw)).astype(np.float64)
    draw = rr.decode(rr.encode(f, recon="draw", **kw)).astype(np.float64)
    sigma = math.sqrt(mu + RN * RN)
    assert abs(mean.mean() - f.mean()) / sigma < 0.005
    assert abs(draw.mean() - f.mean()) / sigma < 0.005
    assert abs(draw.var() / f.var() - 1) < 0.02, draw.var() / f.var()


def test_midpoint_is_unbiased_and_negative_values_are_coded(rng):
    """The midpoint of integrating data: no low-count rule, negative values quantized, unbiased
    (subtractive dither), and far smaller than with every negative value kept exactly."""
    f = adu_blank(rng, 0.3)
    kw = dict(q=2, gain=GAIN, mu_min=0.0, roi=no_roi(f))
    c = rr.encode(f, markers="extremes", read_noise=RN_ADU, **kw)
    err = check_decoded(f, rr.decode(c), c, 2)
    assert rr.exact_mask(c).sum() == 0
    assert abs(err.mean()) / sigma_adu(0.3) < 0.005
    as_counts = rr.encode(f, **kw)  # every negative value a marker, as for photon counters
    assert len(as_counts) > 2 * len(c)
    assert rr.inspect(c)["read_noise"] == 0  # the midpoint's decoder needs no read noise


@pytest.mark.parametrize("recon", ["midpoint", "mean", "draw"])
@pytest.mark.parametrize("kind", ["int16", "int32", "float32"])
def test_within_bound_and_markers_exact_on_random_integrating_data(rng, recon, kind):
    """Fresh random frames: levels from 0.05 to 200 photons, a spot, module gaps (markers),
    a saturated pixel; every background pixel within the stated bound, markers and ROI exact."""
    shape = (300, 400)
    lam = np.exp(rng.uniform(np.log(0.05), np.log(200), shape))
    photons = rng.poisson(lam)
    photons[150:153, 200:203] += 3000  # a spot
    gaps = np.zeros(shape, bool)
    gaps[:, 100:103] = True
    gain = None if kind == "float32" else float(rng.uniform(10, 40))
    rn = float(rng.uniform(0.1, 0.3))
    f = integrating_frame(photons, rng, gain=gain, read_noise=rn, dtype=kind if gain else "int16", gaps=gaps)
    if gain:
        f[5, 5] = np.iinfo(kind).max  # saturated: a marker too
    for q in (0.5, 1, 2, 4):
        for read_noise in ("auto", rn * (gain or 1.0)):
            c = rr.encode(f, q=q, recon=recon, gain=gain or 1.0, markers="extremes", read_noise=read_noise)
            back = rr.decode(c)
            check_decoded(f, back, c, q)
            exact = rr.exact_mask(c)
            assert exact[gaps].all() and np.array_equal(back[gaps].view(np.uint8), f[gaps].view(np.uint8))
            assert exact[150:153, 200:203].all()
            if gain:
                assert back[5, 5] == f[5, 5]


def test_pilatus_style_gap_markers(rng):
    """markers="gaps": -1 and -2 are markers besides the extremes, other negative values noise."""
    f = adu_blank(rng, 0.5, (256, 256), dtype="int32")
    f[:, 10] = -1
    f[:, 20] = -2
    c = rr.encode(f, q=2, gain=GAIN, markers="gaps", read_noise="auto", roi=no_roi(f))
    back = rr.decode(c)
    exact = rr.exact_mask(c)
    assert np.array_equal(exact, np.isin(f, (-1, -2)))
    assert np.array_equal(back[exact], f[exact])


@pytest.mark.parametrize("kind", ["adu", "photons"])
def test_read_noise_estimated_from_the_frame(rng, kind):
    """read_noise="auto": the frame's read noise within 5% at low flux (stored with the
    mean/draw model, which decodes from it)."""
    for mu in (0.05, 0.5):
        f = adu_blank(rng, mu) if kind == "adu" else photon_blank(rng, mu)
        gain = GAIN if kind == "adu" else 1.0
        c = rr.encode(f, q=2, recon="draw", gain=gain, markers="extremes", read_noise="auto", roi=no_roi(f))
        truth = RN_ADU if kind == "adu" else RN
        assert abs(rr.inspect(c)["read_noise"] / truth - 1) < 0.05, rr.inspect(c)["read_noise"]


def test_mean_and_draw_read_the_same_integrating_chunk(rng):
    f = adu_blank(rng, 2.0, (256, 256))
    kw = dict(q=4, gain=GAIN, markers="extremes", read_noise=RN_ADU)
    c = rr.encode(f, recon="mean", **kw)
    assert rr.decode(c, recon="draw").tobytes() == rr.decode(rr.encode(f, recon="draw", **kw)).tobytes()


def test_settings_round_trip_and_refusals():
    s = CodecSettings(q=2, recon="draw", gain=20, markers="extremes", read_noise="auto")
    cd = s.cd_values()
    assert len(cd) == 19 and cd[17] == np.float32(-1).view(np.uint32) and cd[18] == 1
    assert CodecSettings.from_cd_values(cd) == s
    assert CodecSettings.from_config(s.to_config()) == s
    assert s.to_config()["read_noise"] == "auto"
    t = CodecSettings(q=1, markers="gaps", read_noise=3.5)
    assert CodecSettings.from_cd_values(t.cd_values()) == t
    assert len(CodecSettings(q=1).cd_values()) == 14  # defaults: the cd_values every plugin reads
    assert CodecSettings(q=0, markers="extremes", read_noise=2.0).read_noise == 0  # quantized only
    with pytest.raises(ValueError, match="read_noise models integrating"):
        CodecSettings(q=1, read_noise=2.0)
    with pytest.raises(ValueError, match="need read_noise"):
        CodecSettings(q=1, recon="draw", markers="extremes")
    with pytest.raises(ValueError, match="gain must be 1"):
        CodecSettings(q=1, recon="draw", gain=20)
    with pytest.raises(ValueError):
        CodecSettings(q=1, markers="zeros")
    with pytest.raises(ValueError):
        CodecSettings(q=1, markers="extremes", read_noise=-2.0)


def test_hdf5_filter_writes_integrating_settings(rng, tmp_path):
    h5py = pytest.importorskip("h5py")
    frames = np.stack([adu_blank(rng, 1.0, (64, 96)) for _ in range(2)])
    settings = dict(q=2, recon="draw", gain=GAIN, markers="extremes", read_noise="auto")
    with h5py.File(tmp_path / "i.h5", "w") as fh:
        fh.create_dataset("d", data=frames, chunks=(1, 64, 96), **rr.Redml(**settings))
    with h5py.File(tmp_path / "i.h5") as fh:
        back = fh["d"][:]
        cd = fh["d"].id.get_create_plist().get_filter_by_id(rr.FILTER_ID)[1]
    assert len(cd) == 19 and CodecSettings.from_cd_values(cd) == CodecSettings(**settings)
    for k in range(2):
        chunk = rr.encode(frames[k], **settings)
        assert back[k].tobytes() == rr.decode(chunk).tobytes()  # the filter writes what encode() does


def test_midpoint_chunk_with_a_read_noise_is_refused():
    """The header's read noise belongs to the mean/draw model only: a midpoint chunk with one
    is corrupt (so every midpoint chunk keeps the 0 older decoders require)."""
    f = np.zeros((16, 16), np.int16)
    c = bytearray(rr.encode(f, q=2, markers="extremes"))
    c[52:56] = np.float32(2.0).tobytes()
    with pytest.raises(rr.RedmlError, match="read noise"):
        rr.decode(repair_checksums(bytes(c)))


def test_plugin_refuses_integrating_settings_the_table_refuses(tmp_path):
    """cd_values written by hand (not through CodecSettings): the plugin's parser refuses an
    unknown markers code, and a read noise without integrating markers, when the dataset is
    created."""
    h5py = pytest.importorskip("h5py")
    good = list(CodecSettings(q=2, recon="draw", gain=GAIN, markers="extremes", read_noise=4.0).cd_values())
    bad_markers = good[:18] + [7]
    counting_rn = good[:18] + [0]  # read noise 4.0 with markers "negative"
    with h5py.File(tmp_path / "p.h5", "w") as fh:
        fh.create_dataset("ok", shape=(1, 8, 8), dtype="int16", chunks=(1, 8, 8), compression=rr.FILTER_ID,
                          compression_opts=tuple(good))
        for name, cd in (("markers", bad_markers), ("read_noise", counting_rn)):
            with pytest.raises(ValueError):
                fh.create_dataset(name, shape=(1, 8, 8), dtype="int16", chunks=(1, 8, 8), compression=rr.FILTER_ID,
                                  compression_opts=tuple(cd))
