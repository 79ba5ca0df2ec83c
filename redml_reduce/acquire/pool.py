"""The frame workers' thread pool and its back-pressure: between arrival and flush a frame
holds one of max_pending slots; when all are taken the receiver waits for one
(on_full="block") or the frame is dropped (on_full="drop")."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .indicators import LiveStats

__all__ = ["WorkerPool"]


class WorkerPool:
    """settings: the AcquireSettings (workers, max_pending, on_full); stop: once set, a
    blocked take() gives up."""

    def __init__(self, settings, stats: LiveStats, stop: threading.Event):
        self.settings = settings
        self.stats = stats
        self._stop = stop
        self._slots = threading.Semaphore(settings.n_pending)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=settings.n_workers, thread_name_prefix="redml-encode")

    def take(self) -> bool:
        """A slot for one frame: False when none is free (on_full="drop") or on stop."""
        if self.settings.on_full == "drop":
            ok = self._slots.acquire(blocking=False)
        else:
            ok = False
            while not ok and not self._stop.is_set():
                ok = self._slots.acquire(timeout=0.25)
        if ok:
            self._set_pending(+1)
        return ok

    def give(self) -> None:
        """Gives back a frame's slot (once it is flushed, or refused)."""
        self._set_pending(-1)
        self._slots.release()

    def submit(self, fn, *args) -> Future:
        """Runs fn(*args) on a worker for a frame holding a slot; the slot comes back if that fails."""
        try:
            return self._pool.submit(fn, *args)
        except BaseException:
            self.give()
            raise

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _set_pending(self, step: int) -> None:
        with self._pending_lock:
            self._pending += step
            self.stats.set_pending(self._pending)
