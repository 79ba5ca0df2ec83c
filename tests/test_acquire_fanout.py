"""Several receivers sharing one detector stream: every frame stored exactly once, one master
file whose virtual dataset is the series in image-id order, what no receiver stored listed;
a receiver killed mid-series loses only its in-flight frames and the master is still written.
The receivers are separate processes on loopback (the sockets receivers on several hosts use).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import poisson_frame
from redml_reduce.acquire import protocol as s
from redml_reduce.acquire.aggregate import AggregateStats
from redml_reduce.acquire.fanout import data_pattern, find_data_files, parse_receiver
from redml_reduce.acquire.master import _runs, fill_value, read_master, write_master
from redml_reduce.acquire.sender import StreamSender, free_consecutive_ports
from redml_reduce.acquire.series import read_acquisition
from redml_reduce.background import BeamGeometry

SHAPE = (96, 128)
GEOM = BeamGeometry(beam_x=64.3, beam_y=47.8, distance_mm=80.0, pixel_size_mm=0.075, wavelength_a=1.0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def frames_for(rng, n):
    """n frames, the odd ones hits: drawn again until the finder sees at least the default
    min_spots (a draw of 25 random spots now and then overlaps into fewer, a veto's blank)."""
    from redml_reduce.acquire import AcquireSettings
    from redml_reduce.spots import find_spots

    frames = []
    for i in range(n):
        while True:
            frame = poisson_frame(rng, 4.0, SHAPE, "uint16", spots=25 if i % 2 else 0)
            if i % 2 == 0 or len(find_spots(frame)[0]) >= AcquireSettings().min_spots:
                break
        frames.append(frame)
    return frames


def receiver(k, n, endpoints, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "redml_reduce.cli", "acquire", "--connect", ",".join(endpoints),
                             "--receiver", f"{k}/{n}", "--out", str(out), "--q", "0", "--workers", "1", "--quiet",
                             "--wait", "120", "--json", str(out.parent / f"r{k}.json"), *extra],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=240):
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def wait_for_frames(path, timeout=60):
    """Until the data file at path has a flushed frame (SWMR readers see it)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                if f["entry/data/data"].shape[0] > 0:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path}: no frame within {timeout} s")


def master_frames(path):
    with h5py.File(path, "r") as f:
        d = f["entry/data/data"]
        assert d.is_virtual
        return d[...]


def check_master_counts(c):
    assert c["received"] == c["written"] + c["sparse"] + c["vetoed"] + c["dropped"] + c["rejected"], c
    assert c["missing"] == c["expected"] - c["received"], c


def test_three_receivers_store_every_frame_once_and_the_master_is_the_series(tmp_path, rng):
    n_img, frames = 30, frames_for(rng, 5)
    out = tmp_path / "run.nxs"
    with StreamSender("tcp://127.0.0.1:*", peers=3, peer_wait_s=60, linger_ms=60000) as sender:
        procs = [receiver(k, 3, sender.endpoints, out) for k in range(3)]
        sender.start(SHAPE, "uint16", GEOM, number_of_images=n_img)
        assert len(sender.active) == 3  # the start message went to every receiver
        for i in range(n_img):
            sender.image(frames[i % 5], i)
        sender.end()
        results = finish(procs)
    for code, _, err in results:
        assert code == 0, err
    data = find_data_files(str(out), 3, 1, sender.series_unique_id)
    stored = []
    for k, p in enumerate(data):
        assert p.name == f"run_data_{k + 1:06d}.nxs"
        info = read_acquisition(p)
        c = info["counts"]
        assert c["expected"] == c["received"] == c["written"] > 0 and c["missing"] == 0  # its share, all stored
        assert info["attrs"]["receiver"] == f"{k}/3"
        with h5py.File(p, "r") as f:
            for row, i in enumerate(info["image_id"]):
                assert f["entry/data/data"][row].tobytes() == frames[int(i) % 5].tobytes()
        stored += [int(i) for i in info["image_id"]]
    assert sorted(stored) == list(range(n_img))  # every frame exactly once
    back = master_frames(out)
    assert back.tobytes() == np.stack([frames[i % 5] for i in range(n_img)]).tobytes()
    m = read_master(out)
    check_master_counts(m["counts"])
    assert m["counts"]["written"] == n_img and m["counts"]["missing"] == 0 and len(m["missing_image_ids"]) == 0
    assert sorted(m["data_files"]) == sorted(p.name for p in data)  # relative: the set moves as one
    assert BeamGeometry.from_nxmx(out).beam_x == pytest.approx(GEOM.beam_x)
    assert "master of series 1" in results[0][1]
    dials_reads_the_master(tmp_path, out, back)


def dials_reads_the_master(tmp_path, master, frames):
    """dials.import takes the master; DIALS decodes its images (through the virtual dataset
    and the redml filter) to the series' pixels."""
    import redml_reduce as rr
    from redml_study.dials_side import DIALS_PYTHON

    env = dict(os.environ, HDF5_PLUGIN_PATH=rr.PLUGIN_PATH)
    out = subprocess.run(["dials.import", master.name, "output.experiments=m.expt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    read = ("from scitbx.array_family import flex\n"
            "from dxtbx.model.experiment_list import ExperimentListFactory\n"
            "el = ExperimentListFactory.from_json_file('m.expt')\n"
            "print([int(sum(flex.sum(p.as_double()) for p in s.get_raw_data(i)))"
            " for s in el.imagesets() for i in range(len(s))])\n")
    out = subprocess.run([DIALS_PYTHON, "-c", read], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [int(f.astype(np.int64).sum()) for f in frames]


def test_receiver_killed_mid_series_loses_only_its_in_flight_frames(tmp_path, rng):
    n_img, frames = 60, frames_for(rng, 5)
    out = tmp_path / "run.nxs"
    with StreamSender("tcp://127.0.0.1:*", peers=3, peer_wait_s=60, linger_ms=60000, end_timeout_s=5) as sender:
        procs = [receiver(k, 3, sender.endpoints, out, "--master-wait", "3") for k in range(3)]
        sender.start(SHAPE, "uint16", GEOM, number_of_images=n_img)
        victim = data_pattern(str(out), 2)
        for i in range(n_img):
            sender.image(frames[i % 5], i)
            time.sleep(0.01)
            if i == n_img // 2:  # receiver 2 has written frames by now (else wait for it): it stops taking
                wait_for_frames(victim)  # frames, those sent to it next are in flight when it is killed
                procs[2].send_signal(signal.SIGSTOP)
            if i == n_img // 2 + 6:
                procs[2].send_signal(signal.SIGKILL)
        sender.end()
        results = finish(procs)
    assert results[2][0] == -signal.SIGKILL
    assert results[0][0] == 0 and results[1][0] == 0, results[0][2] + results[1][2]
    m = read_master(out)
    c = m["counts"]
    check_master_counts(c)
    assert c["expected"] == n_img and c["missing"] == len(m["missing_image_ids"]) > 0
    states = {r["path"].rsplit("/", 1)[-1]: r["state"] for r in m["receivers"]}
    assert states == {"run_data_000001.nxs": "closed", "run_data_000002.nxs": "closed",
                      "run_data_000003-recovered.nxs": "recovered"}
    back = master_frames(out)
    missing = set(int(i) for i in m["missing_image_ids"])
    for i in range(n_img):
        if i in missing:
            assert np.all(back[i] == fill_value(np.uint16))
        else:
            assert back[i].tobytes() == frames[i % 5].tobytes(), i
    # the survivors stored every frame sent to them: only the killed receiver's frames are lost
    survivors = set()
    for k in (0, 1):
        survivors |= {int(i) for i in read_acquisition(tmp_path / f"run_data_{k + 1:06d}.nxs")["image_id"]}
    assert missing.isdisjoint(survivors)
    assert c["written"] == n_img - len(missing)
    assert m["receiver"][sorted(missing)].tolist() == [-1] * len(missing)


def test_master_of_a_series_without_one_receiver_and_with_unstored_frames(tmp_path, rng):
    """write_master from files made in-process: a receiver with no file, one that does not
    store its blank frames (veto drop: frame 4)."""
    from redml_reduce.acquire import AcquireSettings, Acquisition

    frames = frames_for(rng, 6)  # odd ones are hits
    paths = []
    for k, ids in enumerate(([0, 3], [1, 4])):
        p = tmp_path / f"d{k}.nxs"
        veto = "drop" if k == 1 else "none"
        with Acquisition(p, AcquireSettings(q=0, workers=1, receiver=f"{k}/3", veto=veto)) as acq:
            acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=6, series_unique_id="u"))
            for i in ids:
                acq.feed(s.encode_image(frames[i], i, series_unique_id="u"))
            acq.feed(s.encode_end(1, "u"))
            assert acq.wait(60)
        paths.append(p)
    summary = write_master(tmp_path / "m.nxs", paths + [tmp_path / "absent.nxs"])
    c = summary["counts"]
    check_master_counts(c)
    assert c["expected"] == 6 and c["written"] == 3 and c["vetoed"] == 1 and summary["missing_image_ids"] == [2, 5]
    m = read_master(tmp_path / "m.nxs")
    assert m["vetoed_image_ids"].tolist() == [4] and m["missing_image_ids"].tolist() == [2, 5]
    assert m["receiver"].tolist() == [0, 1, -1, 0, -1, -1]
    back = master_frames(tmp_path / "m.nxs")
    for i in (0, 1, 3):
        assert back[i].tobytes() == frames[i].tobytes()
    assert np.all(back[[2, 4, 5]] == 65535)
    with pytest.raises(FileExistsError):
        write_master(tmp_path / "m.nxs", paths)


