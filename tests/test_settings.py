"""One table of the codec settings (redml_reduce.codec.SETTINGS): every field survives every
representation (HDF5 cd_values and the plugin's parser, numcodecs config, zarr v3 metadata,
zero-copy views, the recompression manifest)."""
import dataclasses
import json

import h5py
import numcodecs
import numpy as np
import pytest
import zarr

import redml_reduce as rr
from redml_reduce.formats import zarr_view
from redml_reduce.codec import CD_USER_VALUES, SETTINGS, CodecSettings
from redml_reduce.formats.numcodecs_codec import settings_from_config, settings_to_config
from redml_reduce.recompress import MANIFEST_NAME, recompress
from redml_study.synthetic import still_frame
from redml_reduce.formats.zarr_codec import RedmlZarrCodec

# Every mode, recon, codec and shuffle, and every other field away from its default.
CASES = {
    "lossless": ("uint16", dict(q=0)),
    "lossless_lz4_bit": ("int32", dict(q=0, codec="lz4", shuffle="bit", level=7, block_elems=1024)),
    "lossless_zstd_none": ("float32", dict(q=0, codec="zstd", shuffle="none", level=-3)),
    "quantized_midpoint": ("uint16", dict(q=0.3, gain=2.5, mu_min=0.25, tile=8, roi_snr=4.5, roi_margin=0,
                                          seed=2**32 - 1)),
    "quantized_mean": ("uint16", dict(q=2, recon="mean", codec="zstd", shuffle="byte", level=19)),
    "quantized_draw": ("int32", dict(q=4, recon="draw", codec="lz4", shuffle="none", tile=16, roi_margin=5)),
    "sparse": ("uint32", dict(q="sparse", seed=99, mu_min=0.0, markers="gaps")),
    # integrating detectors: negative values are noise, a read noise in the model
    "integrating_draw": ("int32", dict(q=2, recon="draw", gain=20.0, markers="extremes", read_noise="auto")),
    "integrating_midpoint": ("float32", dict(q=1, markers="gaps", read_noise=0.3, mu_min=0.0)),
    "sparse_noise": ("uint16", dict(q="sparse", sparse_noise=False, codec="zstd", shuffle="bit", gain=3.0,
                                    roi_snr=2.0, block_elems=4096)),
}
SHAPE = (40, 52)


def _settings(name) -> CodecSettings:
    return CodecSettings(**CASES[name][1])


def _frames(rng, name, n=2):
    dtype = CASES[name][0]
    frames = np.stack([still_frame(rng, SHAPE, background=15.0, spots=3, dtype="uint16") for _ in range(n)])
    if dtype == "float32":
        return (frames * 1.5).astype(np.float32)
    return frames.astype(dtype)


def _cd_values(dset) -> tuple:
    return dset.id.get_create_plist().get_filter_by_id(rr.FILTER_ID)[1]


def _h5(path, frames, settings, name="data"):
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=frames, chunks=(1, *frames.shape[1:]), **rr.Redml(**dataclasses.asdict(settings)))


def test_table_covers_every_field_and_every_value():
    names = [s.name for s in SETTINGS]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(CodecSettings))
    assert len(set(names)) == len(names)
    cases = [_settings(n) for n in CASES]
    default = CodecSettings()
    for s in SETTINGS:
        if s.name != "q":
            assert any(getattr(c, s.name) != getattr(default, s.name) for c in cases), s.name
        if isinstance(s.encoding, dict):
            assert {getattr(c, s.name) for c in cases} == set(s.encoding), s.name
    assert {c.mode for c in cases} == {"lossless", "quantized", "sparse"}
    assert {c.sparse_noise for c in cases} == {False, True}
    # the slots are the format's (docs/format.md): no two fields share one unless their modes differ
    for a in SETTINGS:
        for b in SETTINGS:
            if a is not b and a.slot == b.slot:
                assert not set(a.modes) & set(b.modes)


@pytest.mark.parametrize("name", CASES)
def test_hdf5_cd_values_round_trip(name, rng, tmp_path):
    s = _settings(name)
    frames = _frames(rng, name)
    _h5(tmp_path / "f.h5", frames, s)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        d = f["data"]
        cd = _cd_values(d)
        user = s.cd_values()  # 14 values, or 19 with the integrating slots 17-18
        assert cd[:CD_USER_VALUES] == user[:CD_USER_VALUES] and cd[15:17] == SHAPE  # set_local: dtype, height, width
        assert cd[17:] == user[17:] and len(cd) == (17 if len(user) == CD_USER_VALUES else 19)
        assert CodecSettings.from_cd_values(cd) == s
        assert zarr_view.settings_from_cd_values(cd) == s
        for i, frame in enumerate(frames):
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            assert chunk == rr.encode(frame, settings=s)  # the plugin encodes what encode() does
            back = d[i]
            assert back.dtype == frame.dtype and back.tobytes() == rr.decode(chunk).tobytes()
            if s.mode == "lossless":
                assert back.tobytes() == frame.tobytes()


