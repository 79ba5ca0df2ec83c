"""Frame-by-frame writer: one redml chunk per frame, durable after every write (SWMR).

    with redml_reduce.FrameWriter("run.h5", (h, w), "uint16", q=1) as w:
        for frame in detector:
            w.write(frame)                 # encoded, appended, flushed

Each write encodes the frame with redml_reduce.encode (redml_reduce.pipeline), grows the dataset by one frame,
stores the chunk with direct chunk write and flushes the dataset and the file. The file is
in SWMR mode (single writer, multiple readers), so readers can follow the run while it is
written (h5py.File(path, "r", libver="latest", swmr=True), dataset.refresh()), and a writer
that dies (SIGKILL, an exception that never reaches close) leaves a file whose every frame
that write() returned from is intact: SWMR readers open it as it is; a plain open needs
`h5clear -s file` first (HDF5 refuses a file whose SWMR writer died otherwise). Flushing
hands the data to the operating system: it survives the process, not a crash of the
machine itself (see docs/reliability.md).

With a geometry the file is NXmx (redml_reduce.formats.nxmx): dials.import reads it directly, the
redml filter found through HDF5_PLUGIN_PATH=redml_reduce.PLUGIN_PATH. `filter=` writes
with another HDF5 filter instead (a mapping such as hdf5plugin.Bitshuffle(), or {} for
none), the same file layout: the benchmarks compare codecs through this one writer.
"""
from __future__ import annotations

from typing import Mapping, Optional

import h5py
import numpy as np

from ..codec import SUPPORTED_DTYPES, inspect
from .h5filter import Redml
from .nxmx import write_nxmx
from ..pipeline import ROI_SOURCES, encode, is_source, require_torch

__all__ = ["FrameWriter"]


class FrameWriter:
    """Appends 2-D frames to `dataset` of a new HDF5 file at `path`.

    frame_shape: (height, width) of every frame; dtype: one of uint16, int16, int32,
    uint32, float32. codec_settings: q and the other redml settings (see
    redml_reduce.CodecSettings), also stored as the dataset's filter options so that any
    HDF5 reader decodes the frames. nthreads: encoder threads (0 = all cores).
    geometry (redml_reduce.background.BeamGeometry), pixel_mask and nxmx (more keywords of
    redml_reduce.formats.nxmx.write_nxmx): write an NXmx file. filter: another HDF5 filter's
    create_dataset keywords instead of redml ({} = uncompressed). setup: optional callable
    given the open h5py.File once the dataset exists, before SWMR mode starts (SWMR allows
    no new objects: metadata groups such as a JUNGFRAU calibration are written there).
    roi: the ROI source of every frame written with write() (redml_reduce.pipeline):
    "classical" (the encoder's rule, as the HDF5 filter), "ml" or "union" (the learned
    model, with the geometry's radial background when a geometry is given); write(roi=)
    overrides it per frame.
    """

    def __init__(self, path, frame_shape, dtype, *, dataset: str = "entry/data/data", nthreads: int = 0,
                 geometry=None, pixel_mask=None, nxmx: Optional[dict] = None, filter: Optional[Mapping] = None,
                 setup=None, roi="classical", **codec_settings):
        h, w = (int(v) for v in frame_shape)
        if h < 1 or w < 1:
            raise ValueError(f"frame_shape must be two positive sizes, not {tuple(frame_shape)}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"unsupported dtype {self.dtype}; use one of {', '.join(map(str, SUPPORTED_DTYPES))}")
        self.frame_shape = (h, w)
        self.nthreads = nthreads
        if not is_source(roi):
            raise ValueError(f"roi must be one of {ROI_SOURCES} (or ml:MODEL, union:MODEL), not {roi!r}")
        if filter is not None and roi != "classical":
            raise ValueError("roi='ml' and 'union' need the redml filter (direct chunk write)")
        if roi != "classical":
            require_torch()
        self.roi, self.geometry = roi, geometry
        if filter is not None and codec_settings:
            raise ValueError(f"redml settings {sorted(codec_settings)} given with another filter")
        # Validates the settings before the file exists.
        self._filter = Redml(**codec_settings) if filter is None else dict(filter)
        self.settings = self._filter.settings if filter is None else None
        self.path = path
        self.count = 0
        # SWMR needs the 1.10 file format at least; capping it at 1.10 keeps the file
        # readable by HDF5 1.10 programs (Debian's h5dump, DIALS): libver="latest" under
        # h5py's newer HDF5 writes structures they cannot read.
        self._file = h5py.File(path, "w", libver=("v110", "v110"))
        try:
            if geometry is not None:
                write_nxmx(self._file, geometry, (h, w), data_path="/" + dataset.strip("/"), pixel_mask=pixel_mask,
                           **(nxmx or {}))
            self._dset = self._file.create_dataset(dataset, shape=(0, h, w), maxshape=(None, h, w), dtype=self.dtype,
                                                   chunks=(1, h, w), **self._filter)
            if setup is not None:
                setup(self._file)  # metadata written before SWMR mode, which allows no new objects
            self._file.swmr_mode = True
        except BaseException:
            self._file.close()
            raise
        self.dataset = self._dset.name

    def write(self, frame, roi=None, mask=None) -> int:
        """Encodes and appends one frame; returns its index once it is flushed."""
        if self._file is None:
            raise ValueError("the writer is closed")
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape:
            raise ValueError(f"frame has shape {arr.shape}, the dataset {self.frame_shape}")
        if arr.dtype.newbyteorder("=") != self.dtype:
            raise TypeError(f"frame has dtype {arr.dtype}, the dataset {self.dtype}")
        if self.settings is None:
            if roi is not None or mask is not None:
                raise ValueError("roi and mask need the redml filter")
            return self._append(lambda i: self._dset.write_direct(np.ascontiguousarray(arr)[None], dest_sel=np.s_[i:i + 1]))
        chunk = encode(arr, roi=self.roi if roi is None else roi, mask=mask, nthreads=self.nthreads,
                       geometry=self.geometry, settings=self.settings)
        return self.write_chunk(chunk)

    def write_chunk(self, chunk) -> int:
        """Appends one frame already encoded (redml_reduce.encode, the GPU encoder) as is.

        With another filter the bytes must be that filter's encoding of one frame (e.g. a
        detector's bitshuffle-LZ4 frame under hdf5plugin.Bitshuffle()); they are not checked."""
        if self._file is None:
            raise ValueError("the writer is closed")
        if self.settings is None:
            if not self._filter:
                raise ValueError("write_chunk needs a filter (the redml filter, or the one the chunk was made with)")
            return self._append(lambda i: self._dset.id.write_direct_chunk((i, 0, 0), bytes(chunk)))
        info = inspect(chunk)  # a RedmlError for anything that is not a whole redml chunk
        if info["shape"] != self.frame_shape or info["dtype"] != self.dtype:
            raise ValueError(f"chunk holds a {info['shape']} {info['dtype']} frame, the dataset {self.frame_shape} "
                             f"{self.dtype}")
        return self._append(lambda i: self._dset.id.write_direct_chunk((i, 0, 0), chunk))

    def _append(self, store) -> int:
        i = self.count
        self._dset.resize(i + 1, axis=0)
        store(i)
        self._dset.flush()
        self._file.flush()
        self.count = i + 1
        return i

    def flush(self) -> None:
        """Flushes the file (after writing other datasets of it, made in setup())."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            finally:
                self._file.close()
                self._file = None

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else f"{self.count} frames"
        return f"FrameWriter({self.path!r}, {self.frame_shape}, {self.dtype}, {state})"
