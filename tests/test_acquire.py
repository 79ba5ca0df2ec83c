"""redml acquire: a detector stream (Stream V2 over ZeroMQ) in, one NXmx file per series out.

Frames come back byte for byte (q=0) or within the bound (q>0), in arrival order; every
image not stored is counted and listed by reason (received = written + sparse + vetoed +
dropped + rejected); back-pressure blocks or drops with a record and bounded memory; bad
messages are logged and skipped; a killed acquisition leaves every flushed frame readable.
"""
import json
import math
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import poisson_frame
from redml_reduce.acquire import worker as acquire_mod
from redml_reduce.acquire import protocol as s
from redml_reduce.acquire.compression import compress
from redml_reduce.acquire.receiver import Receiver
from redml_reduce.acquire.sender import StreamSender
from redml_reduce.acquire.series import read_acquisition
from redml_reduce.acquire import AcquireSettings, Acquisition
from redml_reduce.background import BeamGeometry
from redml_reduce.codec import error_bound
from redml_reduce.formats.peaklist import read_cxi_peaks

SHAPE = (96, 128)
GEOM = BeamGeometry(beam_x=64.3, beam_y=47.8, distance_mm=80.0, pixel_size_mm=0.075, wavelength_a=1.0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H5CLEAR = shutil.which("h5clear")


def make_frames(rng, n, hits=None, dtype="uint16", shape=SHAPE):
    """Poisson frames, every other one with 25 spots (a hit) unless `hits` says which."""
    hits = hits if hits is not None else [i % 2 == 1 for i in range(n)]
    return [poisson_frame(rng, 4.0, shape, dtype, spots=25 if h else 0) for h in hits]


def stored_frames(path):
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        d = f["entry/data/data"]
        d.refresh()
        return [d[i] for i in range(d.shape[0])], [d.id.read_direct_chunk((i, 0, 0))[1] for i in range(d.shape[0])]


def serve_in_thread(acq, endpoint, **kw):
    out = {}

    def run():
        out["summaries"] = acq.serve(endpoint, **kw)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def check_counts(c):
    assert c["received"] == c["written"] + c["sparse"] + c["vetoed"] + c["dropped"] + c["rejected"], c
    assert c["missing"] == max(0, c["expected"] - c["received"]), c


@pytest.mark.parametrize("compressions", [(None,), ("bslz4",), (None, "bslz4", "lz4")])
def test_lossless_stream_to_file_byte_for_byte(tmp_path, rng, compressions):
    frames = make_frames(rng, 9)
    mask = np.zeros(SHAPE, bool)
    mask[:, 60:64] = True  # a module gap
    out = tmp_path / "run.nxs"
    acq = Acquisition(out, AcquireSettings(q=0, workers=2))
    with StreamSender("tcp://127.0.0.1:*") as sender:
        t, res = serve_in_thread(acq, sender.endpoint, max_series=1)
        sender.start(SHAPE, "uint16", GEOM, number_of_images=len(frames), pixel_mask=mask,
                     compression=compressions[-1])
        for i, f in enumerate(frames):
            sender.image(f, i, compression=compressions[i % len(compressions)])
            if i == 4:
                sender.send(b"\xa1\x64type\x64junk")  # a malformed message mid-series
        sender.end()
        t.join(60)
    acq.close()
    assert not t.is_alive()
    (summary,) = res["summaries"]
    c = summary["counts"]
    assert c == {"received": 9, "written": 9, "sparse": 0, "vetoed": 0, "dropped": 0, "rejected": 0,
                 "missing": 0, "expected": 9}
    assert acq.stats.snapshot()["counts"]["malformed"] == 1
    back, chunks = stored_frames(out)
    assert len(back) == len(frames)
    for f, b in zip(frames, back):
        assert b.dtype == f.dtype and b.tobytes() == f.tobytes()
    info = read_acquisition(out)
    assert info["counts"] == c
    assert list(info["image_id"]) == list(range(9))
    # NXmx from the start message: geometry, pixel mask
    g = BeamGeometry.from_nxmx(out)
    for k in ("beam_x", "beam_y", "distance_mm", "pixel_size_mm", "wavelength_a"):
        assert np.isclose(getattr(g, k), getattr(GEOM, k)), k
    with h5py.File(out, "r", libver="latest", swmr=True) as f:
        assert np.array_equal(f["entry/instrument/detector/pixel_mask"][...] != 0, mask)
    # per-frame spots and hits agree with the spot finder run here; CXI peak tables too
    peaks = read_cxi_peaks(out)
    for i, f in enumerate(frames):
        p, _ = rr.find_spots(f, mask=mask)
        assert info["n_spots"][i] == len(p) == len(peaks[i])
        assert info["hit"][i] == (len(p) >= 10)
        np.testing.assert_allclose(peaks[i]["x"], p["x"], atol=1e-3)


def test_quantized_frames_within_bound_and_veto_counts(tmp_path, rng):
    hits = [True, False, False, True, False, True, True, False]
    frames = make_frames(rng, len(hits), hits)
    found = [len(rr.find_spots(f)[0]) >= 10 for f in frames]
    n_hits = sum(found)
    assert 0 < n_hits < len(frames)
    for veto in ("sparse", "drop"):
        out = tmp_path / f"run_{veto}.nxs"
        with Acquisition(out, AcquireSettings(q=1.0, veto=veto, workers=2)) as acq:
            acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=len(frames)))
            for i, f in enumerate(frames):
                acq.feed(s.encode_image(f, i, compression="bslz4"))
            acq.feed(s.encode_end())
        c = acq.series[0].summary["counts"]
        check_counts(c)
        info = read_acquisition(out)
        assert info["counts"] == c and c["received"] == len(frames) and c["written"] == n_hits
        back, chunks = stored_frames(out)
        ids = list(info["image_id"])
        if veto == "sparse":
            assert c["sparse"] == len(frames) - n_hits and c["vetoed"] == 0 and ids == list(range(len(frames)))
        else:
            assert c["vetoed"] == len(frames) - n_hits and c["sparse"] == 0
            assert ids == [i for i in range(len(frames)) if found[i]]
            assert sorted(info["vetoed_image_ids"]) == [i for i in range(len(frames)) if not found[i]]
        for k, i in enumerate(ids):
            meta = rr.inspect(chunks[k])
            if not found[i]:
                assert meta["mode"] == "sparse" and info["sparse"][k] == 1
                continue
            assert meta["mode"] == "quantized" and meta["q"] == 1.0
            x, b = frames[i].astype(np.float64), back[k].astype(np.float64)
            exact = rr.exact_mask(chunks[k])
            assert np.array_equal(back[k][exact], frames[i][exact])
            assert np.all(np.abs(b - x)[~exact] <= error_bound(chunks[k])[~exact] * (1 + 1e-6))
            p, spot_mask = rr.find_spots(frames[i])
            assert exact[spot_mask].all()  # the finder's spots are kept exactly


