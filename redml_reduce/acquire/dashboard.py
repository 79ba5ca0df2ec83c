"""The live dashboard of an acquisition: one web page and a JSON endpoint (standard library).

    dash = Dashboard(acq.stats, port=8080)          # http://127.0.0.1:8080/
    dash.start(); ...; dash.stop()

GET /                    the page: counts, indicators, plots over time, the latest hit (with a
                         known cell also the indexing rate of the hits and the median cell found)
GET /api/status          LiveStats.snapshot() as JSON (what the page polls every second)
GET /api/latest_hit.png  the latest hit, max-pooled and log-scaled (spots come in the JSON)

It listens on localhost unless told otherwise. Listening on any other interface needs
allow_remote=True and then always an access token (one is made when none is given): every
request must carry it (?token=..., an "Authorization: Bearer ..." header, or the cookie the
page sets), or it is refused with 403. On localhost a request must also name the dashboard in
its Host header (localhost, 127.0.0.1, [::1] or the bound address, with or without the port),
or it is refused with 403: a web page whose name an attacker rebinds to 127.0.0.1 cannot read
it (DNS rebinding). At most max_connections connections are served at once (the others are
closed unanswered) and a connection that has not sent its complete request request_timeout_s
after it opened is closed (a deadline for the whole request, not per read: a client trickling
a byte at a time cannot hold its slot), so idle sockets cannot pile up threads. The page works offline (no external scripts).
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import json
import math
import secrets
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

__all__ = ["Dashboard", "png_gray", "is_loopback", "parse_listen"]


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(spec: str, default_port: int = 8080) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' (localhost) or 'PORT' -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "", spec
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port) if port else default_port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reachable_host(host: str) -> str:
    """The address others reach a server bound to `host` at: for a wildcard (0.0.0.0, ::) the
    address of the interface that routes outwards, else the hostname."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # a UDP connect only picks the route: nothing is sent
            addr = s.getsockname()[0]
        if not ipaddress.ip_address(addr).is_loopback and addr != "0.0.0.0":
            return addr
    except OSError:
        pass
    return socket.gethostname()


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline: each read waits at most the time left, and none
    starts after it (TimeoutError, which http.server answers by closing the connection)."""

    def __init__(self, sock, deadline: float):
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive before its deadline")
        self._sock.settimeout(left)
        return self._sock.recv_into(buf)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most max_connections of them: a connection beyond is closed
    at once, unanswered (the page polls again a second later)."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog (socketserver's 5 makes bursts of connects wait for SYN retries)

    def __init__(self, address, handler, max_connections: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def png_gray(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a 2-D uint8 array."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape
    rows = np.zeros((h, w + 1), np.uint8)  # filter byte 0 (none) before each row
    rows[:, 1:] = img

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _clean(obj):
    """JSON without NaN/inf (browsers refuse them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


class Dashboard:
    """Serves a LiveStats (indicators.LiveStats) over HTTP in a background thread."""

    def __init__(self, stats, host: str = "127.0.0.1", port: int = 8080, *, token: Optional[str] = None,
                 allow_remote: bool = False, title: str = "redml acquire", max_connections: int = 32,
                 request_timeout_s: float = 5.0):
        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"the dashboard listens on localhost only unless allowed: {host!r} needs "
                             "allow_remote=True (redml acquire --dashboard-public) and a token")
        if max_connections < 1 or not request_timeout_s > 0:
            raise ValueError("max_connections must be >= 1 and request_timeout_s > 0")
        self.stats = stats
        self.title = title
        self.token = token or (None if is_loopback(host) else secrets.token_urlsafe(18))
        self.request_timeout_s = float(request_timeout_s)
        self._server = _Server((host, int(port)), self._handler(), int(max_connections))
        self.host, self.port = host, self._server.server_address[1]
        self.allowed_hosts = self._host_names() if is_loopback(host) else None  # None: any (the token guards)
        self._thread: Optional[threading.Thread] = None

    def _host_names(self) -> frozenset:
        """Host header values a request to this localhost dashboard may carry."""
        names = {"localhost", "127.0.0.1", "[::1]", _url_host(self.host).lower()}
        return frozenset(names | {f"{n}:{self.port}" for n in names})

    @property
    def url(self) -> str:
        """Where a browser reaches it (with the token): for a wildcard bind, the address of the
        outward interface (or the hostname), not 0.0.0.0."""
        host = _url_host(_reachable_host(self.host))
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> "Dashboard":
        self._thread = threading.Thread(target=self._server.serve_forever, name="redml-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Dashboard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        dash = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "redml-dashboard"
            timeout = dash.request_timeout_s  # socket timeout of the writes (the reads have a deadline)

            def log_message(self, *args):  # quiet: the acquisition log is what matters
                pass

            def setup(self):
                super().setup()
                self.rfile.close()  # socketserver's reader: replaced by one with a deadline
                deadline = time.monotonic() + dash.request_timeout_s
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

            def parse_request(self) -> bool:
                ok = super().parse_request()  # reads the headers (a GET has no body)
                self.connection.settimeout(dash.request_timeout_s)  # received: the writes' own timeout
                return ok

            def _authorised(self, query) -> bool:
                if dash.token is None:
                    return True
                offered = query.get("token", [None])[0]
                auth = self.headers.get("Authorization", "")
                if offered is None and auth.startswith("Bearer "):
                    offered = auth[7:].strip()
                if offered is None:
                    for part in self.headers.get("Cookie", "").split(";"):
                        k, _, v = part.strip().partition("=")
                        if k == "redml_token":
                            offered = v
                return offered is not None and hmac.compare_digest(offered.encode(), dash.token.encode())

            def _send(self, code: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _host_known(self) -> bool:
                host = self.headers.get("Host")  # absent: not a browser (HTTP/1.0 tools)
                return dash.allowed_hosts is None or host is None or host.strip().lower() in dash.allowed_hosts

            def do_GET(self):  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                try:
                    if not self._host_known():
                        self._send(403, b"forbidden: unknown Host (this dashboard answers localhost names only)\n",
                                   "text/plain")
                        return
                    if not self._authorised(query):
                        self._send(403, b"forbidden: this dashboard needs its access token\n", "text/plain")
                        return
                    if parts.path == "/":
                        extra = {}
                        if dash.token:
                            extra["Set-Cookie"] = f"redml_token={dash.token}; HttpOnly; SameSite=Strict; Path=/"
                        page = PAGE.replace("{{TITLE}}", dash.title)
                        self._send(200, page.encode(), "text/html; charset=utf-8", extra)
                    elif parts.path == "/api/status":
                        body = json.dumps(_clean(dash.stats.snapshot()), allow_nan=False).encode()
                        self._send(200, body, "application/json")
                    elif parts.path == "/api/latest_hit.png":
                        got = dash.stats.latest_hit_image()
                        if got is None:
                            self._send(404, b"no hit yet\n", "text/plain")
                        else:
                            self._send(200, png_gray(got[0]), "image/png")
                    else:
                        self._send(404, b"not found\n", "text/plain")
                except OSError:  # the client went away or stopped reading (timeout)
                    self.close_connection = True

        return Handler


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:14px;background:#f4f6f8;color:#17202a}
 h1{font-size:20px;margin:0 0 4px} #series{color:#445;margin-bottom:8px;font-size:14px}
 .tiles{display:grid;grid-template-columns:repeat(6,minmax(120px,1fr));gap:8px;margin-bottom:10px}
 .tile{background:#fff;border-radius:6px;padding:8px 10px;box-shadow:0 1px 2px #0002}
 .tile .v{font-size:24px;font-weight:600} .tile .k{font-size:12px;color:#556;text-transform:uppercase}
 .tile.wide{grid-column:span 2} .tile.wide .v{font-size:18px}
 .bad .v{color:#b03020} .main{display:grid;grid-template-columns:3fr 2fr;gap:10px}
 .plots{display:grid;grid-template-columns:1fr 1fr;gap:8px}
 .plot{background:#fff;border-radius:6px;padding:6px;box-shadow:0 1px 2px #0002}
 .plot .t{font-size:13px;color:#334;margin:0 0 2px 4px} canvas{width:100%;height:130px;display:block}
 .hit{background:#fff;border-radius:6px;padding:6px;box-shadow:0 1px 2px #0002}
 #hitwrap{position:relative;width:100%} #hitimg{width:100%;display:block;background:#000;image-rendering:pixelated}
 #hitover{position:absolute;left:0;top:0;width:100%;height:100%}
 .bar{height:10px;background:#dde;border-radius:5px;overflow:hidden;margin:4px 0 10px} .bar div{height:100%;background:#2f7d4f;width:0}
 #errors{font-family:monospace;font-size:12px;color:#922;white-space:pre-wrap;max-height:120px;overflow:auto}
 .small{font-size:12px;color:#667}
</style></head><body>
<h1>{{TITLE}}</h1>
<div id="series">waiting for the detector...</div>
<div class="bar"><div id="progress"></div></div>
<div class="tiles">
 <div class="tile"><div class="k">frames stored</div><div class="v" id="frames">0</div></div>
 <div class="tile"><div class="k">frames / s</div><div class="v" id="fps">-</div></div>
 <div class="tile"><div class="k">hit rate</div><div class="v" id="hit_rate">-</div></div>
 <div class="tile"><div class="k">spots / hit</div><div class="v" id="spots_per_hit">-</div></div>
 <div class="tile"><div class="k">resolution (hits)</div><div class="v" id="resolution">-</div></div>
 <div class="tile"><div class="k">hits indexed</div><div class="v" id="indexing_rate">-</div></div>
 <div class="tile wide"><div class="k">cell found (median, &Aring; / &deg;)</div><div class="v" id="cell">-</div></div>
 <div class="tile"><div class="k">ratio</div><div class="v" id="ratio">-</div></div>
 <div class="tile"><div class="k">background / px</div><div class="v" id="background">-</div></div>
 <div class="tile"><div class="k">saturated / frame</div><div class="v" id="saturated">-</div></div>
 <div class="tile"><div class="k">latency p99</div><div class="v" id="latency">-</div></div>
 <div class="tile" id="lost_tile"><div class="k">frames lost</div><div class="v" id="lost">0</div></div>
 <div class="tile"><div class="k">vetoed / sparse</div><div class="v" id="vetoed">0 / 0</div></div>
 <div class="tile"><div class="k">queue</div><div class="v" id="pending">0</div></div>
</div>
<div class="main">
 <div class="plots">
  <div class="plot"><div class="t">hit rate (%) <span style="color:#c03030">&#9679; hits indexed (%)</span></div>
   <canvas id="p_hit"></canvas></div>
  <div class="plot"><div class="t">spots per frame</div><canvas id="p_spots"></canvas></div>
  <div class="plot"><div class="t">resolution of hits (&Aring;)</div><canvas id="p_res"></canvas></div>
  <div class="plot"><div class="t">background (counts/px)</div><canvas id="p_bg"></canvas></div>
  <div class="plot"><div class="t">compression ratio (log):
   <span style="color:#d07010">&#9679; hits</span> <span style="color:#207070">&#9679; other frames</span></div>
   <canvas id="p_ratio"></canvas></div>
  <div class="plot"><div class="t">frames / s</div><canvas id="p_fps"></canvas></div>
 </div>
 <div class="hit"><div class="t" id="hittitle">latest hit: none yet</div>
  <div id="hitwrap"><img id="hitimg" alt=""><canvas id="hitover"></canvas></div>
  <div class="small" id="lostdetail"></div>
  <div class="small" id="receivers" style="white-space:pre-wrap"></div>
  <div id="errors"></div>
 </div>
</div>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? ("?token=" + encodeURIComponent(token)) : "";
function fmt(v, d) { return (v === null || v === undefined) ? "-" : Number(v).toFixed(d); }
function set(id, text) { document.getElementById(id).textContent = text; }
function plot(id, t, series, log) {
  // series: [[values, colour], ...] over the times t; log: a log10 axis (decades labelled)
  const c = document.getElementById(id), r = window.devicePixelRatio || 1;
  const W = c.clientWidth, H = c.clientHeight; c.width = W * r; c.height = H * r;
  const g = c.getContext("2d"); g.scale(r, r); g.clearRect(0, 0, W, H);
  const ok = v => v !== null && v !== undefined && (!log || v > 0);
  const lines = series.map(([ys, color]) => [t.map((x, i) => [x, ys[i]]).filter(p => ok(p[1])), color]);
  const all = lines.flatMap(l => l[0]);
  g.strokeStyle = "#ccd"; g.lineWidth = 1; g.strokeRect(34.5, 4.5, W - 40, H - 22);
  g.fillStyle = "#556"; g.font = "11px sans-serif";
  if (!all.length) { g.fillText("no data yet", W / 2 - 28, H / 2); return; }
  const f = log ? Math.log10 : (v => v);
  let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0])); if (x1 <= x0) x1 = x0 + 1;
  let y0 = Math.min(...all.map(p => f(p[1]))), y1 = Math.max(...all.map(p => f(p[1])));
  if (log) { y0 = Math.floor(y0); y1 = Math.max(Math.ceil(y1), y0 + 1); }
  else { if (y0 > 0 && y0 < 0.3 * y1) y0 = 0; if (y1 - y0 < 1e-9) { y1 += 1; y0 = Math.max(0, y0 - 1); } }
  const X = x => 35 + (x - x0) / (x1 - x0) * (W - 42), Y = y => H - 19 - (f(y) - y0) / (y1 - y0) * (H - 26);
  if (log) {  // a grid line and a label per decade
    for (let k = y0; k <= y1; k++) {
      const v = 10 ** k, y = Y(v); g.fillStyle = "#556"; g.fillText(k >= 0 ? String(v) : v.toFixed(-k), 1, y + 4);
      g.strokeStyle = "#e4e6ee"; g.beginPath(); g.moveTo(35, y + 0.5); g.lineTo(W - 6, y + 0.5); g.stroke();
    }
  } else { g.fillText(y1.toPrecision(3), 1, 13); g.fillText(y0.toPrecision(3), 1, H - 19); }
  g.fillStyle = "#556"; g.fillText(x0 + " s", 35, H - 5); g.fillText(x1 + " s", W - 40, H - 5);
  for (const [pts, color] of lines) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    pts.forEach((p, i) => i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))); g.stroke();
    if (pts.length < 40) { g.fillStyle = color; pts.forEach(p => { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 2.5, 0, 7); g.fill(); }); }
  }
}
let hitVersion = -1, lastHit = null;
function drawSpots() {
  const img = document.getElementById("hitimg"), c = document.getElementById("hitover");
  if (!lastHit || !img.naturalWidth) return;
  const W = img.clientWidth, H = img.clientHeight, r = window.devicePixelRatio || 1;
  c.width = W * r; c.height = H * r; const g = c.getContext("2d"); g.scale(r, r);
  const sx = W / lastHit.width, sy = H / lastHit.height; g.strokeStyle = "#ff4040"; g.lineWidth = 1.2;
  for (const [x, y] of lastHit.peaks) { g.beginPath(); g.arc(x * sx, y * sy, 5, 0, 7); g.stroke(); }
}
document.getElementById("hitimg").addEventListener("load", drawSpots);
async function tick() {
  try {
    const r = await fetch("/api/status" + q, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json(), c = s.counts, ind = s.indicators, se = s.series || {};
    const stored = c.written + c.sparse;
    set("series", se.series_id === undefined ? "waiting for the detector..." :
      `series ${se.series_id} (${se.series_unique_id || ""}) - ${se.state} - ${se.detector || ""} - ` +
      `${(se.shape || []).join(" x ")} - ${se.path || ""} - ${c.received} received` + (se.expected ? ` of ${se.expected}` : ""));
    document.getElementById("progress").style.width = se.expected ? Math.min(100, 100 * (se.frames_done || 0) / se.expected) + "%" : "0";
    set("frames", stored); set("fps", fmt(ind.fps, 1));
    set("hit_rate", ind.hit_rate === null ? "-" : fmt(100 * ind.hit_rate, 0) + " %");
    set("spots_per_hit", fmt(ind.spots_per_hit, 0)); set("resolution", ind.resolution_a === null ? "-" : fmt(ind.resolution_a, 2) + " \u00c5");
    set("indexing_rate", ind.indexing_rate == null ? "-" : fmt(100 * ind.indexing_rate, 0) + " %");
    set("cell", ind.cell ? ind.cell.map((v, i) => fmt(v, i < 3 ? 2 : 1)).join(" ") : "-");
    set("ratio", fmt(ind.ratio, 1)); set("background", fmt(ind.background, 1));
    set("saturated", fmt(ind.saturated_per_frame, 1)); set("latency", ind.latency_ms_p99 === null ? "-" : fmt(ind.latency_ms_p99, 0) + " ms");
    set("lost", ind.frames_lost); set("vetoed", c.vetoed + " / " + c.sparse); set("pending", s.pending);
    document.getElementById("lost_tile").className = ind.frames_lost ? "tile bad" : "tile";
    set("lostdetail", `dropped ${c.dropped} (encoder behind) - rejected ${c.rejected} - missing ${c.missing} - ` +
      `malformed messages ${c.malformed} - outside a series ${c.orphans}`);
    if (s.receivers) set("receivers", "receivers:\n" + s.receivers.map(r => `${r.name}: ${r.state}, ${fmt(r.fps, 1)} frames/s` +
      (r.counts ? `, ${r.counts.written + r.counts.sparse} stored of ${r.counts.received}, queue ${r.pending ?? "-"}` : "")).join("\n"));
    set("errors", s.errors.map(e => `[${e.t} s] ${e.text}`).join("\n"));
    const h = s.history;
    const pct = vs => (vs || []).map(v => v === null ? null : 100 * v);
    plot("p_hit", h.t, [[pct(h.hit_rate), "#2f7d4f"], [pct(h.indexing_rate), "#c03030"]]);
    plot("p_spots", h.t, [[h.spots_per_frame, "#2060a0"]]); plot("p_res", h.t, [[h.resolution_a, "#8040a0"]]);
    plot("p_bg", h.t, [[h.background, "#a06020"]]);
    plot("p_ratio", h.t, [[h.ratio_other, "#207070"], [h.ratio_hits, "#d07010"]], true);
    plot("p_fps", h.t, [[h.fps, "#404040"]]);
    if (s.latest_hit && s.latest_hit.version !== hitVersion) {
      hitVersion = s.latest_hit.version; lastHit = s.latest_hit;
      set("hittitle", `latest hit: image ${lastHit.image_id}, ${lastHit.peaks.length} spots (1:${lastHit.factor})`);
      document.getElementById("hitimg").src = "/api/latest_hit.png" + q + (q ? "&" : "?") + "v=" + hitVersion;
    }
    document.body.dataset.updated = String(s.t);
  } catch (e) { set("series", "dashboard: " + e); }
}
tick(); setInterval(tick, 1000); window.addEventListener("resize", drawSpots);
</script></body></html>
"""
