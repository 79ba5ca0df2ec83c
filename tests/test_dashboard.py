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
from redml_reduce import stream as s
from redml_reduce.acquire import AcquireSettings, Acquisition
from redml_reduce.background import Geometry
from redml_reduce.dashboard import Dashboard, parse_listen, png_gray
from redml_reduce.indicators import LiveStats

SHAPE = (192, 256)
GEOM = Geometry(beam_x=128.4, beam_y=96.2, distance_mm=60.0, pixel_size_mm=0.075, wavelength_a=1.0)


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
