"""The master file of a series that several receivers shared (EIGER / Jungfraujoch style).

Each receiver writes the frames it got to its own data file (series.py layout, with the image
id of every frame). The master is an NXmx file whose /entry/data/data is an HDF5 virtual
dataset over the data files in image-id order, so h5py, dials.import and this package's
readers see one series:

    /entry/instrument, sample, source      copied from a data file (same start message)
    /entry/data/data                       virtual: image id i -> the data file that stored it;
                                           an image stored nowhere reads as the fill value
                                           (the dtype's maximum; its minimum if signed, NaN
                                           if floating point)
    /entry/redml_acquire/                  NXcollection
        data_files                         the data files (paths relative to the master)
        receiver, row                      per image id: which data file, which frame (-1: none)
        missing_image_ids                  ids no receiver recorded (lost in flight, never sent)
        vetoed/dropped/rejected_image_ids  ids a receiver recorded but did not store
        counts (names attribute)           every receiver's records summed: received = written +
                                           sparse + vetoed + dropped + rejected, missing =
                                           expected - received
        receivers (JSON)                   per data file: state, frames, counts, lost in flight

A data file whose receiver died (SWMR writer killed) cannot be opened plainly, so a virtual
dataset could not read it: its readable frames and rows are copied to NAME-recovered.EXT
first, which the master then points at.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from .series import TABLE

__all__ = ["write_master", "read_master", "is_closed", "fill_value", "MASTER_COUNTS"]

log = logging.getLogger("redml_reduce.acquire")

MASTER_COUNTS = ("expected", "received", "written", "sparse", "vetoed", "dropped", "rejected", "missing",
                 "duplicates")
_ID_KINDS = ("vetoed", "dropped", "rejected")


def fill_value(dtype):
    """What an image no receiver stored reads as: the type's maximum (unsigned, as EIGER marks
    pixels without data), its minimum (signed), NaN (floating point)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return float("nan")
    info = np.iinfo(dtype)
    return int(info.max if info.min == 0 else info.min)


