"""Several receivers sharing one detector stream (`redml acquire --receiver K/N`, or
`--receivers N` to start N on this machine).

Every receiver gets each series' start and end messages and a share of its images (the
detector sends them so: sender.py, one socket per receiver as Jungfraujoch serves its
writers). Receiver K of N writes its frames to OUT_data_00000{K+1}.EXT (OUT: the --out
pattern) with their image ids; once a series has ended, receiver 0 (a fixed one: no
coordination needed) waits for the other data files to be closed, or to make no progress
for `master_wait_s` (their receiver is gone), and writes OUT as the master file (master.py):
a virtual dataset over the data files in image-id order, with what no receiver stored.
Receivers on several machines need the same OUT on a shared filesystem.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Optional

import h5py

from .master import is_closed, write_master
from .series import TABLE, free_name

__all__ = ["parse_receiver", "data_pattern", "master_path", "find_data_files", "find_master", "FanoutHook",
           "write_series_master", "write_missing_masters"]

log = logging.getLogger("redml_reduce.acquire")


def parse_receiver(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ValueError(f"--receiver wants K/N (e.g. 0/3), not {spec!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--receiver {spec}: K must be in 0..N-1")
    return k, n


def _fill(pattern: str, series_id: int) -> Path:
    return Path(pattern.format(series=series_id, series_id=series_id) if "{" in pattern else pattern)


def data_pattern(out: str, k: int) -> str:
    """The file pattern of receiver k's data files: OUT_data_00000{k+1}.EXT ({series} kept)."""
    p = Path(out)
    return str(p.with_name(f"{p.stem}_data_{k + 1:06d}{p.suffix}"))


def master_path(out: str, series_id: int) -> Path:
    return _fill(out, series_id)


def _series_uid(path: Path) -> Optional[str]:
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            v = f[TABLE].attrs.get("series_unique_id")
            return v.decode() if isinstance(v, bytes) else v
    except (OSError, KeyError):
        return None


def _of_series(base: Path, uid: Optional[str]) -> Optional[Path]:
    """The file of series uid among NAME and its -1, -2, ... variants (files are never overwritten)."""
    variants = [base] + sorted(p for p in base.parent.glob(f"{base.stem}-*{base.suffix}")
                               if p.stem[len(base.stem) + 1:].isdigit())
    return next((p for p in variants if p.exists() and (uid is None or _series_uid(p) == uid)), None)


def find_data_files(out: str, n: int, series_id: int, uid: Optional[str]) -> list[Path]:
    """Receiver k's data file of the series, for k in 0..n-1 (the name it will have when there
    is none yet: never an older series' file)."""
    bases = [_fill(data_pattern(out, k), series_id) for k in range(n)]
    return [_of_series(base, uid) or free_name(base) for base in bases]


def find_master(out: str, series_id: int, uid: Optional[str]) -> Optional[Path]:
    """The master file already written for the series, if any."""
    return _of_series(master_path(out, series_id), uid)


def _frames(path: Path) -> int:
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            d = f["entry/data/data"]
            d.refresh()
            return d.shape[0]
    except (OSError, KeyError):
        return -1


def wait_for_receivers(find, wait_s: float) -> list[Path]:
    """Waits until every data file find() names is closed, or has made no progress (no new
    frame, or no file at all) for wait_s: its receiver is gone. Returns find()'s last answer."""
    last: dict = {}
    while True:
        paths = find()
        now = time.monotonic()
        pending = [p for p in paths if not (p.exists() and is_closed(p))]
        for p in pending:
            n = _frames(p) if p.exists() else -2
            if last.get(p, (None,))[0] != n:
                last[p] = (n, now)
        stalled = [p for p in pending if now - last[p][1] > wait_s]
        if len(stalled) == len(pending):
            for p in stalled:
                log.warning("%s: no progress for %g s, its receiver is taken as gone", p, wait_s)
            return paths
        time.sleep(0.2)


def write_series_master(out: str, n: int, series_id: int, uid: Optional[str], expected: Optional[int] = None,
                        *, wait_s: float = 30.0, overwrite: bool = False) -> dict:
    """Waits for the n receivers' data files of a series, then writes its master file."""
    paths = wait_for_receivers(lambda: find_data_files(out, n, series_id, uid), wait_s)
    master = master_path(out, series_id)
    if master.exists() and not overwrite:
        alt = free_name(master)
        log.warning("%s exists: the master of series %d goes to %s", master, series_id, alt)
        master = alt
    return dict(write_master(master, paths, expected=expected, overwrite=overwrite), series_id=series_id)


def write_missing_masters(out: str, n: int, series: list, *, overwrite: bool = False) -> tuple[list, list]:
    """The master files receiver 0 did not write (it died), once every receiver has stopped:
    series holds the receivers' series summaries. Returns the masters written and the errors."""
    written, errors, seen = [], [], set()
    for s in series:
        uid = s["series_unique_id"]
        if uid in seen or find_master(out, s["series_id"], uid) is not None:
            continue
        seen.add(uid)
        try:
            written.append(write_series_master(out, n, s["series_id"], uid, wait_s=0, overwrite=overwrite))
        except (OSError, ValueError) as e:
            errors.append(f"series {s['series_id']}: {e}")
    return written, errors


class FanoutHook:
    """Follows the Acquisition of receiver 0 of n: writes the master file of each series once
    it has ended. `masters` holds their summaries, `errors` what failed."""

    def __init__(self, acq, out: str, n: int, *, master_wait_s: float = 30.0):
        self.acq, self.out, self.n = acq, out, n
        self.master_wait_s = master_wait_s
        self.masters: list = []
        self.errors: list = []
        self._done: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="redml-fanout", daemon=True)

    def start(self) -> "FanoutHook":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            final = self._stop.is_set()
            for s in [s for s in list(self.acq.series) if s.closed.is_set() and id(s) not in self._done]:
                self._done.add(id(s))
                self._series_closed(s)
            if final:
                return
            self._stop.wait(0.2)

    def _series_closed(self, s) -> None:
        try:
            m = write_series_master(self.out, self.n, s.id, s.uid, s.start.number_of_images,
                                    wait_s=self.master_wait_s, overwrite=self.acq.settings.overwrite)
            self.masters.append(m)
            c = m["counts"]
            print(f"master of series {s.id}: {m['stored']} of {c['expected']} images stored by {self.n} "
                  f"receivers, {c['missing']} missing -> {m['path']}", flush=True)
        except Exception as e:  # a master that cannot be written is reported, the receiver goes on
            log.exception("series %d", s.id)
            self.errors.append(f"series {s.id}: {type(e).__name__}: {e}")
            self.acq.stats.error(f"series {s.id}: master file not written: {e}")

    def finish(self) -> None:
        """Handles the series closed so far (waiting for the master files), then stops."""
        self._stop.set()
        self._thread.join()
