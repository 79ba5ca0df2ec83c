"""Chunks written by earlier releases still decode to exactly the same frames."""
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr

GOLDEN = sorted((Path(__file__).parent / "golden").glob("v*/*.rdml"))


def test_golden_files_exist():
    assert len(GOLDEN) >= 10


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_chunk_decodes_unchanged(path):
    chunk = path.read_bytes()
    expected = np.load(path.with_suffix(".decoded.npy"))
    frame = np.load(path.with_suffix(".input.npy"))
    back = rr.decode(chunk)
    assert back.dtype == expected.dtype and back.tobytes() == expected.tobytes()
    info = rr.inspect(chunk)
    assert info["version"] == int(path.parent.name[1:])
    exact = rr.exact_mask(chunk)
    assert np.array_equal(back[exact].view(np.uint8), frame[exact].view(np.uint8))
    if info["mode"] == "lossless":
        assert back.tobytes() == frame.tobytes()
