"""HDF5_PLUGIN_PATH, whatever it holds, changes nothing for Python and serves the C tools.

The README tells C-tool users to export HDF5_PLUGIN_PATH=redml_reduce.PLUGIN_PATH; a Python
process started with it set (to this package's folder, hdf5plugin's, or both) must write and
read exactly as without it. Each configuration runs in its own process, the variable set
before HDF5 starts: create_dataset (q=0 byte for byte, q=1 within the bound), FrameWriter,
`redml compress`, `redml acquire`, h5py on its own (HDF5 loads the plugin from the path),
and h5dump / h5repack on what Python wrote. And an acquisition that cannot write its file
stops with one clear line and a non-zero exit, never reporting success over an empty file.
"""
import os
import json
import re
import shutil
import socket
import subprocess
import sys
import threading

import h5py
import hdf5plugin
import numpy as np
import pytest

import redml_reduce as rr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H5DUMP = shutil.which("h5dump")
H5REPACK = shutil.which("h5repack")
OURS, THEIRS = rr.PLUGIN_PATH, hdf5plugin.PLUGIN_PATH
CONFIGS = {"unset": None, "redml": [OURS], "hdf5plugin": [THEIRS], "both": [OURS, THEIRS],
           "both-reversed": [THEIRS, OURS]}
SHAPE = (3, 48, 40)

# Runs in the configured process: writes with the filter and FrameWriter, reads back.
WRITE_AND_READ = """
import sys
import h5py, numpy as np
import redml_reduce as rr
from redml_reduce.codec import error_bound

out = sys.argv[1]
frames = np.load(out + "/frames.npy")
with h5py.File(out + "/filter.h5", "w") as f:
    for q in (0, 1):
        f.create_dataset(f"q{q}", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=q))
with h5py.File(out + "/filter.h5") as f:
    assert f["q0"][...].tobytes() == frames.tobytes()
    for i, frame in enumerate(frames):
        chunk = f["q1"].id.read_direct_chunk((i, 0, 0))[1]
        assert (np.abs(f["q1"][i].astype(float) - frame) <= error_bound(chunk) + 1e-9).all()
with rr.FrameWriter(out + "/writer.h5", frames.shape[1:], frames.dtype, q=0) as w:
    for frame in frames:
        w.write(frame)
with h5py.File(out + "/writer.h5") as f:
    assert f["entry/data/data"][...].tobytes() == frames.tobytes()
"""

# h5py alone, redml_reduce never imported: HDF5 loads the plugin from the path by itself.
H5PY_ALONE = """
import sys
import h5py, numpy as np

out = sys.argv[1]
frames = np.load(out + "/frames.npy")
with h5py.File(out + "/alone.h5", "w") as f:
    f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], compression=310)
with h5py.File(out + "/alone.h5") as f:
    assert f["data"][...].tobytes() == frames.tobytes()
assert "redml_reduce" not in sys.modules
"""


def env_for(dirs):
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env["PYTHONPATH"] = ROOT
    if dirs is not None:
        env["HDF5_PLUGIN_PATH"] = os.pathsep.join(dirs)
    return env


def run(args, env, cwd=ROOT):
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args[:4]} failed with HDF5_PLUGIN_PATH={env.get('HDF5_PLUGIN_PATH')}:\n{out.stderr}"
    return out


def stored(path, dataset):
    with h5py.File(path) as f:
        d = f[dataset]
        assert d.id.get_create_plist().get_filter(0)[0] == rr.FILTER_ID
        return d[...]


@pytest.fixture
def frames(rng, tmp_path):
    frames = rng.poisson(30.0, SHAPE).astype(np.uint16)
    np.save(tmp_path / "frames.npy", frames)
    return frames


@pytest.mark.parametrize("config", CONFIGS)
def test_python_writes_and_reads(tmp_path, frames, config):
    env = env_for(CONFIGS[config])
    run([sys.executable, "-c", WRITE_AND_READ, str(tmp_path)], env)
    # and this process, with its own registration, reads what that one wrote
    assert stored(tmp_path / "filter.h5", "q0").tobytes() == frames.tobytes()
    assert stored(tmp_path / "writer.h5", "entry/data/data").tobytes() == frames.tobytes()