@pytest.fixture
def slow_encoder(monkeypatch):
    """The encoder made slower than the stream (the C++ encoder is fast on these small frames)."""
    real = acquire_mod.encode

    def slow(*a, **k):
        time.sleep(0.02)
        return real(*a, **k)

    monkeypatch.setattr(acquire_mod, "encode", slow)


def test_back_pressure_blocks_with_bounded_memory(tmp_path, rng, slow_encoder):
    """on_full="block": a sender faster than the encoder is slowed down; nothing is lost and
    what the process holds stays a few frames, not the stream (42 MB)."""
    n, shape = 80, (512, 512)
    frames = make_frames(rng, 4, shape=shape)
    s.parse_message(s.encode_image(frames[0], 0)).data["threshold_1"].decode()  # imports before measuring
    out = tmp_path / "run.nxs"
    acq = Acquisition(out, AcquireSettings(q=0, workers=1, max_pending=2, rcv_hwm=1, on_full="block", spots=False))
    tracemalloc.start()
    try:
        with StreamSender("tcp://127.0.0.1:*", send_hwm=1) as sender:
            t, res = serve_in_thread(acq, sender.endpoint, max_series=1)
            sender.start(shape, "uint16", GEOM, number_of_images=n)
            for i in range(n):
                sender.image(frames[i % 4], i)  # raw frames, 512 KB each
            sender.end()
            t.join(300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    acq.close()
    c = res["summaries"][0]["counts"]
    assert c["written"] == n and c["dropped"] == 0 and c["rejected"] == 0
    snap = acq.stats.snapshot()
    assert snap["max_pending_seen"] == 2  # the queue filled up (back-pressure engaged) and never grew past its bound
    sent = n * frames[0].nbytes
    # measured: 5 MB with this bound; an unbounded queue (max_pending=1000) held 41 MB of the 42 MB
    assert peak < sent / 5, f"peak {peak / 1e6:.1f} MB of traced memory for {sent / 1e6:.1f} MB sent"
    back, _ = stored_frames(out)
    assert all(b.tobytes() == frames[i % 4].tobytes() for i, b in enumerate(back))


def test_back_pressure_drops_with_a_record(tmp_path, rng, slow_encoder):
    """on_full="drop": frames the encoder cannot take are dropped, counted, and listed."""
    n = 40
    frames = make_frames(rng, n)
    out = tmp_path / "run.nxs"
    with Acquisition(out, AcquireSettings(q=0, workers=1, max_pending=1, on_full="drop")) as acq:
        acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=n))
        for i, f in enumerate(frames):  # as fast as feed() takes them: far faster than 30 ms a frame
            acq.feed(s.encode_image(f, i))
        acq.feed(s.encode_end())
    c = acq.series[0].summary["counts"]
    check_counts(c)
    assert c["dropped"] > 0 and c["written"] > 0 and c["written"] + c["dropped"] == n
    info = read_acquisition(out)
    stored, dropped = list(info["image_id"]), list(info["dropped_image_ids"])
    assert info["counts"]["dropped"] == len(dropped) == c["dropped"]
    assert sorted(stored + dropped) == list(range(n))
    back, _ = stored_frames(out)
    assert all(b.tobytes() == frames[i].tobytes() for i, b in zip(stored, back))
    assert acq.stats.snapshot()["indicators"]["frames_lost"] == c["dropped"]