def is_closed(path) -> bool:
    """True when the data file's writer closed it (a plain open works: no live or dead SWMR writer)."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _recover(path: Path) -> Path:
    """Copies what a killed receiver flushed into NAME-recovered.EXT, a closed file."""
    out = path.with_name(f"{path.stem}-recovered{path.suffix}")
    tmp = out.with_name(out.name + ".part")
    with h5py.File(path, "r", libver="latest", swmr=True) as src, h5py.File(tmp, "w", libver=("v110", "v110")) as dst:
        for name in src:
            src.copy(src[name], dst, name)
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst[TABLE].attrs["recovered_from"] = np.bytes_(path.name)
    os.replace(tmp, out)
    log.warning("%s was left open by its receiver: its flushed frames are copied to %s", path, out)
    return out


def _records(path: Path, recovered: bool) -> dict:
    """What one data file recorded: the readable frames' (row, image id), the ids not stored
    by reason, its counts dataset, start message and series attributes."""
    with h5py.File(path, "r") as f:
        g, d = f[TABLE], f["entry/data/data"]
        ids = g["image_id"][...]
        n = min(len(ids), d.shape[0])
        rows = []
        for r in range(n):
            if recovered:  # the kill may have cut the last frame: keep only what decodes
                try:
                    d[r]
                except OSError:
                    continue
            rows.append((r, int(ids[r])))
        sparse = g["sparse"][:n]
        names = [x.decode() for x in g["counts"].attrs["names"]]
        return {"rows": rows, "sparse_rows": {r for r in range(n) if sparse[r]},
                "ids": {k: [int(i) for i in g[f"{k}_image_ids"][...]] for k in _ID_KINDS},
                "counts": dict(zip(names, (int(v) for v in g["counts"][...]))),
                "start": json.loads(g["start_message"][()].decode()),
                "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()},
                "shape": d.shape[1:], "dtype": d.dtype}


def _runs(pairs):
    """(row, id) pairs sorted by row split into runs where rows step by 1 and ids by a
    constant positive step: one virtual mapping per run instead of one per frame."""
    runs, i = [], 0
    while i < len(pairs):
        j = i + 1
        step = pairs[j][1] - pairs[i][1] if j < len(pairs) and pairs[j][0] == pairs[i][0] + 1 else 0
        if step > 0:
            while j < len(pairs) and pairs[j][0] == pairs[j - 1][0] + 1 and pairs[j][1] - pairs[j - 1][1] == step:
                j += 1
        runs.append((pairs[i][0], pairs[i][1], j - i, max(step, 1)))
        i = j
    return runs


def _copy_nxmx(src: h5py.File, dst: h5py.File) -> None:
    """The NXmx description (instrument, sample, source, ...) of a data file, without its frames and tables."""
    entry = dst.require_group("entry")
    for k, v in src["entry"].attrs.items():
        entry.attrs[k] = v
    for name in src["entry"]:
        if name not in ("data", "redml_acquire", "redml"):  # per-frame rows of that data file alone
            src.copy(src["entry"][name], entry, name)
    data = entry.require_group("data")
    for k, v in src["entry/data"].attrs.items():
        data.attrs[k] = v


def write_master(master, data_files: Sequence, *, expected: Optional[int] = None, overwrite: bool = False) -> dict:
    """Writes the master file `master` over `data_files` (one per receiver; a missing path is
    a receiver that stored nothing). expected: the series' number of images (default: the
    start message's). Returns its summary: path, counts, missing_image_ids, receivers."""
    master = Path(master)
    if master.exists() and not overwrite:
        raise FileExistsError(f"{master} exists")
    files, receivers = [], []
    for p in (Path(p) for p in data_files):
        if not p.exists():
            receivers.append({"path": str(p), "state": "no file", "frames": 0})
            continue
        state = "closed" if is_closed(p) else "recovered"
        try:
            src = p if state == "closed" else _recover(p)
            rec = _records(src, state == "recovered")
        except (OSError, KeyError) as e:
            log.error("%s cannot be read (%s): its frames count as missing", p, e)
            receivers.append({"path": str(p), "state": f"unreadable: {e}", "frames": 0})
            continue
        files.append((src, rec))
        recorded = len(rec["rows"]) + sum(len(v) for v in rec["ids"].values())
        receivers.append({"path": str(src), "state": state, "frames": len(rec["rows"]), "recorded": recorded,
                          "receiver": rec["attrs"].get("receiver"),
                          # received but never recorded: in its queues when it died (a lower bound)
                          "lost_in_flight": max(0, rec["counts"].get("received", 0) - recorded)})
    if not files:
        raise ValueError(f"no readable data file among {[str(p) for p in data_files]}")
    uids = {rec["attrs"].get("series_unique_id") for _, rec in files}
    if len(uids) > 1:
        raise ValueError(f"the data files belong to different series: {sorted(map(str, uids))}")
    shape, dtype = files[0][1]["shape"], files[0][1]["dtype"]
    if expected is None:
        expected = next((rec["start"].get("number_of_images") for _, rec in files
                         if rec["start"].get("number_of_images")), 0)
    where, duplicates = {}, 0
    for k, (_, rec) in enumerate(files):
        for r, i in rec["rows"]:
            if i in where:
                duplicates += 1
            else:
                where[i] = (k, r)
    unstored = {kind: sorted({i for _, rec in files for i in rec["ids"][kind]} - set(where)) for kind in _ID_KINDS}
    n_out = max([int(expected or 0)] + [i + 1 for i in where] + [i + 1 for v in unstored.values() for i in v])
    counts = dict.fromkeys(MASTER_COUNTS, 0)
    counts["expected"] = int(expected or 0)
    for k, r in where.values():  # each image once, from the data file the master reads it in
        counts["sparse" if r in files[k][1]["sparse_rows"] else "written"] += 1
    for kind in _ID_KINDS:
        counts[kind] = len(unstored[kind])
    counts["duplicates"] = duplicates
    counts["received"] = sum(counts[k] for k in ("written", "sparse", "vetoed", "dropped", "rejected"))
    recorded = set(where) | {i for v in unstored.values() for i in v}
    missing = sorted(set(range(n_out)) - recorded)
    counts["missing"] = len(missing)

    tmp = master.with_name(master.name + ".part")
    with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
        with h5py.File(files[0][0], "r") as src:
            _copy_nxmx(src, f)
        layout = h5py.VirtualLayout(shape=(n_out, *shape), dtype=dtype)
        receiver, row = np.full(n_out, -1, np.int16), np.full(n_out, -1, np.int64)
        names = []
        for k, (path, rec) in enumerate(files):
            name = os.path.relpath(path, master.parent)  # found beside the master when both move
            names.append(name)
            pairs = sorted((r, i) for r, i in rec["rows"] if where.get(i) == (k, r))
            if not pairs:
                continue
            source = h5py.VirtualSource(name, "entry/data/data", shape=(pairs[-1][0] + 1, *shape), dtype=dtype)
            for r0, i0, n, step in _runs(pairs):
                layout[i0:i0 + (n - 1) * step + 1:step] = source[r0:r0 + n]
            for r, i in pairs:
                receiver[i], row[i] = k, r
        f.create_virtual_dataset("entry/data/data", layout, fillvalue=fill_value(dtype))
        g = f.create_group(TABLE)
        g.attrs["NX_class"] = np.bytes_("NXcollection")
        for key in ("series_id", "series_unique_id"):
            if key in files[0][1]["attrs"]:
                g.attrs[key] = files[0][1]["attrs"][key]
        g.attrs["fill_value"] = fill_value(dtype)
        g.create_dataset("data_files", data=np.array([n.encode() for n in names]))
        g.create_dataset("receiver", data=receiver)
        g.create_dataset("row", data=row)
        g.create_dataset("missing_image_ids", data=np.array(missing, np.uint64))
        for kind in _ID_KINDS:
            g.create_dataset(f"{kind}_image_ids", data=np.array(unstored[kind], np.uint64))
        c = g.create_dataset("counts", data=np.array([counts[n] for n in MASTER_COUNTS], np.int64))
        c.attrs["names"] = np.array([n.encode() for n in MASTER_COUNTS])
        g.create_dataset("receivers", data=np.bytes_(json.dumps(receivers)))
    os.replace(tmp, master)
    lost = counts["missing"]
    (log.warning if lost else log.info)(
        "master %s: %d images over %d data files, %d stored, %d missing", master, n_out, len(files), len(where), lost)
    return {"path": str(master), "frames": n_out, "stored": len(where), "counts": counts,
            "missing_image_ids": missing, "receivers": receivers}


def read_master(path) -> dict:
    """The tables of a master file: counts, id lists, per-image receiver and row, data files."""
    with h5py.File(path, "r") as f:
        g = f[TABLE]
        names = [n.decode() for n in g["counts"].attrs["names"]]
        out = {"counts": dict(zip(names, (int(v) for v in g["counts"][...]))),
               "data_files": [n.decode() for n in g["data_files"][...]],
               "receiver": g["receiver"][...], "row": g["row"][...],
               "receivers": json.loads(g["receivers"][()].decode()),
               "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()},
               "n_frames": f["entry/data/data"].shape[0]}
        for kind in ("missing",) + _ID_KINDS:
            out[f"{kind}_image_ids"] = g[f"{kind}_image_ids"][...]
    return out

