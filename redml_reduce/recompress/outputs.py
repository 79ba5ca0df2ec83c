"""Outputs of a recompression: NXmx/HDF5 files or zarr v3 stores holding redml chunks.

Every writer takes the chunks already encoded (bytes, one per frame, in order) and stores
them as they are: direct chunk write into HDF5 (the filter's pipeline entry records the
settings, so any HDF5 reader with the plugin decodes them), or chunk files of a zarr v3
array whose codec is `redml_reduce.redml`.

- HDF5/NXmx input: everything but the image data is copied from the input file (groups,
  attributes, datasets, links: H5Ocopy), and the frames go to the input's image dataset
  path (`entry/data/data` for Eiger masters, whose `data_NNNNNN` links are replaced by it).
- Image files (CBF, SMV): an NXmx file written by redml_reduce.formats.nxmx.write_nxmx with the
  geometry of a Pilatus mini-CBF header when there is one, and every image file's name and
  full header kept in /entry/redml_source (nothing of the source is lost).

`write_decoded` goes the other way (redml decompress): a redml HDF5 file copied whole, its
redml datasets rewritten with bitshuffle-LZ4 or uncompressed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..codec import CodecSettings
from ..formats.h5filter import FILTER_ID, Redml
from ..formats.sources import Input, image_datasets

__all__ = ["NxmxWriter", "ZarrWriter", "open_writer", "output_chunks", "copy_hdf5_skeleton", "geometry_from_header",
           "output_path", "path_size", "path_digest", "redml_datasets", "write_decoded", "DECODED_CODECS"]

OUTPUT_SUFFIX = {"nxmx": ".nxs", "zarr": ".zarr"}
_STR = h5py.string_dtype()


def output_path(out_dir, inp: Input, fmt: str) -> Path:
    if fmt not in OUTPUT_SUFFIX:
        raise ValueError(f"output format must be one of {sorted(OUTPUT_SUFFIX)}, not {fmt!r}")
    return Path(out_dir) / (inp.name + OUTPUT_SUFFIX[fmt])


def path_size(path) -> int:
    """Bytes of a file, or of all files under a folder (a zarr store)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def path_digest(path) -> str:
    """Digest of an output's bytes: a file's, or a folder's files (their paths inside it and
    contents, in path order). Recorded in the manifest to tell a finished output intact."""
    p = Path(path)
    h = hashlib.blake2b(digest_size=16)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f"{f.relative_to(p).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _redml_kwargs(settings: CodecSettings):
    fields = dataclasses.asdict(settings)
    return Redml(**fields)


def _copy_attrs(src, dst):
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        value = src.attrs[name]
        if isinstance(value, h5py.Empty):
            dst.attrs.create(name, value)
        else:
            dst.attrs.create(name, value, shape=aid.shape, dtype=aid.dtype)


def copy_hdf5_skeleton(src: h5py.File, dst: h5py.File, skip) -> None:
    """Copies src into dst except the objects (or links) at the paths in `skip` (no
    leading slash). Groups on the way to a skipped path are recreated with their
    attributes; everything else is copied whole (H5Ocopy), links as links."""
    skip = {p.strip("/") for p in skip}
    ancestors = {"/".join(p.split("/")[:k]) for p in skip for k in range(1, p.count("/") + 1)}

    def walk(sgrp, dgrp, prefix):
        _copy_attrs(sgrp, dgrp)
        for name in sgrp:
            path = f"{prefix}{name}"
            if path in skip:
                continue
            link = sgrp.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dgrp[name] = h5py.SoftLink(link.path)
            elif isinstance(link, h5py.ExternalLink):
                dgrp[name] = h5py.ExternalLink(link.filename, link.path)
            elif path in ancestors:
                walk(sgrp[name], dgrp.create_group(name), path + "/")
            else:
                sgrp.copy(name, dgrp, name=name)

    walk(src, dst, "")


def geometry_from_header(header: dict):
    """redml_reduce BeamGeometry from a Pilatus mini-CBF header (fabio's header dict), or None
    when the header does not state it."""
    from ..background import BeamGeometry

    text = header.get("_array_data.header_contents", "")
    num = r"([-+0-9.eE]+)"

    def find(pattern):
        m = re.search(pattern, text)
        return tuple(float(g) for g in m.groups()) if m else None

    pixel = find(rf"Pixel_size\s+{num}\s*m\s*x\s*{num}\s*m")
    distance = find(rf"Detector_distance\s+{num}\s*m")
    wavelength = find(rf"Wavelength\s+{num}\s*A")
    beam = find(rf"Beam_xy\s*\(\s*{num}\s*,\s*{num}\s*\)\s*pixels")
    if not (pixel and distance and wavelength and beam):
        return None
    try:
        return BeamGeometry(beam_x=beam[0], beam_y=beam[1], distance_mm=distance[0] * 1000,
                        pixel_size_mm=pixel[0] * 1000, wavelength_a=wavelength[0])
    except ValueError:
        return None


