"""The acquisition dashboard: JSON and page over HTTP, the access token beyond localhost, and
the page itself in a real headless browser (Debian's chromium) while a stream runs."""
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from helpers import poisson_frame
from redml_reduce.acquire import protocol as s
from redml_reduce.acquire import AcquireSettings, Acquisition
from redml_reduce.background import BeamGeometry
from redml_reduce.acquire.dashboard import Dashboard, parse_listen, png_gray
from redml_reduce.acquire.indicators import LiveStats

SHAPE = (192, 256)
GEOM = BeamGeometry(beam_x=128.4, beam_y=96.2, distance_mm=60.0, pixel_size_mm=0.075, wavelength_a=1.0)


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_parse_listen():
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("8081") == ("127.0.0.1", 8081)
    assert parse_listen("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:7000") == ("::1", 7000)


def test_png_gray_decodes(rng):
    img = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    back = np.asarray(Image.open(io.BytesIO(png_gray(img))))
    assert back.dtype == np.uint8 and np.array_equal(back, img)


def test_status_json_and_latest_hit_on_localhost(rng):
    stats = LiveStats()
    with Dashboard(stats, "127.0.0.1", 0) as dash:
        assert dash.token is None
        base = f"http://127.0.0.1:{dash.port}"
        code, body, _ = get(base + "/")
        assert code == 200 and b"redml acquire" in body and b"<canvas" in body
        code, body, _ = get(base + "/api/status")
        snap = json.loads(body)
        assert code == 200 and snap["counts"]["received"] == 0 and snap["latest_hit"] is None
        assert get(base + "/api/latest_hit.png")[0] == 404
        assert get(base + "/nothing")[0] == 404
        img = rng.integers(0, 256, (20, 30)).astype(np.uint8)
        peaks = np.zeros(2, [("x", "f8"), ("y", "f8")])
        peaks["x"], peaks["y"] = (10.0, 20.0), (4.0, 8.0)
        stats.set_latest_hit(7, img, 2, peaks)
        code, body, headers = get(base + "/api/latest_hit.png")
        assert code == 200 and headers["Content-Type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), img)
        hit = json.loads(get(base + "/api/status")[1])["latest_hit"]
        assert hit["image_id"] == 7 and hit["peaks"] == [[5.0, 2.0], [10.0, 4.0]]


def test_token_required_beyond_localhost():
    stats = LiveStats()
    with pytest.raises(ValueError, match="localhost"):
        Dashboard(stats, "0.0.0.0", 0)
    with Dashboard(stats, "0.0.0.0", 0, allow_remote=True) as dash:
        assert dash.token and len(dash.token) >= 16
        base = f"http://127.0.0.1:{dash.port}"
        for path in ("/", "/api/status", "/api/latest_hit.png", "/nothing"):
            code, body, _ = get(base + path)
            assert code == 403, path
            assert b"redml" not in body and b"counts" not in body
        assert get(base + "/api/status?token=wrong" + dash.token[5:])[0] == 403
        assert get(base + "/api/status", {"Authorization": "Bearer nope"})[0] == 403
        assert get(base + f"/api/status?token={dash.token}")[0] == 200
        assert get(base + "/api/status", {"Authorization": f"Bearer {dash.token}"})[0] == 200
        code, _, headers = get(dash.url)
        assert code == 200 and dash.token in headers["Set-Cookie"]
        assert get(base + "/api/status", {"Cookie": f"redml_token={dash.token}"})[0] == 200
    with Dashboard(stats, "127.0.0.1", 0, token="s3cret-token") as dash:  # a token on localhost is enforced too
        assert get(f"http://127.0.0.1:{dash.port}/api/status")[0] == 403
        assert get(f"http://127.0.0.1:{dash.port}/api/status?token=s3cret-token")[0] == 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, url, *args, timeout=120):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (Debian package chromium; `make deps` installs it)")
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--window-size=1400,1000",
           "--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, url]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def frames_shown(dom: str) -> int:
    m = re.search(r'id="frames">(\d+)<', dom)
    assert m, dom[:2000]
    return int(m.group(1))