@pytest.mark.parametrize("config", CONFIGS)
def test_cli_compress_and_decompress(tmp_path, frames, config):
    """redml compress, then redml decompress to bitshuffle-LZ4 (hdf5plugin's filter)."""
    env = env_for(CONFIGS[config])
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames)
    out, back = tmp_path / "compressed.h5", tmp_path / "bslz4.h5"
    cli = [sys.executable, "-m", "redml_reduce.cli"]
    run(cli + ["compress", str(tmp_path / "plain.h5"), "-o", str(out), "-q", "0"], env)
    assert stored(out, "entry/data/data").tobytes() == frames.tobytes()
    run(cli + ["decompress", str(out), str(back)], env)
    with h5py.File(back) as f:
        d = f["entry/data/data"]
        assert d.id.get_create_plist().get_filter(0)[0] == hdf5plugin.BSHUF_ID
        assert d[...].tobytes() == frames.tobytes()


@pytest.mark.parametrize("config", ["redml", "both", "both-reversed"])
def test_h5py_alone_finds_the_plugin(tmp_path, frames, config):
    run([sys.executable, "-c", H5PY_ALONE, str(tmp_path)], env_for(CONFIGS[config]))
    assert stored(tmp_path / "alone.h5", "data").tobytes() == frames.tobytes()


