"""What an acquisition knows while it runs: the record of one series (its counts, the ids of
the images not stored, its frames' shape and dtype, its file) and where errors are reported
(the log, the live indicators, and the first one that stops the service)."""
from __future__ import annotations

import logging
import threading
import time
from array import array
from pathlib import Path
from typing import Optional

import numpy as np

from .indicators import COUNT_NAMES, LiveStats
from .protocol import StartMessage
from .series import SeriesFile
from .worker import WIDEN

__all__ = ["SeriesState", "Reporter"]

log = logging.getLogger("redml_reduce.acquire")


class SeriesState:
    """One series from its start message to its summary; counts and id lists under a lock
    (the receiver and the writer thread both update them)."""

    def __init__(self, start: StartMessage, path: Path):
        self.start = start
        self.id, self.uid = start.series_id, start.series_unique_id
        self.path = path
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        self.counts["expected"] = start.number_of_images or 0
        self.unsaved_ids = {"dropped": [], "rejected": [], "vetoed": []}
        self.seen: set = set()
        self.max_id = -1
        self.file: Optional[SeriesFile] = None
        self.file_error: Optional[str] = None
        self.shape = tuple(start.shape) if start.shape else None
        self.dtype = WIDEN.get(start.dtype, start.dtype) if start.dtype is not None else None
        self.bad: Optional[np.ndarray] = None
        self.pixel_mask: Optional[np.ndarray] = None
        self.calibration = None  # raw JUNGFRAU images: redml_reduce.jungfrau.calibration.Calibration
        self.t0 = time.perf_counter()
        self.t_first: Optional[float] = None  # first image's arrival
        self.t_last: Optional[float] = None  # last frame's flush
        self.cpu_first: Optional[float] = None  # the process's CPU seconds at those two moments
        self.cpu_last: Optional[float] = None
        self.latencies = array("d")  # seconds, arrival to flush (8 bytes a frame)
        self.cpu_steps: dict = {}  # CPU seconds of its frames by step (worker.STEPS), every thread's
        self.closing = False
        self.closed = threading.Event()
        self.summary: Optional[dict] = None

    def count(self, name: str, image_id: Optional[int] = None) -> None:
        with self.lock:
            self.counts[name] += 1
            if image_id is not None and name in self.unsaved_ids:
                self.unsaved_ids[name].append(image_id)

    def add_cpu(self, steps: dict) -> None:
        """Adds CPU seconds by step (the receiving and the writer threads both add theirs)."""
        with self.lock:
            for k, v in steps.items():
                self.cpu_steps[k] = self.cpu_steps.get(k, 0.0) + v

    def take_unsaved(self) -> dict:
        with self.lock:
            out, self.unsaved_ids = self.unsaved_ids, {k: [] for k in self.unsaved_ids}
            return out

    def counts_copy(self) -> dict:
        with self.lock:
            return dict(self.counts)


class Reporter:
    """Errors go to the log and the live indicators; `fatal` keeps the first one that stops
    the service (a series file that cannot be written loses every frame after it)."""

    def __init__(self, stats: LiveStats):
        self.stats = stats
        self.fatal: Optional[str] = None

    def error(self, text: str) -> None:
        log.error(text)
        self.stats.error(text)

    def fail(self, text: str) -> None:
        """A series file that cannot be written loses every frame after: never carry on silently."""
        self.error(text)
        if self.fatal is None:
            self.fatal = text

    def reject(self, series: SeriesState, image_id: int) -> None:
        series.count("rejected", image_id)
        self.stats.count("rejected")