def test_plugin_defaults_agree_with_the_table(rng, tmp_path):
    """cd_values cut after any slot: the plugin fills the rest as the table reads them."""
    s = CodecSettings(q=0, codec="zstd", level=5, shuffle="none", tile=8, gain=2.0, mu_min=0.5, roi_snr=4.0,
                      roi_margin=3, seed=7, block_elems=1024)
    frame = _frames(rng, "lossless", 1)
    for k in range(1, CD_USER_VALUES + 1):
        cut = s.cd_values()[:k]
        with h5py.File(tmp_path / "f.h5", "a") as f:
            d = f.create_dataset(f"k{k}", data=frame, chunks=(1, *SHAPE), compression=rr.FILTER_ID,
                                 compression_opts=cut)
            full = _cd_values(d)
            assert full[:k] == cut
            assert CodecSettings.from_cd_values(full) == CodecSettings.from_cd_values(cut)
            expected = rr.encode(frame[0], settings=CodecSettings.from_cd_values(cut))
            assert d.id.read_direct_chunk((0, 0, 0))[1] == expected


def _word(v):
    return int(np.array(v, "<f4").view("<u4"))


def _cd(**slots):
    cd = list(CodecSettings(q=1.0).cd_values())
    for k, v in slots.items():
        cd[int(k[1:])] = v
    return tuple(cd)


# cd_values neither the table nor the plugin accepts (slot -> word).
BAD_CD = {
    "tile 0": _cd(s7=0), "tile > 16 bits": _cd(s7=65537), "roi_margin > 16 bits": _cd(s11=70000),
    "quantized q 0": _cd(s2=0), "lossless with a q": _cd(s1=0), "sparse with a q": _cd(s1=2),
    "lossless recon mean": _cd(s1=0, s2=0, s6=2), "quantized poisson": _cd(s6=1),
    "sparse recon draw": _cd(s1=2, s2=0, s6=3),
    "codec 9": _cd(s3=9), "shuffle 7": _cd(s5=7), "mode 5": _cd(s1=5), "rans bit shuffle": _cd(s5=2),
    "level 23": _cd(s4=23), "block_elems 100": _cd(s13=100), "gain 0": _cd(s8=0), "gain inf": _cd(s8=_word(np.inf)),
    "roi_snr nan": _cd(s10=_word(np.nan)), "mean with gain 2": _cd(s6=2, s8=_word(2.0)), "layout 2": _cd(s0=2),
}


@pytest.mark.parametrize("case", BAD_CD)
def test_plugin_and_table_refuse_the_same_cd_values(case, tmp_path):
    cd = BAD_CD[case]
    with pytest.raises((ValueError, TypeError)):
        CodecSettings.from_cd_values(cd)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises((ValueError, OSError)):
            f.create_dataset("data", shape=(1, *SHAPE), dtype="u2", chunks=(1, *SHAPE), compression=rr.FILTER_ID,
                             compression_opts=cd)


@pytest.mark.parametrize("name", CASES)
def test_numcodecs_config_round_trip(name, rng):
    s = _settings(name)
    config = json.loads(json.dumps(settings_to_config(s)))
    codec = numcodecs.get_codec({"id": "redml", **config})
    assert codec.settings == s and settings_from_config(config) == s
    assert numcodecs.get_codec(json.loads(json.dumps(codec.get_config()))).settings == s
    assert CodecSettings.from_config(s.to_config()) == s
    frame = _frames(rng, name, 1)[0]
    assert codec.encode(frame) == rr.encode(frame, settings=s)


def test_numcodecs_takes_recon():
    """Was: "unknown redml configuration keys: recon"."""
    assert numcodecs.get_codec({"id": "redml", "q": 2, "recon": "draw"}).settings.recon == "draw"
    assert numcodecs.get_codec({"id": "redml", "recon": "draw"}).settings == CodecSettings()  # ignored when lossless
    with pytest.raises(ValueError, match="unknown redml configuration keys: recn"):
        numcodecs.get_codec({"id": "redml", "recn": "draw"})


