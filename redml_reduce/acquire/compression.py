"""Compressed frames of the detector stream (tag 56500: ["bslz4", element size, bytes] or
["lz4", 0, bytes], HDF5 filter framing: a big-endian uint64 uncompressed size first).

decompress() uses dectris-compression, the DECTRIS reference decoder (it releases the GIL),
and falls back on HDF5's bitshuffle/LZ4 filters from hdf5plugin through an in-memory HDF5
file; compress() makes the same framing with hdf5plugin's filters. The declared size is
checked against what the array needs before anything is decompressed.
"""
from __future__ import annotations

import threading
import uuid

import numpy as np

from .errors import StreamError

__all__ = ["ALGORITHMS", "declared_size", "decompress", "compress"]

ALGORITHMS = ("bslz4", "lz4")

def declared_size(payload: bytes) -> int:
    """Uncompressed size in the HDF5 framing shared by bslz4 and lz4 (big-endian uint64)."""
    if len(payload) < 12:
        raise StreamError(f"compressed data of {len(payload)} bytes is shorter than its 12-byte header")
    return int.from_bytes(payload[:8], "big")


def decompress(payload: bytes, algorithm: str, elem_size: int, expected_nbytes: int) -> bytes:
    """Decompresses a tag-56500 byte string whose header must declare expected_nbytes."""
    if algorithm not in ALGORITHMS:
        raise StreamError(f"unknown compression {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    declared = declared_size(payload)
    if declared != expected_nbytes:
        raise StreamError(f"compressed data declares {declared} bytes, the array needs {expected_nbytes}")
    try:
        from dectris.compression import decompress as _dectris
    except ImportError:
        out = _decompress_h5(payload, algorithm, elem_size, expected_nbytes)
    else:
        try:
            out = _dectris(bytes(payload), algorithm, elem_size=int(elem_size))
        except (ValueError, RuntimeError) as e:
            raise StreamError(f"{algorithm} data cannot be decompressed: {e}") from None
    if len(out) != expected_nbytes:
        raise StreamError(f"{algorithm} data decompressed to {len(out)} bytes, expected {expected_nbytes}")
    return out


_h5_lock = threading.Lock()


def _h5_dataset(f, algorithm: str, elem_size: int, nbytes: int):
    """A one-chunk dataset of nbytes with the bitshuffle-LZ4 or LZ4 filter (hdf5plugin)."""
    from ..formats.h5filter import load_hdf5plugin

    hdf5plugin = load_hdf5plugin()

    dtype = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}.get(int(elem_size))
    if dtype is None or nbytes % int(elem_size):
        raise StreamError(f"element size {elem_size} does not divide {nbytes} bytes")
    n = nbytes // int(elem_size)
    flt = hdf5plugin.Bitshuffle(cname="lz4") if algorithm == "bslz4" else hdf5plugin.LZ4()
    return f.create_dataset("x", shape=(n,), chunks=(n,), dtype=dtype, **flt)


def _decompress_h5(payload: bytes, algorithm: str, elem_size: int, nbytes: int) -> bytes:
    """The fallback decoder: HDF5's own filters (hdf5plugin) read the chunk back."""
    import h5py

    with _h5_lock, h5py.File(f"mem-{uuid.uuid4().hex}", "w", driver="core", backing_store=False) as f:
        d = _h5_dataset(f, algorithm, elem_size if algorithm == "bslz4" else 1, nbytes)
        d.id.write_direct_chunk((0,), bytes(payload))
        try:
            return d[...].tobytes()
        except OSError as e:
            raise StreamError(f"{algorithm} data cannot be decompressed: {e}") from None


def compress(array: np.ndarray, algorithm: str = "bslz4") -> bytes:
    """The tag-56500 byte string of an array: HDF5 framing, made by hdf5plugin's filters."""
    import h5py

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    a = np.ascontiguousarray(array)
    raw = a.view(np.uint8).reshape(-1)
    elem = a.dtype.itemsize if algorithm == "bslz4" else 1
    with _h5_lock, h5py.File(f"mem-{uuid.uuid4().hex}", "w", driver="core", backing_store=False) as f:
        d = _h5_dataset(f, algorithm, elem, raw.size)
        d[...] = raw.view(d.dtype)
        return d.id.read_direct_chunk((0,))[1]
