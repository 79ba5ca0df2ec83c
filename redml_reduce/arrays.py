"""Argument checks shared by the codec and the spot finder: frames, per-pixel maps, ranges,
and the command line's KEY=VALUE settings."""
from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np

__all__ = ["SUPPORTED_DTYPES", "as_frame", "as_map", "check_range", "key_values"]

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint16", "int16", "int32", "uint32", "float32"))


def check_range(name, value, lo, hi, integer=False, open_low=False):
    """Raises TypeError unless value is a number (an integer if integer), ValueError unless lo <= value <= hi
    (lo < value if open_low)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer) if integer else (int, float, np.integer,
                                                                                             np.floating)):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, not {type(value).__name__}")
    if math.isnan(value) or value < lo or value > hi or (open_low and value == lo):
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{lo}, {hi}], not {value!r}")


def as_frame(frame) -> np.ndarray:
    """A C-contiguous, native-byte-order 2-D frame of a supported dtype, or a clear error
    (other dtypes are refused, never cast silently)."""
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise ValueError(f"frame must be 2-D, got {arr.ndim} dimensions")
    if arr.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported dtype {arr.dtype}; use one of {', '.join(map(str, SUPPORTED_DTYPES))}")
    if arr.size == 0:
        raise ValueError("frame is empty")
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))


def as_map(a, shape, name) -> Optional[np.ndarray]:
    """A per-pixel boolean map of `shape` as the core takes it (uint8, C order), or None."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, the frame {shape}")
    if a.dtype == np.bool_:  # the core reads nonzero bytes as set: a bool map's bytes as they are, no copy
        return np.ascontiguousarray(a).view(np.uint8)
    return np.ascontiguousarray(a != 0).view(np.uint8)


def key_values(items, option: str = "--set") -> dict:
    """Settings given as KEY=VALUE strings (the command line's --set): JSON values (numbers,
    true/false) as such, anything else as a name (codec=zstd, markers=gaps)."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} takes KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