def test_bad_and_out_of_order_messages_are_logged_and_skipped(tmp_path, rng, caplog):
    frames = make_frames(rng, 6)
    out = tmp_path / "run_{series}.nxs"
    good_img = s.encode_image(frames[0], 0, series_id=1, series_unique_id="s1")
    corrupt = compress(frames[1], "bslz4")
    corrupt = corrupt[:20] + bytes(len(corrupt) - 20)
    caplog.set_level(logging.INFO, logger="redml_reduce.acquire")
    with Acquisition(out, AcquireSettings(q=0, workers=2)) as acq:
        feed = acq.feed
        feed(b"\xff\x00 not cbor")                                           # malformed
        feed(s.encode_image(frames[0], 0, series_id=1))                      # image before any start
        feed(s.encode_end(1))                                                # end without start
        feed(s.encode_start(SHAPE, "uint16", GEOM, series_id=1, series_unique_id="s1", number_of_images=6))
        feed(good_img)                                                       # image 0
        feed(good_img[: len(good_img) // 2])                                 # truncated
        feed(s.encode_image(frames[1][:, :100].copy(), 1, series_id=1, series_unique_id="s1"))  # wrong shape
        feed(s.encode_image(frames[1], 1, series_id=1, series_unique_id="s1", compression="bslz4",
                            payload=corrupt))                               # undecodable
        feed(good_img)                                                       # duplicate of image 0
        feed(s.encode_image(frames[3], 3, series_id=1, series_unique_id="s1"))
        feed(s.encode_image(frames[2], 2, series_id=1, series_unique_id="s1"))  # out of order: kept
        feed(s.encode_image(frames[4], 4, series_id=7, series_unique_id="s7"))  # another series
        feed(s.encode_end(7, "s7"))                                          # end of another series
        feed(s.encode_start(SHAPE, "uint16", GEOM, series_id=2, series_unique_id="s2", number_of_images=2))
        for i in range(2):                                                   # series 1 never ended
            feed(s.encode_image(frames[i], i, series_id=2, series_unique_id="s2"))
        feed(s.encode_end(2, "s2"))
    s1, s2 = acq.series
    c1, c2 = s1.summary["counts"], s2.summary["counts"]
    check_counts(c1)
    check_counts(c2)
    assert c1 == {"received": 6, "written": 3, "sparse": 0, "vetoed": 0, "dropped": 0, "rejected": 3,
                  "missing": 0, "expected": 6}
    assert "new series" in s1.summary["ended"]
    assert c2["written"] == 2 and c2["missing"] == 0 and s2.summary["ended"] == "end message"
    totals = acq.stats.snapshot()["counts"]
    assert totals["malformed"] == 2 and totals["orphans"] == 2 and totals["out_of_order"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for text in ("malformed", "outside a series", "without its start", "received twice", "shape", "during series 1",
                 "its end message never came"):
        assert any(text in e for e in errors), (text, errors)
    info = read_acquisition(tmp_path / "run_1.nxs")
    assert list(info["image_id"]) == [0, 3, 2]  # arrival order
    assert sorted(info["rejected_image_ids"]) == [0, 1, 1]
    back, _ = stored_frames(tmp_path / "run_1.nxs")
    assert [b.tobytes() for b in back] == [frames[i].tobytes() for i in (0, 3, 2)]
    assert len(stored_frames(tmp_path / "run_2.nxs")[0]) == 2


def test_series_without_end_closes_after_silence(tmp_path, rng):
    frames = make_frames(rng, 3)
    acq = Acquisition(tmp_path / "run.nxs", AcquireSettings(q=0, workers=1, idle_timeout_s=0.5))
    with StreamSender("tcp://127.0.0.1:*") as sender:
        t, res = serve_in_thread(acq, sender.endpoint, max_series=1)
        sender.start(SHAPE, "uint16", GEOM, number_of_images=10)
        for i, f in enumerate(frames):
            sender.image(f, i)
        t.join(60)  # the detector died: no end message
    acq.close()
    (summary,) = res["summaries"]
    assert summary["counts"]["written"] == 3 and summary["counts"]["missing"] == 7
    assert "no message" in summary["ended"]
    assert read_acquisition(tmp_path / "run.nxs")["counts"]["missing"] == 7


def test_existing_files_are_never_overwritten(tmp_path, rng):
    out = tmp_path / "run.nxs"
    out.write_bytes(b"precious")
    with Acquisition(out, AcquireSettings(q=0, workers=1)) as acq:
        acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=1))
        acq.feed(s.encode_image(make_frames(rng, 1)[0], 0))
        acq.feed(s.encode_end())
    assert out.read_bytes() == b"precious"
    assert acq.series[0].summary["path"] == str(tmp_path / "run-1.nxs")


def test_bslz4_codec_stores_the_detector_chunks(tmp_path, rng):
    """The plain writer: the detector's bslz4 frames stored as they came (raw ones compressed),
    read back through hdf5plugin's filter."""
    import hdf5plugin  # noqa: F401 (registers the filter)

    frames = make_frames(rng, 4)
    payloads = [compress(f, "bslz4") for f in frames]
    out = tmp_path / "plain.h5"
    with Acquisition(out, AcquireSettings(codec="bslz4", spots=False, workers=1)) as acq:
        acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=4))
        for i, f in enumerate(frames):
            acq.feed(s.encode_image(f, i, compression="bslz4" if i < 3 else None, payload=payloads[i] if i < 3 else None))
        acq.feed(s.encode_end())
    back, chunks = stored_frames(out)
    assert chunks[:3] == payloads[:3]
    assert [b.tobytes() for b in back] == [f.tobytes() for f in frames]
    assert read_acquisition(out)["counts"]["written"] == 4


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def test_acquire_killed_mid_series_keeps_flushed_frames(tmp_path, rng):
    """SIGKILL of `redml acquire` mid-series: every frame in the file decodes to what was sent
    for its image_id, the tables have a row for each."""
    n = 3000  # an upper bound: the loop stops once 8 frames are on disk (slow starts under load)
    frames = make_frames(rng, 5)
    out = tmp_path / "run.nxs"
    with StreamSender("tcp://127.0.0.1:*", linger_ms=0) as sender:
        child = subprocess.Popen([sys.executable, "-m", "redml_reduce.cli", "acquire", "--connect", sender.endpoint,
                                  "--out", str(out), "--q", "0", "--workers", "1", "--quiet"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            sender.start(SHAPE, "uint16", GEOM, number_of_images=n)
            seen = 0
            for i in range(n):
                sender.send(s.encode_image(frames[i % 5], i, series_id=sender.series_id,
                                           series_unique_id=sender.series_unique_id), timeout_s=30)
                time.sleep(0.01)
                if i % 10 == 9 and out.exists():
                    try:
                        with h5py.File(out, "r", libver="latest", swmr=True) as f:
                            seen = f["entry/data/data"].shape[0]
                    except (OSError, KeyError):
                        pass
                if seen >= 8:
                    break
            assert seen >= 8, "the acquisition wrote nothing"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            err = child.stderr.read().decode()
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL, err
    sent_ids = list(range(i + 1))

    def check(f):
        d = f["entry/data/data"]
        g = f["entry/redml_acquire"]
        ids = g["image_id"][...]
        nframes = d.shape[0]
        assert nframes >= seen and len(ids) >= nframes - 1
        readable = 0
        for k in range(nframes):
            try:
                b = d[k]
            except OSError:
                assert k == nframes - 1, f"frame {k} of {nframes} unreadable"
                continue
            if k < len(ids):
                assert ids[k] in sent_ids and b.tobytes() == frames[ids[k] % 5].tobytes(), f"frame {k} damaged"
            else:  # flushed before its table row (the kill fell between the two): intact all the same
                assert any(b.tobytes() == f.tobytes() for f in frames), f"frame {k} damaged"
            readable += 1
        return readable

    with h5py.File(out, "r", libver="latest", swmr=True) as f:
        readable = check(f)
    assert readable >= seen
    if H5CLEAR is not None:
        subprocess.run([H5CLEAR, "-s", str(out)], check=True, capture_output=True, timeout=60)
        with h5py.File(out, "r") as f:
            assert check(f) == readable


def test_cli_simulate_detector_and_acquire(tmp_path):
    """The two commands of a beamline, as processes: the simulator's shots arrive in the file."""
    port = free_port()
    out = tmp_path / "run.nxs"
    summary = tmp_path / "summary.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    acq = subprocess.Popen(
        [sys.executable, "-m", "redml_reduce.cli", "acquire", "--connect", f"tcp://127.0.0.1:{port}", "--out",
         str(out), "--q", "1", "--veto", "sparse", "--workers", "2", "--json", str(summary), "--quiet", "--wait",
         "120"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sim = subprocess.run([sys.executable, "-m", "redml_study.cli", "simulate-detector", "--bind",
                          f"tcp://127.0.0.1:{port}", "--frames", "6", "--rate", "0", "--detector", "0.5m", "--pool", "3",
                          "--hit-rate", "0.7", "--seed", "5"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert sim.returncode == 0, sim.stderr
    stdout, stderr = acq.communicate(timeout=300)
    assert acq.returncode == 0, stderr
    result = json.loads(summary.read_text())
    c = result["series"][0]["counts"]
    check_counts(c)
    assert c["received"] == 6 and c["written"] + c["sparse"] == 6
    from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator

    sim_ = StillSimulator(DetectorLayout(modules=(1, 1), name="x"), Crystal(),
                          ShotSettings(background=0.5, hit_rate=0.7, dtype="uint16"), seed=5)
    shots = [sim_.shot(i).frame for i in range(3)]
    back, chunks = stored_frames(out)
    info = read_acquisition(out)
    for k, b in enumerate(back):
        shot = shots[k % 3]
        if rr.inspect(chunks[k])["mode"] == "sparse":
            assert not info["hit"][k]
            continue
        bound = error_bound(chunks[k])
        exact = rr.exact_mask(chunks[k])
        err = np.abs(b.astype(np.float64) - shot)
        assert np.all(err[exact] == 0) and np.all(err[~exact] <= bound[~exact] * (1 + 1e-6))
    assert g_close(BeamGeometry.from_nxmx(out), sim_.geometry)


def g_close(a, b):
    return all(np.isclose(getattr(a, k), getattr(b, k)) for k in ("beam_x", "beam_y", "distance_mm", "pixel_size_mm",
                                                                   "wavelength_a"))


def test_raw_jungfrau_stream_is_converted_and_its_calibration_kept(tmp_path, rng):
    """Raw JUNGFRAU words with the calibration in the start message: the file holds the
    photons the core's conversion gives (q=0: byte for byte) and the calibration."""
    from redml_reduce.jungfrau import convert, read_calibration
    from redml_study.detector import simulate_detector

    det = simulate_detector(rng, frame_shape=SHAPE, geometry=None)
    photons = [poisson_frame(rng, 2.0, SHAPE, "int32", spots=20) for _ in range(4)]
    raw = [det.raw(p, rng) for p in photons]
    # an overload word, on a pixel the calibration does not mask (a masked pixel gives the minimum)
    oy, ox = np.argwhere(~det.calibration.mask)[0]
    raw[2][oy, ox] = 0xC000
    out = tmp_path / "raw.nxs"
    acq = Acquisition(out, AcquireSettings(q=0, workers=2))
    with StreamSender("tcp://127.0.0.1:*") as sender:
        t, res = serve_in_thread(acq, sender.endpoint, max_series=1)
        sender.start(SHAPE, "uint16", GEOM, number_of_images=len(raw), jungfrau_calibration=det.calibration.to_dict(),
                     compression="bslz4")
        for i, f in enumerate(raw):
            sender.image(f, i, compression="bslz4")
        sender.end()
        t.join(60)
    acq.close()
    (summary,) = res["summaries"]
    assert summary["counts"]["written"] == 4 and summary["counts"]["rejected"] == 0
    back, _ = stored_frames(out)
    dt = det.calibration.photon_dtype()
    assert dt == np.int16  # 12.4 keV: every count fits int16 (the smaller frame, nothing clipped)
    for r, b in zip(raw, back):
        expected, info = convert(r, det.calibration, dt)
        assert b.dtype == dt and b.tobytes() == expected.tobytes()
        wide = convert(r, det.calibration)[0].astype(np.int64)  # int32: the same counts
        counts = (wide != np.iinfo(np.int32).min) & (wide != np.iinfo(np.int32).max)
        np.testing.assert_array_equal(b[counts], wide[counts])
    assert back[2][oy, ox] == np.iinfo(dt).max  # overload kept as the saturation marker
    with h5py.File(out, "r", libver="latest", swmr=True) as f:
        stored = read_calibration(f["entry/instrument/detector/jungfrau_calibration"])
        # the photons' saturation value, not the raw words' (65534): DIALS sees the overload marker
        # as an overload, and the indicators count it
        assert f["entry/instrument/detector/saturation_value"][()] == np.iinfo(dt).max - 1
        # and the lowest count is trusted: negative photon counts (noise) are counts, the bad-pixel marker is not
        assert f["entry/instrument/detector/underload_value"][()] == np.iinfo(dt).min + 1
        ids, saturated = f["entry/redml_acquire/image_id"][...], f["entry/redml_acquire/saturated"][...]
    assert saturated[list(ids).index(2)] >= 1
    np.testing.assert_array_equal(stored.pedestal, det.calibration.pedestal)
    np.testing.assert_array_equal(stored.gain, det.calibration.gain)


# ---- hostile input: the service keeps receiving, counts add up, nothing big is decoded ----

def _fields(raw):
    import cbor2

    return dict(cbor2.loads(raw))


def _message(fields):
    import cbor2

    return cbor2.dumps(cbor2.CBORTag(55799, fields))


def _start(shape=SHAPE, sid=1, uid="s1", n=2, **over):
    f = _fields(s.encode_start(shape, "uint16", GEOM, series_id=sid, series_unique_id=uid, number_of_images=n))
    for k, v in over.items():
        if v is None:
            f.pop(k, None)
        else:
            f[k] = v
    return _message(f)


def _image(image_id, array, sid=1, uid="s1"):
    """An image message whose data is `array`: a frame, or a declared array (protocol._declared_array)."""
    f = _fields(s.encode_image(np.zeros((1, 1), np.uint16), image_id, series_id=sid, series_unique_id=uid))
    f["data"] = {"threshold_1": array if not isinstance(array, np.ndarray) else s._tagged_array(array)}
    return _message(f)


ISSUE_STARTS = {  # the six start messages that ended `redml acquire` with exit 1
    "image_dtype i4,,": {"image_dtype": "i4,,"},
    "image_dtype (100000,100000)f8": {"image_dtype": "(100000,100000)f8"},
    "bignum detector_distance": {"detector_distance": 10**400},
    "bignum detector_translation": {"detector_distance": None, "detector_translation": [0, 0, 10**400]},
    "bignum sensor_thickness": {"sensor_thickness": 10**400},
    "bignum count_time": {"count_time": 10**400},
}


def test_hostile_start_messages_never_stop_the_service(tmp_path, rng, caplog):
    """Each start is followed by an image and an end: a refused start leaves its image an
    orphan (counted), an accepted one (unusable geometry) stores it without geometry; the
    service then takes a good series as if nothing happened."""
    frames = make_frames(rng, 2)
    caplog.set_level(logging.INFO, logger="redml_reduce.acquire")
    with Acquisition(tmp_path / "run_{series}.nxs", AcquireSettings(q=0, workers=2)) as acq:
        for k, over in enumerate(ISSUE_STARTS.values()):
            acq.feed(_start(sid=10 + k, uid=f"h{k}", n=1, **over))
            acq.feed(_image(0, frames[0], sid=10 + k, uid=f"h{k}"))
            acq.feed(s.encode_end(10 + k, f"h{k}"))
        acq.feed(_start())
        for i, f in enumerate(frames):
            acq.feed(_image(i, f))
        acq.feed(s.encode_end(1, "s1"))
    totals = acq.stats.snapshot()["counts"]
    refused = len(ISSUE_STARTS) - 2  # the bad distances leave the series without geometry
    assert totals["malformed"] == refused and totals["orphans"] == refused
    assert len(acq.series) == 3
    for series in acq.series:
        check_counts(series.summary["counts"])
        assert series.summary["counts"]["written"] == series.summary["counts"]["received"]
    assert acq.series[-1].summary["counts"]["written"] == 2
    back, _ = stored_frames(tmp_path / "run_1.nxs")
    assert [b.tobytes() for b in back] == [f.tobytes() for f in frames]
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for text in ("image_dtype", "sensor_thickness", "count_time", "detector_distance", "detector_translation"):
        assert text in errors, text


def test_anything_a_handler_raises_is_contained_and_counted(tmp_path, rng, monkeypatch):
    """Faults the checks did not foresee: the image is counted as rejected in its series, a
    start as malformed; the service goes on."""
    frames = make_frames(rng, 3)
    with Acquisition(tmp_path / "run_{series}.nxs", AcquireSettings(q=0, workers=1)) as acq:
        real_check = Receiver._check_frame

        def flaky(self, series, enc):
            if flaky.fail:
                flaky.fail = False
                raise RuntimeError("unforeseen")
            return real_check(self, series, enc)

        flaky.fail = True
        monkeypatch.setattr(Receiver, "_check_frame", flaky)
        acq.feed(_start(n=3))
        for i, f in enumerate(frames):
            acq.feed(_image(i, f))
        acq.feed(s.encode_end(1, "s1"))
        monkeypatch.setattr(Receiver, "_new_series", lambda *a: 1 / 0)
        acq.feed(_start(sid=2, uid="s2"))
    c = acq.series[0].summary["counts"]
    check_counts(c)
    assert (c["received"], c["written"], c["rejected"]) == (3, 2, 1)
    assert list(read_acquisition(tmp_path / "run_1.nxs")["rejected_image_ids"]) == [0]
    assert acq.stats.snapshot()["counts"]["malformed"] == 1 and len(acq.series) == 1


def test_uint64_image_ids_are_stored_with_their_own_ids(tmp_path, rng):
    """Image ids are CBOR uint64: 2^63 and 2^64 - 1 are stored like any other, each frame
    beside its own id (they used to be lost and shift the id column)."""
    ids = [0, 1 << 63, 7, (1 << 64) - 1, 3]
    frames = make_frames(rng, len(ids))
    out = tmp_path / "run.nxs"
    with Acquisition(out, AcquireSettings(q=0, workers=2)) as acq:
        acq.feed(_start(n=len(ids)))
        for i, f in zip(ids, frames):
            acq.feed(_image(i, f))
        acq.feed(_image(1 << 63, frames[0]))  # a duplicate: rejected, listed with its id
        acq.feed(s.encode_end(1, "s1"))
    c = acq.series[0].summary["counts"]
    check_counts(c)
    assert (c["received"], c["written"], c["rejected"]) == (len(ids) + 1, len(ids), 1)
    info = read_acquisition(out)
    assert info["counts"] == c
    assert [int(i) for i in info["image_id"]] == ids
    assert [int(i) for i in info["rejected_image_ids"]] == [1 << 63]
    back, _ = stored_frames(out)
    assert [b.tobytes() for b in back] == [f.tobytes() for f in frames]


@pytest.fixture
def decoded(monkeypatch):
    """Records the shape of every array decoded; refuses (without allocating) any over 1 MB."""
    shapes = []
    real = s.EncodedArray.decode

    def decode(self):
        shapes.append(tuple(self.shape))
        if self.nbytes > 1 << 20:
            raise s.StreamError(f"the test refuses to decode {self.nbytes} bytes")
        return real(self)

    monkeypatch.setattr(s.EncodedArray, "decode", decode)
    return shapes


def _bomb(shape, dtype, compression="bslz4"):
    """A small array message declaring `shape` (header of the HDF5 framing says so too)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    payload = nbytes.to_bytes(8, "big") + (8192).to_bytes(4, "big") + bytes(4096)
    return s._declared_array(shape, dtype, payload, compression)


def test_frames_of_another_size_are_refused_before_decompression(tmp_path, rng, decoded):
    """Frames declaring 8192 x 16384 uint64 (1 GiB decoded) in a 128 x 128 series, another
    dtype, or beyond max_array_bytes in a series without image size: rejected on arrival,
    never decompressed; the series' own frames are stored."""
    shape = (128, 128)
    frames = make_frames(rng, 2, shape=shape)
    with Acquisition(tmp_path / "run_{series}.nxs", AcquireSettings(q=0, workers=2, max_array_bytes=1 << 20)) as acq:
        acq.feed(_start(shape=shape, n=6))
        acq.feed(_image(0, frames[0]))
        for i in range(1, 4):
            acq.feed(_image(i, _bomb((8192, 16384), "uint64")))
        acq.feed(_image(4, _bomb(shape, "float32", "lz4")))  # right shape, another dtype
        acq.feed(_image(5, frames[1]))
        acq.feed(s.encode_end(1, "s1"))
        acq.feed(_start(sid=2, uid="s2", n=2, image_size_x=None, image_size_y=None, image_dtype=None))
        acq.feed(_image(0, _bomb((1024, 1024), "uint16"), sid=2, uid="s2"))  # 2 MiB > max_array_bytes
        acq.feed(_image(1, frames[0], sid=2, uid="s2"))
        acq.feed(s.encode_end(2, "s2"))
    c1, c2 = (x.summary["counts"] for x in acq.series)
    check_counts(c1)
    check_counts(c2)
    assert (c1["written"], c1["rejected"]) == (2, 4) and (c2["written"], c2["rejected"]) == (1, 1)
    assert decoded == [shape] * 3, decoded
    assert sorted(int(i) for i in read_acquisition(tmp_path / "run_1.nxs")["rejected_image_ids"]) == [1, 2, 3, 4]


def test_series_without_image_size_takes_the_first_frames(tmp_path, rng, decoded):
    """No image size or dtype in the start message: the first frame fixes them, and a later
    frame of another shape is refused before it is decoded."""
    a, b = make_frames(rng, 2)
    other = make_frames(rng, 1, shape=(64, 64))[0]
    out = tmp_path / "run.nxs"
    with Acquisition(out, AcquireSettings(q=0, workers=1)) as acq:
        acq.feed(_start(n=3, image_size_x=None, image_size_y=None, image_dtype=None))
        acq.feed(_image(0, a))
        acq.feed(_image(1, other))
        acq.feed(_image(2, b))
        acq.feed(s.encode_end(1, "s1"))
    c = acq.series[0].summary["counts"]
    assert (c["written"], c["rejected"]) == (2, 1)
    assert decoded == [SHAPE, SHAPE]
    assert [x.tobytes() for x in stored_frames(out)[0]] == [a.tobytes(), b.tobytes()]


def test_oversize_pixel_masks_are_refused_before_decompression(tmp_path, rng, decoded, caplog):
    """A start message with a 2^27-pixel float64 or uint32 mask for 128 x 128 frames, or
    (without image size) a mask beyond max_array_bytes: the mask is set aside undecoded, the
    series goes on without it."""
    caplog.set_level(logging.INFO, logger="redml_reduce.acquire")
    shape = (128, 128)
    frame = make_frames(rng, 1, shape=shape)[0]
    starts = [(dt, {}) for dt in ("float64", "uint32")]
    starts.append(("uint32", {"image_size_x": None, "image_size_y": None}))
    with Acquisition(tmp_path / "run_{series}.nxs", AcquireSettings(q=0, workers=1, max_array_bytes=1 << 20)) as acq:
        for k, (dt, over) in enumerate(starts):
            acq.feed(_start(shape=shape, sid=k + 1, uid=f"s{k}", n=1,
                            pixel_mask={"threshold_1": _bomb((8192, 16384), dt)}, **over))
            acq.feed(_image(0, frame, sid=k + 1, uid=f"s{k}"))
            acq.feed(s.encode_end(k + 1, f"s{k}"))
    assert decoded == [shape] * len(starts)
    for series in acq.series:
        assert series.summary["counts"]["written"] == 1 and series.pixel_mask is None
    masks = [r.getMessage() for r in caplog.records if "pixel mask unusable" in r.getMessage()]
    assert len(masks) == len(starts), masks


def test_series_file_rows_stay_aligned_when_a_write_fails(tmp_path, rng):
    """A row that does not fit its columns, or a chunk the writer refuses: the tables are as
    before the attempt, and the next frame's row sits beside its chunk."""
    from redml_reduce.acquire.series import SeriesFile
    from redml_reduce.acquire.indicators import FrameStats

    frames = make_frames(rng, 3)
    chunks = [rr.encode(f, 0) for f in frames]
    path = tmp_path / "series.nxs"
    f = SeriesFile(path, SHAPE, np.uint16, codec_settings={"q": 0})
    f.write(chunks[0], FrameStats(image_id=5, mode="q"))
    with pytest.raises(OverflowError):
        f.write(chunks[1], FrameStats(image_id=1 << 64, mode="q"))
    with pytest.raises(Exception):
        f.write(rr.encode(frames[1][:, :64].copy(), 0), FrameStats(image_id=6, mode="q"))
    with pytest.raises(OverflowError):
        f.add_ids("rejected", [3, -1])
    f.write(chunks[2], FrameStats(image_id=(1 << 64) - 1, mode="q"))
    f.close()
    info = read_acquisition(path)
    assert [int(i) for i in info["image_id"]] == [5, (1 << 64) - 1] and info["n_frames"] == 2
    assert len(info["rejected_image_ids"]) == 0
    back, _ = stored_frames(path)
    assert [b.tobytes() for b in back] == [frames[0].tobytes(), frames[2].tobytes()]


@pytest.mark.parametrize("codec_settings", [{"tile": 4096}, {"level": 99}])
def test_settings_the_encoder_cannot_write_are_refused_before_any_file(tmp_path, codec_settings):
    """A tile the format holds but the encoder does not write (or any bad codec setting)
    is refused when the settings are made, not later by every frame."""
    with pytest.raises(ValueError):
        AcquireSettings(q=1, codec_settings=codec_settings)
    assert not list(tmp_path.iterdir())


def test_series_file_is_created_at_its_start_message(tmp_path, rng):
    """A start message that gives the frames' shape and dtype has its file created before its
    first image arrives: the first frames never wait for the file's creation."""
    out = tmp_path / "run.nxs"
    frame = make_frames(rng, 1)[0]
    with Acquisition(out, AcquireSettings(q=0, workers=1)) as acq:
        acq.feed(_start(n=1))
        deadline = time.monotonic() + 60
        while acq.series[0].file is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acq.series[0].file is not None and out.exists()
        acq.feed(_image(0, frame))
        acq.feed(s.encode_end(1, "s1"))
    assert acq.series[0].summary["counts"]["written"] == 1
    assert acq.series[0].summary["cpu_ms_per_frame"] > 0  # what a frame cost the process (benchmarks/acquire.py)
    assert [x.tobytes() for x in stored_frames(out)[0]] == [frame.tobytes()]


@pytest.mark.parametrize("q", [1, 0])
def test_summary_says_where_a_frames_cpu_time_goes(tmp_path, rng, q):
    """The series summary splits a frame's CPU time by step (worker.STEPS): decoding,
    encoding, the indicators, writing, receiving (benchmarks/acquire.py prints it)."""
    from redml_reduce.acquire.worker import STEPS

    frames = make_frames(rng, 4)
    with Acquisition(tmp_path / "run.nxs", AcquireSettings(q=q, workers=2, codec_settings={"codec": "zstd"}
                                                              if q == 0 else {})) as acq:
        acq.feed(_start(n=len(frames)))
        for i, frame in enumerate(frames):
            acq.feed(s.encode_image(frame, i, series_id=1, series_unique_id="s1", compression="bslz4"))
        acq.feed(s.encode_end(1, "s1"))
    summary = acq.series[0].summary
    assert summary["counts"]["written"] == len(frames)
    steps = summary["cpu_ms_per_frame_by_step"]
    assert {"decode", "encode", "indicators", "write", "receive"} <= set(steps) <= set(STEPS)
    assert all(v >= 0 for v in steps.values()) and steps["encode"] > 0


def test_latest_hit_picture_only_where_something_shows_it(tmp_path, rng, monkeypatch):
    """The latest hit's thumbnail (a pass over the frame, once a second) is made for the
    dashboard: `redml acquire` without --dashboard makes none; the library's default does."""
    from redml_reduce import cli
    from redml_reduce.acquire import server
    from redml_reduce.acquire.indicators import LiveStats

    frames = make_frames(rng, 2, hits=[True, True])
    for stats, shown in ((LiveStats(), True), (LiveStats(thumbnails=False), False)):
        with Acquisition(tmp_path / f"run{shown}.nxs", AcquireSettings(q=1, workers=1, min_spots=1), stats) as acq:
            acq.feed(_start(n=len(frames)))
            for i, frame in enumerate(frames):
                acq.feed(_image(i, frame))
            acq.feed(s.encode_end(1, "s1"))
        assert acq.series[0].summary["counts"]["written"] == 2
        assert (stats.latest_hit is not None) == shown and (stats.snapshot()["latest_hit"] is not None) == shown

    made = []

    class Stop(Exception):
        pass

    def acquisition(out, settings, stats=None):
        made.append(stats.thumbnails)
        raise Stop

    monkeypatch.setattr(server, "Acquisition", acquisition)
    for extra, shown in (([], False), (["--dashboard", "127.0.0.1:0"], True)):
        with pytest.raises(Stop):
            cli.main(["--debug", "acquire", "--connect", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x.nxs"),
                      *extra])
        assert made[-1] is shown


def test_bool_maps_reach_the_core_without_a_copy(rng):
    """The workers' bad-pixel and ROI maps are bool arrays: the core reads their bytes as they
    are (no per-frame copy); other maps still become 0/1 bytes."""
    from redml_reduce.arrays import as_map

    bad = rng.random(SHAPE) < 0.1
    m = as_map(bad, SHAPE, "mask")
    assert m.dtype == np.uint8 and np.shares_memory(m, bad) and np.array_equal(m, bad)
    ints = bad.astype(np.int32) * 7
    assert np.array_equal(as_map(ints, SHAPE, "mask"), bad.view(np.uint8))
    assert np.array_equal(as_map(np.asfortranarray(bad), SHAPE, "mask"), bad)
    spots = rng.random(SHAPE) < 0.01
    assert np.array_equal(rr.roi_mask(spots, 2), rr.roi_mask(spots.astype(np.uint8) * 3, 2))


def test_default_workers_are_the_cores_the_process_may_use(monkeypatch):
    """One worker per core the process may run on (its CPU affinity: a container's share),
    not per core of the machine: more workers than cores only add switching."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    s = AcquireSettings()
    assert (s.n_workers, s.n_pending) == (1, 4)
    assert AcquireSettings(workers=3).n_workers == 3


def test_saturated_pixels_are_counted_outside_the_bad_ones(rng):
    """The indicators' saturated count: pixels at or above the saturation value that are not
    bad (module gaps hold the maximum; a bad map given as 0/1 bytes counts the same)."""
    from redml_reduce.acquire.indicators import analyse

    frame = poisson_frame(rng, 4.0, SHAPE, "uint16")
    bad = np.zeros(SHAPE, bool)
    bad[:, 60:64] = True
    frame[bad] = 65535
    frame[5, 7] = frame[9, 100] = 65534
    frame[50, 61] = 65534  # in the gap: not counted
    for b in (bad, bad.astype(np.uint8) * 2):
        st, _, _ = analyse(frame, bad=b, saturation=65534, spots=False)
        assert st.saturated == 2
    assert analyse(frame, saturation=65534, spots=False)[0].saturated == 2 + bad.sum()


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_saturated_count_is_the_whole_frames_in_bands(rng, dtype):
    """The saturated count goes band by band through a small buffer: frames taller than a
    band (a partial last band, saturated pixels on band edges, bad ones among them) count
    as the whole frame's comparison does."""
    from redml_reduce.acquire.indicators import count_saturated

    frame = poisson_frame(rng, 4.0, (301, 37), dtype)
    bad = rng.random(frame.shape) < 0.05
    for r in (0, 127, 128, 255, 256, 300):
        frame[r, r % 37] = 1000
        frame[r, (r + 5) % 37] = 2000
        bad[r, r % 37], bad[r, (r + 5) % 37] = False, True
    for b in (None, bad):
        want = int(np.count_nonzero((frame >= 1000) & (True if b is None else ~b)))
        assert count_saturated(frame, 1000, b) == want == (12 if b is None else 6)
    assert count_saturated(frame[:1], 1000) == 2


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_thumbnail_is_the_block_maximum_log_scaled(rng, dtype):
    """The live view's thumbnail: each block's maximum (rows, then columns, on the smaller
    array), blocks with a bad pixel, negative and non-finite values black, log-scaled between
    the median and the 99.95th percentile; the same bytes as the plain reduction over both
    block axes, on sides that are not multiples of the factor."""
    from redml_reduce.acquire.indicators import thumbnail

    def plain(frame, bad, size):
        f = max(1, math.ceil(max(frame.shape) / size))
        h, w = frame.shape[0] // f * f, frame.shape[1] // f * f
        a = np.nan_to_num(frame[:h, :w], nan=0.0, posinf=0.0, neginf=0.0) if dtype == "float32" else frame[:h, :w]
        pooled = a.reshape(h // f, f, w // f, f).max(axis=(1, 3)).astype(np.float32)
        if bad is not None:
            pooled[np.asarray(bad)[:h, :w].reshape(h // f, f, w // f, f).any(axis=(1, 3))] = 0
        np.maximum(pooled, 0, out=pooled)
        lo = float(np.median(pooled))
        hi = max(float(np.quantile(pooled, 0.9995)), lo + 4)
        return (np.clip(np.log1p(np.clip(pooled - lo, 0, None)) / math.log1p(hi - lo), 0, 1) * 255).astype(np.uint8), f

    frame = poisson_frame(rng, 3.0, (203, 157), dtype, spots=4)
    if dtype != "uint16":
        frame[5:9, 7] = -3
    if dtype == "float32":
        frame[20, 30], frame[40, 50] = np.nan, np.inf
    bad = rng.random(frame.shape) < 0.01
    for b in (None, bad, bad.astype(np.uint8) * 7):
        for size in (512, 64, 50, 7):
            img, factor = thumbnail(frame, b, size)
            want, want_factor = plain(frame, b, size)
            assert factor == want_factor and img.shape == want.shape
            np.testing.assert_array_equal(img, want)
    assert thumbnail(frame, bad, 64)[0].any()


def test_integrating_stream_finds_spots_with_the_detectors_noise_model(tmp_path):
    """The indicators' and the encoder's spot search take the codec settings' noise model
    (gain, markers, read noise) when no finder settings are given: on pedestal-subtracted ADU
    the photon counters' finder (negatives as markers, Poisson only) finds other spots."""
    from redml_study.detector import integrating_frame
    from redml_study.synthetic import still_frame

    rng = np.random.default_rng(31)
    shape, gain, rn = (256, 256), 20.0, 0.2
    frames = [integrating_frame(still_frame(rng, shape, background=0.3, spots=40, dtype="int32",
                                            peak_range=(5.0, 60.0)), rng, gain=gain, read_noise=rn, dtype="int32")
              for _ in range(3)]
    noise = {"gain": gain, "markers": "extremes", "read_noise": math.sqrt((rn * gain) ** 2 + 1 / 12)}
    out = tmp_path / "int.nxs"
    with Acquisition(out, AcquireSettings(q=1.0, workers=1, min_spots=1, codec_settings=noise)) as acq:
        acq.feed(s.encode_start(shape, "int32", GEOM, number_of_images=len(frames)))
        for i, f in enumerate(frames):
            acq.feed(s.encode_image(f, i, compression="bslz4"))
        acq.feed(s.encode_end())
    stored = read_cxi_peaks(out)
    for f, peaks in zip(frames, stored):
        want = rr.find_spots(f, **noise)[0]
        assert len(peaks) == len(want) > 10
        assert np.allclose(np.sort(peaks["x"]), np.sort(want["x"]), atol=1e-3)
        assert len(rr.find_spots(f)[0]) != len(want)  # the photon counters' rule differs here