def test_dashboard_in_headless_chromium(tmp_path, rng):
    """The page loads, its numbers follow a running stream, and the screenshot shows the plots
    and the latest hit with its spots."""
    frames = [poisson_frame(rng, 6.0, SHAPE, "uint16", spots=40 if i % 3 else 0) for i in range(8)]
    stop = threading.Event()
    acq = Acquisition(tmp_path / "run.nxs", AcquireSettings(q=1, workers=1))
    fed = []

    def feeder():
        acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=0))
        i = 0
        while not stop.is_set() and i < 2000:
            acq.feed(s.encode_image(frames[i % len(frames)], i, compression="bslz4"))
            fed.append(i)
            i += 1
            time.sleep(0.1)
        acq.feed(s.encode_end())

    with Dashboard(acq.stats, "0.0.0.0", 0, allow_remote=True, title="redml acquire (test)") as dash:
        url = f"http://127.0.0.1:{dash.port}/?token={dash.token}"
        t = threading.Thread(target=feeder, daemon=True)
        t.start()
        try:
            while len(fed) < 4:
                time.sleep(0.05)
            first = chromium(tmp_path, url, "--dump-dom")
            assert first.returncode == 0, first.stderr[-2000:]
            n1 = frames_shown(first.stdout)
            while len(fed) < n1 + 6:  # the stream goes on ...
                time.sleep(0.05)
            second = chromium(tmp_path, url, "--dump-dom")
            n2 = frames_shown(second.stdout)
            assert 0 < n1 < n2, (n1, n2)  # ... and the page followed it
            assert "latest hit: image" in second.stdout
            assert re.search(r'id="hit_rate">\d+ %<', second.stdout)
        finally:
            stop.set()
            t.join(60)
        acq.wait(60)
        total = acq.series[0].summary["counts"]["written"]
        assert total == len(fed)
        shot = tmp_path / "dashboard.png"
        r = chromium(tmp_path, url, f"--screenshot={shot}")
        assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
        final = chromium(tmp_path, url, "--dump-dom").stdout
        assert frames_shown(final) == total and "finished" in final
        # without the token the browser gets nothing
        refused = chromium(tmp_path, f"http://127.0.0.1:{dash.port}/", "--dump-dom").stdout
        assert 'id="frames"' not in refused and "forbidden" in refused
    acq.close()
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1000, 1400)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200, "the screenshot is (nearly) blank"

    def near(rgb, tol=40):
        return int((np.abs(img - np.array(rgb)).sum(axis=2) < tol).sum())

    assert near((47, 125, 79)) > 200  # hit-rate curve (and progress colour)
    assert near((32, 96, 160)) > 100  # spots-per-frame curve
    assert near((255, 64, 64), 60) > 50  # spot circles over the latest hit
    # the latest hit: a dark image with bright spots in the right-hand column
    right = img[200:700, 850:1390].mean(axis=2)
    assert (right < 40).mean() > 0.3 and (right > 200).sum() > 20


