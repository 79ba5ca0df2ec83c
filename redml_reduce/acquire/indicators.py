"""What a frame says about the experiment, and the rolling indicators of a run.

    st, spot_mask = analyse(frame, bad=mask, geometry=geom, saturation=65535)
    live = LiveStats();  live.frame(st, ...);  live.snapshot()   # JSON-ready dict

Per frame: spots (the built-in finder, DIALS's criterion), hit or not, background level
(mean of the good pixels on a 1-in-16 grid, clipped at 5 sigma), saturated pixels, the resolution of the
spots (the d-spacing beyond which only 5% of them lie: a robust high-resolution limit).
LiveStats keeps counts, the last few hundred frames (hit rate, spots per frame and per hit,
resolution, background, ratio, frames/s, latency; with a known cell, the indexing rate of the
hits and the median cell of the lattices found) and per-second history for the plots (the
ratio of hits and of the other frames apart).
Thread-safe: worker, writer and dashboard threads use one instance.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .. import _core
from ..arrays import as_map
from ..spots import find_spots

__all__ = ["FrameStats", "analyse", "frame_levels", "count_saturated", "resolution_limit", "thumbnail", "LiveStats", "COUNT_NAMES", "format_line", "print_status"]

# Per series; received = written + sparse + vetoed + dropped + rejected once a series ends.
COUNT_NAMES = ("received", "written", "sparse", "vetoed", "dropped", "rejected", "missing", "expected")


@dataclass
class FrameStats:
    image_id: int
    n_spots: int = -1  # -1: spot finding off
    hit: Optional[bool] = None
    resolution_a: float = math.nan
    background: float = math.nan
    saturated: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    mode: str = ""  # "q", "sparse", "vetoed" (not stored), "raw" (another codec)
    hit_probability: float = math.nan  # from the learned global model (hit_model=), else nan
    roi_kind: str = "unknown"  # what kept the frame exact (formats.writer.ROI_KINDS)
    indexed: Optional[bool] = None  # a hit indexed with the known cell (None: not tried)
    cell: Optional[tuple] = None  # the cell of the orientation found (a, b, c, alpha, beta, gamma)
    orientation: Optional[tuple] = field(default=None, repr=False)  # A = U B found, 9 values row by row


def resolution_limit(peaks: np.ndarray, geometry, fraction: float = 0.05) -> float:
    """d-spacing (Angstrom) beyond which only `fraction` of the spots lie; nan without spots."""
    if geometry is None or len(peaks) == 0:
        return math.nan
    d = geometry.resolution_at(peaks["x"], peaks["y"])
    d = d[np.isfinite(d)]
    return float(np.quantile(d, fraction)) if len(d) else math.nan


def analyse(frame: np.ndarray, *, bad=None, geometry=None, saturation: Optional[int] = None, min_spots: int = 10,
            spots: bool = True, finder: Optional[dict] = None, image_id: int = 0, hit_model: Optional[str] = None,
            peaks: Optional[np.ndarray] = None):
    """(FrameStats, peaks, spot_mask) of one frame; peaks and spot_mask are None with spots=False.
    peaks: the frame's spots when the caller found them already (then not searched again and
    spot_mask is None).

    hit_model: a learned global model ("unet", redml_reduce.ml; needs the [ml] extra) decides
    hit (its hit probability >= 0.5) and the resolution limit (from its lattice spots) instead
    of the spot count; the classical spots are still found (they make the ROI)."""
    st = FrameStats(image_id=image_id, raw_bytes=frame.nbytes)
    st.background, st.saturated = frame_levels(frame, saturation, bad)
    spot_mask = None
    if spots:
        if peaks is None:
            peaks, spot_mask = find_spots(frame, mask=bad, nthreads=1, **(finder or {}))
        st.n_spots = len(peaks)
        st.hit = st.n_spots >= min_spots
        st.resolution_a = resolution_limit(peaks, geometry)
    else:
        peaks = None
    if hit_model is not None:
        from ..pipeline import require_torch

        out = require_torch().load(hit_model).frame_outputs(frame, bad, geometry)
        st.hit_probability = out["hit_probability"]
        st.hit = st.hit_probability >= 0.5
        st.resolution_a = out["resolution_a"]
    return st, peaks, spot_mask


def frame_levels(frame: np.ndarray, saturation=None, bad=None, background: bool = True) -> tuple[float, int]:
    """(background, saturated) of a 2-D frame, in one pass of the core (no frame-sized
    temporary, no Python per pixel):

    background: the mean of the good pixels on the 1-in-4 grid of rows and columns (not bad,
        finite, not negative, below saturation), clipped at 5 sigma: the mean m of those,
        then the mean of those <= m + 5 sqrt(max(m, 1)) (Bragg spots and zingers away);
        nan without good pixels (or with background=False).
    saturated: pixels at or above saturation that are not bad (0 with saturation None).
    Comparisons are numpy's with a Python number: exact on integer frames, in the frame's
    precision on float ones. bad: nonzero = bad."""
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"frame must be 2-D, got {a.ndim} dimensions")
    if a.dtype.kind == "b" or a.dtype == np.float16:
        a = a.astype(np.float64)  # exact in float64
    elif a.dtype.kind not in "uif" or a.dtype.itemsize > 8:  # complex, strings, objects, long double: no exact cast
        raise TypeError(f"frame_levels: frames of numbers up to 64 bits, not {a.dtype}")
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    bg, n = _core.frame_levels(a, as_map(bad, a.shape, "bad"), *_saturated(a.dtype, saturation), background)
    return bg, int(n)


def _saturated(dtype: np.dtype, saturation) -> tuple[int, object]:
    """Which values of a frame of dtype are saturated, as the core takes it: (0, None) none,
    (1, None) all, (2, threshold) those >= threshold: numpy's comparison with a Python number
    (exact on integers: a threshold above the dtype's range reaches none, one at or below its
    minimum all; a float frame's is rounded to its precision by the core)."""
    if saturation is None:
        return 0, None
    if math.isnan(saturation):
        raise ValueError("the saturation value must be a number, not nan")
    if dtype.kind == "f":
        return 2, float(saturation)
    if math.isinf(saturation):
        return (0, None) if saturation > 0 else (1, None)
    t, info = math.ceil(saturation), np.iinfo(dtype)  # v >= s <=> v >= ceil(s) for integers v
    return (0, None) if t > info.max else (1, None) if t <= info.min else (2, t)


def count_saturated(frame: np.ndarray, saturation, bad=None) -> int:
    """Pixels at or above saturation that are not bad (frame_levels)."""
    return frame_levels(frame, saturation, bad, background=False)[1]


def _block_max(a: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each factor x factor block of a (its sides multiples of factor): rows
    first over contiguous rows, then columns on the factor-times smaller result (numpy's
    reduction over both block axes at once runs element by element, ten times slower)."""
    h, w = a.shape
    rows = a.reshape(h // factor, factor, w).max(axis=1)
    out = rows[:, 0::factor].copy()
    for j in range(1, factor):
        np.maximum(out, rows[:, j::factor], out=out)
    return out


def thumbnail(frame: np.ndarray, bad=None, size: int = 512) -> tuple[np.ndarray, int]:
    """(uint8 image, factor): the frame max-pooled by `factor` to at most `size` pixels a
    side, log-scaled between the background and the brightest spot; blocks with a bad pixel,
    negative and non-finite values black."""
    factor = max(1, math.ceil(max(frame.shape) / size))
    h, w = (frame.shape[0] // factor) * factor, (frame.shape[1] // factor) * factor
    a = frame[:h, :w]
    if a.dtype.kind == "f":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    pooled = _block_max(a, factor).astype(np.float32)
    if bad is not None:
        pooled[_block_max(bad[:h, :w] != 0, factor)] = 0
    np.maximum(pooled, 0, out=pooled)
    lo = float(np.median(pooled))
    hi = max(float(np.quantile(pooled, 0.9995)), lo + 4)
    scaled = np.log1p(np.clip(pooled - lo, 0, None)) / math.log1p(hi - lo)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8), factor


def _percentile(values, p) -> Optional[float]:
    return float(np.percentile(values, p)) if len(values) else None


def _num(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


@dataclass
class _Bin:
    frames: int = 0
    hits: int = 0
    spots: int = 0
    res: list = field(default_factory=list)
    bg: list = field(default_factory=list)
    raw: int = 0  # bytes of the frames stored in this second (vetoed ones are not)
    stored: int = 0
    hit_raw: int = 0  # the same for the hits alone
    hit_stored: int = 0
    index_tried: int = 0  # hits the indexer was given, and those it indexed
    indexed: int = 0


def _ratio(raw: int, stored: int) -> Optional[float]:
    return raw / stored if stored else None


def _indexing(window, tried: int, indexed: int) -> dict:
    """The indexing indicators: the fraction of the hits given to the indexer that indexed
    (the window's, the run's), and the median cell of the window's lattices (None without)."""
    tried_w = [s for s in window if s.indexed is not None]
    cells = [s.cell for s in tried_w if s.indexed and s.cell is not None]
    return {"indexing_rate": sum(bool(s.indexed) for s in tried_w) / len(tried_w) if tried_w else None,
            "indexing_rate_total": indexed / tried if tried else None, "frames_indexed": indexed,
            "cell": [float(v) for v in np.median(np.array(cells), axis=0)] if cells else None}


class LiveStats:
    """Counters and rolling indicators of an acquisition (see the module docstring).
    thumbnails=False: no picture of the latest hit (nothing would show it: no dashboard)."""

    def __init__(self, window: int = 200, history_s: int = 600, thumbnails: bool = True):
        self._lock = threading.Lock()
        self.thumbnails = thumbnails
        self.t0 = time.time()
        self.window = deque(maxlen=window)  # (t_written, FrameStats)
        self.latency = deque(maxlen=1000)
        self.bins: dict[int, _Bin] = {}
        self.history_s = history_s
        self.totals = dict.fromkeys(("received", "written", "sparse", "vetoed", "dropped", "rejected", "missing",
                                     "malformed", "orphans", "out_of_order"), 0)
        self.raw_bytes = 0
        self.stored_bytes = 0
        self.wire_bytes = 0
        self.hits = 0
        self.analysed = 0
        self.index_tried = 0
        self.indexed = 0
        self.series: dict = {}  # current series: id, path, expected, ...
        self.finished: list = []  # summaries of finished series
        self.pending = 0
        self.max_pending_seen = 0
        self.latest_hit: Optional[dict] = None
        self._thumb_t = 0.0
        self.errors = deque(maxlen=20)

    # -- updates (any thread)
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.totals[name] = self.totals.get(name, 0) + n

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append({"t": round(time.time() - self.t0, 2), "text": text})

    def set_pending(self, n: int) -> None:
        with self._lock:
            self.pending = n
            self.max_pending_seen = max(self.max_pending_seen, n)

    def received(self, wire_bytes: int) -> None:
        with self._lock:
            self.totals["received"] += 1
            self.wire_bytes += wire_bytes

    def frame(self, st: FrameStats, latency_s: Optional[float] = None) -> None:
        """A frame went through the writer (stored, stored sparse or vetoed)."""
        now = time.time()
        with self._lock:
            key = {"q": "written", "raw": "written", "sparse": "sparse", "vetoed": "vetoed"}[st.mode]
            self.totals[key] += 1
            self.window.append((now, st))
            if self.series:
                self.series["frames_done"] = self.series.get("frames_done", 0) + 1
            if latency_s is not None:
                self.latency.append(latency_s)
            self.raw_bytes += st.raw_bytes
            self.stored_bytes += st.stored_bytes
            if st.hit is not None:
                self.analysed += 1
                self.hits += bool(st.hit)
            b = self.bins.setdefault(int(now - self.t0), _Bin())
            if st.indexed is not None:
                self.index_tried += 1
                self.indexed += bool(st.indexed)
                b.index_tried += 1
                b.indexed += bool(st.indexed)
            b.frames += 1
            b.hits += bool(st.hit)
            b.spots += max(st.n_spots, 0)
            if math.isfinite(st.resolution_a) and st.hit:
                b.res.append(st.resolution_a)
            if math.isfinite(st.background):
                b.bg.append(st.background)
            if st.stored_bytes:
                b.raw += st.raw_bytes
                b.stored += st.stored_bytes
                if st.hit:
                    b.hit_raw += st.raw_bytes
                    b.hit_stored += st.stored_bytes
            oldest = int(now - self.t0) - self.history_s
            for k in [k for k in self.bins if k < oldest]:
                del self.bins[k]

    def want_thumbnail(self, interval_s: float = 1.0) -> bool:
        """True at most once per interval (thumbnails of hits cost a pass over the frame), never
        without thumbnails."""
        if not self.thumbnails:
            return False
        now = time.time()
        with self._lock:
            if now - self._thumb_t < interval_s:
                return False
            self._thumb_t = now
            return True

    def set_latest_hit(self, image_id: int, image: np.ndarray, factor: int, peaks) -> None:
        with self._lock:
            self.latest_hit = {"image_id": int(image_id), "image": image, "factor": factor,
                               "peaks": [[round(float(x) / factor, 1), round(float(y) / factor, 1)]
                                         for x, y in zip(peaks["x"][:2000], peaks["y"][:2000])],
                               "version": (self.latest_hit or {}).get("version", 0) + 1}

    def series_started(self, info: dict) -> None:
        with self._lock:
            self.series = dict(info, state="running")

    def series_finished(self, summary: dict) -> None:
        with self._lock:
            self.series = dict(self.series, **summary, state="finished")
            self.finished.append(summary)
            self.totals["missing"] += summary.get("counts", {}).get("missing", 0)

    # -- reading
    def snapshot(self) -> dict:
        """Everything the dashboard and the terminal show, JSON-ready."""
        now = time.time()
        with self._lock:
            win = list(self.window)
            lat = list(self.latency)
            totals = dict(self.totals)
            bins = sorted(self.bins.items())
            series = dict(self.series)
            latest = self.latest_hit
            out = {"t": round(now - self.t0, 3), "series": series, "counts": totals,
                   "pending": self.pending, "max_pending_seen": self.max_pending_seen,
                   "errors": list(self.errors), "finished_series": list(self.finished)}
            raw, stored, wire = self.raw_bytes, self.stored_bytes, self.wire_bytes
            hits, analysed = self.hits, self.analysed
            index_tried, indexed = self.index_tried, self.indexed
        stats = [s for _, s in win]
        recent = [(t, s) for t, s in win if now - t <= 5.0]
        fps = None
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            fps = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        elif recent:
            fps = len(recent) / 5.0
        analysed_w = [s for s in stats if s.hit is not None]
        hits_w = [s for s in analysed_w if s.hit]
        rw = sum(s.raw_bytes for s in stats if s.stored_bytes)
        sw = sum(s.stored_bytes for s in stats)
        lost = totals["dropped"] + totals["rejected"] + totals["missing"]
        out["indicators"] = {
            "fps": _num(fps),
            "mb_per_s": _num(fps * (rw / max(1, sum(1 for s in stats if s.stored_bytes))) / 1e6) if fps and rw else None,
            "hit_rate": len(hits_w) / len(analysed_w) if analysed_w else None,
            "hit_rate_total": hits / analysed if analysed else None,
            "spots_per_frame": _num(np.mean([s.n_spots for s in analysed_w])) if analysed_w else None,
            "spots_per_hit": _num(np.mean([s.n_spots for s in hits_w])) if hits_w else None,
            "resolution_a": _num(np.median([s.resolution_a for s in hits_w if math.isfinite(s.resolution_a)]))
            if any(math.isfinite(s.resolution_a) for s in hits_w) else None,
            "background": _num(np.median([s.background for s in stats if math.isfinite(s.background)]))
            if any(math.isfinite(s.background) for s in stats) else None,
            "saturated_per_frame": _num(np.mean([s.saturated for s in stats])) if stats else None,
            "ratio": rw / sw if sw else None,
            "ratio_total": raw / stored if stored else None,
            "frames_lost": lost,
            "latency_ms_p50": _num(_percentile(lat, 50) * 1e3) if lat else None,
            "latency_ms_p99": _num(_percentile(lat, 99) * 1e3) if lat else None,
            "wire_mb": wire / 1e6, "raw_mb": raw / 1e6, "stored_mb": stored / 1e6,
            **_indexing(stats, index_tried, indexed),
        }
        out["history"] = {
            "t": [k for k, _ in bins],
            "fps": [b.frames for _, b in bins],
            "hit_rate": [b.hits / b.frames if b.frames else None for _, b in bins],
            "spots_per_frame": [b.spots / b.frames if b.frames else None for _, b in bins],
            "resolution_a": [_num(float(np.median(b.res))) if b.res else None for _, b in bins],
            "background": [_num(float(np.median(b.bg))) if b.bg else None for _, b in bins],
            "ratio": [_ratio(b.raw, b.stored) for _, b in bins],
            # hits and the other frames apart: sparse non-hits compress 10-100x better than hits
            "ratio_hits": [_ratio(b.hit_raw, b.hit_stored) for _, b in bins],
            "ratio_other": [_ratio(b.raw - b.hit_raw, b.stored - b.hit_stored) for _, b in bins],
            "indexing_rate": [b.indexed / b.index_tried if b.index_tried else None for _, b in bins],
        }
        out["latest_hit"] = None if latest is None else {k: v for k, v in latest.items() if k != "image"} | {
            "width": int(latest["image"].shape[1]), "height": int(latest["image"].shape[0])}
        out["recent_frames"] = [dict(asdict(s), resolution_a=_num(s.resolution_a), background=_num(s.background),
                                     orientation=None) for s in stats[-10:]]
        return out

    def latest_hit_image(self):
        with self._lock:
            return None if self.latest_hit is None else (self.latest_hit["image"], self.latest_hit["version"])


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def format_line(snap: dict) -> str:
    """One terminal status line (redml acquire without a browser)."""
    c, ind, s = snap["counts"], snap["indicators"], snap.get("series") or {}
    expected = s.get("expected") or 0
    done = c["written"] + c["sparse"] + c["vetoed"]
    bar = ""
    if expected:
        k = int(20 * min(1.0, s.get("frames_done", done) / expected))
        bar = "[" + "#" * k + "." * (20 - k) + "] "
    hr, ir = ind["hit_rate"], ind.get("indexing_rate")
    indexing = ""
    if ir is not None:
        cell = ind.get("cell")
        indexing = f"indexed {ir * 100:.0f}%" + (" | cell " + " ".join(f"{v:.1f}" for v in cell) if cell else "") + " | "
    return (f"{bar}series {s.get('series_id', '-')}: {done} frames ({c['received']} received) | "
            f"{_fmt(ind['fps'], '.1f')} fps | hits {_fmt(hr * 100 if hr is not None else None, '.0f')}% | "
            f"spots/hit {_fmt(ind['spots_per_hit'], '.0f')} | {indexing}d {_fmt(ind['resolution_a'], '.2f')} A | "
            f"bg {_fmt(ind['background'], '.1f')} | ratio {_fmt(ind['ratio'], '.1f')} | "
            f"lost {ind['frames_lost']} (dropped {c['dropped']}, rejected {c['rejected']}, missing {c['missing']})")


def print_status(stats: LiveStats, stream=None, final=False) -> None:
    """Writes the status line of `stats` to stream (stderr): one line rewritten in place on a terminal."""
    import sys

    stream = stream or sys.stderr
    line = format_line(stats.snapshot())
    if stream.isatty():
        stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
    else:
        stream.write(line + "\n")
    stream.flush()
