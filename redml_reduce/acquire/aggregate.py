"""One live view of several receivers: each publishes its indicators as HTTP JSON (its
dashboard's /api/status); AggregateStats polls them and answers snapshot() in the same
layout as one receiver's LiveStats, so dashboard.Dashboard serves it unchanged, plus a
"receivers" list: frames/s, counts and queue of each, and which is behind or gone.

    redml acquire-dashboard http://host1:8081/?token=T1 http://host2:8081/?token=T2 --dashboard :8080
"""
from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from typing import Optional
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = ["AggregateStats", "status_url"]

_SUMMED = ("received", "written", "sparse", "vetoed", "dropped", "rejected", "missing", "malformed", "orphans",
           "out_of_order")
_WEIGHTED = ("hit_rate", "hit_rate_total", "spots_per_frame", "spots_per_hit", "resolution_a", "background",
             "saturated_per_frame", "indexing_rate", "indexing_rate_total")
_HISTORY = ("hit_rate", "spots_per_frame", "resolution_a", "background", "ratio", "ratio_hits", "ratio_other",
            "indexing_rate")


def status_url(url: str) -> tuple[str, Optional[str]]:
    """A receiver's dashboard URL (as it prints it, with ?token=...) -> its /api/status URL and token."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    token = parse_qs(parts.query).get("token", [None])[0]
    return urlunsplit((parts.scheme, parts.netloc, "/api/status", "", "")), token


def _fetch(url: str, token: Optional[str], timeout_s: float) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())


def _weighted(values, weights):
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None]
    total = sum(w for _, w in pairs)
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / total if total > 0 else sum(v for v, _ in pairs) / len(pairs)


class AggregateStats:
    """urls: the receivers' dashboards. A receiver that does not answer for gone_s is "gone";
    one whose frames/s is under behind_fraction of the median of the others while they run
    is "behind"."""

    def __init__(self, urls, *, timeout_s: float = 1.0, gone_s: float = 3.0, behind_fraction: float = 0.5):
        self.sources = [status_url(u) for u in urls]
        self.names = [urlsplit(u).netloc for u, _ in self.sources]
        self.timeout_s, self.gone_s, self.behind_fraction = timeout_s, gone_s, behind_fraction
        self.t0 = time.time()
        self._last: list = [None] * len(self.sources)  # (time answered, snapshot)
        self._lock = threading.Lock()

    def poll(self) -> list:
        """Asks every receiver once; returns [(name, snapshot or None, seconds since its last answer)]."""
        now = time.time()
        out = []
        for k, (url, token) in enumerate(self.sources):
            try:
                snap = _fetch(url, token, self.timeout_s)
                with self._lock:
                    self._last[k] = (now, snap)
            except (OSError, ValueError):
                pass
            with self._lock:
                last = self._last[k]
            out.append((self.names[k], None if last is None else last[1], None if last is None else now - last[0]))
        return out

    def _receiver_rows(self, polled) -> list:
        rows = []
        for name, snap, age in polled:
            if snap is None or age > self.gone_s:
                rows.append({"name": name, "state": "gone", "fps": None, "seconds_silent": age,
                             **({"counts": snap["counts"]} if snap else {})})
                continue
            ind, c = snap["indicators"], snap["counts"]
            rows.append({"name": name, "state": "ok", "fps": ind["fps"], "counts": c, "pending": snap["pending"],
                         "frames_lost": ind["frames_lost"], "latency_ms_p99": ind["latency_ms_p99"],
                         "series_id": snap["series"].get("series_id"), "series_state": snap["series"].get("state")})
        live = [r["fps"] or 0.0 for r in rows if r["state"] == "ok"]
        for r in rows:
            others = [f for f, x in zip(live, [x for x in rows if x["state"] == "ok"]) if x is not r]
            if r["state"] == "ok" and r.get("series_state") == "running" and others:
                med = statistics.median(others)
                if med > 0 and (r["fps"] or 0.0) < self.behind_fraction * med:
                    r["state"] = "behind"
        return rows

    def snapshot(self) -> dict:
        polled = self.poll()
        snaps = [s for _, s, age in polled if s is not None and age <= self.gone_s]
        rows = self._receiver_rows(polled)
        counts = {k: sum(s["counts"].get(k, 0) for s in snaps) for k in _SUMMED}
        inds = [s["indicators"] for s in snaps]
        fps = [i["fps"] or 0.0 for i in inds]
        raw = sum(i["raw_mb"] for i in inds)
        stored = sum(i["stored_mb"] for i in inds)
        indicators = {k: _weighted([i.get(k) for i in inds], fps) for k in _WEIGHTED}
        cells = [(i["cell"], f) for i, f in zip(inds, fps) if i.get("cell")]
        indicators["cell"] = [_weighted([c[j] for c, _ in cells], [f for _, f in cells]) for j in range(6)] \
            if cells else None
        indicators["frames_indexed"] = sum(i.get("frames_indexed", 0) for i in inds)
        indicators.update({
            "fps": sum(fps) if inds else None,
            "mb_per_s": sum(i["mb_per_s"] or 0.0 for i in inds) if inds else None,
            "ratio": _weighted([i["ratio"] for i in inds], fps), "ratio_total": raw / stored if stored else None,
            "frames_lost": sum(i["frames_lost"] for i in inds),
            "latency_ms_p50": max((i["latency_ms_p50"] for i in inds if i["latency_ms_p50"] is not None), default=None),
            "latency_ms_p99": max((i["latency_ms_p99"] for i in inds if i["latency_ms_p99"] is not None), default=None),
            "wire_mb": sum(i["wire_mb"] for i in inds), "raw_mb": raw, "stored_mb": stored,
            "receivers_gone": sum(r["state"] == "gone" for r in rows),
            "receivers_behind": sum(r["state"] == "behind" for r in rows)})
        series = dict(snaps[0]["series"]) if snaps else {}
        if series:
            series["frames_done"] = sum(s["series"].get("frames_done", 0) for s in snaps
                                        if s["series"].get("series_unique_id") == series.get("series_unique_id"))
        errors = [dict(e, text=f"[{name}] {e['text']}") for name, s, _ in polled if s for e in s["errors"]]
        t = round(time.time() - self.t0, 3)
        errors += [{"t": t, "text": f"[{r['name']}] receiver {r['state']}"} for r in rows if r["state"] != "ok"]
        return {"t": t, "series": series, "counts": counts,
                "pending": sum(s["pending"] for s in snaps), "max_pending_seen": max(
                    (s["max_pending_seen"] for s in snaps), default=0),
                "errors": errors[-20:], "finished_series": [f for s in snaps for f in s["finished_series"]],
                "indicators": indicators, "history": self._history(snaps), "latest_hit": None,
                "recent_frames": [], "receivers": rows}

    def _history(self, snaps) -> dict:
        """The receivers' per-second plots on one clock: frames/s summed, the rest averaged."""
        now = time.time()
        bins: dict = {}
        for s in snaps:
            t0 = now - s["t"]  # that receiver's clock origin
            h = s["history"]
            for j, t in enumerate(h["t"]):
                b = bins.setdefault(int(t0 + t - self.t0), {"fps": 0, **{k: [] for k in _HISTORY}})
                b["fps"] += h["fps"][j]
                for k in _HISTORY:
                    if h.get(k) is not None and h[k][j] is not None:
                        b[k].append(h[k][j])
        ts = sorted(bins)
        out = {"t": ts, "fps": [bins[t]["fps"] for t in ts]}
        for k in _HISTORY:
            out[k] = [statistics.fmean(bins[t][k]) if bins[t][k] else None for t in ts]
        return out

    def latest_hit_image(self):
        return None
