"""The encoder writes the same chunks, byte for byte, as the encoder that wrote
tests/golden/encode_v1/digests.json (tests/golden/make_encode_digests.py): photon counts of every
pixel type at several levels (spots, hot pixels, a mask), integrating ADU with read noise, the
thaumatin stills; lossless, quantized (midpoint, mean, draw) and sparse; one thread and several.
Its faster forms (step-1 spans, 32-bit lanes for 16-bit tiles, clipping passes) must not change
a byte."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import make_encode_digests as golden  # noqa: E402

DIGESTS = json.loads(golden.OUT.read_text())
CASES = {name: (frame, kw) for name, frame, kw in golden.cases()}


def test_every_case_has_its_digest():
    names = set(CASES) | {name for name, _, _ in golden.thaumatin_cases()}
    assert names == set(DIGESTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunk_bytes(name):
    frame, kw = CASES[name]
    for key, digest in DIGESTS[name].items():
        assert golden.chunk_digest(frame, kw, int(key[2:])) == digest, key


@pytest.mark.parametrize("name", sorted(n for n in DIGESTS if n.startswith("thau_")))
def test_thaumatin_chunk_bytes(name):
    frame, kw = next((f, k) for n, f, k in golden.thaumatin_cases() if n == name)
    for key, digest in DIGESTS[name].items():
        assert golden.chunk_digest(frame, kw, int(key[2:])) == digest, key


@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_lossless_full_range_16bit(dtype):
    """16-bit residuals that overflow 16 bits (full-range values against their tile's
    prediction) take the encoder's exact path and decode to the same values."""
    import numpy as np

    import redml_reduce as rr

    info = np.iinfo(dtype)
    for seed in range(290, 300):
        rng = np.random.default_rng(seed)
        for shape in ((41, 1), (97, 89)):
            frame = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
            for nt in (1, 2):
                back = rr.codec.decode(rr.codec.encode(frame, 0, nthreads=nt))
                assert np.array_equal(back, frame), (seed, shape, nt)
