"""The receiving side of an acquisition: each message off the socket is parsed and handled on
the caller's thread. A start message opens a series (its file path, pixel mask, JUNGFRAU
calibration, checked sizes), an image is checked from what it declares and admitted to the
worker pool (or dropped when the pool is full, on_full="drop"), an end message closes the
series through the writer thread. Whatever a message raises is logged and counted."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..codec import SUPPORTED_DTYPES
from .filewriter import SeriesWriter
from .indicators import LiveStats
from .pool import WorkerPool
from .protocol import EncodedArray, EndMessage, ImageMessage, StartMessage, StreamError, parse_message
from .series import free_name
from .state import Reporter, SeriesState
from .worker import WIDEN, work

__all__ = ["Receiver"]

log = logging.getLogger("redml_reduce.acquire")


class Receiver:
    """out: the file of a series ("{series}" replaced by its series_id); settings: the
    AcquireSettings; codecs: the CodecSettings of "q" and "sparse" frames. `current` is the
    open series, `series` every series so far."""

    def __init__(self, out: str, settings, codecs: dict, stats: LiveStats, pool: WorkerPool, writer: SeriesWriter,
                 report: Reporter):
        self.out = out
        self.settings = settings
        self.codecs = codecs
        self.stats = stats
        self.pool = pool
        self.writer = writer
        self.report = report
        self.current: Optional[SeriesState] = None
        self.series: list[SeriesState] = []
        self.last_message_t = time.perf_counter()

    def feed(self, raw, t_arrival: Optional[float] = None) -> None:
        """Handles one message (bytes as they came off the socket)."""
        t = time.perf_counter() if t_arrival is None else t_arrival
        self.last_message_t = t
        t_cpu = time.thread_time()
        try:
            msg = parse_message(raw)
        except StreamError as e:
            self.report.error(f"malformed message of {len(raw)} bytes ignored: {e}")
            self.stats.count("malformed")
            return
        try:
            if isinstance(msg, StartMessage):
                self._on_start(msg)
            elif isinstance(msg, ImageMessage):
                self._on_image(msg, t)
                if self.current is not None:  # what receiving an image costs this thread
                    self.current.add_cpu({"receive": time.thread_time() - t_cpu})
            elif isinstance(msg, EndMessage):
                self._on_end(msg)
        except Exception as e:  # the handlers count what they refuse; this is for what they did not foresee
            log.exception("%s message", msg.type)
            self.report.error(f"{msg.type} message of {len(raw)} bytes could not be handled: {type(e).__name__}: {e}")
            self.stats.count("malformed")

    def _path_for(self, start: StartMessage) -> Path:
        p = Path(self.out.format(series=start.series_id, series_id=start.series_id)) if "{" in self.out \
            else Path(self.out)
        # a series' file appears at its first frame: the names of earlier series count as taken already
        taken = {x.path for x in self.series}
        if self.settings.overwrite or not (p.exists() or p in taken):
            return p
        alt = free_name(p, taken)
        log.warning("%s exists: series %d goes to %s", p, start.series_id, alt)
        return alt

    @staticmethod
    def _raw_jungfrau(series: SeriesState, msg: StartMessage) -> None:
        """Raw JUNGFRAU images: the series converts them to photons (int16 where the calibration
        cannot reach its ends, else int32: Calibration.photon_dtype) with the start
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
        series.shape, series.dtype = tuple(calib.image_shape()), calib.photon_dtype()
        # The start message's saturation value counts raw words; the file and the indicators hold
        # photons, whose overloads are the type's maximum and bad pixels its minimum: every value
        # between is a count (the photon type is chosen so that no count reaches either end),
        # negative ones included (noise around an empty pixel's pedestal).
        msg.saturation_value = int(np.iinfo(series.dtype).max) - 1
        msg.underload_value = int(np.iinfo(series.dtype).min) + 1

    def _check_size(self, name: str, a: EncodedArray) -> None:
        """Refuses an array whose decoded size exceeds max_array_bytes, before decoding it."""
        if a.nbytes > self.settings.max_array_bytes:
            raise StreamError(f"{name} of shape {a.shape} {a.dtype} would take {a.nbytes} bytes decoded, more than "
                              f"max_array_bytes ({self.settings.max_array_bytes})")

    def _new_series(self, msg: StartMessage) -> SeriesState:
        """The series of a start message; StreamError when the series cannot be taken."""
        if msg.shape is not None and msg.dtype is not None:
            self._check_size("frames", EncodedArray(msg.shape, WIDEN.get(msg.dtype, msg.dtype), b""))
        series = SeriesState(msg, self._path_for(msg))
        if msg.jungfrau_calibration is not None:
            try:
                for k in ("pedestal", "gain", "mask"):
                    if msg.jungfrau_calibration.get(k) is not None:
                        self._check_size(f"JUNGFRAU calibration {k}", msg.jungfrau_calibration[k])
                self._raw_jungfrau(series, msg)
            except (StreamError, ValueError) as e:
                self.report.error(f"series {msg.series_id}: JUNGFRAU calibration unusable ({e}); its images will be rejected")
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
            self.report.error(f"series {msg.series_id}: pixel mask unusable ({mask_error}); continuing without it")
        return series

    def _on_start(self, msg: StartMessage) -> None:
        if self.current is not None:
            self.report.error(f"start of series {msg.series_id} while series {self.current.id} is open "
                        "(its end message never came): closing it")
            self.close_series("a new series started before its end message")
        try:
            series = self._new_series(msg)
        except StreamError as e:
            self.report.error(f"start of series {msg.series_id} refused: {e}; its images will be ignored")
            self.stats.count("malformed")
            return
        if msg.geometry is None:
            unindexed = "; its hits cannot be indexed" if self.settings.cell is not None else ""
            self.report.error(f"series {msg.series_id}: {msg.geometry_error}; the file will not be NXmx{unindexed}")
        self.current = series
        self.series.append(series)
        self.writer.open_series(series)
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
        series = self.current
        if series is None:
            self.report.error(f"image {msg.image_id} of series {msg.series_id} outside a series (no start message): ignored")
            self.stats.count("orphans")
            return
        if msg.series_id != series.id or (msg.series_unique_id and series.uid and msg.series_unique_id != series.uid):
            self.report.error(f"image {msg.image_id} of series {msg.series_id} ({msg.series_unique_id}) during series "
                        f"{series.id} ({series.uid}): ignored")
            self.stats.count("orphans")
            return
        series.count("received")
        if series.t_first is None:
            series.t_first, series.cpu_first = t, time.process_time()
        self.stats.received(msg.wire_bytes)
        try:
            self._admit(series, msg, t)
        except Exception as e:  # from here on an image is counted: whatever it raises, it is rejected
            if not isinstance(e, StreamError):
                log.exception("series %d image %d", series.id, msg.image_id)
            self.report.error(f"series {series.id}: image {msg.image_id} rejected: {e}")
            self.report.reject(series, msg.image_id)

    def _admit(self, series: SeriesState, msg: ImageMessage, t: float) -> None:
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
        if not self.pool.take():
            series.count("dropped", msg.image_id)
            self.stats.count("dropped")
            if series.counts["dropped"] in (1, 10, 100) or series.counts["dropped"] % 1000 == 0:
                self.report.error(f"series {series.id}: the encoder is behind: {series.counts['dropped']} frames dropped so far")
            return
        fut = self.pool.submit(work, series, msg.image_id, enc, t, self.settings, self.codecs, self.stats)
        self.writer.frame(series, fut)

    def _check_frame(self, series: SeriesState, enc: EncodedArray) -> None:
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
    def _on_end(self, msg: EndMessage) -> None:
        series = self.current
        if series is None:
            self.report.error(f"end of series {msg.series_id} without its start: ignored")
            return
        if msg.series_id != series.id or (msg.series_unique_id and series.uid and msg.series_unique_id != series.uid):
            self.report.error(f"end of series {msg.series_id} during series {series.id}: ignored")
            return
        self.close_series(None)

    def close_series(self, reason: Optional[str]) -> Optional[SeriesState]:
        """Closes the open series after its admitted frames are written (reason: why it ended
        early, None for its end message). Returns it; its .closed event is set once done."""
        series, self.current = self.current, None
        if series is not None:
            series.closing = True
            self.writer.close_series(series, reason)
        return series
