"""The frame workers of redml acquire: one image from its stream message to a chunk, through the
pipeline (raw JUNGFRAU words -> photons, spots -> ROI, encode), on a thread of the worker pool (pool.py).
With a known cell (AcquireSettings.cell, space_group) each hit is indexed from its spots and the
frame encoded by the per-frame policy (redml_reduce.pipeline.encode_by_policy)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..jungfrau import convert
from ..codec import encode_with_spots
from ..lattice import cell_of, index_still
from ..pipeline import encode, encode_by_policy
from ..spots import FinderSettings, roi_mask
from .indicators import FrameStats, LiveStats, analyse, thumbnail
from .compression import compress, declared_size
from .errors import StreamError
from .protocol import EncodedArray

__all__ = ["work", "passthrough", "Result", "WIDEN", "STEPS"]

log = logging.getLogger("redml_reduce.acquire")

WIDEN = {np.dtype("uint8"): np.dtype("uint16"), np.dtype("int8"): np.dtype("int16")}  # stored as the codec takes them


@dataclass
class Result:
    """What a worker made of one image, for the writer thread."""

    image_id: int
    t_arrival: float
    stats: Optional[FrameStats] = None
    chunk: Optional[bytes] = None
    peaks: Optional[np.ndarray] = None
    shape: Optional[tuple] = None
    dtype: Optional[np.dtype] = None
    error: Optional[str] = None
    cpu: dict = field(default_factory=dict)  # the worker thread's CPU seconds by step (STEPS)


# What a frame's CPU time goes to (the series summary's cpu_ms_per_frame_by_step): the workers'
# steps, then the writer thread's (its frames, the file's creation) and the receiving thread's.
STEPS = ("decode", "encode", "indicators", "thumbnail", "index", "write", "open", "receive")


def _lap(res: Result, step: str, t0: float) -> float:
    """Adds this thread's CPU seconds since t0 to res.cpu[step]; returns the time now."""
    t = time.thread_time()
    res.cpu[step] = res.cpu.get(step, 0.0) + (t - t0)
    return t


