"""The numcodecs codec `redml` and the zarr v3 codec `redml_reduce.redml`."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import redml_reduce as rr
from helpers import ALL_DTYPES, check_backwards_compatibility, poisson_frame
from redml_reduce.formats.numcodecs_codec import RedmlCodec, settings_from_config
from redml_reduce.formats.zarr_codec import ZARR_CODEC_NAME, RedmlZarrCodec
from zarr_checks import check_config, check_repr, check_round_trip, run_fresh

GOLDEN = Path(__file__).parent / "golden"


def _frame(rng, dtype, shape=(96, 120)):
    f = poisson_frame(rng, 40.0, shape, dtype="float64", spots=4)
    if dtype == "float32":
        f = f * 1.7 + rng.uniform(-0.4, 0.4, shape)
    if dtype in ("int16", "int32"):
        f[:, 50:52] = -1
    return f.astype(dtype)


# ---------------------------------------------------------------- numcodecs

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("q", [0, 1.0, 2.5, "sparse"])
def test_numcodecs_round_trip(rng, dtype, q):
    codec = RedmlCodec(q=q)
    check_round_trip(codec, _frame(rng, dtype), q)
    check_round_trip(codec, _frame(rng, dtype)[None], q)  # a (1, H, W) chunk of a frame stack


def test_numcodecs_bytes_equal_hdf5_filter_chunk(rng, tmp_path):
    frame = _frame(rng, "uint16")
    for settings in ({"q": 0}, {"q": 1.0, "tile": 16}, {"q": 3.0, "codec": "zstd", "shuffle": "bit"},
                     {"q": "sparse", "sparse_noise": True}):
        with h5py.File(tmp_path / "f.h5", "w") as f:
            d = f.create_dataset("d", data=frame[None], chunks=(1, *frame.shape), **rr.Redml(**settings))
            mask, stored = d.id.read_direct_chunk((0, 0, 0))
        assert mask == 0
        assert RedmlCodec(**settings).encode(frame) == bytes(stored) == rr.encode(frame, **settings)


@pytest.mark.parametrize("config", [{"q": 0}, {"q": 0.75, "gain": 2.5, "mu_min": 0.5, "tile": 24},
                                    {"q": "sparse", "sparse_noise": True, "seed": 7},
                                    {"q": 2, "codec": "lz4", "level": 3, "roi_snr": 4.0, "roi_margin": 1,
                                     "block_elems": 4096}])
def test_numcodecs_config_and_repr(config):
    codec = RedmlCodec(**config)
    check_config(codec)
    check_repr(codec)
    assert json.loads(json.dumps(codec.get_config()))["id"] == "redml"


def test_config_states_the_bound():
    assert RedmlCodec(q=0).get_config()["max_error_sigmas"] == 0.0
    assert RedmlCodec(q=1.5).get_config()["max_error_sigmas"] == 0.75
    assert RedmlCodec(q="sparse").get_config()["max_error_sigmas"] is None
    with pytest.raises(ValueError, match="max_error_sigmas"):
        RedmlCodec(q=1.0, max_error_sigmas=0.1)
    with pytest.raises(ValueError, match="max_error_sigmas"):
        RedmlCodec(q="sparse", max_error_sigmas=0.5)


def test_numcodecs_decode_into_out(rng):
    frame = _frame(rng, "int32")
    codec = RedmlCodec()
    out = np.zeros((1, *frame.shape), frame.dtype)
    codec.decode(codec.encode(frame), out=out)
    assert out[0].tobytes() == frame.tobytes()


def test_numcodecs_errors(rng):
    codec = RedmlCodec()
    frame = _frame(rng, "uint16")
    with pytest.raises(ValueError, match="2-D frame"):
        codec.encode(frame.tobytes())
    with pytest.raises(ValueError, match="one frame"):
        codec.encode(np.stack([frame, frame]))
    with pytest.raises(TypeError, match="unsupported dtype"):
        codec.encode(frame.astype(np.float64))
    with pytest.raises(rr.RedmlError):
        codec.decode(b"RDML" + bytes(100))
    with pytest.raises(ValueError, match="unknown redml configuration"):
        RedmlCodec(qq=1)
    with pytest.raises(ValueError):
        RedmlCodec(q=-1)


def test_numcodecs_entry_point_in_fresh_interpreter(rng):
    chunk = rr.encode(_frame(rng, "uint16"), 1.0)
    out = run_fresh(
        "import sys, numcodecs\n"
        "assert 'redml_reduce' not in sys.modules\n"
        "c = numcodecs.get_codec({'id': 'redml', 'q': 1.0})\n"
        f"frame = c.decode({chunk!r})\n"
        "print(type(c).__module__, type(c).__name__, frame.shape, frame.dtype)\n")
    assert out.split() == ["redml_reduce.formats.numcodecs_codec", "RedmlCodec", "(96,", "120)", "uint16"]


def test_numcodecs_golden_fixtures():
    import numcodecs

    root = GOLDEN / "numcodecs_v1"
    arrays = sorted(root.glob("array.*.npy"))
    codecs = sorted(root.glob("codec.*"))
    assert len(arrays) >= 3 and len(codecs) >= 5
    for cdir in codecs:
        config = json.loads((cdir / "config.json").read_text())
        codec = numcodecs.get_codec(config)
        assert codec == RedmlCodec.from_config(config)
        for arr_path in arrays:
            k = arr_path.name.split(".")[1]
            arr = np.load(arr_path)
            chunk = (cdir / f"encoded.{k}.dat").read_bytes()
            expected = np.load(cdir / f"decoded.{k}.npy")
            check_backwards_compatibility(codec.decode(chunk), expected, arr, [chunk], config["q"] == 0)


# ---------------------------------------------------------------- zarr v3

@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
@pytest.mark.parametrize("q", [0, 1.0])
def test_zarr3_round_trip(rng, tmp_path, dtype, q):
    frames = np.stack([_frame(rng, dtype, (64, 72)) for _ in range(3)])
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=frames.shape, chunks=(1, 64, 72), dtype=dtype,
                          serializer=RedmlZarrCodec(q=q), compressors=None, fill_value=0)
    a[:] = frames
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]
    for i in range(3):
        chunk = (tmp_path / "a.zarr" / "c" / str(i) / "0" / "0").read_bytes()
        assert rr.decode(chunk).tobytes() == back[i].tobytes()
        check_round_trip(RedmlCodec(q=q), frames[i], q)
        if q == 0:
            assert back[i].tobytes() == frames[i].tobytes()
        else:
            exact = rr.exact_mask(chunk)
            x = frames[i].astype(np.float64)
            err = np.abs(back[i].astype(np.float64) - x)
            ok = exact | ~np.isfinite(x) | (err <= rr.codec.error_bound(chunk) * (1 + 1e-6))
            assert ok.all() and err[~exact & np.isfinite(x)].max() > 0


def test_zarr3_metadata_names_codec_and_bound(tmp_path):
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(2, 32, 32), chunks=(1, 32, 32), dtype="uint16",
                          serializer=RedmlZarrCodec(q=2.0, tile=16), compressors=None)
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    expected = {k: v for k, v in RedmlCodec(q=2.0, tile=16).get_config().items() if k != "id"}
    assert meta["codecs"] == [{"name": ZARR_CODEC_NAME, "configuration": expected}]
    config = meta["codecs"][0]["configuration"]
    assert "id" not in config and config["max_error_sigmas"] == 1.0 and config["tile"] == 16
    assert settings_from_config(config) == RedmlZarrCodec(q=2.0, tile=16).settings
    assert a.metadata.codecs[0] == RedmlZarrCodec(q=2.0, tile=16)


def test_zarr3_refuses_bad_chunks_and_dtypes(tmp_path):
    with pytest.raises(ValueError, match="one frame"):
        zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 32, 32), chunks=(2, 32, 32), dtype="uint16",
                          serializer=RedmlZarrCodec(), compressors=None)
    with pytest.raises(TypeError, match="redml codes"):
        zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 32, 32), chunks=(1, 32, 32), dtype="float64",
                          serializer=RedmlZarrCodec(), compressors=None)
    with pytest.raises(ValueError):
        RedmlZarrCodec(q="lots")


def test_zarr3_chunk_of_wrong_frame_is_refused(rng, tmp_path):
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(1, 32, 40), chunks=(1, 32, 40), dtype="uint16",
                          serializer=RedmlZarrCodec(), compressors=None)
    a[0] = _frame(rng, "uint16", (32, 40))
    (tmp_path / "a.zarr" / "c" / "0" / "0" / "0").write_bytes(rr.encode(_frame(rng, "uint16", (16, 40))))
    with pytest.raises(rr.RedmlError, match="expects"):
        zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]


def test_zarr3_and_v2_reopen_in_fresh_process_same_chunks(rng, tmp_path):
    """One format: a v3 array (zarr codec), a v2 array (numcodecs compressor) and an HDF5
    file (filter 310) hold the same bytes; both zarr arrays reopen in a fresh interpreter
    that finds the codecs through their entry points."""
    frames = np.stack([_frame(rng, "uint16", (48, 64)) for _ in range(2)])
    v3 = zarr.create_array(str(tmp_path / "v3.zarr"), shape=frames.shape, chunks=(1, 48, 64), dtype="uint16",
                           serializer=RedmlZarrCodec(q=1.0), compressors=None)
    v3[:] = frames
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=frames.shape, chunks=(1, 48, 64), dtype="uint16",
                           compressors=RedmlCodec(q=1.0), zarr_format=2)
    v2[:] = frames
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("d", data=frames, chunks=(1, 48, 64), **rr.Redml(q=1.0))
        h5_chunks = [bytes(d.id.read_direct_chunk((i, 0, 0))[1]) for i in range(2)]
    for i in range(2):
        assert (tmp_path / "v3.zarr" / "c" / str(i) / "0" / "0").read_bytes() == h5_chunks[i]
        assert (tmp_path / "v2.zarr" / f"{i}.0.0").read_bytes() == h5_chunks[i]
    expected = np.stack([rr.decode(c) for c in h5_chunks])
    np.save(tmp_path / "expected.npy", expected)
    out = run_fresh(
        "import sys, zarr, numpy as np\n"
        "assert 'redml_reduce' not in sys.modules\n"
        "e = np.load('expected.npy')\n"
        "a3 = zarr.open_array('v3.zarr', mode='r'); a2 = zarr.open_array('v2.zarr', mode='r')\n"
        "print(a3.metadata.zarr_format, a2.metadata.zarr_format, np.array_equal(a3[:], e), np.array_equal(a2[:], e))\n",
        cwd=tmp_path)
    assert out.split() == ["3", "2", "True", "True"]


@pytest.mark.parametrize("name", ["v3_q1", "v3_lossless", "v2_q1"])
def test_zarr_golden_stores(name):
    root = GOLDEN / "zarr_v1"
    a = zarr.open_array(str(root / f"{name}.zarr"), mode="r")
    expected = np.load(root / f"{name}.decoded.npy")
    frames = np.load(root / f"{name}.input.npy")
    back = a[:]
    check_backwards_compatibility(back, expected, frames, lossless="lossless" in name)
    if "lossless" not in name:
        assert np.abs(back.astype(int) - frames).max() > 0


def test_zarr_entry_point_in_fresh_interpreter():
    out = run_fresh(
        "import sys\n"
        "from zarr.registry import get_codec_class\n"
        "cls = get_codec_class('redml_reduce.redml')\n"
        "codec = cls.from_dict({'name': 'redml_reduce.redml', 'configuration': {'q': 2.0}})\n"
        "print(cls.__module__, cls.__name__, codec.to_dict()['configuration']['max_error_sigmas'])\n")
    assert out.split() == ["redml_reduce.formats.zarr_codec", "RedmlZarrCodec", "1.0"]