@pytest.mark.parametrize("name", CASES)
def test_zarr_v3_metadata_round_trip(name, rng, tmp_path):
    s = _settings(name)
    frames = _frames(rng, name)
    a = zarr.create_array(str(tmp_path / "z"), shape=frames.shape, chunks=(1, *SHAPE), dtype=frames.dtype,
                          serializer=RedmlZarrCodec(settings=s), compressors=None, fill_value=0)
    a[...] = frames
    meta = json.loads((tmp_path / "z" / "zarr.json").read_text())
    assert settings_from_config(meta["codecs"][0]["configuration"]) == s
    again = zarr.open_array(str(tmp_path / "z"), mode="r")
    assert again.metadata.codecs[0].settings == s
    assert RedmlZarrCodec.from_dict(RedmlZarrCodec(settings=s).to_dict()).settings == s
    assert (tmp_path / "z" / "c" / "1" / "0" / "0").read_bytes() == rr.encode(frames[1], settings=s)


@pytest.mark.parametrize("name", CASES)
def test_zarr_view_reports_the_settings(name, rng, tmp_path):
    """Was: a view of a recon="mean" file said midpoint, sparse_noise=True."""
    s = _settings(name)
    frames = _frames(rng, name)
    _h5(tmp_path / "f.h5", frames, s)
    for fmt in (2, 3):
        refs = zarr_view.references(tmp_path / "f.h5", "data", zarr_format=fmt)["refs"]
        if fmt == 2:
            config = {k: v for k, v in json.loads(refs[".zarray"])["compressor"].items() if k != "id"}
        else:
            config = json.loads(refs["zarr.json"])["codecs"][0]["configuration"]
        assert settings_from_config(config) == s
    with h5py.File(tmp_path / "f.h5", "r") as f:
        expected = f["data"][...]
    assert zarr_view.open_view(tmp_path / "f.h5", "data")[...].tobytes() == expected.tobytes()


@pytest.mark.parametrize("name", CASES)
def test_manifest_round_trip(name, rng, tmp_path):
    s = _settings(name)
    src = tmp_path / "in"
    src.mkdir()
    with h5py.File(src / "run.h5", "w") as f:
        f.create_dataset("entry/data/data", data=_frames(rng, name), chunks=(1, *SHAPE))
    fields = {k: v for k, v in dataclasses.asdict(s).items() if k != "q"}
    report = recompress([str(src)], tmp_path / "out", s.q, workers=0, **fields)
    assert [r["status"] for r in report.rows] == ["done"]
    entry = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()[-1])
    assert settings_from_config(entry["settings"]) == s
    with h5py.File(tmp_path / "out" / "run.nxs", "r") as f:
        assert CodecSettings.from_cd_values(_cd_values(f["entry/data/data"])) == s
    report = recompress([str(src)], tmp_path / "out", s.q, workers=0, **fields)
    assert [r["status"] for r in report.rows] == ["skipped"]


def _variants(s: CodecSettings):
    """Settings that differ from s in one field each (one per field the mode uses)."""
    other = {"codec": "lz4" if s.codec != "lz4" else "zstd", "level": s.level + 1, "gain": s.gain + 0.5,
             "mu_min": s.mu_min + 0.5, "tile": s.tile + 1, "roi_snr": s.roi_snr + 0.5,
             "roi_margin": s.roi_margin + 1, "seed": s.seed ^ 1, "block_elems": s.block_elems + 8,
             "sparse_noise": not s.sparse_noise, "recon": "draw" if s.recon != "draw" else "mean",
             "shuffle": "none" if s.shuffle != "none" else "byte", "q": s.q_value + 1,
             "markers": "gaps" if s.markers != "gaps" else "extremes",
             "read_noise": 1.0 if s.read_noise in (0, "auto") else "auto"}
    integrating = s.markers != "negative"
    for spec in SETTINGS:
        if s.mode not in spec.modes:
            continue
        changes = {spec.name: other[spec.name]}
        if integrating:  # a variant of integrating settings stays integrating
            if spec.name == "gain" or (spec.name == "recon" and s.recon == "midpoint"):
                changes.setdefault("read_noise", s.read_noise or "auto")
            yield spec.name, dataclasses.replace(s, **changes)
            continue
        if spec.name == "read_noise" or (spec.name == "markers" and s.recon != "midpoint"):
            changes.update(markers="extremes", read_noise=1.0 if s.mode == "quantized" else 0.0)
        if spec.name == "recon" or s.recon != "midpoint":
            changes.setdefault("gain", 1.0)
        if spec.name == "gain" and s.recon != "midpoint":
            continue  # mean and draw need gain 1
        yield spec.name, dataclasses.replace(s, **changes)