def work(series, image_id: int, enc: EncodedArray, t: float, s, codecs: dict, stats: LiveStats) -> Result:
    """One image of a series on a worker thread: decoded, converted to photons (raw JUNGFRAU),
    analysed, encoded by the pipeline (or stored as it came, codec bslz4). series: the
    server's record of it; s: the AcquireSettings; codecs: the CodecSettings of "q" and
    "sparse" frames. Never raises: what goes wrong is the result's error."""
    res = Result(image_id, t)
    lap = time.thread_time()
    try:
        if s.codec == "bslz4" and not s.spots and passthrough(series, enc):
            # the plain writer: the detector's chunk as it came, its size checked, not decoded
            if declared_size(enc.payload) != enc.nbytes:
                raise StreamError(f"bslz4 data declares {declared_size(enc.payload)} bytes, the frame needs "
                                  f"{enc.nbytes}")
            res.stats = FrameStats(image_id=image_id, raw_bytes=enc.nbytes, stored_bytes=len(enc.payload),
                                   mode="raw")
            res.chunk, res.shape, res.dtype = enc.payload, enc.shape, enc.dtype.newbyteorder("=")
            return res
        # shape and dtype were checked on arrival (receiver.py), from what the frame declares
        frame = enc.decode()
        if series.calibration is not None:  # raw JUNGFRAU words -> photons (bad words become markers)
            frame = convert(frame, series.calibration, series.dtype, nthreads=1, out=_photon_buffer(series))[0]
        if frame.dtype in WIDEN:
            frame = frame.astype(WIDEN[frame.dtype])
        lap = _lap(res, "decode", lap)
        bad = series.bad if series.bad is not None and series.bad.shape == frame.shape else None
        peaks, finder = None, s.finder_fields()
        if s.codec != "bslz4" and s.spots and s.veto == "none" and s.cell is None:
            # stored at q whatever its spots say (no per-frame policy): the encoder's spot search
            # gives the indicators theirs
            res.chunk, peaks = encode_with_spots(frame, mask=bad, nthreads=1, settings=codecs["q"],
                                                 finder=FinderSettings(**finder))
            lap = _lap(res, "encode", lap)
        st, peaks, spot_mask = analyse(frame, bad=bad, geometry=series.start.geometry,
                                       saturation=series.start.saturation_value, min_spots=s.min_spots,
                                       spots=s.spots, finder=finder, image_id=image_id, hit_model=s.hit_model,
                                       peaks=peaks)
        lap = _lap(res, "indicators", lap)
        if st.hit and stats.want_thumbnail():
            img, factor = thumbnail(frame, bad)
            stats.set_latest_hit(image_id, img, factor, peaks)
            lap = _lap(res, "thumbnail", lap)
        if s.codec == "bslz4":
            res.chunk = enc.payload if passthrough(series, enc) else compress(frame, "bslz4")
            st.mode = "raw"
        elif st.hit is False and s.veto == "drop":
            st.mode = "vetoed"
        elif res.chunk is not None:
            st.mode, st.roi_kind = "q", "classical"
        else:
            mode = "sparse" if st.hit is False and s.veto == "sparse" else "q"
            roi = roi_mask(spot_mask, codecs["q"].roi_margin, nthreads=1) if spot_mask is not None else None
            if s.cell is not None and mode == "q":
                crystals = _index(st, peaks, series.start.geometry, s)
                lap = _lap(res, "index", lap)
                res.chunk, st.roi_kind = encode_by_policy(frame, codecs[mode], crystals, geometry=series.start.geometry,
                                                          mask=bad, nthreads=1, found=(peaks, roi), hit=st.hit)
            else:
                res.chunk = encode(frame, roi=roi, mask=bad, nthreads=1, settings=codecs[mode])
                st.roi_kind = "classical"  # the finder's region, or the encoder's own rule without spots
            st.mode = mode
        _lap(res, "encode", lap)  # the branches above that encode (or compress) the frame
        st.stored_bytes = len(res.chunk) if res.chunk is not None else 0
        res.stats, res.peaks, res.shape, res.dtype = st, peaks, frame.shape, frame.dtype
    except StreamError as e:
        res.error = str(e)
    except Exception as e:  # never lose a frame without a record
        log.exception("series %d image %d", series.id, image_id)
        res.error = f"{type(e).__name__}: {e}"
    return res


def _index(st: FrameStats, peaks, geometry, s) -> list:
    """The crystals of a frame: a hit indexed from its spots with the known cell (st records
    the outcome and the cell found); [] for a blank, a hit that does not index, or a series
    without geometry (its hits cannot be indexed)."""
    if not st.hit or geometry is None or peaks is None:
        return []
    try:
        found = index_still(peaks, geometry, s.cell, s.space_group)
    except Exception as e:  # the frame is still stored (as a hit that did not index), never lost for this
        log.warning("image %d: indexing failed: %s: %s", st.image_id, type(e).__name__, e)
        found = None
    st.indexed = found is not None
    if found is None:
        return []
    st.cell = cell_of(found.A)
    st.orientation = tuple(float(v) for v in found.A.reshape(-1))
    return found.crystals()  # [] where the lattice explains too few spots: coded as a hit


_local = threading.local()


def _photon_buffer(series) -> np.ndarray:
    """The worker thread's own photon frame (the series' shape and dtype), reused frame after
    frame (a frame is done with before the thread takes the next): no fresh frame-sized array,
    no page faults, per frame."""
    buf = getattr(_local, "photons", None)
    if buf is None or buf.shape != tuple(series.shape) or buf.dtype != series.dtype:
        buf = _local.photons = np.empty(series.shape, series.dtype)
    return buf


def passthrough(series, enc: EncodedArray) -> bool:
    """Whether the detector's chunk can be stored as it came (codec bslz4)."""
    dt = enc.dtype.newbyteorder("=")
    return (enc.compression == "bslz4" and enc.dtype.isnative and enc.elem_size == enc.dtype.itemsize
            and not enc.column_major and dt not in WIDEN and len(enc.shape) == 2
            and (series.shape is None or tuple(enc.shape) == series.shape)
            and (series.dtype is None or dt == series.dtype))
