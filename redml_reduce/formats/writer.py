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

Per-frame policy (issue 21): with crystals= (or write(crystals=)) each frame is encoded by
redml_reduce.pipeline.encode_by_policy: a frame with a crystal keeps the lattice region exact
and draws the rest at q, a hit without one is decoded by the midpoint, a blank drawn.
Which region kept each frame is recorded beside the data (redml filter only), one row per
frame, in /entry/redml/roi_kind (an HDF5 enum, read_roi_kinds reads it back):

    "lattice"    the finder's spots and the crystals' predicted discs exact, the rest drawn
    "hit"        a hit that did not index: the finder's spots exact, the rest midpoint
    "blank"      the finder's spots exact, the rest drawn
    "classical", "ml", "union"   the ROI source of a frame written without the policy
    "map"        a boolean map given to write(roi=)
    "unknown"    a chunk written by write_chunk without its kind
"""
from __future__ import annotations

from typing import Mapping, Optional

import h5py
import numpy as np

from ..codec import SUPPORTED_DTYPES, inspect
from .h5filter import Redml
from .nxmx import write_nxmx
from ..lattice.predict import LatticeRegion
from ..pipeline import ROI_SOURCES, encode, encode_by_policy, is_source, require_torch

__all__ = ["FrameWriter", "ROI_KINDS", "KIND_PATH", "read_roi_kinds", "append_row"]

# What kept each frame (module doc): every ROI source and policy kind (pipeline.ROI_SOURCES,
# FRAME_KINDS) and more; the codes are the file's enum values, never renumbered.
ROI_KINDS = ("unknown", "classical", "ml", "union", "lattice", "hit", "blank", "map")
KIND_PATH = "entry/redml/roi_kind"
_KIND_DTYPE = h5py.enum_dtype({k: i for i, k in enumerate(ROI_KINDS)}, basetype="u1")


def read_roi_kinds(f) -> list:
    """The kind of each frame (ROI_KINDS) of a file written by FrameWriter: an open h5py.File
    or a path (opened SWMR, as a writer may still be appending)."""
    if not isinstance(f, h5py.File):
        with h5py.File(f, "r", libver="latest", swmr=True) as h:
            return read_roi_kinds(h)
    d = f[KIND_PATH]
    d.refresh()
    return [ROI_KINDS[int(v)] for v in d[...]]


def _kind_of(roi) -> str:
    """The recorded kind of a frame encoded by encode() with roi (a source name, a boolean
    map or a LatticeRegion); "lattice" as a name there has no crystals: the finder's region
    alone, as "classical"."""
    if isinstance(roi, LatticeRegion):
        return "lattice" if roi.crystals else "map"
    if not isinstance(roi, str):
        return "map"
    source = roi.partition(":")[0]
    return "classical" if source == "lattice" else source


def append_row(d: h5py.Dataset, n: int, value) -> None:
    """Writes value as row n of d, grown to n + 1 rows, by h5py's low-level calls: its
    high-level ones cost about 0.1 ms of Python each under the GIL, several times a frame."""
    row = np.asarray(value, dtype=d.dtype)  # a scalar (0-d) or a fresh row
    d.id.set_extent((n + 1, *row.shape))
    file_space = d.id.get_space()
    file_space.select_hyperslab((n, *(0,) * row.ndim), (1, *row.shape))
    d.id.write(h5py.h5s.create_simple((1, *row.shape)), file_space, row.reshape(1, *row.shape))


def _crystals_source(crystals, path):
    """crystals= of FrameWriter as a function of the frame index (None: no policy)."""
    from ..lattice import CrystalTable

    if crystals is None or callable(crystals):
        return crystals
    if isinstance(crystals, CrystalTable):
        return lambda i: crystals.for_frame(path, i)
    per_frame = list(crystals)

    def lookup(i):
        if i >= len(per_frame):
            raise ValueError(f"crystals= lists {len(per_frame)} frames; frame {i} has none (give [] for no crystal)")
        return per_frame[i]

    return lookup


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
    model, with the geometry's radial background when a geometry is given; they need torch),
    "lattice" (the finder's spots alone, without crystals); write(roi=) overrides it per frame.
    crystals: the per-frame policy (module doc): a callable (frame index -> that frame's
    crystals, redml_reduce.lattice.Crystal or A matrices), a list of them per frame, or a
    redml_reduce.lattice.CrystalTable (looked up by this file's name and the frame index);
    roi is then "classical" or "lattice" (the policy's region). lattice: the footprint
    (redml_reduce.lattice.LatticeSettings); min_peaks: the spots that make a frame a hit.
    The crystals are predicted with `geometry`, or with their own.
    """

    def __init__(self, path, frame_shape, dtype, *, dataset: str = "entry/data/data", nthreads: int = 0,
                 geometry=None, pixel_mask=None, nxmx: Optional[dict] = None, filter: Optional[Mapping] = None,
                 setup=None, roi="classical", crystals=None, lattice=None, min_peaks: int = 10,
                 **codec_settings):
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
        if filter is not None and (roi != "classical" or crystals is not None):
            raise ValueError("another ROI source than 'classical' and crystals need the redml filter (direct chunk "
                             "write)")
        if crystals is not None and roi not in ("classical", "lattice"):
            raise ValueError(f"crystals (the per-frame policy) keep the finder's and the lattice's region: roi must be "
                             f"'classical' or 'lattice', not {roi!r}")
        if roi.partition(":")[0] in ("ml", "union"):
            require_torch()
        self.roi, self.geometry = roi, geometry
        self.crystals = _crystals_source(crystals, path)
        self.lattice, self.min_peaks = lattice, int(min_peaks)
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
            self._kinds = None if self.settings is None else self._kind_table()
            if setup is not None:
                setup(self._file)  # metadata written before SWMR mode, which allows no new objects
            self._file.swmr_mode = True
        except BaseException:
            self._file.close()
            raise
        self.dataset = self._dset.name

    def _kind_table(self):
        g = self._file.require_group(KIND_PATH.rpartition("/")[0])
        g.attrs["NX_class"] = np.bytes_("NXcollection")
        return g.create_dataset(KIND_PATH.rpartition("/")[2], shape=(0,), maxshape=(None,), dtype=_KIND_DTYPE,
                                chunks=(4096,))

    def write(self, frame, roi=None, mask=None, crystals=None) -> int:
        """Encodes and appends one frame; returns its index once it is flushed. crystals: this
        frame's crystals (a list, [] for none): the per-frame policy for this frame, in place
        of the writer's crystals."""
        if self._file is None:
            raise ValueError("the writer is closed")
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape:
            raise ValueError(f"frame has shape {arr.shape}, the dataset {self.frame_shape}")
        if arr.dtype.newbyteorder("=") != self.dtype:
            raise TypeError(f"frame has dtype {arr.dtype}, the dataset {self.dtype}")
        if self.settings is None:
            if roi is not None or mask is not None or crystals is not None:
                raise ValueError("roi, mask and crystals need the redml filter")
            return self._append(lambda i: self._dset.write_direct(np.ascontiguousarray(arr)[None], dest_sel=np.s_[i:i + 1]))
        if crystals is None and self.crystals is not None and roi is None:
            crystals = self.crystals(self.count)
            crystals = [] if crystals is None else crystals
        if crystals is not None:
            if roi is not None:
                raise ValueError("a frame encoded by the policy (crystals) takes no roi")
            chunk, kind = encode_by_policy(arr, self.settings, crystals, geometry=self.geometry, lattice=self.lattice,
                                           min_peaks=self.min_peaks, mask=mask, nthreads=self.nthreads)
            return self.write_chunk(chunk, kind=kind)
        roi = self.roi if roi is None else roi
        chunk = encode(arr, roi=roi, mask=mask, nthreads=self.nthreads, geometry=self.geometry, settings=self.settings)
        return self.write_chunk(chunk, kind=_kind_of(roi))

    def write_chunk(self, chunk, kind: str = "unknown") -> int:
        """Appends one frame already encoded (redml_reduce.encode, the GPU encoder) as is;
        kind: what kept it (ROI_KINDS, recorded with the redml filter; "unknown" becomes
        "lattice" for a chunk that stores crystals).

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
        if kind not in ROI_KINDS:
            raise ValueError(f"kind must be one of {ROI_KINDS}, not {kind!r}")
        if kind == "unknown" and info["lattice_crystals"]:  # the chunk says it: its crystals' discs kept it
            kind = "lattice"
        return self._append(lambda i: self._dset.id.write_direct_chunk((i, 0, 0), chunk), kind)

    def _append(self, store, kind: Optional[str] = None) -> int:
        i = self.count
        if self._kinds is not None:  # the kind first: a failed chunk write leaves one row too many, cut below
            append_row(self._kinds, i, ROI_KINDS.index(kind))
        try:
            self._dset.resize(i + 1, axis=0)
            store(i)
        except BaseException:
            if self._kinds is not None:
                self._kinds.resize(i, axis=0)
            raise
        if self._kinds is not None:
            self._kinds.flush()
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
