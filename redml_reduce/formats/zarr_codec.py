"""The redml codec for zarr v3: an array-to-bytes codec (it needs the chunk's dtype and shape).

    import zarr
    from redml_reduce.formats.zarr_codec import RedmlZarrCodec
    a = zarr.create_array(store, shape=(n, h, w), chunks=(1, h, w), dtype="uint16",
                          serializer=RedmlZarrCodec(q=1), compressors=None)

Array metadata (zarr.json) names it through the `zarr.codecs` entry point:

    {"name": "redml_reduce.redml",
     "configuration": {"q": 1.0, "codec": "rans", ..., "max_error_sigmas": 0.5}}

Chunks are the bytes of redml_reduce.encode (and of the HDF5 filter, and of the numcodecs
codec `redml`) for the same frame and settings. A chunk holds one frame: chunk shape
(H, W) or (1, ..., 1, H, W). It replaces the `bytes` codec; no bytes-to-bytes compressor
is needed after it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from ..codec import SUPPORTED_DTYPES, CodecSettings, RedmlError, decode, encode, inspect
from .numcodecs_codec import frame_of, settings_from_config, settings_to_config, stated_bound

__all__ = ["RedmlZarrCodec", "ZARR_CODEC_NAME"]

ZARR_CODEC_NAME = "redml_reduce.redml"
"""The codec's name in zarr v3 metadata (and of its `zarr.codecs` entry point)."""


@dataclass(frozen=True)
class RedmlZarrCodec(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec `redml_reduce.redml`: one redml chunk per frame.

    Takes the keywords of redml_reduce.CodecSettings (q, codec, level, shuffle, recon, gain,
    mu_min, tile, roi_snr, roi_margin, seed, block_elems, sparse_noise) or
    settings=CodecSettings.
    """

    is_fixed_size = False

    settings: CodecSettings

    def __init__(self, *, settings: CodecSettings | None = None, **config) -> None:
        if settings is None:
            settings = settings_from_config(config)
        elif config:
            raise TypeError("give either settings= or configuration keywords, not both")
        object.__setattr__(self, "settings", settings)

    @property
    def max_error_sigmas(self):
        """Stated bound on background pixels in Poisson sigmas (None for sparse)."""
        return stated_bound(self.settings)

    @classmethod
    def from_dict(cls, data):
        _, config = parse_named_configuration(data, ZARR_CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self):
        return {"name": ZARR_CODEC_NAME, "configuration": settings_to_config(self.settings)}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if native.newbyteorder("=") not in SUPPORTED_DTYPES:
            raise TypeError(f"redml codes {', '.join(map(str, SUPPORTED_DTYPES))}, not {native}")
        chunk_shape = getattr(chunk_grid, "chunk_shape", None)
        if chunk_shape is not None:
            if len(chunk_shape) < 2 or any(n != 1 for n in chunk_shape[:-2]):
                raise ValueError(f"a redml chunk holds one frame: chunks must be (1, ..., 1, H, W), not {chunk_shape}")

    def _encode_sync(self, chunk_array, chunk_spec):
        frame = frame_of(chunk_array.as_numpy_array())
        chunk = encode(frame, settings=self.settings)
        return chunk_spec.prototype.buffer.from_bytes(chunk)

    def _decode_sync(self, chunk_bytes, chunk_spec):
        chunk = chunk_bytes.as_numpy_array()
        expected = chunk_spec.dtype.to_native_dtype()
        info = inspect(chunk)  # the header, against the array, before the frame is allocated
        if info["dtype"] != expected.newbyteorder("=") or tuple(info["shape"]) != tuple(chunk_spec.shape[-2:]):
            raise RedmlError(f"chunk holds a {tuple(info['shape'])} {info['dtype']} frame; the array expects "
                             f"chunks of {chunk_spec.shape} {expected}")
        frame = decode(chunk)
        out = frame.reshape(chunk_spec.shape)
        if out.dtype != expected:
            out = out.astype(expected)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        raise NotImplementedError("redml chunks have a variable size")
