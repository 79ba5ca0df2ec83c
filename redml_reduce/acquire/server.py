"""Acquisition: a detector stream in, one compressed NXmx file per series out, live indicators.

    acq = Acquisition("run.nxs", AcquireSettings(q=1, veto="sparse"))
    acq.serve("tcp://detector:31001", max_series=1)      # or acq.feed(message) yourself
    acq.stats.snapshot()                                   # what the dashboard shows

Threads: the caller's receives and parses messages (stream.py) and admits frames; a pool of
workers decompresses, analyses (indicators.py: spots, hit, resolution, background) and
encodes them (the C++ core releases the GIL); one writer appends them in arrival order to
the series file (acqfile.py; FrameWriter flushes every frame, SWMR). Between arrival and
flush a frame holds one of max_pending slots. When all are taken the receiver waits
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
from array import array
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..codec import SUPPORTED_DTYPES, CodecSettings, QLike
from ..spots import FinderSettings
from .indicators import COUNT_NAMES, LiveStats, print_status
from .protocol import EncodedArray, EndMessage, ImageMessage, StartMessage, StreamError, parse_message
from .series import SeriesFile
from .worker import WIDEN, Result, work

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
    all ("drop"). workers: encoder threads (0: one per core). max_pending: frames between
    arrival and flush (0: 2 * workers + 2). on_full: "block" or "drop". channel: the image
    channel to store (default: the first of the start message). hit_model: "unet" lets the
    learned global model (redml_reduce.ml, the [ml] extra) decide hits for the veto and the
    live indicators (hit probability >= 0.5, its resolution estimate). max_array_bytes: the
    largest array (frame, pixel mask, calibration map) a message may declare, decoded; larger
    ones are refused before decompression (256 MiB: a 16M detector's uint32 frames fit)."""

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
        CodecSettings(q=self.q, **self.codec_settings)  # refuse bad settings before any file exists
        FinderSettings(**self.finder)
        for name in ("workers", "max_pending", "min_spots"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_array_bytes < 1:
            raise ValueError("max_array_bytes must be >= 1")
        if self.rcv_hwm < 1:
            raise ValueError("rcv_hwm must be >= 1")

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def n_pending(self) -> int:
        return self.max_pending or 2 * self.n_workers + 2


class _Series:
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
        self.latencies = array("d")  # seconds, arrival to flush (8 bytes a frame)
        self.closing = False
        self.closed = threading.Event()
        self.summary: Optional[dict] = None

    def count(self, name: str, image_id: Optional[int] = None) -> None:
        with self.lock:
            self.counts[name] += 1
            if image_id is not None and name in self.unsaved_ids:
                self.unsaved_ids[name].append(image_id)

    def take_unsaved(self) -> dict:
        with self.lock:
            out, self.unsaved_ids = self.unsaved_ids, {k: [] for k in self.unsaved_ids}
            return out

    def counts_copy(self) -> dict:
        with self.lock:
            return dict(self.counts)


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
        self._codec = {"q": CodecSettings(q=s.q, **s.codec_settings),
                       "sparse": CodecSettings(q="sparse", **s.codec_settings)}
        self._slots = threading.Semaphore(s.n_pending)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=s.n_workers, thread_name_prefix="redml-encode")
        self._wq: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._writer_loop, name="redml-writer", daemon=True)
        self._writer.start()
        self._series: Optional[_Series] = None
        self.series: list[_Series] = []
        self.last_message_t = time.perf_counter()
        self._stop = threading.Event()
        self._closed = False
        self.fatal: Optional[str] = None  # why frames could not be stored (no file, failed write): serve() stops

    # ------------------------------------------------------------------ receiver side
    def feed(self, raw, t_arrival: Optional[float] = None) -> None:
        """Handles one message (bytes as they came off the socket)."""
        t = time.perf_counter() if t_arrival is None else t_arrival
        self.last_message_t = t
        try:
            msg = parse_message(raw)
        except StreamError as e:
            self._error(f"malformed message of {len(raw)} bytes ignored: {e}")
            self.stats.count("malformed")
            return
        try:
            if isinstance(msg, StartMessage):
                self._on_start(msg)
            elif isinstance(msg, ImageMessage):
                self._on_image(msg, t)
            elif isinstance(msg, EndMessage):
                self._on_end(msg)
        except Exception as e:  # the handlers count what they refuse; this is for what they did not foresee
            log.exception("%s message", msg.type)
            self._error(f"{msg.type} message of {len(raw)} bytes could not be handled: {type(e).__name__}: {e}")
            self.stats.count("malformed")

    def _error(self, text: str) -> None:
        log.error(text)
        self.stats.error(text)

    def _fail(self, text: str) -> None:
        """A series file that cannot be written loses every frame after: never carry on silently."""
        self._error(text)
        if self.fatal is None:
            self.fatal = text

    def _path_for(self, start: StartMessage) -> Path:
        p = Path(self.out.format(series=start.series_id, series_id=start.series_id)) if "{" in self.out \
            else Path(self.out)
        if self.settings.overwrite or not p.exists():
            return p
        k = 1
        while (alt := p.with_name(f"{p.stem}-{k}{p.suffix}")).exists():
            k += 1
        log.warning("%s exists: series %d goes to %s", p, start.series_id, alt)
        return alt

    @staticmethod
    def _raw_jungfrau(series: "_Series", msg: StartMessage) -> None:
        """Raw JUNGFRAU images: the series converts them to int32 photons with the start
        message's calibration, which is also stored in the file; with its geometry the images
        are assembled (as `redml compress --jungfrau-calibration` does), else raw module layout."""
        from ..jungfrau.calibration import Calibration
        from ..jungfrau.layout import MODULE_SHAPE, ModuleLayout

        c = msg.jungfrau_calibration
        pedestal = c["pedestal"].decode()
        geometry = None if c.get("geometry") is None else ModuleLayout.from_dict(
            c["geometry"], n_modules=pedestal.shape[1] // MODULE_SHAPE[0])
        calib = Calibration(pedestal, c["gain"].decode(), c["energy_keV"],
                            c["mask"].decode() if c.get("mask") is not None else None, geometry)
        if series.shape is not None and tuple(series.shape) != tuple(calib.frame_shape):
            raise StreamError(f"calibration for {calib.frame_shape} raw frames, the images are {series.shape}")
        series.calibration = calib
        series.shape, series.dtype = tuple(calib.image_shape()), np.dtype(np.int32)

    def _check_size(self, name: str, a: EncodedArray) -> None:
        """Refuses an array whose decoded size exceeds max_array_bytes, before decoding it."""
        if a.nbytes > self.settings.max_array_bytes:
            raise StreamError(f"{name} of shape {a.shape} {a.dtype} would take {a.nbytes} bytes decoded, more than "
                              f"max_array_bytes ({self.settings.max_array_bytes})")

    def _new_series(self, msg: StartMessage) -> "_Series":
        """The series of a start message; StreamError when the series cannot be taken."""
        if msg.shape is not None and msg.dtype is not None:
            self._check_size("frames", EncodedArray(msg.shape, WIDEN.get(msg.dtype, msg.dtype), b""))
        series = _Series(msg, self._path_for(msg))
        if msg.jungfrau_calibration is not None:
            try:
                for k in ("pedestal", "gain", "mask"):
                    if msg.jungfrau_calibration.get(k) is not None:
                        self._check_size(f"JUNGFRAU calibration {k}", msg.jungfrau_calibration[k])
                self._raw_jungfrau(series, msg)
            except (StreamError, ValueError) as e:
                self._error(f"series {msg.series_id}: JUNGFRAU calibration unusable ({e}); its images will be rejected")
                series.shape, series.dtype = (-1, -1), None  # raw words are never stored as photons
        mask_error = msg.pixel_mask_error
        if msg.pixel_mask is not None:
            try:
                self._check_size("pixel mask", msg.pixel_mask)
                geo = series.calibration.geometry if series.calibration is not None else None
                raw_layout = geo is not None and tuple(msg.pixel_mask.shape) == geo.raw_shape
                if series.shape is not None and not raw_layout and tuple(msg.pixel_mask.shape) != series.shape:
                    raise StreamError(f"pixel mask has shape {msg.pixel_mask.shape}, the images {series.shape}")
                pm = msg.pixel_mask.decode()
                if raw_layout:  # raw JUNGFRAU module layout: assembled as the images are
                    pm = geo.assemble(pm, fill=1)  # gaps: NXmx bit 0
                series.pixel_mask = pm.astype(np.uint32)
                series.bad = pm != 0
            except StreamError as e:
                mask_error = str(e)
        if mask_error is not None:
            self._error(f"series {msg.series_id}: pixel mask unusable ({mask_error}); continuing without it")
        return series

    def _on_start(self, msg: StartMessage) -> None:
        if self._series is not None:
            self._error(f"start of series {msg.series_id} while series {self._series.id} is open "
                        "(its end message never came): closing it")
            self.close_series("a new series started before its end message")
        try:
            series = self._new_series(msg)
        except StreamError as e:
            self._error(f"start of series {msg.series_id} refused: {e}; its images will be ignored")
            self.stats.count("malformed")
            return
        if msg.geometry is None:
            self._error(f"series {msg.series_id}: {msg.geometry_error}; the file will not be NXmx")
        self._series = series
        self.series.append(series)
        self.stats.series_started({"series_id": msg.series_id, "series_unique_id": msg.series_unique_id,
                                   "path": str(series.path), "expected": msg.number_of_images,
                                   "shape": list(series.shape) if series.shape else None,
                                   "detector": msg.detector_description, "frames_done": 0})
        log.info("series %d (%s) started: %s images of %s -> %s", msg.series_id, msg.series_unique_id,
                 msg.number_of_images, series.shape, series.path)
        if len(msg.channels) > 1:
            log.info("series %d: storing channel %r of %s", msg.series_id, self.settings.channel or msg.channels[0],
                     msg.channels)

    def _on_image(self, msg: ImageMessage, t: float) -> None:
        series = self._series
        if series is None:
            self._error(f"image {msg.image_id} of series {msg.series_id} outside a series (no start message): ignored")
            self.stats.count("orphans")
            return
        if msg.series_id != series.id or (msg.series_unique_id and series.uid and msg.series_unique_id != series.uid):
            self._error(f"image {msg.image_id} of series {msg.series_id} ({msg.series_unique_id}) during series "
                        f"{series.id} ({series.uid}): ignored")
            self.stats.count("orphans")
            return
        series.count("received")
        if series.t_first is None:
            series.t_first = t
        self.stats.received(msg.wire_bytes)
        try:
            self._admit(series, msg, t)
        except Exception as e:  # from here on an image is counted: whatever it raises, it is rejected
            if not isinstance(e, StreamError):
                log.exception("series %d image %d", series.id, msg.image_id)
            self._error(f"series {series.id}: image {msg.image_id} rejected: {e}")
            self._reject(series, msg.image_id)

    def _admit(self, series: _Series, msg: ImageMessage, t: float) -> None:
        """Sends a received image to the workers, drops it (queue full), or raises StreamError."""
        if msg.image_id in series.seen:
            raise StreamError("received twice: the second copy is rejected")
        series.seen.add(msg.image_id)
        if msg.image_id < series.max_id:
            self.stats.count("out_of_order")
            log.warning("series %d: image %d after image %d (out of order; stored in arrival order)",
                        series.id, msg.image_id, series.max_id)
        series.max_id = max(series.max_id, msg.image_id)
        channel = self.settings.channel or (series.start.channels[0] if series.start.channels and
                                            series.start.channels[0] in msg.data else next(iter(msg.data)))
        enc = msg.data.get(channel)
        if enc is None:
            raise StreamError(f"no channel {channel!r}")
        self._check_frame(series, enc)
        if not self._take_slot():
            series.count("dropped", msg.image_id)
            self.stats.count("dropped")
            if series.counts["dropped"] in (1, 10, 100) or series.counts["dropped"] % 1000 == 0:
                self._error(f"series {series.id}: the encoder is behind: {series.counts['dropped']} frames dropped so far")
            return
        try:
            fut = self._pool.submit(work, series, msg.image_id, enc, t, self.settings, self._codec, self.stats)
        except BaseException:
            self._give_slot()
            raise
        self._wq.put(("frame", series, fut))

    def _check_frame(self, series: _Series, enc: EncodedArray) -> None:
        """Refuses a frame from what it declares, before it is decompressed: shape and dtype
        against the series (whose first frame fixes them when the start message did not),
        decoded size against max_array_bytes."""
        dt = enc.dtype.newbyteorder("=")
        if series.calibration is not None:  # raw JUNGFRAU words, converted by the worker
            shape, dtype = tuple(series.calibration.frame_shape), np.dtype(np.uint16)
        else:
            shape, dtype, dt = series.shape, series.dtype, WIDEN.get(dt, dt)
        if shape is not None and tuple(enc.shape) != tuple(shape):
            raise StreamError(f"frame of shape {enc.shape}, the series has {shape}")
        if dtype is not None and dt != dtype:
            raise StreamError(f"frame of dtype {dt}, the series has {dtype}")
        if self.settings.codec == "redml" and series.calibration is None and dt not in SUPPORTED_DTYPES:
            raise StreamError(f"frames of {dt} cannot be encoded by redml")
        self._check_size("frame", enc)
        if series.calibration is None and series.shape is None:
            series.shape = tuple(enc.shape)
        if series.calibration is None and series.dtype is None:
            series.dtype = dt

    def _reject(self, series: _Series, image_id: int) -> None:
        series.count("rejected", image_id)
        self.stats.count("rejected")

    def _take_slot(self) -> bool:
        if self.settings.on_full == "drop":
            ok = self._slots.acquire(blocking=False)
        else:
            ok = False
            while not ok and not self._stop.is_set():
                ok = self._slots.acquire(timeout=0.25)
        if ok:
            with self._pending_lock:
                self._pending += 1
                self.stats.set_pending(self._pending)
        return ok

    def _give_slot(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            self.stats.set_pending(self._pending)
        self._slots.release()

    def _on_end(self, msg: EndMessage) -> None:
        series = self._series
        if series is None:
            self._error(f"end of series {msg.series_id} without its start: ignored")
            return
        if msg.series_id != series.id or (msg.series_unique_id and series.uid and msg.series_unique_id != series.uid):
            self._error(f"end of series {msg.series_id} during series {series.id}: ignored")
            return
        self.close_series(None)

    def close_series(self, reason: Optional[str]) -> Optional[_Series]:
        """Closes the open series after its admitted frames are written (reason: why it ended
        early, None for its end message). Returns it; its .closed event is set once done."""
        series, self._series = self._series, None
        if series is not None:
            series.closing = True
            self._wq.put(("close", series, reason))
        return series

    # ------------------------------------------------------------------ writer thread
    def _writer_loop(self) -> None:
        while True:
            item = self._wq.get()
            try:
                if item[0] == "frame":
                    self._write_frame(item[1], item[2])
                elif item[0] == "close":
                    self._finish(item[1], item[2])
                elif item[0] == "stop":
                    return
            except Exception:  # the writer must outlive anything
                log.exception("writer")

    def _open(self, series: _Series, shape, dtype) -> Optional[SeriesFile]:
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
            series.file = SeriesFile(series.path, shape, dtype, geometry=st.geometry, pixel_mask=series.pixel_mask,
                                     nxmx=st.nxmx_options() if st.geometry is not None else None, filter=filt,
                                     codec_settings=self._file_codec(),
                                     attrs=attrs, start_fields=st.fields, peaks=s.peaks and s.spots,
                                     calibration=series.calibration)
        except Exception as e:
            series.file_error = f"{type(e).__name__}: {e}"
            self._fail(f"series {series.id}: cannot create {series.path}: {series.file_error}")
        return series.file

    def _file_codec(self) -> dict:
        """The dataset's filter options: the chosen q (blanks stored sparse say so in their chunks)."""
        return self._codec["q"].to_config()  # every field (codec.SETTINGS), recon included

    def _save_ids(self, series: _Series) -> None:
        if series.file is None:
            return
        for kind, ids in series.take_unsaved().items():
            if ids:
                series.file.add_ids(kind, ids)

    def _write_frame(self, series: _Series, fut) -> None:
        try:
            res: Result = fut.result()
        except Exception as e:  # _work catches everything; belt and braces
            res = Result(-1, time.perf_counter(), error=f"{type(e).__name__}: {e}")
        try:
            if res.error is None:
                f = self._open(series, series.shape or res.shape, series.dtype or res.dtype)
                if f is None:
                    res.error = f"no file ({series.file_error})"
            if res.error is not None:
                self._error(f"series {series.id}: image {res.image_id} rejected: {res.error}")
                self._reject(series, res.image_id)
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
                self._fail(f"series {series.id}: image {res.image_id} could not be written: {type(e).__name__}: {e}")
                self._reject(series, res.image_id)
                return
            series.count(key)
            series.t_last = time.perf_counter()
            series.latencies.append(series.t_last - res.t_arrival)
            self.stats.frame(st, series.t_last - res.t_arrival)
        finally:
            self._give_slot()

    def _finish(self, series: _Series, reason: Optional[str]) -> None:
        c = series.counts_copy()
        c["missing"] = max(0, c["expected"] - c["received"]) if c["expected"] else 0
        with series.lock:
            series.counts["missing"] = c["missing"]
        if series.file is None and series.shape is not None and series.dtype is not None and \
                (self.settings.codec != "redml" or series.dtype in SUPPORTED_DTYPES):
            self._open(series, series.shape, series.dtype)  # an empty series still leaves its record
        try:
            if series.file is not None:
                self._save_ids(series)
                series.file.set_counts(c)
                series.file.close()
        except Exception as e:
            self._fail(f"series {series.id}: closing {series.path} failed: {type(e).__name__}: {e}")
        done = c["written"] + c["sparse"] + c["vetoed"]
        span = (series.t_last - series.t_first) if series.t_first is not None and series.t_last is not None else 0.0
        lat = np.array(series.latencies) * 1e3
        summary = {"series_id": series.id, "series_unique_id": series.uid,
                   "path": str(series.path) if series.file is not None else None, "counts": c,
                   "seconds": round(time.perf_counter() - series.t0, 3),
                   # from the first image's arrival to the last frame's flush
                   "frames_seconds": round(span, 4), "fps": done / span if span > 0 else None,
                   "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                   "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
                   "ended": "end message" if reason is None else reason}
        lost = c["dropped"] + c["rejected"] + c["missing"]
        text = (f"series {series.id} closed ({summary['ended']}): {c['received']} received, {c['written']} written, "
                f"{c['sparse']} sparse, {c['vetoed']} vetoed, {c['dropped']} dropped, {c['rejected']} rejected, "
                f"{c['missing']} missing of {c['expected']} -> {summary['path']}")
        (log.warning if lost or reason else log.info)(text)
        series.summary = summary
        self.stats.series_finished(summary)
        series.closed.set()

    # ------------------------------------------------------------------ running
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
                    had = self._series
                    self.feed(raw, time.perf_counter())
                    if had is not None and self._series is not had:
                        ended += 1
                now = time.perf_counter()
                if self._series is not None and now - self.last_message_t > self.settings.idle_timeout_s:
                    self._error(f"series {self._series.id}: no message for {self.settings.idle_timeout_s:g} s "
                                "(end message missing): closing it")
                    self.close_series(f"no message for {self.settings.idle_timeout_s:g} s")
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
            if self._series is not None:
                self.close_series("acquisition stopped")
            for s in self.series:
                while not s.closed.wait(0.5):
                    if status_every_s:
                        print_status(self.stats, status_stream)
            sock.close()
            if status_every_s:
                print_status(self.stats, status_stream, final=True)
        return [s.summary for s in self.series if s.summary is not None]

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
        if self._series is not None:
            self.close_series("acquisition stopped")
        self._wq.put(("stop",))
        self._writer.join()
        self._pool.shutdown(wait=True)
        self._closed = True
        return [s.summary for s in self.series]

    def __enter__(self) -> "Acquisition":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