def _header_value(header: dict, pattern: str):
    m = re.search(pattern, header.get("_array_data.header_contents", ""))
    return float(m.group(1)) if m else None


class NxmxWriter:
    """Writes one output HDF5/NXmx file at `path` (a temporary name: the caller renames it)."""

    def __init__(self, path, inp: Input, n_frames: int, frame_shape, dtype, settings: CodecSettings):
        self.path, self.input, self.n = str(path), inp, int(n_frames)
        self.shape, self.dtype = tuple(int(v) for v in frame_shape), np.dtype(dtype)
        self.settings = settings
        self.headers = []
        self._src = None
        self._file = h5py.File(self.path, "w")
        try:
            self.data_path = self._skeleton()
            self._dset = self._file.create_dataset(self.data_path, shape=(self.n, *self.shape), dtype=self.dtype,
                                                   chunks=(1, *self.shape), track_times=False,
                                                   **_redml_kwargs(settings))
            if self._source_attrs is not None:
                _copy_attrs(self._source_attrs, self._dset)
        except BaseException:
            self.close()
            raise

    def _skeleton(self) -> str:
        self._source_attrs = None
        if self.input.kind != "hdf5":
            return "entry/data/data"
        self._src = h5py.File(self.input.files[0], "r")
        names = image_datasets(self._src, self.input.dataset)
        copy_hdf5_skeleton(self._src, self._file, names)
        if len(names) == 1:
            self._source_attrs = self._src[names[0]]
            return names[0]
        # Eiger master: data_000001, ... become one dataset; their per-file attributes go.
        grp = self._file.require_group("entry/data")
        if "signal" not in grp.attrs:
            grp.attrs["signal"] = np.bytes_("data")
        return "entry/data/data"

    def write(self, i: int, chunk: bytes, header=None) -> None:
        self._dset.id.write_direct_chunk((i, 0, 0), chunk)
        if header is not None:
            self.headers.append(header)

    def finish(self) -> None:
        """Writes what follows the frames (image inputs: NXmx groups, source headers)."""
        if self.input.kind == "images":
            self._write_image_metadata()

    def _write_image_metadata(self):
        from ..formats.nxmx import write_nxmx

        first = json.loads(self.headers[0]) if self.headers else {}
        geometry = geometry_from_header(first)
        f = self._file
        if geometry is not None:
            cutoff = _header_value(first, r"Count_cutoff\s+(\d+)")
            exposure = _header_value(first, r"Exposure_time\s+([-+0-9.eE]+)\s*s")
            thickness = _header_value(first, r"thickness\s+([-+0-9.eE]+)\s*m")
            name = re.search(r"Detector:\s*([^,\n]+)", first.get("_array_data.header_contents", ""))
            extra = {"sensor_thickness_mm": thickness * 1000} if thickness else {}
            if name:
                extra["detector_name"] = name.group(1).strip()
            write_nxmx(f, geometry, self.shape, data_path="/" + self.data_path,
                       saturation_value=None if cutoff is None else int(cutoff), underload_value=0,
                       count_time_s=exposure, **extra)
        else:
            entry = f.require_group("entry")
            entry.attrs["NX_class"] = np.bytes_("NXentry")
            entry.create_dataset("definition", data=np.bytes_("NXmx"))
            f["entry/data"].attrs["NX_class"] = np.bytes_("NXdata")
            f["entry/data"].attrs["signal"] = np.bytes_("data")
        src = f.require_group("entry/redml_source")
        src.attrs["NX_class"] = np.bytes_("NXcollection")
        src.create_dataset("file_names", data=[os.path.basename(p) for p in self.input.files], dtype=_STR)
        src.create_dataset("headers", data=self.headers, dtype=_STR)

    def close(self) -> None:
        for attr in ("_file", "_src"):
            f = getattr(self, attr, None)
            if f is not None:
                f.close()
                setattr(self, attr, None)


@contextmanager
def output_chunks(path, fmt: str, data_path: str):
    """(frame count, reader i -> chunk bytes) of a written output, for verification."""
    path = Path(path)
    if fmt == "zarr":
        meta = json.loads((path / data_path / "zarr.json").read_text())
        yield int(meta["shape"][0]), lambda i: (path / data_path / "c" / str(i) / "0" / "0").read_bytes()
        return
    with h5py.File(path, "r") as f:
        d = f[data_path]
        if list(d._filters) != ["310"]:
            raise ValueError(f"{path}:{data_path} is not a redml dataset (filters {list(d._filters)})")
        if d.id.get_num_chunks() != d.shape[0]:
            raise ValueError(f"{path}: {d.id.get_num_chunks()} chunks stored for {d.shape[0]} frames")
        yield int(d.shape[0]), lambda i: bytes(d.id.read_direct_chunk((i, 0, 0))[1])


