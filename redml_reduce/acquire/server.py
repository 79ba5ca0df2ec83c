"""Acquisition: a detector stream in, one compressed NXmx file per series out, live indicators.

    acq = Acquisition("run.nxs", AcquireSettings(q=1, veto="sparse"))
    acq.serve("tcp://detector:31001", max_series=1)      # or acq.feed(message) yourself
    acq.stats.snapshot()                                   # what the dashboard shows

Threads: the caller's receives (serve, here), parses messages (protocol.py) and admits frames
(receiver.py); a pool of workers (pool.py, worker.py) decompresses, analyses (indicators.py:
spots, hit, resolution, background) and encodes them (the C++ core releases the GIL); one
writer thread (filewriter.py) appends them in arrival order to the series file (series.py;
FrameWriter flushes every frame, SWMR). Between arrival and flush a frame holds one of
max_pending slots. When all are taken the receiver waits
(on_full="block": the ZeroMQ queue, bounded to rcv_hwm messages, fills and the detector's
sends block) or drops the frame (on_full="drop": counted, its image_id recorded in the
file). Memory stays bounded by about max_pending + rcv_hwm frames in either case.

Nothing is lost silently. Per series, received = written + sparse + vetoed + dropped +
rejected, and missing = number_of_images - received; each image_id not stored is listed in
the file by reason. Malformed messages, images outside a series or of another series,
duplicates and undecodable frames are logged, counted and skipped; a start while a series
is open closes that series first; a series whose end never comes is closed after
idle_timeout_s of silence. The service itself never stops on bad input: whatever handling a
message raises is logged and counted (an image as rejected in its series). A series file
it cannot create or write does stop it (Acquisition.fatal says why): every frame after it
would be lost.

Memory is bounded before anything is decompressed: a series' frames have one shape and
dtype (the start message's, or the first image's when it gives none), and an image that
declares another, or any array (frame, pixel mask, calibration map) larger than
max_array_bytes once decoded, is refused on arrival.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ..codec import CodecSettings, QLike
from ..spots import FinderSettings
from .filewriter import SeriesWriter
from .indicators import LiveStats, print_status
from .pool import WorkerPool
from .receiver import Receiver
from .state import Reporter

__all__ = ["AcquireSettings", "Acquisition"]

log = logging.getLogger("redml_reduce.acquire")

VETO = ("none", "sparse", "drop")
ON_FULL = ("block", "drop")
CODECS = ("redml", "bslz4")


@dataclass
class AcquireSettings:
    """q: redml's knob (0 lossless, > 0 bounded, "sparse"); codec "bslz4" stores the
    detector's bitshuffle-LZ4 frames as they came (compressing those that came raw) instead.
    veto: non-hits (fewer than min_spots spots) stored at q ("none"), as "sparse", or not at
    all ("drop"). workers: encoder threads (0: one per core it may use). max_pending: frames between
    arrival and flush (0: 2 * workers + 2). on_full: "block" or "drop". channel: the image
    channel to store (default: the first of the start message). hit_model: "unet" lets the
    learned global model (redml_reduce.ml, the [ml] extra) decide hits for the veto and the
    live indicators (hit probability >= 0.5, its resolution estimate). max_array_bytes: the
    largest array (frame, pixel mask, calibration map) a message may declare, decoded; larger
    ones are refused before decompression (256 MiB: a 16M detector's uint32 frames fit).
    receiver: "K/N" when this is receiver K of N sharing the stream (fanout.py): a series'
    file says so and counts what this receiver got (expected = received); the master file
    counts what they all missed. cell, space_group: the crystal's known unit cell
    (a, b, c, alpha, beta, gamma, or "a,b,c,al,be,ga") and space-group symbol: each hit is
    indexed from its spots (redml_reduce.lattice.index_still, with the start message's
    geometry) and the frames are stored by the per-frame policy
    (redml_reduce.pipeline.encode_by_policy): indexed hits keep every predicted reflection's
    disc exact and draw the rest, hits that do not index are decoded by the midpoint,
    blanks drawn; the file records each frame's kind, the live indicators the indexing
    rate and the median cell found."""

    q: QLike = 1.0
    codec: str = "redml"
    veto: str = "none"
    min_spots: int = 10
    spots: bool = True
    workers: int = 0
    max_pending: int = 0
    on_full: str = "block"
    rcv_hwm: int = 4
    channel: Optional[str] = None
    idle_timeout_s: float = 60.0
    max_message_bytes: int = 1 << 30
    max_array_bytes: int = 1 << 28
    overwrite: bool = False
    peaks: bool = True
    codec_settings: dict = field(default_factory=dict)
    finder: dict = field(default_factory=dict)
    hit_model: Optional[str] = None
    receiver: Optional[str] = None
    cell: Optional[tuple] = None
    space_group: Optional[str] = None

    def __post_init__(self):
        if self.hit_model is not None:
            from ..pipeline import require_torch

            require_torch().load(self.hit_model)  # a missing model or torch fails here, not per frame
        if self.veto not in VETO:
            raise ValueError(f"veto must be one of {VETO}, not {self.veto!r}")
        if self.on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {ON_FULL}, not {self.on_full!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, not {self.codec!r}")
        if self.veto != "none" and not self.spots:
            raise ValueError("the veto needs spot finding (spots=True)")
        if self.veto != "none" and self.codec != "redml":
            raise ValueError("the veto needs the redml codec")
        CodecSettings(q=self.q, **self.codec_settings).check_encodable()  # refused before any file exists
        FinderSettings(**self.finder_fields())
        self._check_lattice()
        for name in ("workers", "max_pending", "min_spots"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_array_bytes < 1:
            raise ValueError("max_array_bytes must be >= 1")
        if self.rcv_hwm < 1:
            raise ValueError("rcv_hwm must be >= 1")

    def finder_fields(self) -> dict:
        """The spot finder's settings: the detector's noise model from codec_settings (gain,
        markers, read_noise: integrating detectors' negative values are noise there too),
        overridden by `finder`."""
        codec = CodecSettings(q=self.q, **self.codec_settings)
        return {"gain": codec.gain, "markers": codec.markers, "read_noise": codec.read_noise, **self.finder}

    def _check_lattice(self) -> None:
        if (self.cell is None) != (self.space_group is None):
            raise ValueError("indexing needs both the unit cell and the space group")
        if self.cell is None:
            return
        from ..lattice import centring, parse_cell

        self.cell = parse_cell(self.cell)
        centring(self.space_group)  # a symbol it cannot read is refused here, not per frame
        if self.codec != "redml" or not self.spots:
            raise ValueError("indexing (cell, space_group) needs the redml codec and spot finding")

    @property
    def n_workers(self) -> int:
        return self.workers or usable_cores()

    @property
    def n_pending(self) -> int:
        return self.max_pending or 2 * self.n_workers + 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share,
    not every core of the machine)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


class Acquisition:
    """Receives Stream V2 messages and writes one file per series (see the module docstring).

    out: the file of a series; "{series}" is replaced by its series_id; an existing file is
    never overwritten (a "-1", "-2", ... suffix is added) unless settings.overwrite.
    """

    def __init__(self, out, settings: Optional[AcquireSettings] = None, stats: Optional[LiveStats] = None):
        self.out = str(out)
        self.settings = settings or AcquireSettings()
        self.stats = stats or LiveStats()
        s = self.settings
        _set_up_hdf5plugin(s.codec)  # before any thread starts
        codecs = {"q": CodecSettings(q=s.q, **s.codec_settings),
                  "sparse": CodecSettings(q="sparse", **s.codec_settings)}
        self._stop = threading.Event()
        self._report = Reporter(self.stats)
        self._pool = WorkerPool(s, self.stats, self._stop)
        self.writer = SeriesWriter(s, codecs, self.stats, self._pool, self._report)
        self.receiver = Receiver(self.out, s, codecs, self.stats, self._pool, self.writer, self._report)
        self._closed = False

    @property
    def series(self) -> list:
        """Every series so far (SeriesState), the open one last."""
        return self.receiver.series

    @property
    def fatal(self) -> Optional[str]:
        """Why frames could not be stored (no file, failed write): serve() stops."""
        return self._report.fatal

    @property
    def last_message_t(self) -> float:
        return self.receiver.last_message_t

    def feed(self, raw, t_arrival: Optional[float] = None) -> None:
        """Handles one message (bytes as they came off the socket)."""
        self.receiver.feed(raw, t_arrival)

    def close_series(self, reason: Optional[str]):
        """Closes the open series after its admitted frames are written (reason: why it ended
        early, None for its end message). Returns it; its .closed event is set once done."""
        return self.receiver.close_series(reason)

    def serve(self, endpoint: str, *, bind: bool = False, max_series: int = 1, stop: Optional[threading.Event] = None,
              wait_s: Optional[float] = None, status_every_s: float = 0.0, status_stream=None) -> list:
        """Receives from a ZeroMQ PUSH socket (connect, or bind) until max_series series
        have ended (0: until `stop` is set), or wait_s seconds without any series.
        status_every_s > 0 prints a status line that often. Returns the series summaries."""
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, int(self.settings.rcv_hwm))
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.settings.max_message_bytes))
        sock.setsockopt(zmq.LINGER, 0)
        (sock.bind if bind else sock.connect)(endpoint)
        stop = stop or self._stop
        ended = 0
        t_begin = last_status = time.perf_counter()
        try:
            while not stop.is_set() and self.fatal is None:
                if sock.poll(100):
                    raw = sock.recv()
                    had = self.receiver.current
                    self.feed(raw, time.perf_counter())
                    if had is not None and self.receiver.current is not had:
                        ended += 1
                now = time.perf_counter()
                if self.receiver.current is not None and now - self.last_message_t > self.settings.idle_timeout_s:
                    self._close_idle()
                    ended += 1
                if max_series and ended >= max_series:
                    break
                if wait_s is not None and not self.series and now - t_begin > wait_s:
                    log.error("no series started within %g s", wait_s)
                    break
                if status_every_s and now - last_status >= status_every_s:
                    last_status = now
                    print_status(self.stats, status_stream)
        finally:
            if self.receiver.current is not None:
                self.close_series("acquisition stopped")
            for s in self.series:
                while not s.closed.wait(0.5):
                    if status_every_s:
                        print_status(self.stats, status_stream)
            sock.close()
            if status_every_s:
                print_status(self.stats, status_stream, final=True)
        return [s.summary for s in self.series if s.summary is not None]

    def _close_idle(self) -> None:
        idle = self.settings.idle_timeout_s
        self._report.error(f"series {self.receiver.current.id}: no message for {idle:g} s "
                           "(end message missing): closing it")
        self.close_series(f"no message for {idle:g} s")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every series so far is closed."""
        t_end = None if timeout is None else time.monotonic() + timeout
        for s in list(self.series):
            left = None if t_end is None else max(0.0, t_end - time.monotonic())
            if s.closing and not s.closed.wait(left):
                return False
        return True

    def close(self) -> list:
        """Closes any open series, waits for the writer, stops the threads."""
        if self._closed:
            return [s.summary for s in self.series]
        self._stop.set()
        if self.receiver.current is not None:
            self.close_series("acquisition stopped")
        self.writer.stop()
        self._pool.shutdown()
        self._closed = True
        return [s.summary for s in self.series]

    def __enter__(self) -> "Acquisition":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _set_up_hdf5plugin(codec: str) -> None:
    """hdf5plugin's filters set up once, before the threads that use them start: the bslz4
    codec writes with them, and frames are decompressed with them when dectris-compression
    is missing. Without hdf5plugin, frames that need it are refused as before."""
    from ..formats.h5filter import load_hdf5plugin

    if codec != "bslz4":
        try:
            import dectris.compression  # noqa: F401  (the decoder that needs no hdf5plugin)
            return
        except ImportError:
            pass
    try:
        load_hdf5plugin()
    except ImportError:
        pass
