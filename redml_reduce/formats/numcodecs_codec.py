"""The redml codec for numcodecs (zarr v2 compressors, kerchunk references, xarray).

    import numcodecs
    codec = numcodecs.get_codec({"id": "redml", "q": 1.0})     # found through the entry point
    chunk = codec.encode(frame)            # the bytes the HDF5 filter stores for this frame
    frame = codec.decode(chunk)

One format, one core: `encode` returns exactly `redml_reduce.encode(frame, **settings)`,
which is what the HDF5 filter (id 310) writes for a chunk (1, H, W) with the same settings,
so chunks move between HDF5 files, zarr stores and kerchunk references without re-encoding.

A chunk must hold one frame: an array of shape (H, W) or (1, ..., 1, H, W). `decode`
needs no configuration (a redml chunk describes itself). The configuration states the error
bound of lossy settings (`max_error_sigmas`, see docs/format.md "zarr and numcodecs").
"""
from __future__ import annotations

import math

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy

from ..codec import CodecSettings, decode, encode

__all__ = ["RedmlCodec", "CODEC_ID", "settings_to_config", "settings_from_config", "stated_bound", "frame_of"]

CODEC_ID = "redml"

_BOUND_KEY = "max_error_sigmas"


def stated_bound(settings: CodecSettings):
    """The bound these settings guarantee on every background pixel, in Poisson sigmas of
    its tile (sigma = gain*sqrt(max(mean/gain, mu_min))): 0 lossless, q/2 quantized, None
    for sparse (background replaced by its model: no per-pixel bound). ROI, masked and
    special pixels are exact in every mode."""
    mode = settings.mode
    if mode == "lossless":
        return 0.0
    if mode == "quantized":
        return settings.q_value / 2
    return None


def settings_to_config(settings: CodecSettings) -> dict:
    """JSON-safe configuration (no id or name) of the settings, with the stated bound."""
    return {**settings.to_config(), _BOUND_KEY: stated_bound(settings)}


def settings_from_config(config: dict) -> CodecSettings:
    """CodecSettings from a configuration (settings_to_config's output, or any subset of
    its keys: missing ones take their defaults). A stated bound that the settings do not
    imply, or an unknown key, is refused."""
    settings = CodecSettings.from_config(config, ignore=(_BOUND_KEY,))
    if _BOUND_KEY in config:
        stated, implied = config[_BOUND_KEY], stated_bound(settings)
        if (stated is None) != (implied is None) or (
                stated is not None and not (isinstance(stated, (int, float)) and math.isclose(stated, implied))):
            raise ValueError(f"configuration states {_BOUND_KEY}={stated!r} but q={settings.q!r} implies {implied!r}")
    return settings


def frame_of(buf) -> np.ndarray:
    """The 2-D frame held by one chunk array: shape (H, W) or (1, ..., 1, H, W)."""
    arr = np.asarray(buf)
    if arr.dtype == object:
        raise TypeError("redml encodes numeric frames, not object arrays")
    if arr.ndim < 2:
        raise ValueError(f"redml encodes one 2-D frame per chunk and needs its shape: got a {arr.ndim}-D buffer "
                         "(pass the chunk as an array of shape (H, W) or (1, H, W))")
    if any(n != 1 for n in arr.shape[:-2]):
        raise ValueError(f"a redml chunk holds one frame: chunk shape must be (1, ..., 1, H, W), not {arr.shape}")
    return arr.reshape(arr.shape[-2:])


class RedmlCodec(Codec):
    """numcodecs codec `redml`: one 2-D diffraction frame per chunk (docs/format.md).

    q: 0 lossless; > 0 background within q*sigma/2 (unbiased); "sparse". Other keywords:
    the fields of redml_reduce.CodecSettings (codec, level, shuffle, recon, gain, mu_min,
    tile, roi_snr, roi_margin, seed, block_elems, sparse_noise). max_error_sigmas: optional; if
    given it must match what q implies (configurations carry it so that readers see the
    bound).
    """

    codec_id = CODEC_ID

    def __init__(self, q=0.0, **config):
        self.settings = settings_from_config({"q": q, **config})

    def encode(self, buf) -> bytes:
        return encode(frame_of(buf), settings=self.settings)

    def decode(self, buf, out=None):
        chunk = ensure_contiguous_ndarray(buf).view(np.uint8).reshape(-1)
        frame = decode(chunk)
        if out is not None:
            return ndarray_copy(frame, out)
        return frame

    def get_config(self) -> dict:
        return {"id": self.codec_id, **settings_to_config(self.settings)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("id", None)
        return cls(**config)

    def __repr__(self) -> str:
        config = settings_to_config(self.settings)
        defaults = settings_to_config(CodecSettings(q=self.settings.q))
        shown = [f"q={config['q']!r}"] + [f"{k}={v!r}" for k, v in config.items()
                                          if k not in ("q", _BOUND_KEY) and v != defaults[k]]
        return f"RedmlCodec({', '.join(shown)})"
