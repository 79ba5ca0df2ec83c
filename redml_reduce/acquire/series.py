"""The file of one acquired series: NXmx frames plus what acquisition learnt about them.

    /entry/data/data                       the frames (redml chunks, or the detector's bslz4)
    /entry/instrument/...                  NXmx geometry from the start message (nxmx.py)
    /entry/redml_acquire/                  NXcollection, one row per stored frame:
        image_id (uint64, as the stream's), hit (-1 = not analysed), n_spots, resolution_a,
        background, saturated, stored_bytes, sparse (1 = a blank stored with q="sparse"),
        indexed (-1 = not tried, 0 = a hit that did not index, 1 = indexed with the known cell)
        orientation (float64 (3, 3) per frame, NaN unless indexed; only when indexing: the
            A = U B found, columns a*, b*, c* in redml_reduce.lattice's frame, 1/Angstrom)
        vetoed_image_ids, dropped_image_ids, rejected_image_ids   every image not stored (uint64)
        counts (int64, names in its "names" attribute)            received = written +
            sparse + vetoed + dropped + rejected; missing = expected - received
        start_message                      the start message's scalar fields (JSON)
    /entry/redml/roi_kind                  what kept each frame exact (formats/writer.py)
    /entry_1/result_1/                     CXI peak tables (peaklist.py layout, CrystFEL
                                           --peaks=cxi), one row per stored frame

Everything is appended frame by frame under SWMR (writer.FrameWriter): the tables of a
frame are written before its chunk and flushed with it, the counters after every frame. A
frame's row is converted to the columns' types before any column grows, and a failed write
shrinks them back: the rows stay aligned with the frames whatever is refused.
A writer killed mid-series leaves every flushed frame and its rows readable.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from .indicators import COUNT_NAMES, FrameStats
from ..formats.peaklist import GROUP as PEAK_GROUP
from ..formats.writer import FrameWriter, append_row

__all__ = ["SeriesFile", "read_acquisition", "MAX_PEAKS", "free_name"]

MAX_PEAKS = 2048
TABLE = "entry/redml_acquire"
_COLUMNS = {"image_id": np.uint64, "hit": np.int8, "n_spots": np.int32, "resolution_a": np.float32,
            "background": np.float32, "saturated": np.int32, "stored_bytes": np.int64, "sparse": np.uint8,
            "indexed": np.int8}
_PEAK_FIELDS = {"peakXPosRaw": np.float32, "peakYPosRaw": np.float32, "peakTotalIntensity": np.float32,
                "peakMaximumValue": np.float32, "peakNPixels": np.int32, "peakSNR": np.float32}
_ID_LISTS = ("vetoed_image_ids", "dropped_image_ids", "rejected_image_ids")


def _scalars(fields: dict) -> dict:
    out = {}
    for k, v in fields.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = v
        elif hasattr(v, "isoformat"):
            out[k] = v.isoformat()
    return out


def _exact(value, dtype):
    """value as a numpy scalar of dtype; OverflowError where it would not fit (numpy would
    wrap or refuse depending on its version)."""
    dt = np.dtype(dtype)
    if dt.kind in "ui" and not np.iinfo(dt).min <= int(value) <= np.iinfo(dt).max:
        raise OverflowError(f"{value} does not fit {dt}")
    return dt.type(value)


class SeriesFile:
    """One series' file: FrameWriter plus per-frame tables, id lists and counters."""

    def __init__(self, path, shape, dtype, *, geometry=None, pixel_mask=None, nxmx: Optional[dict] = None,
                 filter=None, codec_settings: Optional[dict] = None, attrs: Optional[dict] = None,
                 start_fields: Optional[dict] = None, peaks: bool = True, calibration=None, indexing: bool = False):
        self._peaks = peaks
        self._indexing = indexing  # an orientation table beside the rows
        self._calibration = calibration  # raw JUNGFRAU series: stored once, to see and redo the conversion
        self._dtype = np.dtype(dtype)  # the photons' type: the calibration records its markers
        self._attrs = attrs or {}
        self._start = start_fields or {}
        kw = dict(codec_settings or {}) if filter is None else {"filter": filter}
        self.writer = FrameWriter(path, shape, dtype, geometry=geometry, pixel_mask=pixel_mask, nxmx=nxmx,
                                  setup=self._setup, nthreads=1, **kw)
        self.path = str(path)

    def _setup(self, f: h5py.File) -> None:
        if self._calibration is not None:
            from ..jungfrau.calibration import write_calibration

            write_calibration(f.require_group("entry/instrument/detector"), self._calibration, photon_dtype=self._dtype)
        g = f.require_group(TABLE)
        g.attrs["NX_class"] = np.bytes_("NXcollection")
        for k, v in self._attrs.items():
            g.attrs[k] = v if not isinstance(v, str) else np.bytes_(v)
        self.cols = {name: g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
                     for name, dt in _COLUMNS.items()}
        self.ids = {name: g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint64, chunks=(4096,))
                    for name in _ID_LISTS}
        self.orientation = None
        if self._indexing:
            self.orientation = g.create_dataset("orientation", shape=(0, 3, 3), maxshape=(None, 3, 3),
                                                dtype=np.float64, chunks=(1024, 3, 3))
        self.counts = g.create_dataset("counts", data=np.zeros(len(COUNT_NAMES), np.int64))
        self.counts.attrs["names"] = np.array([n.encode() for n in COUNT_NAMES])
        g.create_dataset("start_message", data=np.bytes_(json.dumps(_scalars(self._start), default=str)))
        if self._peaks:
            p = f.require_group(PEAK_GROUP)
            self.npeaks = p.create_dataset("nPeaks", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
            self.peak_fields = {name: p.create_dataset(name, shape=(0, MAX_PEAKS), maxshape=(None, MAX_PEAKS),
                                                       dtype=dt, chunks=(1, MAX_PEAKS), compression="gzip",
                                                       compression_opts=1)
                                for name, dt in _PEAK_FIELDS.items()}

    def _rows(self, chunk: bytes, st: FrameStats, peaks) -> dict:
        """A frame's row of every table, converted to the columns' types (raises before any
        column is touched: an id beyond uint64, a value beyond its column)."""
        row = {"image_id": st.image_id, "hit": -1 if st.hit is None else int(st.hit), "n_spots": st.n_spots,
               "resolution_a": st.resolution_a, "background": st.background, "saturated": st.saturated,
               "stored_bytes": len(chunk), "sparse": int(st.mode == "sparse"),
               "indexed": -1 if st.indexed is None else int(st.indexed)}
        out = {self.cols[name]: _exact(value, _COLUMNS[name]) for name, value in row.items()}
        if self.orientation is not None:
            out[self.orientation] = np.full((3, 3), np.nan) if st.orientation is None else \
                np.reshape(st.orientation, (3, 3))
        if self._peaks:
            p = peaks if peaks is not None else np.zeros(0)
            if len(p) > MAX_PEAKS:
                p = p[np.argsort(-p["total"], kind="stable")[:MAX_PEAKS]]
            out[self.npeaks] = np.int32(len(p))
            vals = {"peakXPosRaw": lambda: p["x"] - 0.5, "peakYPosRaw": lambda: p["y"] - 0.5,
                    "peakTotalIntensity": lambda: p["total"], "peakMaximumValue": lambda: p["max"],
                    "peakNPixels": lambda: p["npix"], "peakSNR": lambda: p["snr"]}
            for name, d in self.peak_fields.items():
                rowv = np.zeros(MAX_PEAKS, d.dtype)
                if len(p):
                    rowv[:len(p)] = vals[name]()
                out[d] = rowv
        return out

    def write(self, chunk: bytes, st: FrameStats, peaks=None, counts: Optional[dict] = None) -> int:
        """Appends a frame's rows and peaks, then its chunk (one flush for all); on any
        failure the tables are cut back to the frames stored."""
        rows = self._rows(chunk, st, peaks)
        n = len(self.writer)  # every table has a row per stored frame
        try:
            for d, value in rows.items():
                append_row(d, n, value)
            if counts is not None:
                self.set_counts(counts, flush=False)
            return self.writer.write_chunk(chunk, kind=st.roi_kind)
        except BaseException:
            n = len(self.writer)
            for d in rows:
                if d.shape[0] > n:
                    d.resize(n, axis=0)
            raise

    def add_ids(self, kind: str, ids) -> None:
        d = self.ids[f"{kind}_image_ids"]
        ids = np.array([_exact(i, np.uint64) for i in ids], np.uint64)
        if len(ids):
            n = d.shape[0]
            d.resize(n + len(ids), axis=0)
            d[n:] = ids

    def set_counts(self, counts: dict, flush: bool = True) -> None:
        values = np.array([counts.get(n, 0) for n in COUNT_NAMES], np.int64)
        self.counts.id.write(h5py.h5s.ALL, h5py.h5s.ALL, values)  # every frame: h5py's low-level call (its
        # high-level assignment costs 0.1 ms of Python under the GIL)
        if flush:
            for d in list(self.ids.values()) + [self.counts]:
                d.flush()
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __len__(self) -> int:
        return len(self.writer)


def read_acquisition(path) -> dict:
    """The tables of an acquired file (opens SWMR-written files as they were left)."""
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        g = f[TABLE]
        for d in g.values():
            if isinstance(d, h5py.Dataset):
                d.refresh()
        out = {name: g[name][...] for name in list(_COLUMNS) + list(_ID_LISTS) if name in g}  # older files: fewer
        names = [n.decode() for n in g["counts"].attrs["names"]]
        out["counts"] = dict(zip(names, (int(v) for v in g["counts"][...])))
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        out["start_message"] = json.loads(g["start_message"][()].decode())
        if "orientation" in g:
            out["orientation"] = g["orientation"][...]
        data = f["entry/data/data"]
        data.refresh()
        out["n_frames"] = data.shape[0]
    return out


def free_name(path: Path, taken=frozenset()) -> Path:
    """path, or the first of NAME-1, NAME-2, ... that neither exists nor is in taken: where a
    new series' file goes without touching an older one."""
    k, p = 0, path
    while p.exists() or p in taken:
        k += 1
        p = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return p
