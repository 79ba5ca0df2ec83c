"""Several receivers sharing one detector stream: every frame stored exactly once, one master
file whose virtual dataset is the series in image-id order, what no receiver stored listed;
a receiver killed mid-series loses only its in-flight frames and the master is still written.
The receivers are separate processes on loopback (the sockets receivers on several hosts use).
"""
import json
import os
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
from redml_reduce.acquire.sender import StreamSender
from redml_reduce.acquire.series import read_acquisition
from redml_reduce.background import BeamGeometry

SHAPE = (96, 128)
GEOM = BeamGeometry(beam_x=64.3, beam_y=47.8, distance_mm=80.0, pixel_size_mm=0.075, wavelength_a=1.0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def frames_for(rng, n):
    return [poisson_frame(rng, 4.0, SHAPE, "uint16", spots=25 if i % 2 else 0) for i in range(n)]


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
            if i == n_img // 2:  # receiver 2 has written frames by now (else wait for it)
                t_end = time.monotonic() + 60
                while time.monotonic() < t_end and not os.path.exists(victim):
                    time.sleep(0.1)
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
    """write_master from files made in-process: a receiver with no file, ids vetoed by one."""
    from redml_reduce.acquire import AcquireSettings, Acquisition

    frames = frames_for(rng, 6)
    paths = []
    for k, ids in enumerate(([0, 3], [1, 4])):
        p = tmp_path / f"d{k}.nxs"
        with Acquisition(p, AcquireSettings(q=0, workers=1, shared_stream=True)) as acq:
            acq.feed(s.encode_start(SHAPE, "uint16", GEOM, number_of_images=6, series_unique_id="u"))
            for i in ids:
                acq.feed(s.encode_image(frames[i], i, series_unique_id="u"))
            acq.feed(s.encode_end(1, "u"))
            assert acq.wait(60)
        paths.append(p)
    summary = write_master(tmp_path / "m.nxs", paths + [tmp_path / "absent.nxs"])
    c = summary["counts"]
    check_master_counts(c)
    assert c["expected"] == 6 and c["written"] == 4 and summary["missing_image_ids"] == [2, 5]
    back = master_frames(tmp_path / "m.nxs")
    for i in (0, 1, 3, 4):
        assert back[i].tobytes() == frames[i].tobytes()
    assert np.all(back[[2, 5]] == 65535)
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
