"""Zero-copy zarr views of redml HDF5 files (kerchunk references from h5py's chunk index)."""
import json

import h5py
import hdf5plugin
import numpy as np
import pytest

import redml_reduce as rr
from helpers import poisson_frame
from redml_reduce.formats import zarr_view
from redml_reduce.codec import CodecSettings


def _write(path, frames, dataset="entry/data/data", **settings):
    with h5py.File(path, "w") as f:
        d = f.create_dataset(dataset, data=frames, chunks=(1, *frames.shape[1:]), **rr.Redml(**settings))
        d.attrs["units"] = "counts"
        d.attrs["image_nr_low"] = np.int32(1)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("dtype,q", [("uint16", 0), ("int32", 1.0), ("float32", 0.5)])
def test_view_equals_h5py(rng, tmp_path, zarr_format, dtype, q):
    frames = np.stack([poisson_frame(rng, 30.0, (80, 96), dtype=dtype, spots=3) for _ in range(4)])
    path = tmp_path / "run.nxs"
    _write(path, frames, q=q)
    arr = zarr_view.open_view(path, zarr_format=zarr_format)
    with h5py.File(path, "r") as f:
        expected = f["entry/data/data"][...]
    assert arr.shape == frames.shape and arr.dtype == frames.dtype
    assert arr[...].tobytes() == expected.tobytes()
    assert arr[2, 10:20, 5:9].tobytes() == expected[2, 10:20, 5:9].tobytes()
    assert arr.attrs["units"] == "counts" and arr.attrs["image_nr_low"] == 1
    if q == 0:
        assert expected.tobytes() == frames.tobytes()


def test_dask_reads_the_same_bytes(rng, tmp_path):
    frames = np.stack([poisson_frame(rng, 12.0, (64, 64), spots=2) for _ in range(5)])
    path = tmp_path / "run.h5"
    _write(path, frames, q=1.0)
    x = zarr_view.to_dask(path)
    assert x.chunks == ((1,) * 5, (64,), (64,))
    with h5py.File(path, "r") as f:
        expected = f["entry/data/data"][...]
    assert x.compute().tobytes() == expected.tobytes()
    assert float(x.sum().compute()) == float(expected.sum())


def test_references_point_at_the_stored_chunks(rng, tmp_path):
    frames = np.stack([poisson_frame(rng, 8.0, (40, 48)) for _ in range(3)])
    path = tmp_path / "run.h5"
    _write(path, frames, q=2.0, tile=16)
    refs = zarr_view.write_references(path, tmp_path / "refs.json")
    assert json.loads((tmp_path / "refs.json").read_text()) == refs
    raw = path.read_bytes()
    with h5py.File(path, "r") as f:
        d = f["entry/data/data"]
        expected = d[...]
        for i in range(3):
            url, offset, size = refs["refs"][f"{i}.0.0"]
            assert url == str(path.resolve())
            assert raw[offset:offset + size] == bytes(d.id.read_direct_chunk((i, 0, 0))[1])
    zarray = json.loads(refs["refs"][".zarray"])
    assert zarray["compressor"]["id"] == "redml" and zarray["compressor"]["max_error_sigmas"] == 1.0
    assert zarray["compressor"]["tile"] == 16
    arr = zarr_view.open_view(tmp_path / "refs.json")  # from the JSON file alone
    assert arr[...].tobytes() == expected.tobytes()


def test_missing_chunks_read_as_fill_value(rng, tmp_path):
    path = tmp_path / "run.h5"
    frame = poisson_frame(rng, 5.0, (32, 32))
    with h5py.File(path, "w") as f:
        d = f.create_dataset("entry/data/data", shape=(3, 32, 32), dtype="uint16", chunks=(1, 32, 32),
                             **rr.Redml())
        d.id.write_direct_chunk((1, 0, 0), rr.encode(frame))
    arr = zarr_view.open_view(path)
    assert arr[1].tobytes() == frame.tobytes() and not arr[0].any() and not arr[2].any()


def test_view_refuses_what_it_cannot_reference(rng, tmp_path):
    frames = np.stack([poisson_frame(rng, 5.0, (32, 32)) for _ in range(2)])
    with h5py.File(tmp_path / "bslz4.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, 32, 32), **hdf5plugin.Bitshuffle())
        f.create_dataset("tiles", data=frames, chunks=(1, 16, 32), **rr.Redml())
        f.create_dataset("plain", data=frames)
    with pytest.raises(ValueError, match="recompress it first"):
        zarr_view.references(tmp_path / "bslz4.h5")
    with pytest.raises(ValueError, match="one frame per chunk"):
        zarr_view.references(tmp_path / "bslz4.h5", "tiles")
    with pytest.raises(ValueError, match="one frame per chunk"):
        zarr_view.references(tmp_path / "bslz4.h5", "plain")
    with pytest.raises(KeyError, match="no dataset"):
        zarr_view.references(tmp_path / "bslz4.h5", "nothing")
    with pytest.raises(ValueError, match="zarr_format"):
        zarr_view.references(tmp_path / "bslz4.h5", zarr_format=4)


@pytest.mark.parametrize("settings", [dict(q=0), dict(q=0.3, gain=2.5, mu_min=0.25, tile=8),
                                      dict(q="sparse", sparse_noise=True, seed=99),
                                      dict(q=3, codec="zstd", level=-3, shuffle="bit", roi_snr=4.5, roi_margin=0,
                                           block_elems=1024)])
def test_settings_from_cd_values_round_trip(settings):
    s = CodecSettings(**settings)
    got = zarr_view.settings_from_cd_values(rr.Redml(**settings).filter_options)
    assert got == s
    with pytest.raises(ValueError, match="layout"):
        zarr_view.settings_from_cd_values((2, 0))
