"""The rANS block stream: the core's own decoder of the 32-state rANS streams (portable,
AVX2 and AVX-512 builds) returns what htscodecs' decoder returned, and the encoder's bytes
stay those of the releases before it.

The frames are integer hashes (no floating point, no numpy random stream), so the stored
digests hold on any machine. The digests were taken with the build that decoded every
stream with htscodecs (before the core had its own decoder)."""
import hashlib

import numpy as np
import pytest

import redml_reduce as rr
from redml_reduce import _core
from chunkforge import CODES, VALUES, Chunk

BUILDS = {"portable": 1, "avx2": 2, "avx512": 3, "best": 0}


def hashes(n: int, seed: int) -> np.ndarray:
    """n 64-bit hashes (splitmix64 of the index and seed)."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ones(words: np.ndarray) -> np.ndarray:
    """Set bits of each 64-bit word."""
    return np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1, dtype=np.int64)


def frame(kind: str, shape=(300, 1030)) -> np.ndarray:
    """Poisson-like backgrounds (sums of bits: binomial counts) with bright pixels, or
    16-bit noise and float bits (every byte plane coded)."""
    n = shape[0] * shape[1]
    h, h2 = hashes(n, 1), hashes(n, 2)
    if kind == "u16_one":  # mean 1: Binomial(4, 1/4)
        v = ones(h & (h >> np.uint64(8)) & np.uint64(0xF))
    elif kind == "u16_low":  # mean 1/16
        v = ones(h & (h >> np.uint64(8)) & (h >> np.uint64(16)) & (h >> np.uint64(24)) & np.uint64(0xF))
    elif kind == "i32_bright":  # mean 64: Binomial(128, 1/2)
        v = ones(h) + ones(h2)
    elif kind == "i32_noise":  # uniform 16-bit values: two byte planes of noise
        v = (h >> np.uint64(48)).astype(np.int64)
    else:  # f32: the float bits of counts around 50
        v = ones(h) + ones(h2) - 14
    spots = (h2 >> np.uint64(54)) == 0  # 1 in 1024 pixels
    v = np.where(spots, 200 + (h2 & np.uint64(0xFFF)).astype(np.int64), v)
    dtype = {"u16": np.uint16, "i32": np.int32, "f32": np.float32}[kind[:3]]
    return v.astype(dtype).reshape(shape)


# (frame, settings): the chunk's sha256 and the decoded frame's (first 16 hex digits). The sparse
# entries were rewritten when sparse mode changed (its model rounded to its standard error, the
# smaller of rANS and zstd kept); every other entry is the encoder's before the core coded rANS.
REFERENCE = {
    ('u16_one', 'q0'): ('2b82e2ca74996e09', 'cf862fa127627109'),
    ('u16_one', 'q1'): ('fa195f06ef5aa71d', 'cf862fa127627109'),
    ('u16_one', 'q2'): ('79f7d2984b4ec9d1', 'cf862fa127627109'),
    ('u16_one', 'sparse'): ('32c058e47c8bb057', '467728046e0a4fac'),
    ('u16_one', 'q0_small_blocks'): ('fc3870bebf185bba', 'cf862fa127627109'),
    ('u16_one', 'q0_tiny_blocks'): ('263dc9ec4bad7e77', 'cf862fa127627109'),
    ('u16_low', 'q0'): ('503f4579fb9e13da', '10dae05713b23ec1'),
    ('u16_low', 'q1'): ('f0afa11a185168e6', '10dae05713b23ec1'),
    ('u16_low', 'q2'): ('c8f9aa657652ff53', '10dae05713b23ec1'),
    ('u16_low', 'sparse'): ('84b6f2598ba5e3e0', 'c240966ca8331e4b'),
    ('u16_low', 'q0_small_blocks'): ('50ba8a1e26a881b9', '10dae05713b23ec1'),
    ('u16_low', 'q0_tiny_blocks'): ('b09bf15942c41365', '10dae05713b23ec1'),
    ('i32_bright', 'q0'): ('64ecaddcc817d678', '598f26c3c5f04d15'),
    ('i32_bright', 'q1'): ('d3087aac3d4c3a71', 'c5444b7df22d297f'),
    ('i32_bright', 'q2'): ('df85b3abe59f59d2', '8da71bbf4cc2999b'),
    ('i32_bright', 'sparse'): ('631c7fd40a778740', '3d484d3d16d8f175'),
    ('i32_bright', 'q0_small_blocks'): ('02969960d87cf1ca', '598f26c3c5f04d15'),
    ('i32_bright', 'q0_tiny_blocks'): ('a2eb008ea2814fb2', '598f26c3c5f04d15'),
    ('i32_noise', 'q0'): ('031fd265880f6c5e', '77d14d5ce5b7592c'),
    ('i32_noise', 'q1'): ('353d20939d814585', '77d14d5ce5b7592c'),
    ('i32_noise', 'q2'): ('fac3f5aec2325052', '77d14d5ce5b7592c'),
    ('i32_noise', 'sparse'): ('bd98354a6d0af1d9', '77d14d5ce5b7592c'),
    ('i32_noise', 'q0_small_blocks'): ('749b0f7950b7379c', '77d14d5ce5b7592c'),
    ('i32_noise', 'q0_tiny_blocks'): ('327ce19dfbfb6b56', '77d14d5ce5b7592c'),
    ('f32_counts', 'q0'): ('6d7208d1bc08f1d0', 'b6c6db99279993d7'),
    ('f32_counts', 'q1'): ('d60acb28d97178b7', 'f73dc878d08f4cee'),
    ('f32_counts', 'q2'): ('4754423c7bb8218e', '47b5359a1b56dbc3'),
    ('f32_counts', 'sparse'): ('24f4226def898b47', 'e1fe371a8f4241a0'),
    ('f32_counts', 'q0_small_blocks'): ('65d8005dd19f9612', 'b6c6db99279993d7'),
    ('f32_counts', 'q0_tiny_blocks'): ('e8f401645579ac4d', 'b6c6db99279993d7'),
}
SETTINGS = {
    "q0": dict(q=0),
    "q1": dict(q=1),
    "q2": dict(q=2),
    "sparse": dict(q="sparse", sparse_noise=False),  # the chunks as first written
    "q0_small_blocks": dict(q=0, block_elems=4104),  # tails of every length, 4-way streams
    "q0_tiny_blocks": dict(q=0, block_elems=256),  # planes under 1000 bytes: htscodecs' 4-way form
}
KINDS = ["u16_one", "u16_low", "i32_bright", "i32_noise", "f32_counts"]


def digest(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()[:16]


def decode_with(build: int, chunk: bytes) -> np.ndarray:
    _core._rans_force_simd(build)
    try:
        return rr.decode(chunk, nthreads=1)
    finally:
        _core._rans_force_simd(0)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_chunks_and_pixels_unchanged_on_every_build(kind, setting):
    """The encoder writes the bytes it wrote before the core decoded rANS itself, and every
    build of the decoder returns the frame htscodecs returned (lossless: the frame)."""
    f = frame(kind)
    chunk = rr.encode(f, nthreads=1, **SETTINGS[setting])
    want_chunk, want_pixels = REFERENCE[(kind, setting)]
    assert digest(chunk) == want_chunk
    for name, build in BUILDS.items():
        out = decode_with(build, chunk)
        assert digest(out.tobytes()) == want_pixels, name
        if SETTINGS[setting]["q"] == 0:
            assert out.dtype == f.dtype and out.tobytes() == f.tobytes(), name


def corrupted(chunk: bytes, seed: int) -> bytes:
    """The chunk with 8 bytes of its largest pixel section's rANS data changed, checksums
    repaired."""
    c = Chunk.parse(chunk)
    sec = max((s for s in c.sections if s.type in (VALUES, CODES)), key=lambda s: len(s.data))
    data = bytearray(sec.data)
    start = 4 + 4 * int.from_bytes(data[:4], "little") + 4  # the first block's first plane stream
    for h in hashes(8, seed).tolist():
        data[start + h % (len(data) - start)] ^= 1 + (h >> 56) % 255
    sec.data = bytes(data)
    return c.build()


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_rans_streams_fail_alike_on_every_build(seed):
    """A stream changed inside (its checksum repaired): a RedmlError or a frame, the same on
    every build, never a crash or a read past the stream."""
    chunk = rr.encode(frame("i32_noise"), q=0, nthreads=1)
    bad = corrupted(chunk, seed)
    outcomes = []
    for build in BUILDS.values():
        try:
            outcomes.append(digest(decode_with(build, bad).tobytes()))
        except rr.RedmlError as e:
            outcomes.append(str(e))
    assert len(set(outcomes)) == 1, outcomes