@pytest.mark.parametrize("name", CASES)
def test_manifest_tells_every_field_apart(name):
    """The manifest compares configurations: a change of any one field is a change."""
    s = _settings(name)
    seen = set()
    for field, v in _variants(s):
        assert v != s and settings_to_config(v) != settings_to_config(s), field
        assert CodecSettings.from_cd_values(v.cd_values()) == v
        seen.add(field)
    used = {spec.name for spec in SETTINGS if s.mode in spec.modes}
    assert seen >= used - ({"gain"} if s.recon != "midpoint" else set())


def test_resume_with_only_recon_changed_redoes_the_input(rng, tmp_path):
    """Was: the manifest's configuration lacked recon, so this rerun skipped its input."""
    src = tmp_path / "in"
    src.mkdir()
    with h5py.File(src / "run.h5", "w") as f:
        f.create_dataset("entry/data/data", data=_frames(rng, "quantized_mean"), chunks=(1, *SHAPE))
    assert recompress([str(src)], tmp_path / "out", 2.0, recon="mean", workers=0).rows[0]["status"] == "done"
    assert recompress([str(src)], tmp_path / "out", 2.0, recon="draw", workers=0).rows[0]["status"] == "done"
    with h5py.File(tmp_path / "out" / "run.nxs", "r") as f:
        assert CodecSettings.from_cd_values(_cd_values(f["entry/data/data"])).recon == "draw"
        assert rr.inspect(f["entry/data/data"].id.read_direct_chunk((0, 0, 0))[1])["recon"] == "draw"
    assert recompress([str(src)], tmp_path / "out", 2.0, recon="draw", workers=0).rows[0]["status"] == "skipped"


def test_ignored_fields_take_their_defaults():
    assert CodecSettings(q=0, recon="draw", sparse_noise=False) == CodecSettings()
    assert CodecSettings(q=float("inf"), recon="mean") == CodecSettings(q="sparse")
    assert CodecSettings(q=2, sparse_noise=False).sparse_noise is True
    with pytest.raises(ValueError, match="recon"):
        CodecSettings(q=0, recon="bogus")  # still checked
    with pytest.raises(ValueError, match="gain"):
        CodecSettings(gain=1e39)  # does not fit the float32 the filter stores
    with pytest.raises(ValueError, match="q below"):
        CodecSettings(q=1e-9).cd_values()  # the encoder's limit, checked when writing


def test_data_beyond_the_encoders_limits_still_opens(rng, tmp_path):
    """Was: the settings table capped tile at MAX_TILE and q at 1e-6 for parsing too, so
    configurations and files written with tile 1025-65535 (which the decoder reads) failed
    to open. Those limits are the encoder's: refused when encoding, accepted when parsing."""
    from redml_reduce.codec import MAX_TILE

    config = {"q": 1.0, "tile": 4096}
    assert settings_from_config(config).tile == 4096
    assert numcodecs.get_codec({"id": "redml", **config}).settings.tile == 4096
    assert CodecSettings.from_config({"q": 1e-9}).q == 1e-9
    cd = list(CodecSettings(q=1.0).cd_values())
    cd[7] = 4096
    assert CodecSettings.from_cd_values(cd).tile == 4096
    assert zarr_view.settings_from_cd_values(cd).tile == 4096  # what a zero-copy view parses
    frame = _frames(rng, "lossless", 1)
    from redml_reduce.recompress import recompress

    with pytest.raises(ValueError, match="tile must be in"):  # refused before any output
        recompress([str(tmp_path / "none")], tmp_path / "out", 1.0, tile=4096, workers=0)
    assert not (tmp_path / "out").exists()
    s = settings_from_config(config)
    for write in (lambda: rr.encode(frame[0], settings=s), s.cd_values,
                  lambda: numcodecs.get_codec({"id": "redml", **config}).encode(frame[0])):
        with pytest.raises(ValueError, match=f"tile must be in \\[1, {MAX_TILE}\\] to encode"):
            write()


def test_acquisition_file_states_every_setting(tmp_path):
    """Was: the acquisition's filter options listed the fields by hand and dropped recon."""
    from redml_reduce.acquire import Acquisition, AcquireSettings

    acq = Acquisition(tmp_path / "{series}.h5", AcquireSettings(q=2.0, codec_settings={"recon": "draw", "tile": 16}))
    try:
        assert CodecSettings(**acq.writer.file_codec()) == CodecSettings(q=2.0, recon="draw", tile=16)
        assert rr.Redml(**acq.writer.file_codec()).settings.recon == "draw"
    finally:
        acq.close()
