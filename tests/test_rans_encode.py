"""The core's own rANS encoder writes, byte for byte, what htscodecs' rans_compress_to_4x16
(order 0, 32 states: the form of every plane over 1000 bytes) writes, on every build
(portable, AVX2, AVX-512), and htscodecs decodes it.

htscodecs is called through ctypes (the library the core links)."""
import ctypes
import ctypes.util

import numpy as np
import pytest

from redml_reduce import _core

RANS_ORDER_X32 = 0x04
BUILDS = {"portable": 1, "avx2": 2, "avx512": 3, "best": 0}

_lib = ctypes.CDLL(ctypes.util.find_library("htscodecs") or "libhtscodecs.so.2")
_lib.rans_compress_bound_4x16.restype = ctypes.c_uint
_lib.rans_compress_bound_4x16.argtypes = [ctypes.c_uint, ctypes.c_int]
_lib.rans_compress_to_4x16.restype = ctypes.c_void_p
_lib.rans_compress_to_4x16.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p,
                                       ctypes.POINTER(ctypes.c_uint), ctypes.c_int]
_lib.rans_uncompress_to_4x16.restype = ctypes.c_void_p
_lib.rans_uncompress_to_4x16.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p,
                                         ctypes.POINTER(ctypes.c_uint)]


def library_encode(plane: bytes) -> bytes:
    cap = _lib.rans_compress_bound_4x16(len(plane), RANS_ORDER_X32)
    out = ctypes.create_string_buffer(cap)
    size = ctypes.c_uint(cap)
    assert _lib.rans_compress_to_4x16(plane, len(plane), out, ctypes.byref(size), RANS_ORDER_X32)
    return out.raw[:size.value]


def library_decode(stream: bytes, n: int) -> bytes:
    out = ctypes.create_string_buffer(n)
    size = ctypes.c_uint(n)
    assert _lib.rans_uncompress_to_4x16(stream, len(stream), out, ctypes.byref(size))
    assert size.value == n
    return out.raw


def ours(p: bytes, build: int) -> bytes:
    _core._rans_force_simd(build)
    try:
        return _core._rans_encode(p)
    finally:
        _core._rans_force_simd(0)


def plane(kind: str, n: int, seed: int) -> bytes:
    """n bytes of one of the distributions the coder meets (or its edge cases)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":  # incompressible: the stored form
        v = rng.integers(0, 256, n)
    elif kind == "poisson1":  # the low bytes of small codes: symbols below 16, permuted lookups
        v = np.minimum(rng.poisson(1.0, n), 255)
    elif kind == "poisson20":  # symbols 5..40: AVX-512 permutes, AVX2 gathers
        v = np.minimum(rng.poisson(20.0, n), 255)
    elif kind == "geometric":  # a long tail over the whole byte range
        v = np.minimum(rng.geometric(0.03, n), 255)
    elif kind == "high_symbols":  # few symbols, all large (gathers)
        v = 200 + rng.integers(0, 4, n)
    elif kind == "rare":  # nearly all zero: frequency-1 symbols after scaling
        v = np.where(rng.random(n) < 0.001, rng.integers(1, 256, n), 0)
    elif kind == "single":  # one symbol: frequency 4096, the states never move
        v = np.full(n, 77)
    elif kind == "single_but_one":
        v = np.full(n, 3)
        v[n // 3] = 250
    elif kind == "all256":  # every symbol, runs of the alphabet
        v = np.arange(n) % 256
    elif kind == "all256_skewed":  # every symbol once or more, one dominant
        v = np.zeros(n, dtype=np.int64)
        v[:256] = np.arange(256)
        v = rng.permutation(v)
    else:  # two symbols, the alphabet's run coding: 0 and 1
        v = rng.integers(0, 2, n)
    return v.astype(np.uint8).tobytes()


KINDS = ["uniform", "poisson1", "poisson20", "geometric", "high_symbols", "rare", "single",
         "single_but_one", "all256", "all256_skewed", "binary"]
LENGTHS = [1001, 1002, 1023, 1024, 1025, 1055, 2047, 2048, 2049, 4095, 4096, 4097, 65536 + 17,
           262144, 1 << 20]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("kind", KINDS)
def test_encoder_writes_the_library_stream(kind, build):
    """Every length (tails of every size mod 32, tables scaled to 1024, 2048 and 4096) and
    distribution: the library's bytes exactly, decodable by the library."""
    for i, n in enumerate(LENGTHS):
        p = plane(kind, n, seed=i)
        want = library_encode(p)
        got = ours(p, BUILDS[build])
        assert got == want, (kind, n)
        assert library_decode(got, n) == p


def test_short_plane_is_an_error():
    """Planes up to 1000 bytes take htscodecs' 4-state form, not this coder's."""
    with pytest.raises(RuntimeError):
        _core._rans_encode(plane("poisson1", 1000, 0))


def test_huge_plane_is_the_library_stream():
    """A plane past what a thread keeps between calls (its word buffer is released once the
    stream is written, not before)."""
    p = plane("geometric", 40 << 20, seed=3)
    assert ours(p, 0) == library_encode(p)