@pytest.mark.skipif(H5DUMP is None or H5REPACK is None, reason="hdf5-tools not installed (make test installs it)")
@pytest.mark.parametrize("config", ["redml", "both", "both-reversed"])
def test_c_tools_read_and_write_what_python_wrote(tmp_path, frames, config):
    env = env_for(CONFIGS[config])
    run([sys.executable, "-c", WRITE_AND_READ, str(tmp_path)], env)
    for path, dataset in ((tmp_path / "filter.h5", "/q0"), (tmp_path / "writer.h5", "/entry/data/data")):
        out = run([H5DUMP, "-d", dataset, "-s", "1,5,10", "-c", "1,2,6", str(path)], env)
        data = re.sub(r"\(\d+,\d+,\d+\):", "", out.stdout.split("DATA {")[1])
        assert [int(v) for v in re.findall(r"-?\d+", data)] == frames[1, 5:7, 10:16].ravel().tolist()
    # h5repack re-encodes the redml dataset with the filter: lossless, byte for byte
    packed = tmp_path / "repacked.h5"
    run([H5REPACK, "-f", rr.Redml(q=0).h5repack_arg("q0"), str(tmp_path / "filter.h5"), str(packed)], env)
    assert stored(packed, "q0").tobytes() == frames.tobytes()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def acquire(tmp_path, out, env, frames=4, codec="redml"):
    """`redml acquire` of `frames` simulated shots; returns the finished acquire process."""
    port = free_port()
    cli = [sys.executable, "-m", "redml_reduce.cli"]
    acq = subprocess.Popen(cli + ["acquire", "--connect", f"tcp://127.0.0.1:{port}", "--out", str(out), "--q", "0",
                                  "--codec", codec, "--workers", "1", "--json", str(tmp_path / "summary.json"), "--quiet", "--wait",
                                  "120"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sim = subprocess.Popen([sys.executable, "-m", "redml_study.cli", "simulate-detector", "--bind", f"tcp://127.0.0.1:{port}", "--frames", str(frames),
                                  "--rate", "0", "--detector", "0.5m", "--pool", "2", "--seed", "3"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        acq.stdout_text, acq.stderr_text = acq.communicate(timeout=300)
    finally:
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a receiver that stopped early leaves its sends pending
            sim.kill()
            sim.wait()
    return acq


@pytest.mark.parametrize("config, codec", [("redml", "redml"), ("both", "redml"), ("both", "bslz4")])
def test_acquire_writes_with_the_plugin_path(tmp_path, config, codec):
    """bslz4: hdf5plugin's own filter, which its import leaves unusable for writes when
    HDF5_PLUGIN_PATH holds hdf5plugin's folder."""
    out = tmp_path / "run.nxs"
    acq = acquire(tmp_path, out, env_for(CONFIGS[config]), codec=codec)
    assert acq.returncode == 0, acq.stderr_text
    counts = json.loads((tmp_path / "summary.json").read_text())["series"][0]["counts"]
    assert counts["received"] == 4 and counts["written"] == 4 and counts["rejected"] == 0
    with h5py.File(out) as f:
        d = f["entry/data/data"]
        assert d.shape[0] == 4 and all(d[i].any() for i in range(4))


def test_acquire_stops_when_it_cannot_create_its_file(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / "afile" / "run.nxs"
    acq = acquire(tmp_path, out, env_for(None))
    assert acq.returncode == 1, acq.stderr_text
    last = acq.stderr_text.strip().splitlines()[-1]
    assert last.startswith("redml acquire: stopped, frames cannot be stored: series") and "cannot create" in last
    assert str(out) in last and "Traceback" not in acq.stderr_text
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_acquire_stops_when_a_write_fails(tmp_path, rng, monkeypatch):
    """A frame the file refuses (disk full, I/O error) is recorded as fatal and serve() stops
    at once, instead of rejecting every frame after it until the series ends."""
    from redml_reduce.acquire import series as acqfile
    from redml_reduce.acquire.sender import StreamSender
    from redml_reduce.acquire import AcquireSettings, Acquisition
    from redml_reduce.background import BeamGeometry

    def disk_full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(acqfile.SeriesFile, "write", disk_full)
    shape = (64, 64)
    geometry = BeamGeometry(beam_x=32, beam_y=32, distance_mm=80.0, pixel_size_mm=0.075, wavelength_a=1.0)
    acq = Acquisition(tmp_path / "run.nxs", AcquireSettings(q=0, workers=1, idle_timeout_s=600))
    with StreamSender("tcp://127.0.0.1:*") as sender:
        result = {}
        t = threading.Thread(target=lambda: result.update(s=acq.serve(sender.endpoint, max_series=1)), daemon=True)
        t.start()
        sender.start(shape, "uint16", geometry, number_of_images=10)
        for i in range(3):
            sender.image(rng.poisson(5.0, shape).astype(np.uint16), i)
        t.join(120)  # no end message: only the failed write can end serve()
        assert not t.is_alive()
    acq.close()
    assert "image 0 could not be written: OSError" in acq.fatal and "No space left" in acq.fatal
    assert result["s"][0]["counts"]["written"] == 0


@pytest.fixture
def counted_registration(monkeypatch):
    """hdf5plugin's forced registration counted (and not done), as on a process started with
    HDF5_PLUGIN_PATH set that has not set hdf5plugin up yet. Each call records the threads
    alive at that moment."""
    from redml_reduce.formats import h5filter

    calls = []

    def register(force=False):
        calls.append(set(threading.enumerate()))
        threading.Event().wait(0.05)  # a registration takes a while: others may call meanwhile

    monkeypatch.setenv("HDF5_PLUGIN_PATH", THEIRS)
    monkeypatch.setattr(h5filter, "_hdf5plugin_set_up", False)
    monkeypatch.setattr(hdf5plugin, "register", register)
    return calls


def test_hdf5plugin_is_registered_once_whatever_the_threads(counted_registration):
    """Registering unregisters the filters first, which HDF5 refuses while another thread's
    dataset uses one: threads calling load_hdf5plugin at once register it once."""
    from redml_reduce.formats.h5filter import load_hdf5plugin

    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=lambda: (barrier.wait(), load_hdf5plugin())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counted_registration) == 1
    load_hdf5plugin()
    assert len(counted_registration) == 1


def test_acquisition_sets_up_hdf5plugin_before_its_threads(tmp_path, counted_registration):
    """codec bslz4 writes with hdf5plugin's filter: the acquisition sets it up in its
    constructor, before its writer and worker threads exist, and never again."""
    from redml_reduce.acquire import AcquireSettings, Acquisition

    with Acquisition(tmp_path / "run.nxs", AcquireSettings(codec="bslz4", spots=False, workers=1)) as acq:
        assert len(counted_registration) == 1
        assert acq.writer._thread not in counted_registration[0]