def test_virtual_mappings_follow_round_robin_runs():
    pairs = [(0, 0), (1, 3), (2, 6), (3, 7), (4, 8), (5, 20)]
    assert _runs(pairs) == [(0, 0, 3, 3), (3, 7, 2, 1), (5, 20, 1, 1)]
    assert parse_receiver("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_receiver(bad)
    assert fill_value(np.int32) == np.iinfo(np.int32).min and fill_value(np.uint16) == 65535




def test_launcher_and_simulated_detector_as_processes(tmp_path):
    """`redml acquire --receivers 3` and `redml-study simulate-detector --peers 3`: two series,
    one master each, every image stored once."""
    base = free_consecutive_ports(3)
    endpoints = ",".join(f"tcp://127.0.0.1:{base + k}" for k in range(3))
    out = tmp_path / "run_{series}.nxs"
    summary = tmp_path / "launch.json"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "redml_reduce.cli", "acquire", "--receivers", "3", "--connect", endpoints, "--out",
         str(out), "--q", "1", "--workers", "1", "--series", "2", "--quiet", "--wait", "120", "--json", str(summary)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sim = subprocess.run([sys.executable, "-m", "redml_study.cli", "simulate-detector", "--bind",
                          f"tcp://127.0.0.1:{base}", "--peers", "3", "--peer-wait", "120", "--frames", "9", "--rate",
                          "0", "--series", "2", "--detector", "0.5m", "--pool", "3", "--seed", "5"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0, sim.stderr
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr
    result = json.loads(summary.read_text())
    assert [r["status"] for r in result["receivers"]] == [0, 0, 0] and len(result["masters"]) == 2
    assert [len(r["series"]) for r in result["receivers"]] == [2, 2, 2]
    for series in (1, 2):
        m = read_master(tmp_path / f"run_{series}.nxs")
        check_master_counts(m["counts"])
        assert m["counts"]["written"] == 9 and m["counts"]["missing"] == 0
        assert sorted(set(m["receiver"].tolist())) == [0, 1, 2]  # round-robin: every receiver took images
        with h5py.File(tmp_path / f"run_{series}.nxs", "r") as f:
            assert f["entry/data/data"].shape[0] == 9


def test_late_receiver_joins_the_next_series(tmp_path, rng):
    """A receiver not connected when a series starts gets nothing of it and takes part in the next."""
    import threading

    from redml_reduce.acquire import AcquireSettings, Acquisition

    frames = frames_for(rng, 4)
    with StreamSender("tcp://127.0.0.1:*", peers=2, peer_wait_s=0.5, end_timeout_s=5) as sender:
        acqs = [Acquisition(tmp_path / f"r{k}_{{series}}.nxs", AcquireSettings(q=0, workers=1, receiver=f"{k}/2"))
                for k in range(2)]
        threads = [threading.Thread(target=a.serve, args=(e,), kwargs={"max_series": m, "wait_s": 60}, daemon=True)
                   for a, e, m in zip(acqs, sender.endpoints, (2, 1))]
        threads[0].start()
        for series in (1, 2):
            sender.start(SHAPE, "uint16", GEOM, number_of_images=8)
            assert len(sender.active) == series
            for i in range(8):
                sender.image(frames[i % 4], i)
            sender.end()
            if series == 1:
                threads[1].start()
                time.sleep(1.0)
        for t in threads:
            t.join(60)
        for a in acqs:
            a.close()
    assert read_acquisition(tmp_path / "r0_1.nxs")["counts"]["written"] == 8
    assert not (tmp_path / "r1_1.nxs").exists()
    got = [read_acquisition(tmp_path / f"r{k}_2.nxs")["image_id"].tolist() for k in range(2)]
    assert sorted(got[0] + got[1]) == list(range(8)) and got[0] and got[1]


def test_aggregate_dashboard_sums_receivers_and_names_the_gone_one():
    from redml_reduce.acquire.dashboard import Dashboard
    from redml_reduce.acquire.indicators import FrameStats, LiveStats

    stats = [LiveStats(), LiveStats()]
    for k, st in enumerate(stats):
        st.series_started({"series_id": 1, "series_unique_id": "u", "expected": 10})
        for i in range(3 + k):
            st.received(100)
            st.frame(FrameStats(i, n_spots=20, hit=True, raw_bytes=1000, stored_bytes=100, mode="q"), 0.01)
    dashes = [Dashboard(st, "127.0.0.1", 0).start() for st in stats]
    try:
        agg = AggregateStats([d.url for d in dashes], gone_s=60)
        snap = agg.snapshot()
        assert snap["counts"]["written"] == 7 and snap["counts"]["received"] == 7
        assert snap["series"]["frames_done"] == 7
        assert [r["state"] for r in snap["receivers"]] == ["ok", "ok"]
        assert snap["indicators"]["ratio_total"] == pytest.approx(10.0)
        dashes[1].stop()
        agg.gone_s = 0.0
        time.sleep(0.05)
        snap = agg.snapshot()
        assert [r["state"] for r in snap["receivers"]] == ["ok", "gone"]
        assert snap["indicators"]["receivers_gone"] == 1 and snap["counts"]["written"] == 3
        assert any("gone" in e["text"] for e in snap["errors"])
    finally:
        dashes[0].stop()


def test_aggregate_names_the_receiver_that_is_behind(monkeypatch):
    from redml_reduce.acquire import aggregate
    from redml_reduce.acquire.indicators import LiveStats

    snaps = {}
    for port, fps in ((1, 10.0), (2, 9.0), (3, 2.0)):
        snap = LiveStats().snapshot()
        snap["indicators"]["fps"] = fps
        snap["series"] = {"series_id": 1, "series_unique_id": "u", "state": "running"}
        snaps[f"http://127.0.0.1:{port}/api/status"] = snap
    monkeypatch.setattr(aggregate, "_fetch", lambda url, token, timeout: snaps[url])
    agg = AggregateStats([f"http://127.0.0.1:{p}/?token=t" for p in (1, 2, 3)])
    snap = agg.snapshot()
    assert [r["state"] for r in snap["receivers"]] == ["ok", "ok", "behind"]
    assert snap["indicators"]["fps"] == pytest.approx(21.0) and snap["indicators"]["receivers_behind"] == 1


def test_launcher_writes_the_master_when_receiver_0_dies(tmp_path, rng):
    n_img, frames = 40, frames_for(rng, 5)
    out = tmp_path / "run.nxs"
    summary = tmp_path / "launch.json"
    with StreamSender("tcp://127.0.0.1:*", peers=2, peer_wait_s=120, linger_ms=60000, end_timeout_s=3) as sender:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "redml_reduce.cli", "acquire", "--receivers", "2", "--connect",
             ",".join(sender.endpoints), "--out", str(out), "--q", "0", "--workers", "1", "--quiet", "--wait", "120",
             "--json", str(summary)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = launcher.stderr.readline()
        pid0 = int(line.split("pids ")[1].split()[0])
        sender.start(SHAPE, "uint16", GEOM, number_of_images=n_img)
        for i in range(n_img):
            sender.image(frames[i % 5], i)
            time.sleep(0.01)
            if i == 10:
                wait_for_frames(data_pattern(str(out), 0))
                os.kill(pid0, signal.SIGKILL)
        sender.end()
        stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, stderr  # a receiver failed: said so, the master written all the same
    assert "receiver 0/2 exited with status -9" in stderr
    result = json.loads(summary.read_text())
    assert [r["status"] for r in result["receivers"]] == [-signal.SIGKILL, 0] and len(result["masters"]) == 1
    m = read_master(out)
    check_master_counts(m["counts"])
    assert m["counts"]["expected"] == n_img
    assert {r["state"] for r in m["receivers"]} == {"recovered", "closed"}
    back = master_frames(out)
    for i in range(n_img):
        if m["receiver"][i] >= 0:
            assert back[i].tobytes() == frames[i % 5].tobytes()


def test_aggregate_page_lists_the_receivers_in_a_browser(tmp_path):
    """The dashboard page over two receivers (headless chromium): totals summed, each receiver
    listed with its state."""
    from test_dashboard import chromium, frames_shown
    from redml_reduce.acquire.dashboard import Dashboard
    from redml_reduce.acquire.indicators import FrameStats, LiveStats

    stats = [LiveStats(), LiveStats()]
    for k, st in enumerate(stats):
        st.series_started({"series_id": 1, "series_unique_id": "u", "expected": 10, "frames_done": 0})
        for i in range(2 + k):
            st.received(100)
            st.frame(FrameStats(i, n_spots=20, hit=True, raw_bytes=1000, stored_bytes=100, mode="q"), 0.01)
    dashes = [Dashboard(st, "127.0.0.1", 0).start() for st in stats]
    try:
        with Dashboard(AggregateStats([d.url for d in dashes]), "127.0.0.1", 0) as agg:
            r = chromium(tmp_path, agg.url, "--dump-dom")
            assert r.returncode == 0, r.stderr[-2000:]
            assert frames_shown(r.stdout) == 5
            listed = re.findall(r"127\.0\.0\.1:(\d+): (ok|behind), [\d.]+ frames/s, (\d) stored", r.stdout)
            assert sorted((int(p), int(n)) for p, _, n in listed) == sorted((d.port, 2 + k) for k, d in enumerate(dashes))
    finally:
        for d in dashes:
            d.stop()


def test_two_series_into_one_name_each_get_their_own_master(tmp_path, rng):
    """--out without {series}: the second series' files and master take -1 names, and its
    master reads only that series' data files."""
    frames = frames_for(rng, 5)
    out = tmp_path / "run.nxs"
    with StreamSender("tcp://127.0.0.1:*", peers=2, peer_wait_s=60, linger_ms=60000) as sender:
        procs = [receiver(k, 2, sender.endpoints, out, "--series", "2") for k in range(2)]
        for series, n_img in ((1, 6), (2, 8)):
            sender.start(SHAPE, "uint16", GEOM, number_of_images=n_img)
            for i in range(n_img):
                sender.image(frames[(i + series) % 5], i)
            sender.end()
        results = finish(procs)
    for code, _, err in results:
        assert code == 0, err
    for master, series, n_img in ((out, 1, 6), (tmp_path / "run-1.nxs", 2, 8)):
        m = read_master(master)
        assert m["attrs"]["series_id"] == series and m["counts"]["written"] == n_img and m["counts"]["missing"] == 0
        assert master_frames(master).tobytes() == np.stack([frames[(i + series) % 5] for i in range(n_img)]).tobytes()


def test_back_to_back_series_never_share_a_file(tmp_path, rng, monkeypatch):
    """A series' file is created by the writer thread at its first frame: a second series
    starting before that (back to back, --out without {series}) must not take the same name
    (it would truncate the first series' file)."""
    from redml_reduce.acquire import AcquireSettings, Acquisition
    from redml_reduce.acquire import filewriter

    real = filewriter.SeriesFile

    def slow(*a, **k):  # the writer thread behind: the next start message comes first
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(filewriter, "SeriesFile", slow)
    frames = frames_for(rng, 3)
    with Acquisition(tmp_path / "run.nxs", AcquireSettings(q=0, workers=1)) as acq:
        for sid in (1, 2):
            acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=3, series_id=sid, series_unique_id=f"u{sid}"))
            for i in range(3):
                acq.feed(s.encode_image(frames[(i + sid) % 3], i, series_id=sid, series_unique_id=f"u{sid}"))
            acq.feed(s.encode_end(sid, f"u{sid}"))
        assert acq.wait(60)
        paths = [x.path for x in acq.series]
    assert [p.name for p in paths] == ["run.nxs", "run-1.nxs"]
    for sid, p in zip((1, 2), paths):
        info = read_acquisition(p)
        assert info["attrs"]["series_unique_id"] == f"u{sid}" and info["n_frames"] == 3


def test_acquire_dashboard_command_serves_the_aggregate():
    """`redml acquire-dashboard URL...`: the receivers' JSON summed, SIGTERM ends it."""
    import urllib.request

    from redml_reduce.acquire.dashboard import Dashboard
    from redml_reduce.acquire.indicators import FrameStats, LiveStats

    st = LiveStats()
    st.received(10)
    st.frame(FrameStats(0, mode="q", raw_bytes=100, stored_bytes=10))
    with Dashboard(st, "127.0.0.1", 0) as recv:
        cmd = subprocess.Popen([sys.executable, "-m", "redml_reduce.cli", "acquire-dashboard", recv.url,
                                "--dashboard", "127.0.0.1:0"], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        try:
            url = cmd.stderr.readline().split()[1]
            with urllib.request.urlopen(url + "api/status", timeout=30) as r:
                snap = json.loads(r.read())
            assert snap["counts"]["written"] == 1 and [x["state"] for x in snap["receivers"]] == ["ok"]
        finally:
            cmd.send_signal(signal.SIGTERM)
            cmd.wait(30)
    assert cmd.returncode == 0


@pytest.mark.parametrize("argv, message, code", [
    (["--connect", "tcp://127.0.0.1:1", "--receiver", "3/3"], "K must be in 0..N-1", 2),
    (["--connect", "tcp://127.0.0.1:1", "--receivers", "0"], "N must be a whole number >= 1", 2),
    (["--connect", "tcp://127.0.0.1:1,tcp://127.0.0.1:2"], "several --connect endpoints need --receiver", 1),
    (["--connect", "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "--receiver", "0/3"], "lists 2 endpoints for 3 receivers", 1),
    (["--bind", "tcp://127.0.0.1:1", "--receivers", "2"], "--receivers needs --connect", 1),
])
def test_fanout_arguments_refused_with_their_reason(tmp_path, capsys, argv, message, code):
    from redml_reduce.cli import main

    try:
        rc = main(["acquire", "--out", str(tmp_path / "a.nxs"), *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == code and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
