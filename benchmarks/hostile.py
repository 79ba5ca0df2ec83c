"""Hostile input against a live `redml acquire` and the codecs: does anything stop the
service, lose a frame without a record, or make small messages allocate gigabytes?

    python benchmarks/hostile.py --quick --json hostile.json     # < 5 minutes on 2 cores
    python benchmarks/hostile.py --json hostile.json             # more copies of each attack

The receiver is `redml acquire` in its own process (q=0, 2 workers, dashboard on
localhost), fed through the project's own StreamSender:

  starts      start messages that used to end the process: image_dtype "i4,," and
              "(100000,100000)f8", CBOR bignums (10^400) in detector_distance,
              detector_translation, sensor_thickness, count_time, and more out-of-range
              fields; each followed by one image and an end
  ids         a series whose image ids are 0, 2^63, 7, 2^64 - 1, 3 (legal CBOR uint64)
  frames      a 128 x 128 series fed messages of 6 MB that hold 8192 x 16384 uint64 frames
              (valid bitshuffle-LZ4 of zeros: 1 GiB each once decompressed)
  mask        a start message whose pixel mask holds 8192 x 16384 float64 the same way
  good        a last ordinary series: it must be stored whole, byte for byte
  dashboard   a request with a foreign Host header (DNS rebinding) and N half-open
              connections (threads held by the receiver afterwards)

Then the codecs, in processes of their own: the forged chunks of tests/chunkforge.py
(2^27 pixels declared) through decode/inspect/exact_mask/background_model under an
address-space limit (RedmlError expected, not MemoryError), a 2^27-pixel chunk in a
16 x 16 zarr v3 array (seconds, peak RSS), tile=65535; and HDF5_PLUGIN_PATH set to
redml_reduce.PLUGIN_PATH while h5py writes and reads a Redml(q=1) dataset.

Figures: messages_sent, service_alive, counts_consistent (every series: received =
written + sparse + vetoed + dropped + rejected, in the summary and in its file),
frames_lost_unrecorded (images sent that are neither counted in a series nor as orphans,
plus stored frames that do not hold what was sent under their id), peak_rss_mb (the
receiver's), plugin_path_writes_ok, the dashboard's and the codecs' results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # chunkforge: the forged chunks of the hostile-input tests

SHAPE = (128, 128)
BIG = 10**400


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


# ---------------------------------------------------------------- messages

def _fields(raw: bytes) -> dict:
    import cbor2

    return dict(cbor2.loads(raw))


def _dumps(fields: dict) -> bytes:
    import cbor2

    return cbor2.dumps(cbor2.CBORTag(55799, fields))


def start_message(sid: int, n: int, shape=SHAPE, **over) -> bytes:
    """A valid start message (geometry, uint16) with fields replaced (None: removed)."""
    from redml_reduce.acquire import protocol as s
    from redml_reduce.background import BeamGeometry

    geom = BeamGeometry(beam_x=shape[1] / 2, beam_y=shape[0] / 2, distance_mm=100.0, pixel_size_mm=0.075,
                    wavelength_a=1.0)
    f = _fields(s.encode_start(shape, "uint16", geom, series_id=sid, series_unique_id=f"bench-{sid}",
                               number_of_images=n))
    for k, v in over.items():
        if v is None:
            f.pop(k, None)
        else:
            f[k] = v
    return _dumps(f)


def image_message(sid: int, image_id: int, array) -> bytes:
    """An image message holding a frame (ndarray) or a declared array (protocol._declared_array)."""
    from redml_reduce.acquire import protocol as s

    f = _fields(s.encode_image(np.zeros((1, 1), np.uint16), image_id, series_id=sid, series_unique_id=f"bench-{sid}"))
    f["data"] = {"threshold_1": s._tagged_array(array) if isinstance(array, np.ndarray) else array}
    return _dumps(f)


def bomb(shape, dtype):
    """A valid bitshuffle-LZ4 array of zeros declaring `shape`: one compressed block
    repeated (a 1 GiB array takes about 6 MB), so it really decompresses to its size."""
    from redml_reduce.acquire import protocol as s
    from redml_reduce.acquire.compression import compress

    dt = np.dtype(dtype)
    one = compress(np.zeros(8192 // dt.itemsize, dt), "bslz4")  # header + one block of 8192 bytes
    assert int.from_bytes(one[8:12], "big") == 8192
    nbytes = int(np.prod(shape)) * dt.itemsize
    assert nbytes % 8192 == 0
    payload = nbytes.to_bytes(8, "big") + one[8:12] + one[12:] * (nbytes // 8192)
    return s._declared_array(shape, dt, payload, "bslz4")


HOSTILE_STARTS = {
    "image_dtype i4,,": {"image_dtype": "i4,,"},
    "image_dtype (100000,100000)f8": {"image_dtype": "(100000,100000)f8"},
    "bignum detector_distance": {"detector_distance": BIG},
    "bignum detector_translation": {"detector_distance": None, "detector_translation": [0.0, 0.0, BIG]},
    "bignum sensor_thickness": {"sensor_thickness": BIG},
    "bignum count_time": {"count_time": BIG},
    "bignum frame_time": {"frame_time": BIG},
    "image_size 2^21": {"image_size_x": 1 << 21},
    "number_of_images 2^64-1": {"number_of_images": (1 << 64) - 1},
    "bignum saturation_value": {"saturation_value": BIG},
    "NaN wavelength": {"incident_wavelength": float("nan")},
}


class Plan:
    """What the benchmark sent: per series id, the image ids and frames (None: a declared
    array that holds no frame); images sent after a start that should be refused."""

    def __init__(self):
        self.sent: dict[int, list] = {}
        self.images = 0

    def image(self, sid, image_id, frame):
        self.sent.setdefault(sid, []).append((image_id, frame))
        self.images += 1


STREAM_ATTACKS = ("starts", "ids", "frames", "mask")


def attack_stream(sender, plan: Plan, rng, copies: int, timeout_s: float, which=STREAM_ATTACKS) -> list:
    """Sends every attack; returns the names of the attacks sent (stops at the first send the
    receiver does not take within timeout_s: it is gone)."""
    from redml_reduce.acquire import protocol as s

    def send(raw):
        sender.send(raw, timeout_s=timeout_s)

    frame = lambda: rng.poisson(3.0, SHAPE).astype(np.uint16)  # noqa: E731
    done = []
    sid = 100
    for name, over in (HOSTILE_STARTS.items() if "starts" in which else ()):
        for _ in range(copies):
            sid += 1
            send(start_message(sid, 1, **over))
            f = frame()
            send(image_message(sid, 0, f))
            plan.image(sid, 0, f)
            send(s.encode_end(sid, f"bench-{sid}"))
        done.append(f"start: {name}")
    if "ids" in which:  # uint64 ids, each stored beside its own frame
        sid += 1
        ids = [0, 1 << 63, 7, (1 << 64) - 1, 3]
        send(start_message(sid, len(ids)))
        for i in ids:
            f = frame()
            send(image_message(sid, i, f))
            plan.image(sid, i, f)
        send(s.encode_end(sid, f"bench-{sid}"))
        done.append("ids: 2^63, 2^64-1")
    if "frames" in which:  # frames declaring 1 GiB each in a 128 x 128 series (6 per copy, as in the report)
        sid += 1
        n_bombs = 6 * copies
        send(start_message(sid, n_bombs + 1))
        for k in range(n_bombs):
            send(image_message(sid, k, bomb((8192, 16384), "uint64")))
            plan.image(sid, k, None)
        f = frame()
        send(image_message(sid, n_bombs, f))
        plan.image(sid, n_bombs, f)
        send(s.encode_end(sid, f"bench-{sid}"))
        done.append("frames: 8192 x 16384 uint64 declared")
    for _ in range(copies if "mask" in which else 0):  # a mask declaring 1 GiB of float64
        sid += 1
        send(start_message(sid, 1, pixel_mask={"threshold_1": bomb((8192, 16384), "float64")}))
        f = frame()
        send(image_message(sid, 0, f))
        plan.image(sid, 0, f)
        send(s.encode_end(sid, f"bench-{sid}"))
    if "mask" in which:
        done.append("mask: 8192 x 16384 float64 declared")
    return done


def good_series(sender, plan: Plan, rng, n: int, timeout_s: float) -> int:
    from redml_reduce.acquire import protocol as s

    sid = 1
    sender.send(start_message(sid, n), timeout_s=timeout_s)
    for i in range(n):
        f = rng.poisson(3.0, SHAPE).astype(np.uint16)
        sender.send(image_message(sid, i, f), timeout_s=timeout_s)
        plan.image(sid, i, f)
    sender.send(s.encode_end(sid, f"bench-{sid}"), timeout_s=timeout_s)
    return sid


# ---------------------------------------------------------------- dashboard

class Child:
    """A process whose own peak RSS is read when it is reaped (alive() reaps it once it ended)."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.returncode = None
        self.peak_rss_mb = float("nan")

    def _reaped(self, flags: int) -> bool:
        pid, status, usage = os.wait4(self.pid, flags)
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = usage.ru_maxrss / 1024
        return True

    def alive(self) -> bool:
        return self.returncode is None and not self._reaped(os.WNOHANG)

    def stop(self) -> str:
        """SIGTERM (the service writes its summary and exits), then its stderr."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self._reaped(0)
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return err


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def http_status(port: int, host_header: str, timeout: float = 10.0) -> int:
    """The status code of GET /api/status with this Host header (0: no answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as so:
        so.sendall(f"GET /api/status HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = so.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            return 0
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def attack_dashboard(pid: int, port: int, n_half_open: int, settle_s: float) -> dict:
    out = {"dashboard_local_host_status": http_status(port, f"127.0.0.1:{port}"),
           "dashboard_foreign_host_status": http_status(port, "evil.example.com")}
    out["dashboard_foreign_host_refused"] = 400 <= out["dashboard_foreign_host_status"] < 500
    out["dashboard_threads_before_flood"] = threads_of(pid)
    socks = []
    try:
        for _ in range(n_half_open):
            so = socket.create_connection(("127.0.0.1", port), timeout=10)
            so.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
            socks.append(so)
    except OSError as e:
        out["dashboard_flood_error"] = str(e)
    time.sleep(settle_s)
    out["dashboard_half_open_connections"] = len(socks)
    out["dashboard_threads_after_idle_flood"] = threads_of(pid)
    try:
        out["dashboard_answers_during_flood"] = http_status(port, f"127.0.0.1:{port}", timeout=5) == 200
    except OSError:
        out["dashboard_answers_during_flood"] = False
    for so in socks:
        so.close()
    return out


# ---------------------------------------------------------------- the file check

def check_files(summary: dict, plan: Plan) -> dict:
    """Counts in the summary and in each file; frames against what was sent under their id."""
    import h5py

    import redml_reduce  # noqa: F401 (the filter)
    from redml_reduce.acquire.series import read_acquisition

    consistent, wrong_id, received = True, 0, {}
    for s in summary.get("series", []):
        c = s["counts"]
        received[s["series_id"]] = c["received"]
        consistent &= c["received"] == c["written"] + c["sparse"] + c["vetoed"] + c["dropped"] + c["rejected"]
        if not s.get("path"):
            consistent &= c["written"] + c["sparse"] == 0
            continue
        info = read_acquisition(s["path"])
        consistent &= info["counts"] == c
        consistent &= len(info["image_id"]) == info["n_frames"] == c["written"] + c["sparse"]
        for kind in ("vetoed", "dropped", "rejected"):
            consistent &= len(info[f"{kind}_image_ids"]) == c[kind]
        sent = {}
        for i, f in plan.sent.get(s["series_id"], []):
            sent.setdefault(i, f)
        ids = [int(i) for i in info["image_id"]]
        with h5py.File(s["path"], "r") as fh:
            d = fh["entry/data/data"]
            for k in range(max(len(ids), d.shape[0])):  # a row without its frame, or a frame without its row
                f = sent.get(ids[k]) if k < len(ids) else None
                if f is None or k >= d.shape[0] or d[k].tobytes() != f.tobytes():
                    wrong_id += 1
    return {"consistent": bool(consistent), "wrong_id": wrong_id, "received": received}


# ---------------------------------------------------------------- codecs and the plugin path

def run_python(code: str, env=None, timeout: float = 240) -> dict:
    """Runs code (which prints one JSON line last) in a fresh process: its JSON."""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0 or not p.stdout.strip():
        return {"error": (p.stderr or p.stdout)[-2000:], "returncode": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


CODEC_ATTACKS = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, "tests")
    import numpy as np
    import redml_reduce as rr
    from chunkforge import hostile_chunks
    chunks = [(c, name, ch) for c in ("rans", "zstd", "lz4") for name, ch in hostile_chunks(c)]
    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
    lim = vm + (128 << 20)  # no room for a 2^27-pixel frame
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    res = {"redml_error": 0, "memory_error": 0, "other": []}
    for codec, name, ch in chunks:
        for fn in (rr.decode, rr.inspect, rr.exact_mask, rr.background_model):
            try:
                fn(ch)
                res["other"].append(f"{codec} {name} {fn.__name__}: accepted")
            except rr.RedmlError:
                res["redml_error"] += 1
            except MemoryError:
                res["memory_error"] += 1
            except Exception as e:
                res["other"].append(f"{codec} {name} {fn.__name__}: {type(e).__name__}: {e}")
    try:
        rr.encode(np.ones((64, 64), np.uint16), 1, tile=65535)
        res["tile_65535"] = "accepted"
    except MemoryError as e:
        res["tile_65535"] = f"MemoryError: {e}"
    except ValueError as e:
        res["tile_65535"] = f"ValueError: {e}"
    res["calls"] = 4 * len(chunks)
    print(json.dumps(res))
""")

ZARR_ATTACK = textwrap.dedent("""
    import json, resource, sys, tempfile, time
    from pathlib import Path
    sys.path.insert(0, "tests")
    import numpy as np, zarr
    import redml_reduce as rr
    from chunkforge import big_valid_chunk
    from redml_reduce.formats.zarr_codec import RedmlZarrCodec
    root = Path(tempfile.mkdtemp()) / "a.zarr"
    a = zarr.create_array(str(root), shape=(1, 16, 16), chunks=(1, 16, 16), dtype="uint32",
                          serializer=RedmlZarrCodec(q=0), compressors=None)
    a[0] = np.ones((16, 16), np.uint32)
    chunk = big_valid_chunk(np.uint32)
    (root / "c" / "0" / "0" / "0").write_bytes(chunk)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        a[0]
        r = "decoded"
    except rr.RedmlError as e:
        r = "RedmlError: " + str(e)
    except MemoryError as e:
        r = "MemoryError: " + str(e)
    dt = time.perf_counter() - t
    print(json.dumps({"chunk_bytes": len(chunk), "result": r, "seconds": dt,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}))
""")

PLUGIN_PATH_WRITE = textwrap.dedent("""
    import json, os, tempfile
    import h5py, numpy as np
    import redml_reduce as rr
    frame = np.random.default_rng(1).poisson(2.0, (64, 80)).astype(np.uint16)  # < 4 photons: q=1 is exact
    path = os.path.join(tempfile.mkdtemp(), "p.h5")
    try:
        with h5py.File(path, "w") as f:
            f.create_dataset("d", data=frame[None], chunks=(1, 64, 80), **rr.Redml(q=1))
        with h5py.File(path, "r") as f:
            back = f["d"][0]
        r = {"ok": bool(back.tobytes() == frame.tobytes())}
    except Exception as e:
        r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(r))
""")


def codec_attacks() -> dict:
    res = run_python(CODEC_ATTACKS)
    zarr = run_python(ZARR_ATTACK)
    import redml_reduce

    env = dict(os.environ, HDF5_PLUGIN_PATH=redml_reduce.PLUGIN_PATH)
    plugin = run_python(PLUGIN_PATH_WRITE, env=env)
    return {"codec_forged_calls": res.get("calls", 0), "codec_forged_redml_errors": res.get("redml_error", 0),
            "codec_forged_memory_errors": res.get("memory_error", 0), "codec_forged_other": res.get("other", []),
            "codec_error": res.get("error"),
            "tile_65535": res.get("tile_65535"),
            "tile_65535_clear_error": str(res.get("tile_65535", "")).startswith("ValueError"),
            "zarr_oversize_chunk": zarr.get("result", zarr.get("error")),
            # refused from its header: an error, and no frame-sized allocation before it
            "zarr_oversize_chunk_refused": str(zarr.get("result", "")).startswith("RedmlError")
            and zarr.get("rss_growth_mb", 1e9) < 64,
            "zarr_oversize_chunk_bytes": zarr.get("chunk_bytes"), "zarr_oversize_chunk_seconds": zarr.get("seconds"),
            "zarr_process_peak_rss_mb": zarr.get("peak_rss_mb", float("nan")),
            "zarr_decode_rss_growth_mb": zarr.get("rss_growth_mb", float("nan")), "zarr_error": zarr.get("error"),
            "plugin_path_writes_ok": bool(plugin.get("ok")), "plugin_path_error": plugin.get("error")}


# ---------------------------------------------------------------- the run

def run_acquire(work: Path, copies: int, n_good: int, n_half_open: int, seed: int, which=STREAM_ATTACKS) -> dict:
    from redml_reduce.acquire.sender import StreamSender

    rng = np.random.default_rng(seed)
    dport = free_port()
    summary_path = work / "summary.json"
    plan = Plan()
    with StreamSender("tcp://127.0.0.1:*", linger_ms=0) as sender:
        cmd = [sys.executable, "-m", "redml_reduce.cli", "acquire", "--connect", sender.endpoint, "--out",
               str(work / "run_{series}.nxs"), "--q", "0", "--workers", "2", "--series", "0", "--quiet",
               "--json", str(summary_path), "--dashboard", f"127.0.0.1:{dport}", "--timeout", "120"]
        proc = Child(cmd)
        out = {"attacks": []}
        t0 = time.perf_counter()
        try:
            for _ in range(200):  # the dashboard is up once the process has started
                try:
                    socket.create_connection(("127.0.0.1", dport), timeout=1).close()
                    break
                except OSError:
                    if not proc.alive():
                        break
                    time.sleep(0.1)
            if proc.alive():
                out.update(attack_dashboard(proc.pid, dport, n_half_open, settle_s=2.0))
                out["attacks"].append(f"dashboard: foreign Host, {n_half_open} half-open connections")
            out["attacks"] += attack_stream(sender, plan, rng, copies, timeout_s=30, which=which)
            sid = good_series(sender, plan, rng, n_good, timeout_s=30)
            out["attacks"].append(f"good: {n_good} frames")
            good_path = work / f"run_{sid}.nxs"
            deadline = time.time() + 120
            while time.time() < deadline and proc.alive():  # the good series closed: counts final
                if done_series(good_path, n_good):
                    break
                time.sleep(0.5)
        except TimeoutError as e:
            out["send_error"] = str(e)
        out["messages_sent"] = sender.sent
        out["stream_seconds"] = time.perf_counter() - t0
        alive = proc.alive()
        err = proc.stop()
        out["peak_rss_mb"] = proc.peak_rss_mb
    out["exit_code"] = proc.returncode
    out["service_alive"] = bool(alive and proc.returncode == 0)
    if not out["service_alive"]:
        out["stderr_tail"] = err[-3000:]
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    files = check_files(summary, plan) if summary else {"consistent": False, "wrong_id": 0, "received": {}}
    totals = summary.get("counts", {})
    counted = sum(files["received"].values()) + totals.get("orphans", 0)
    out["images_sent"] = plan.images
    out["images_counted"] = counted
    out["stored_frames_with_wrong_id"] = files["wrong_id"]
    out["frames_lost_unrecorded"] = max(0, plan.images - counted) + files["wrong_id"]
    out["counts_consistent"] = files["consistent"]
    out["series_recorded"] = len(summary.get("series", []))
    out["receiver_counts"] = totals
    return out


def done_series(path: Path, n: int) -> bool:
    from redml_reduce.acquire.series import read_acquisition

    if not path.exists():
        return False
    try:
        c = read_acquisition(path)["counts"]
    except (OSError, KeyError, ValueError):
        return False
    return c["received"] >= n and c["written"] + c["rejected"] + c["dropped"] >= n


def table(r: dict) -> str:
    rows = [("messages sent", r["messages_sent"]), ("images sent / counted", f"{r['images_sent']} / "
                                                                         f"{r['images_counted']}"),
            ("service alive (exit code)", f"{r['service_alive']} ({r['exit_code']})"),
            ("counts consistent", r["counts_consistent"]), ("frames lost unrecorded", r["frames_lost_unrecorded"]),
            ("stored frames with a wrong id", r["stored_frames_with_wrong_id"]),
            ("receiver peak RSS MB", f"{r['peak_rss_mb']:.0f}"),
            ("forged chunks: RedmlError / MemoryError / calls",
             f"{r['codec_forged_redml_errors']} / {r['codec_forged_memory_errors']} / {r['codec_forged_calls']}"),
            ("zarr 2^27-px chunk in 16x16 array", f"{r['zarr_oversize_chunk_refused']} "
                                                  f"({(r['zarr_oversize_chunk_seconds'] or 0):.3f} s, "
                                                  f"+{r['zarr_decode_rss_growth_mb']:.0f} MB)"),
            ("tile=65535 clear error", r["tile_65535_clear_error"]),
            ("HDF5_PLUGIN_PATH write+read", r["plugin_path_writes_ok"]),
            ("dashboard foreign Host refused", f"{r.get('dashboard_foreign_host_refused')} "
                                               f"(status {r.get('dashboard_foreign_host_status')})"),
            ("dashboard threads before / after half-open flood",
             f"{r.get('dashboard_threads_before_flood')} / {r.get('dashboard_threads_after_idle_flood')} "
             f"({r.get('dashboard_half_open_connections')} connections)")]
    return "\n".join(["| check | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one copy of each attack, 100 half-open connections")
    ap.add_argument("--copies", type=int, help="copies of each attack (default 1 quick, 3 full)")
    ap.add_argument("--half-open", type=int, help="half-open dashboard connections (default 100 quick, 300 full)")
    ap.add_argument("--good", type=int, default=8, help="frames of the last, ordinary series")
    ap.add_argument("--attacks", nargs="+", choices=STREAM_ATTACKS, default=list(STREAM_ATTACKS),
                    help="stream attacks to send (default all; one alone measures it on a receiver that dies "
                         "at another)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    copies = args.copies or (1 if args.quick else 3)
    half_open = args.half_open if args.half_open is not None else (100 if args.quick else 300)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="redml-hostile-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = run_acquire(work, copies, args.good, half_open, args.seed, args.attacks)
        r.update(codec_attacks())
    r.update({"copies": copies, "cores": os.cpu_count(), "machine": platform.platform(),
              "seconds": time.perf_counter() - t0})
    print(table(r))
    if r.get("stderr_tail"):
        print("\nreceiver's last words:\n" + r["stderr_tail"])
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    print(f"\ntotal {r['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
