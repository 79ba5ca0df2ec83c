"""Chunks and HDF5 files written by earlier releases still decode to exactly the same frames."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import check_backwards_compatibility

GOLDEN = sorted((Path(__file__).parent / "golden").glob("v*/*.rdml"))


def test_golden_files_exist():
    assert len(GOLDEN) >= 10


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_chunk_decodes_unchanged(path):
    chunk = path.read_bytes()
    expected = np.load(path.with_suffix(".decoded.npy"))
    frame = np.load(path.with_suffix(".input.npy"))
    info = rr.inspect(chunk)
    assert info["version"] == int(path.parent.name[1:])
    check_backwards_compatibility(rr.decode(chunk), expected, frame, [chunk], info["mode"] == "lossless")


GOLDEN_H5 = Path(__file__).parent / "golden" / "hdf5_v1" / "settings.h5"


def test_golden_hdf5_file_reads_unchanged():
    """An HDF5 file written through the filter by an earlier version: the same pixels (byte
    for byte where lossless), the same settings from its cd_values, and today's cd_values of
    those settings are still the ones in the file (the layout of existing slots is fixed)."""
    from redml_reduce.formats.numcodecs_codec import settings_from_config
    from redml_reduce.formats.zarr_view import open_view

    assert GOLDEN_H5.stat().st_size < 1 << 20
    modes = set()
    with h5py.File(GOLDEN_H5, "r") as f:
        assert len(f) >= 10
        for name, g in f.items():
            d, frames, expected = g["data"], g["input"][...], g["decoded"][...]
            settings = settings_from_config(json.loads(d.attrs["redml_settings"]))
            cd = d.id.get_create_plist().get_filter_by_id(rr.FILTER_ID)[1]
            assert rr.CodecSettings.from_cd_values(cd) == settings, name
            assert tuple(cd[:14]) == settings.cd_values() and tuple(cd[15:]) == frames.shape[1:], name
            chunks = [d.id.read_direct_chunk((i, 0, 0))[1] for i in range(len(frames))]
            check_backwards_compatibility(d[...], expected, frames, chunks, settings.mode == "lossless")
            check_backwards_compatibility(open_view(GOLDEN_H5, f"{name}/data")[...], expected)
            modes.add((settings.mode, settings.recon, settings.sparse_noise, settings.codec, settings.shuffle))
    assert {m[0] for m in modes} == {"lossless", "quantized", "sparse"}
    assert {m[1] for m in modes} == {"midpoint", "mean", "draw"} and {m[2] for m in modes} == {False, True}
    assert {m[3] for m in modes} == {"rans", "lz4", "zstd"} and {m[4] for m in modes} == {"none", "byte", "bit"}
