"""Sparse mode's chunks: how they are stored (codec choice) and what they keep exactly."""
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