class ZarrWriter:
    """Writes one zarr v3 store at `path` (a temporary folder: the caller renames it): the
    array `data` (n, H, W), chunks (1, H, W), codec redml_reduce.redml; the source's file
    names (and image headers) as attributes of the root group."""

    def __init__(self, path, inp: Input, n_frames: int, frame_shape, dtype, settings: CodecSettings):
        import zarr

        from ..formats.zarr_codec import RedmlZarrCodec

        self.path, self.input, self.n = Path(path), inp, int(n_frames)
        self.headers = []
        if self.path.exists():
            shutil.rmtree(self.path)
        self._root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self._root.create_array("data", shape=(self.n, *frame_shape), chunks=(1, *frame_shape), dtype=np.dtype(dtype),
                                serializer=RedmlZarrCodec(settings=settings), compressors=None, fill_value=0)
        self.data_path = "data"
        self._chunks = self.path / "data" / "c"

    def write(self, i: int, chunk: bytes, header=None) -> None:
        d = self._chunks / str(i) / "0"
        d.mkdir(parents=True, exist_ok=True)
        (d / "0").write_bytes(chunk)
        if header is not None:
            self.headers.append(header)

    def finish(self) -> None:
        attrs = {"redml_source": {"kind": self.input.kind, "files": [os.path.basename(p) for p in self.input.files]}}
        if self.headers:
            attrs["redml_source"]["headers"] = self.headers
        self._root.attrs.update(attrs)

    def close(self) -> None:
        pass


def open_writer(fmt: str, path, inp: Input, n_frames, frame_shape, dtype, settings):
    cls = {"nxmx": NxmxWriter, "zarr": ZarrWriter}[fmt]
    return cls(path, inp, n_frames, frame_shape, dtype, settings)


DECODED_CODECS = ("bslz4", "none")


def redml_datasets(f: h5py.File) -> list:
    """Paths (no leading slash) of the datasets of an open file stored with the redml filter."""
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks:
            dcpl = obj.id.get_create_plist()
            if any(dcpl.get_filter(k)[0] == FILTER_ID for k in range(dcpl.get_nfilters())):
                found.append(name)

    f.visititems(visit)
    return found


def _decoded_filter(codec: str) -> dict:
    if codec == "bslz4":
        from ..formats.h5filter import load_hdf5plugin

        return dict(load_hdf5plugin().Bitshuffle(cname="lz4"))
    if codec == "none":
        return {}
    raise ValueError(f"codec must be one of {DECODED_CODECS}, not {codec!r}")


def write_decoded(src_path, dst_path, codec: str = "bslz4", on_frame=None) -> dict:
    """Writes the redml HDF5 file `src_path` to `dst_path` with every redml dataset rewritten
    with bitshuffle-LZ4 (codec="bslz4", hdf5plugin's filter: XDS/Neggia, DIALS read it) or
    uncompressed ("none"); every other object, attribute and link copied as it is. Each frame
    is read back and compared with the decoded one. Written under a temporary name and renamed
    into place. on_frame(): called after each frame. Returns {"datasets", "frames"}."""
    filters = _decoded_filter(codec)
    dst_path = Path(dst_path)
    tmp = dst_path.with_name(f".{dst_path.name}.{os.getpid()}.tmp")
    frames = 0
    try:
        with h5py.File(src_path, "r") as src, h5py.File(tmp, "w") as dst:
            names = redml_datasets(src)
            if not names:
                raise ValueError(f"{src_path}: no redml datasets to decompress")
            copy_hdf5_skeleton(src, dst, names)
            for name in names:
                frames += _rewrite_dataset(src[name], dst, name, filters, on_frame)
        os.replace(tmp, dst_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"datasets": names, "frames": frames}


def _rewrite_dataset(d: h5py.Dataset, dst: h5py.File, name: str, filters: dict, on_frame) -> int:
    """Copies dataset d (decoded) to dst[name] with `filters`, a frame (first-axis slice) at a time."""
    out = dst.create_dataset(name, shape=d.shape, dtype=d.dtype, chunks=d.chunks, maxshape=d.maxshape,
                             track_times=False, **filters)
    _copy_attrs(d, out)
    slices = [np.s_[i] for i in range(d.shape[0])] if d.ndim == 3 else [np.s_[...]]
    for sel in slices:
        frame = d[sel]
        out[sel] = frame
        if out[sel].tobytes() != frame.tobytes():
            raise RuntimeError(f"{dst.filename}:{name}: {sel} does not read back as written")
        if on_frame is not None:
            on_frame()
    return len(slices)