def test_foreign_host_refused_localhost_names_accepted():
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends Host:
    evil.example; the localhost dashboard refuses it and answers its own names only."""
    stats = LiveStats()
    with Dashboard(stats, "127.0.0.1", 0) as dash:
        base, p = f"http://127.0.0.1:{dash.port}", dash.port
        for host in ("evil.example", f"evil.example:{p}", f"127.0.0.1.evil.example:{p}", f"localhost.evil:{p}",
                     f"192.168.1.7:{p}"):
            for path in ("/", "/api/status", "/api/latest_hit.png"):
                code, body, _ = get(base + path, {"Host": host})
                assert code == 403 and b"counts" not in body and b"<canvas" not in body, (host, path)
        for host in ("localhost", f"localhost:{p}", f"LocalHost:{p}", "127.0.0.1", f"127.0.0.1:{p}", f"[::1]:{p}"):
            code, body, _ = get(base + "/api/status", {"Host": host})
            assert code == 200 and "counts" in json.loads(body), host
    # public (token required): the names it is reached by are not known in advance, the token guards
    with Dashboard(stats, "0.0.0.0", 0, allow_remote=True) as dash:
        base = f"http://127.0.0.1:{dash.port}"
        assert get(base + f"/api/status?token={dash.token}", {"Host": "beamline-pc.example:1"})[0] == 200
        assert get(base + "/api/status", {"Host": "beamline-pc.example:1"})[0] == 403


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def test_half_open_connections_hold_a_bounded_number_of_threads():
    """300 sockets that send half a request: the dashboard serves a bounded number of
    connections (the others are closed at once), closes the idle ones after its request
    timeout, and then answers a normal request."""
    import socket

    stats = LiveStats()
    before = threads_now()
    with Dashboard(stats, "127.0.0.1", 0) as dash:
        socks = []
        try:
            for _ in range(300):
                c = socket.create_connection(("127.0.0.1", dash.port), timeout=30)
                c.sendall(b"GET /api/status HTTP/1.1\r\nHost: localh")  # and never the rest
                c.setblocking(False)
                socks.append(c)

            def closed_by_server() -> int:
                n = 0
                for c in socks:
                    try:
                        n += c.recv(1) == b""
                    except BlockingIOError:
                        pass
                return n

            deadline = time.time() + 60  # a bound against hanging, not a timing requirement
            while closed_by_server() < 300 - 32 and time.time() < deadline:
                time.sleep(0.1)
            peak = threads_now()
            assert peak <= before + 1 + 32 + 2, peak  # server loop + at most 32 connections (+ slack)
            assert threading.active_count() <= before + 1 + 32 + 2
            while closed_by_server() < 300 and time.time() < deadline:  # the idle ones time out
                time.sleep(0.2)
            assert closed_by_server() == 300
        finally:
            for c in socks:
                c.close()
        code, body, _ = get(f"http://127.0.0.1:{dash.port}/api/status")
        assert code == 200 and json.loads(body)["counts"]["received"] == 0


def test_trickling_client_is_closed_at_the_request_deadline():
    """Was: the request timeout was a per-read socket timeout, so a client sending a byte
    more often than it kept its connection (and a thread) forever. The deadline is for the
    whole request."""
    import socket

    with Dashboard(LiveStats(), "127.0.0.1", 0, request_timeout_s=1.0) as dash:
        with socket.create_connection(("127.0.0.1", dash.port), timeout=30) as c:
            give_up = time.monotonic() + 60  # a bound against hanging, not a timing requirement
            request = b"GET /api/status HTTP/1.1\r\nX-Pad: " + b"a" * 10000
            c.settimeout(0.25)  # paces the trickle: a byte well within the 1 s that each read may wait
            closed = False
            for i in range(len(request)):
                try:
                    c.sendall(request[i:i + 1])
                    closed = c.recv(1) == b""
                except socket.timeout:
                    pass
                except OSError:  # reset by the server
                    closed = True
                if closed or time.monotonic() > give_up:
                    break
            assert closed, "the server kept a trickling connection past its request deadline"
        code, body, _ = get(f"http://127.0.0.1:{dash.port}/api/status")
        assert code == 200


def test_url_is_reachable_when_bound_to_all_interfaces():
    from urllib.parse import urlsplit

    from redml_reduce.acquire.dashboard import is_loopback

    with Dashboard(LiveStats(), "0.0.0.0", 0, allow_remote=True) as dash:
        parts = urlsplit(dash.url)
        assert parts.hostname not in ("0.0.0.0", "") and not is_loopback(parts.hostname), dash.url
        assert parts.port == dash.port and parts.query == f"token={dash.token}"
        code, body, _ = get(dash.url)  # reachable at the address printed
        assert code == 200 and b"<canvas" in body
    with Dashboard(LiveStats(), "127.0.0.1", 0) as dash:
        assert dash.url == f"http://127.0.0.1:{dash.port}/"


def test_acquire_prints_the_reachable_dashboard_url(tmp_path, capsys):
    from urllib.parse import urlsplit

    from redml_reduce.cli import main
    from redml_reduce.acquire.dashboard import is_loopback

    code = main(["acquire", "--bind", "tcp://127.0.0.1:*", "--out", str(tmp_path / "run.nxs"), "--quiet",
                 "--dashboard", "0.0.0.0:0", "--dashboard-public", "--token", "tok-123-abc", "--wait", "0.2"])
    assert code == 2  # no series came
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("dashboard: "))
    parts = urlsplit(line.split(" ", 1)[1])
    assert parts.scheme == "http" and parts.port and parts.query == "token=tok-123-abc", line
    assert parts.hostname != "0.0.0.0" and not is_loopback(parts.hostname), line


def test_ratio_history_keeps_hits_and_other_frames_apart(monkeypatch):
    """Sparse non-hits compress ~100x better than hits: in one series they flatten the hits'
    curve, so the history has the ratio of each apart (vetoed frames, not stored, in neither)."""
    from types import SimpleNamespace

    from redml_reduce.acquire import indicators
    from redml_reduce.acquire.indicators import FrameStats

    monkeypatch.setattr(indicators, "time", SimpleNamespace(time=lambda: 1000.0))  # every frame in one bin
    stats = LiveStats()
    for i in range(6):
        stats.frame(FrameStats(i, n_spots=40, hit=True, raw_bytes=1000, stored_bytes=200, mode="q"))
        stats.frame(FrameStats(i, n_spots=1, hit=False, raw_bytes=1000, stored_bytes=4, mode="sparse"))
        stats.frame(FrameStats(i, n_spots=0, hit=False, raw_bytes=1000, stored_bytes=0, mode="vetoed"))
    h = stats.snapshot()["history"]
    assert h["t"] == [0] and h["fps"] == [18]
    assert h["ratio_hits"] == [pytest.approx(5.0)] and h["ratio_other"] == [pytest.approx(250.0)]
    assert h["ratio"] == [pytest.approx(2000 / 204)]  # the vetoed frames' bytes are not counted as compressed


def test_ratio_plot_readable_with_sparse_non_hits(tmp_path, rng, monkeypatch):
    """With sparse non-hits the page plots the ratio of hits and of the other frames as two
    curves on a log axis: both visible, the sparse frames' curve above the hits' one."""
    from types import SimpleNamespace

    from redml_reduce.acquire import indicators

    clock = {"t": 1000.0}

    def tick() -> float:  # a clock 0.1 s later at each reading: the frames spread over several bins
        clock["t"] += 0.1
        return clock["t"]

    monkeypatch.setattr(indicators, "time", SimpleNamespace(time=tick))
    hits = [poisson_frame(rng, 6.0, SHAPE, "uint16", spots=40) for _ in range(3)]
    blanks = [poisson_frame(rng, 6.0, SHAPE, "uint16") for _ in range(3)]
    acq = Acquisition(tmp_path / "run.nxs", AcquireSettings(q=1, workers=1, veto="sparse"))
    acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=40))
    for i in range(40):  # several one-second bins of history
        frame = hits[i % 3] if i % 2 else blanks[i % 3]
        acq.feed(s.encode_image(frame, i, compression="bslz4"))
    acq.feed(s.encode_end())
    acq.wait(60)
    h = acq.stats.snapshot()["history"]
    hit_r = [v for v in h["ratio_hits"] if v is not None]
    other_r = [v for v in h["ratio_other"] if v is not None]
    assert len(hit_r) >= 2 and len(other_r) >= 2 and min(other_r) > 3 * max(hit_r), (hit_r, other_r)
    with Dashboard(acq.stats, "127.0.0.1", 0) as dash:
        shot = tmp_path / "dashboard.png"
        r = chromium(tmp_path, dash.url, f"--screenshot={shot}")
        assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    acq.close()
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def rows_of(rgb, tol=40):
        return np.nonzero((np.abs(img - np.array(rgb)).sum(axis=2) < tol))[0]

    hit_rows, other_rows = rows_of((208, 112, 16)), rows_of((32, 112, 112))  # #d07010 hits, #207070 others
    assert len(hit_rows) > 150 and len(other_rows) > 150, (len(hit_rows), len(other_rows))  # two drawn curves
    assert np.median(other_rows) + 20 < np.median(hit_rows)  # far apart: sparse frames above, hits below
