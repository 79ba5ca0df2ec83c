"""Zero-copy zarr views of redml-compressed HDF5/NXmx files.

    from redml_reduce.formats.zarr_view import references, open_view
    refs = references("run.nxs")               # kerchunk references, JSON-safe
    arr = open_view("run.nxs")                  # a read-only zarr.Array on the same bytes
    frames = dask.array.from_zarr(arr)          # or to_dask("run.nxs")

Nothing is rewritten: HDF5 keeps one redml chunk per frame, and h5py's chunk index
(`dset.id.get_chunk_info(i)`) gives each chunk's byte offset and size in the file. The
references map every zarr chunk key to `[url, offset, size]` (the kerchunk reference format,
version 1) and the array metadata names the redml codec, so any zarr reader with
redml_reduce installed decodes the chunks the HDF5 filter would have decoded. kerchunk's
own HDF5 scanner refuses filters it does not know (and bitshuffle-LZ4, filter 32008): these
references are built here, from the chunk index, for redml chunks only.

zarr_format=2 writes `.zarray` with the numcodecs codec `redml` as compressor (readable by
zarr-python 2 and 3); zarr_format=3 writes `zarr.json` with the array-to-bytes codec
`redml_reduce.redml`. The array is at the root of the reference store.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from ..codec import SUPPORTED_DTYPES, CodecSettings
from .h5filter import FILTER_ID
from .numcodecs_codec import CODEC_ID, settings_to_config
from .zarr_codec import ZARR_CODEC_NAME

__all__ = ["references", "write_references", "open_view", "to_dask", "settings_from_cd_values", "DEFAULT_DATASET"]

DEFAULT_DATASET = "entry/data/data"

def settings_from_cd_values(cd) -> CodecSettings:
    """The CodecSettings a redml filter pipeline entry was created with (docs/format.md,
    'HDF5 filter'); missing trailing values take their defaults."""
    return CodecSettings.from_cd_values(cd)


def _redml_dataset(f: h5py.File, dataset: str) -> h5py.Dataset:
    if dataset not in f:
        raise KeyError(f"{f.filename} has no dataset {dataset!r}")
    dset = f[dataset]
    if not isinstance(dset, h5py.Dataset):
        raise ValueError(f"{f.filename}:{dataset} is a {type(dset).__name__}, not a dataset")
    if dset.is_virtual:
        raise ValueError(f"{f.filename}:{dataset} is a virtual dataset: open its source datasets instead")
    if dset.chunks is None or dset.ndim < 2 or any(n != 1 for n in dset.chunks[:-2]) \
            or dset.chunks[-2:] != dset.shape[-2:]:
        raise ValueError(f"{f.filename}:{dataset} has chunks {dset.chunks}: a zero-copy view needs one frame "
                         f"per chunk, (1, ..., 1, H, W) with the frame shape {dset.shape[-2:]}")
    filters = list(dset._filters)  # h5py names known filters ("gzip") and numbers the others ("310")
    if filters != [str(FILTER_ID)]:
        raise ValueError(f"{f.filename}:{dataset} uses filters {filters}; a zero-copy view needs redml chunks "
                         f"(filter {FILTER_ID} alone): recompress it first (redml recompress)")
    if dset.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise TypeError(f"{f.filename}:{dataset} has dtype {dset.dtype}, which redml does not code")
    return dset


def _json_attr(value):
    """An HDF5 attribute as a JSON value, or None when it has no JSON form."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return _json_attr(value.item())
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufSUO" and value.size <= 1024:
        items = [_json_attr(v) for v in value.ravel()]
        return None if any(i is None for i in items) else items
    return None


def _fill_value(dset):
    value = dset.fillvalue
    return float(value) if dset.dtype.kind == "f" else int(value)


def references(path, dataset: str = DEFAULT_DATASET, *, zarr_format: int = 2, url: str | None = None) -> dict:
    """Kerchunk references (version 1) for one redml-compressed HDF5 dataset.

    url: what the references point at (default: the absolute path of the file that holds
    the dataset, which is not `path` when it is reached through an external link); give an
    s3:// or https:// address when the file will be read from there.
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {zarr_format!r}")
    with h5py.File(path, "r") as f:
        dset = _redml_dataset(f, dataset)
        target = url or os.path.abspath(dset.file.filename)
        settings = settings_from_cd_values(dset._filters[str(FILTER_ID)])
        shape, chunks, dtype = list(dset.shape), list(dset.chunks), dset.dtype
        attrs = {k: v for k, v in ((k, _json_attr(a)) for k, a in dset.attrs.items()) if v is not None}
        fill = _fill_value(dset)
        chunk_refs = {}
        for i in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(i)
            if info.filter_mask != 0:
                raise ValueError(f"{path}:{dataset} chunk at {info.chunk_offset} was stored without the redml "
                                 f"filter (filter mask {info.filter_mask}): it is not a redml chunk")
            key = tuple(o // c for o, c in zip(info.chunk_offset, chunks))
            chunk_refs[key] = [target, int(info.byte_offset), int(info.size)]
    refs = {}
    if zarr_format == 2:
        refs[".zarray"] = json.dumps({
            "zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype.str, "fill_value": fill,
            "order": "C", "filters": None, "dimension_separator": ".",
            "compressor": {"id": CODEC_ID, **settings_to_config(settings)}})
        refs[".zattrs"] = json.dumps(attrs)
        for key, ref in chunk_refs.items():
            refs[".".join(map(str, key))] = ref
    else:
        refs["zarr.json"] = json.dumps({
            "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype.newbyteorder("=").name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": [{"name": ZARR_CODEC_NAME, "configuration": settings_to_config(settings)}],
            "attributes": attrs})
        for key, ref in chunk_refs.items():
            refs["c/" + "/".join(map(str, key))] = ref
    return {"version": 1, "refs": refs}


def write_references(path, out, dataset: str = DEFAULT_DATASET, **kwargs) -> dict:
    """Writes references(path, dataset, ...) to the JSON file `out`; returns them."""
    refs = references(path, dataset, **kwargs)
    with open(out, "w") as fh:
        json.dump(refs, fh)
    return refs


def open_view(source, dataset: str = DEFAULT_DATASET, *, zarr_format: int = 2, remote_options=None):
    """A read-only zarr.Array over the redml chunks of an HDF5 dataset.

    source: an HDF5 file (references are built from its chunk index), a references dict,
    or a references .json file (as written by write_references).
    """
    import zarr
    from kerchunk.utils import refs_as_store

    if isinstance(source, dict):
        refs = source
    elif str(source).endswith(".json"):
        with open(source) as fh:
            refs = json.load(fh)
    else:
        refs = references(source, dataset, zarr_format=zarr_format)
    fmt = 3 if "zarr.json" in refs.get("refs", refs) else 2
    store = refs_as_store(refs, read_only=True, remote_protocol=_protocol_of(refs),
                          remote_options=dict(remote_options or {}))
    return zarr.open_array(store, mode="r", zarr_format=fmt)


def to_dask(source, dataset: str = DEFAULT_DATASET, **kwargs):
    """The view as a dask array, one dask chunk per frame."""
    import dask.array as da

    return da.from_zarr(open_view(source, dataset, **kwargs))


def _protocol_of(refs) -> str:
    for value in refs.get("refs", refs).values():
        if isinstance(value, list) and value and isinstance(value[0], str):
            head, sep, _ = value[0].partition("://")
            return head if sep else "file"
    return "file"
