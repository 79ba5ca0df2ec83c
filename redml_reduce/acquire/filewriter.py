"""The writer thread of an acquisition: it appends the workers' frames to their series file in
arrival order (series.py; FrameWriter flushes every frame, SWMR), gives back each frame's
slot, and closes a series once its admitted frames are written, with its summary."""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Optional

import numpy as np

from ..codec import SUPPORTED_DTYPES
from .indicators import LiveStats
from .pool import WorkerPool
from .series import SeriesFile
from .state import Reporter, SeriesState
from .worker import Result

__all__ = ["SeriesWriter"]

log = logging.getLogger("redml_reduce.acquire")


class SeriesWriter:
    """settings: the AcquireSettings; codecs: the CodecSettings of "q" and "sparse" frames."""

    def __init__(self, settings, codecs: dict, stats: LiveStats, pool: WorkerPool, report: Reporter):
        self.settings = settings
        self.codecs = codecs
        self.stats = stats
        self.pool = pool
        self.report = report
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="redml-writer", daemon=True)
        self._thread.start()

    def open_series(self, series: SeriesState) -> None:
        """Creates the file of a new series ahead of its frames when its start message gave their
        shape and dtype: creating it (NXmx groups, tables, SWMR) takes as long as encoding
        several frames, and the first frames would wait for it."""
        self._q.put(("open", series))

    def frame(self, series: SeriesState, fut) -> None:
        """Writes the frame a worker is making (a future of its Result), after those before it."""
        self._q.put(("frame", series, fut))

    def close_series(self, series: SeriesState, reason: Optional[str]) -> None:
        """Closes the series after the frames queued before (reason: why it ended early)."""
        self._q.put(("close", series, reason))

    def stop(self) -> None:
        """Writes what is queued, then ends the thread."""
        self._q.put(("stop",))
        self._thread.join()

    def file_codec(self) -> dict:
        """The dataset's filter options: the chosen q (blanks stored sparse say so in their chunks)."""
        return self.codecs["q"].to_config()  # every field (codec.SETTINGS), recon included

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item[0] == "frame":
                    self._write_frame(item[1], item[2])
                elif item[0] == "open":
                    if self._openable(item[1]):
                        self._open_ahead(item[1])
                elif item[0] == "close":
                    self._finish(item[1], item[2])
                elif item[0] == "stop":
                    return
            except Exception:  # the writer must outlive anything
                log.exception("writer")

    def _openable(self, series: SeriesState) -> bool:
        """Whether the series' frames have a known shape and dtype that the codec stores."""
        return series.shape is not None and series.dtype is not None and \
            (self.settings.codec != "redml" or series.dtype in SUPPORTED_DTYPES)

    def _open_ahead(self, series: SeriesState) -> None:
        """Creates the file at the start message. Its CPU time, once per series, falls partly
        within the span of the frames (the first ones arrive meanwhile): that part counts as
        step "open" of the summary's cpu_ms_per_frame_by_step."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self._open(series, series.shape, series.dtype)
        t1, t_first = time.perf_counter(), series.t_first
        if t_first is not None and t1 > t0:
            inside = min(1.0, (t1 - max(t0, t_first)) / (t1 - t0))
            series.add_cpu({"open": (time.thread_time() - c0) * inside})

    def _open(self, series: SeriesState, shape, dtype) -> Optional[SeriesFile]:
        if series.file is not None or series.file_error is not None:
            return series.file
        s, st = self.settings, series.start
        try:
            filt = None
            if s.codec == "bslz4":
                from ..formats.h5filter import load_hdf5plugin

                filt = load_hdf5plugin().Bitshuffle(cname="lz4")
            attrs = {"series_id": series.id, "series_unique_id": series.uid, "codec": s.codec, "q": str(s.q),
                     "veto": s.veto, "min_spots": s.min_spots, "on_full": s.on_full}
            if s.receiver:  # one of several receivers of the stream (fanout.py)
                attrs["receiver"] = s.receiver
            if s.cell is not None:  # hits indexed with this cell (worker.py)
                attrs["cell"], attrs["space_group"] = np.array(s.cell), s.space_group
            series.file = SeriesFile(series.path, shape, dtype, geometry=st.geometry, pixel_mask=series.pixel_mask,
                                     nxmx=st.nxmx_options() if st.geometry is not None else None, filter=filt,
                                     codec_settings=self.file_codec(),
                                     attrs=attrs, start_fields=st.fields, peaks=s.peaks and s.spots,
                                     calibration=series.calibration, indexing=s.cell is not None)
        except Exception as e:
            series.file_error = f"{type(e).__name__}: {e}"
            self.report.fail(f"series {series.id}: cannot create {series.path}: {series.file_error}")
        return series.file

    def _save_ids(self, series: SeriesState) -> None:
        if series.file is None:
            return
        for kind, ids in series.take_unsaved().items():
            if ids:
                series.file.add_ids(kind, ids)

    def _write_frame(self, series: SeriesState, fut) -> None:
        try:
            res: Result = fut.result()
        except Exception as e:  # work() catches everything; belt and braces
            res = Result(-1, time.perf_counter(), error=f"{type(e).__name__}: {e}")
        t_cpu = time.thread_time()
        try:
            self._store(series, res)
        finally:
            series.add_cpu(dict(res.cpu, write=time.thread_time() - t_cpu))
            self.pool.give()

    def _store(self, series: SeriesState, res: Result) -> None:
        """Appends a worker's frame to its series file, or records why it was not."""
        if res.error is None:
            f = self._open(series, series.shape or res.shape, series.dtype or res.dtype)
            if f is None:
                res.error = f"no file ({series.file_error})"
        if res.error is not None:
            self.report.error(f"series {series.id}: image {res.image_id} rejected: {res.error}")
            self.report.reject(series, res.image_id)
            self._save_ids(series)
            return
        st = res.stats
        key = {"q": "written", "raw": "written", "sparse": "sparse", "vetoed": "vetoed"}[st.mode]
        self._save_ids(series)
        counts = series.counts_copy()
        counts[key] += 1
        try:
            if st.mode == "vetoed":
                series.file.add_ids("vetoed", [res.image_id])
                series.file.set_counts(counts)
            else:
                series.file.write(res.chunk, st, res.peaks, counts=counts)
        except Exception as e:
            self.report.fail(f"series {series.id}: image {res.image_id} could not be written: "
                             f"{type(e).__name__}: {e}")
            self.report.reject(series, res.image_id)
            return
        series.count(key)
        series.t_last, series.cpu_last = time.perf_counter(), time.process_time()
        series.latencies.append(series.t_last - res.t_arrival)
        self.stats.frame(st, series.t_last - res.t_arrival)

    def _finish(self, series: SeriesState, reason: Optional[str]) -> None:
        c = series.counts_copy()
        if self.settings.receiver:  # one receiver of several: the series' count and what it misses are the master's
            c["expected"] = c["received"]
        c["missing"] = max(0, c["expected"] - c["received"]) if c["expected"] else 0
        with series.lock:
            series.counts["missing"], series.counts["expected"] = c["missing"], c["expected"]
        if series.file is None and self._openable(series):
            self._open(series, series.shape, series.dtype)  # an empty series still leaves its record
        try:
            if series.file is not None:
                self._save_ids(series)
                series.file.set_counts(c)
                series.file.close()
        except Exception as e:
            self.report.fail(f"series {series.id}: closing {series.path} failed: {type(e).__name__}: {e}")
        summary = self._summary(series, c, reason)
        lost = c["dropped"] + c["rejected"] + c["missing"]
        text = (f"series {series.id} closed ({summary['ended']}): {c['received']} received, {c['written']} written, "
                f"{c['sparse']} sparse, {c['vetoed']} vetoed, {c['dropped']} dropped, {c['rejected']} rejected, "
                f"{c['missing']} missing of {c['expected']} -> {summary['path']}")
        (log.warning if lost or reason else log.info)(text)
        series.summary = summary
        self.stats.series_finished(summary)
        series.closed.set()

    @staticmethod
    def _summary(series: SeriesState, c: dict, reason: Optional[str]) -> dict:
        done = c["written"] + c["sparse"] + c["vetoed"]
        span = (series.t_last - series.t_first) if series.t_first is not None and series.t_last is not None else 0.0
        lat = np.array(series.latencies) * 1e3
        with series.lock:
            steps = dict(series.cpu_steps)
        return {"series_id": series.id, "series_unique_id": series.uid,
                "path": str(series.path) if series.file is not None else None, "counts": c,
                "seconds": round(time.perf_counter() - series.t0, 3),
                # from the first image's arrival to the last frame's flush
                "frames_seconds": round(span, 4), "fps": done / span if span > 0 else None,
                # the whole process's CPU time over that span (every thread): what a frame costs, whatever else runs
                "cpu_ms_per_frame": 1e3 * (series.cpu_last - series.cpu_first) / done
                if done and series.cpu_first is not None and series.cpu_last is not None else None,
                # where that time went: each step's CPU time (its thread's), per frame
                "cpu_ms_per_frame_by_step": {k: 1e3 * v / done for k, v in steps.items()} if done else {},
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
                "ended": "end message" if reason is None else reason}
