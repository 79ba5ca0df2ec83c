"""Bad input gives clear exceptions; corrupt chunks never decode into garbage."""
import ctypes
import ctypes.util
import math
import struct

import numpy as np
import pytest

import redml_reduce as rr
from helpers import poisson_frame


@pytest.mark.parametrize("dtype", ["float64", "int8", "uint8", "bool", "int64", "complex64"])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match="unsupported dtype"):
        rr.encode(np.zeros((4, 4), dtype=dtype))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match="2-D"):
        rr.encode(np.zeros(shape, dtype=np.uint16))


def test_empty_frame():
    with pytest.raises(ValueError, match="empty"):
        rr.encode(np.zeros((0, 5), dtype=np.uint16))


@pytest.mark.parametrize("q", [math.nan, -1.0, "fast", None, True, 1e7])
def test_bad_q(q):
    with pytest.raises((TypeError, ValueError), match="q"):
        rr.encode(np.zeros((4, 4), dtype=np.uint16), q)


@pytest.mark.parametrize(
    "kw",
    [dict(codec="gzip"), dict(shuffle="word"), dict(gain=0.0), dict(gain=math.nan), dict(mu_min=-1.0),
     dict(tile=0), dict(tile=70000), dict(level=99), dict(roi_snr=0), dict(block_elems=100),
     dict(block_elems=1001), dict(seed=-1), dict(codec="rans", shuffle="bit"), dict(nthreads=-2)],
)
def test_bad_settings(kw):
    with pytest.raises((TypeError, ValueError)):
        rr.encode(np.zeros((4, 4), dtype=np.uint16), 1.0, **kw)


def test_bad_maps():
    frame = np.zeros((4, 4), dtype=np.uint16)
    with pytest.raises(ValueError, match="roi"):
        rr.encode(frame, 1.0, roi=np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="mask"):
        rr.encode(frame, 1.0, mask=np.zeros((3, 4), bool))


@pytest.fixture(scope="module")
def chunks():
    rng = np.random.default_rng(7)
    frame = poisson_frame(rng, 30.0, (40, 52), "uint16", spots=3)
    return {q: rr.encode(frame, q, tile=16, block_elems=256) for q in (0, 2.0, "sparse")}


def test_truncated_chunks_raise(chunks):
    for chunk in chunks.values():
        for n in range(len(chunk)):
            with pytest.raises(rr.RedmlError):
                rr.decode(chunk[:n])


def test_every_bit_flip_detected(chunks):
    for chunk in chunks.values():
        for pos in range(len(chunk)):
            bad = bytearray(chunk)
            bad[pos] ^= 1 << (pos % 8)
            with pytest.raises(rr.RedmlError):
                rr.decode(bytes(bad))


def test_trailing_bytes_rejected(chunks):
    with pytest.raises(rr.RedmlError, match="trailing"):
        rr.decode(chunks[0] + b"\0")


def test_random_bytes_rejected():
    rng = np.random.default_rng(3)
    for n in (0, 1, 10, 100, 5000):
        with pytest.raises(rr.RedmlError):
            rr.decode(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    with pytest.raises(rr.RedmlError, match="magic"):
        rr.decode(b"RDMX" + bytes(200))


def test_newer_version_refused(chunks):
    bad = bytearray(chunks[0])
    bad[4] = 2
    with pytest.raises(rr.RedmlError, match="newer"):
        rr.decode(bytes(bad))


def test_wrong_type_for_chunk():
    with pytest.raises(TypeError):
        rr.decode("not bytes")




def _rehash_header(chunk: bytearray):
    """Recomputes the header checksum (XXH3-64, docs/format.md) after a forged edit."""
    nsec = chunk[9]
    hsize = 56 + 32 * nsec + 8
    lib = ctypes.CDLL(ctypes.util.find_library("xxhash"))
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    chunk[hsize - 8 : hsize] = struct.pack("<Q", lib.XXH3_64bits(bytes(chunk[: hsize - 8]), hsize - 8))
    return bytes(chunk)


@pytest.mark.parametrize("h,w", [(1 << 20, 1 << 20), (1 << 14, 1 << 13), (40, 53), (0, 52)])
def test_forged_shape_with_valid_checksum(chunks, h, w):
    for chunk in chunks.values():
        bad = bytearray(chunk)
        bad[12:16] = struct.pack("<I", h)
        bad[16:20] = struct.pack("<I", w)
        with pytest.raises(rr.RedmlError):
            rr.decode(_rehash_header(bad))


def test_forged_fields_with_valid_checksum(chunks):
    chunk = chunks[2.0]
    for off, fmt, val in [(5, "<B", 9), (6, "<B", 7), (7, "<B", 0), (8, "<B", 5), (10, "<H", 0),
                          (20, "<f", math.nan), (24, "<f", -1.0), (36, "<I", 16), (40, "<Q", 10**12),
                          (52, "<I", 1)]:
        bad = bytearray(chunk)
        bad[off : off + struct.calcsize(fmt)] = struct.pack(fmt, val)
        with pytest.raises(rr.RedmlError):
            rr.decode(_rehash_header(bad))
