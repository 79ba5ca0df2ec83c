"""The `redml` command line as a user meets it: errors on one line, compress/decompress
round trips with the metadata kept, every input recompress reads, inspect and find-spots
over every frame, Ctrl-C, progress bars only on a terminal."""
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from fabio.cbfimage import CbfImage

import redml_reduce as rr
from redml_reduce.background import BeamGeometry
from redml_reduce.cli import main, read_frames
from redml_reduce.codec import error_bound
from redml_study.synthetic import still_frame

REDML = str(Path(sys.executable).with_name("redml"))
PILATUS_HEADER = ("# Detector: PILATUS 6M, S/N 60-0100\n# Pixel_size 172e-6 m x 172e-6 m\n"
                  "# Silicon sensor, thickness 0.000450 m\n# Exposure_time 0.0990000 s\n"
                  "# Count_cutoff 1048500 counts\n# Wavelength 0.97625 A\n# Detector_distance 0.26400 m\n"
                  "# Beam_xy (51.5, 40.25) pixels\n")


def _frames(rng, n=3, shape=(96, 120), dtype="int32"):
    return np.stack([still_frame(rng, shape, background=4.0, spots=5, dtype=dtype) for _ in range(n)])


def _nxmx(path, frames, **filters):
    """An NXmx file as a detector writes it: NXmx geometry (FrameWriter with a geometry), the
    frames with `filters`, extra attributes on the root, the data and a group of its own."""
    g = BeamGeometry(beam_x=60, beam_y=48, distance_mm=120.0, pixel_size_mm=0.075, wavelength_a=0.98)
    with rr.FrameWriter(path, frames.shape[1:], frames.dtype, geometry=g, filter=filters) as w:
        for f in frames:
            w.write(f)
    with h5py.File(path, "a") as f:
        f.attrs["file_name"] = np.bytes_(Path(path).name)
        f["entry/data/data"].attrs["units"] = "counts"
        f.create_group("entry/instrument/attenuator").attrs["NX_class"] = np.bytes_("NXattenuator")
        f["entry/instrument/attenuator/attenuator_transmission"] = 0.25


def _run(*args, **kw):
    return subprocess.run([REDML, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def _one_error_line(err: str, *expected):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("redml")
    for text in expected:
        assert text in lines[0], lines[0]


def _tree(path):
    """{path: attributes} of every group and dataset (and the value of small datasets), no frames."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            value = obj[()].tolist() if isinstance(obj, h5py.Dataset) and obj.size < 100 else None
            out[name] = (type(obj).__name__, attrs, value)
        f.visititems(visit)
        out["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
        out["links"] = str(f["entry/instrument/detector"].get("data", getlink=True).path)
    return out


# ------------------------------------------------------------------ errors


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"redml {rr.__version__} (chunk format version {rr.FORMAT_VERSION})"


@pytest.fixture
def files(tmp_path, rng):
    _nxmx(tmp_path / "run.h5", _frames(rng))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.cbf").write_text("not an image\n")
    (tmp_path / "taken.h5").write_bytes(b"keep me")
    return tmp_path


@pytest.mark.parametrize("args, expected, code", [
    (["compress", "nope.h5", "-o", "x.h5"], "nope.h5: no such file", 1),
    (["inspect", "nope.h5"], "nope.h5: no such file", 1),
    (["inspect", "empty"], "empty: is a folder", 1),
    (["decompress", "empty", "x.h5"], "empty: is a folder", 1),
    (["compress", "empty", "-o", "x.h5"], "no inputs in", 1),
    (["recompress", "empty", "--out", "o", "--workers", "0"], "no inputs in", 1),
    (["compress", "bad.cbf", "-o", "x.h5"], "bad.cbf: cannot read the image", 1),
    (["find-spots", "bad.cbf"], "bad.cbf: cannot read the image", 1),
    (["inspect", "bad.cbf"], "bad.cbf: not a readable HDF5 file", 1),
    (["compress", "run.h5", "-o", "x.h5", "-q", "-1"], "q must be a number >= 0", 2),
    (["compress", "run.h5", "-o", "x.h5", "-q", "lots"], "q must be a number >= 0", 2),
    (["recompress", "run.h5", "--out", "o", "-q", "nan"], "q must be a number >= 0", 2),
    (["compress", "run.h5", "-o", "x.h5", "-q", "1e-9"], "q below 1e-06 is meaningless", 2),
    (["acquire", "--bind", "tcp://127.0.0.1:1", "--out", "a.nxs", "--q", "-2"], "q must be a number >= 0", 2),
    (["compress", "run.h5:/entry/nope", "-o", "x.h5"], "no dataset '/entry/nope'", 1),
    (["find-spots", "run.h5:/entry/nope"], "no dataset '/entry/nope'", 1),
    (["compress", "run.h5", "-o", "taken.h5"], "taken.h5: exists (--force overwrites it)", 1),
    (["decompress", "run.h5", "taken.h5"], "taken.h5: exists (--force overwrites it)", 1),
    (["decompress", "run.h5", "x.h5"], "no redml datasets", 1),
    (["compress", "run.h5", "-o", "nodir/x.h5"], "nodir: no such folder", 1),
])
def test_errors_are_one_line(files, args, expected, code):
    out = _run(*args, cwd=files)
    assert out.returncode == code, out.stderr
    _one_error_line(out.stderr, expected)
    assert (files / "taken.h5").read_bytes() == b"keep me"
    assert not (files / "x.h5").exists() and not (files / "o").exists()


def test_force_overwrites(files):
    assert _run("compress", "run.h5", "-o", "taken.h5", "--force", cwd=files).returncode == 0
    with h5py.File(files / "taken.h5") as f:
        assert f["entry/data/data"].shape[0] == 3


def test_recompress_with_a_failed_input_says_so(files, capsys):
    (files / "in").mkdir()
    (files / "in" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))
    assert main(["recompress", str(files / "in"), "--out", str(files / "o"), "--workers", "0"]) == 1
    _one_error_line(capsys.readouterr().err, "1 of 1 inputs failed")


# ------------------------------------------------------------------ compress / decompress


@pytest.mark.parametrize("dtype", ["int32", "uint16"])
@pytest.mark.parametrize("filters", [{}, dict(hdf5plugin.Bitshuffle(cname="lz4"))], ids=["plain", "bslz4"])
def test_compress_decompress_lossless_keeps_metadata(tmp_path, rng, dtype, filters, capsys):
    frames = _frames(rng, dtype=dtype)
    _nxmx(tmp_path / "in.h5", frames, **filters)
    assert main(["compress", str(tmp_path / "in.h5"), "-o", str(tmp_path / "c.nxs")]) == 0  # default: lossless
    with h5py.File(tmp_path / "c.nxs") as f:
        d = f["entry/data/data"]
        assert list(d._filters) == [str(rr.FILTER_ID)] and d.dtype == frames.dtype
        assert d[...].tobytes() == frames.tobytes()
        assert {rr.inspect(d.id.read_direct_chunk((i, 0, 0))[1])["mode"] for i in range(3)} == {"lossless"}
    assert _tree(tmp_path / "c.nxs") == _tree(tmp_path / "in.h5")  # every group, attribute and link
    for codec in ("none", "bslz4"):
        out = tmp_path / f"d_{codec}.h5"
        assert main(["decompress", str(tmp_path / "c.nxs"), str(out), "--codec", codec]) == 0
        with h5py.File(out) as f:
            d = f["entry/data/data"]
            assert d[...].tobytes() == frames.tobytes() and d.dtype == frames.dtype
            assert list(d._filters) == ([] if codec == "none" else [str(hdf5plugin.BSHUF_ID)])
        assert _tree(out) == _tree(tmp_path / "in.h5")
    assert "3 frames written" in capsys.readouterr().out


def test_compress_lossy_when_asked(tmp_path, rng):
    _nxmx(tmp_path / "in.h5", _frames(rng))
    assert main(["compress", str(tmp_path / "in.h5"), "-o", str(tmp_path / "c.nxs"), "-q", "1"]) == 0
    with h5py.File(tmp_path / "c.nxs") as f:
        info = rr.inspect(f["entry/data/data"].id.read_direct_chunk((0, 0, 0))[1])
    assert info["mode"] == "quantized" and info["q"] == 1


def test_compress_cbf_series(tmp_path, rng):
    frames = _frames(rng, shape=(80, 103))
    for i, frame in enumerate(frames):
        CbfImage(data=frame, header={"_array_data.header_contents": PILATUS_HEADER}).write(str(tmp_path / f"t_{i + 1:04d}.cbf"))
    cbfs = sorted(str(p) for p in tmp_path.glob("*.cbf"))
    assert main(["compress", *cbfs, "-o", str(tmp_path / "t.nxs")]) == 0
    with h5py.File(tmp_path / "t.nxs") as f:
        assert f["entry/data/data"][...].tobytes() == frames.tobytes()
        assert f["entry/instrument/detector/distance"][()] == pytest.approx(0.264)  # m
        assert [n.decode() for n in f["entry/redml_source/file_names"][...]] == [Path(p).name for p in cbfs]
        assert "PILATUS 6M" in f["entry/redml_source/headers"][0].decode()


def test_compress_eiger_master(tmp_path, rng):
    parts = [_frames(rng, 2, dtype="uint16"), _frames(rng, 2, dtype="uint16")]
    for k, frames in enumerate(parts, 1):
        with h5py.File(tmp_path / f"x_data_{k:06d}.h5", "w") as f:
            f.create_dataset("entry/data/data", data=frames, chunks=(1, *frames.shape[1:]),
                             **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "x_master.h5", "w") as f:
        f.create_group("entry").attrs["NX_class"] = np.bytes_("NXentry")
        for k in (1, 2):
            f[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(f"x_data_{k:06d}.h5", "/entry/data/data")
    assert main(["compress", str(tmp_path / "x_master.h5"), "-o", str(tmp_path / "x.nxs")]) == 0
    with h5py.File(tmp_path / "x.nxs") as f:
        assert f["entry/data/data"][...].tobytes() == np.concatenate(parts).tobytes()


def test_compressed_nxmx_imports_in_dials(tmp_path, rng):
    frames = _frames(rng, dtype="uint16")
    _nxmx(tmp_path / "in.h5", frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    assert _run("compress", "in.h5", "-o", "c.nxs", cwd=tmp_path).returncode == 0
    env = dict(os.environ, HDF5_PLUGIN_PATH=rr.PLUGIN_PATH)
    out = subprocess.run(["dials.import", "c.nxs", "output.experiments=c.expt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # DIALS decodes the redml chunks to the frames' pixels
    read = ("from scitbx.array_family import flex\n"
            "from dxtbx.model.experiment_list import ExperimentListFactory\n"
            "el = ExperimentListFactory.from_json_file('c.expt')\n"
            "print([int(sum(flex.sum(p.as_double()) for p in s.get_raw_data(i)))"
            " for s in el.imagesets() for i in range(len(s))])\n")
    from redml_study.dials_side import DIALS_PYTHON

    out = subprocess.run([DIALS_PYTHON, "-c", read], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [int(f.astype(np.int64).sum()) for f in frames]


# ------------------------------------------------------------------ inspect, find-spots, readers


def test_inspect_summarises_every_chunk(tmp_path, rng, capsys):
    frames = _frames(rng, 6)
    chunks = [rr.encode(f, q=q) for f, q in zip(frames, (0, 0, 1, 1, 1, "sparse"))]
    with h5py.File(tmp_path / "m.h5", "w") as f:
        d = f.create_dataset("entry/data/data", shape=frames.shape, dtype=frames.dtype, chunks=(1, *frames.shape[1:]),
                             **rr.Redml(q=0))
        for i, c in enumerate(chunks):
            d.id.write_direct_chunk((i, 0, 0), c)
    assert main(["inspect", str(tmp_path / "m.h5")]) == 0
    line = capsys.readouterr().out.strip()
    ratio = frames.nbytes / sum(len(c) for c in chunks)
    sparse_codec = rr.inspect(chunks[5])["codec"]  # the smaller of rANS and zstd: the encoder's choice
    assert f"6 redml chunks: 2 lossless (rans), 3 quantized q=1 (rans), 1 sparse ({sparse_codec})" in line
    assert f"ratio {ratio:.2f}" in line


def test_inspect_walks_the_chunk_index_once(tmp_path, rng):
    """Was: get_chunk_info(k) for every k (HDF5 walks the index from its start each time:
    quadratic in the frames). The summary takes one pass and no chunk is decoded; frames
    never written (a hole) are left out."""
    from redml_reduce.cli import _summarise_chunks

    frames = _frames(rng, 4)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        d = f.create_dataset("data", shape=(5, *frames.shape[1:]), dtype=frames.dtype,
                             chunks=(1, *frames.shape[1:]), **rr.Redml(q=0))
        d[:2], d[3:] = frames[:2], frames[2:]

        class NoPerIndexLookup:  # the dataset's id, without get_chunk_info(k)
            def __getattr__(self, name):
                assert name != "get_chunk_info", "one lookup per chunk index"
                return getattr(d.id, name)

        class Dataset:
            id, dtype, chunks, shape = NoPerIndexLookup(), d.dtype, d.chunks, d.shape

        stored = sum(d.id.get_chunk_info(k).size for k in range(4))
        with pytest.MonkeyPatch.context() as m:
            m.setattr(rr.codec._core, "decode", lambda *a, **k: pytest.fail("inspect decoded a chunk"))
            line = _summarise_chunks(Dataset())
    assert f"4 redml chunks: 4 lossless (rans); {stored} bytes stored" in line


def test_find_spots_processes_every_frame(tmp_path, rng, capsys):
    _nxmx(tmp_path / "run.nxs", _frames(rng, 4))
    assert main(["find-spots", str(tmp_path / "run.nxs"), "--cxi", str(tmp_path / "p.cxi")]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("frame")] == [f"frame {i}" for i in range(4)]
    from redml_reduce.formats.peaklist import read_cxi_peaks

    assert len(read_cxi_peaks(tmp_path / "p.cxi")) == 4


def test_one_reader_for_files_datasets_and_indices(tmp_path, rng):
    frames = _frames(rng, 3)
    _nxmx(tmp_path / "run.nxs", frames)
    from redml_reduce.formats.jungfrau_raw import read_frames_lazily

    for got in (read_frames([str(tmp_path / "run.nxs")]), read_frames([f"{tmp_path}/run.nxs:/entry/data/data"]),
                list(read_frames_lazily(tmp_path / "run.nxs"))):
        assert np.array_equal(np.stack(got), frames)
    assert np.array_equal(read_frames([f"{tmp_path}/run.nxs:/entry/data/data:1"])[0], frames[1])
    assert np.array_equal(read_frames([f"{tmp_path}/run.nxs:/entry/data/data:-1"])[0], frames[2])


def test_image_files_keep_the_order_given(tmp_path, rng):
    """Was: plain specs went through find_inputs, which sorts them (b.cbf a.cbf read as a, b;
    numbering in find-spots and rows of --cxi did not follow the command line)."""
    from redml_reduce.formats.sources import inputs_from_specs

    frames = _frames(rng, 2)
    for name, frame in zip(("a.cbf", "b.cbf"), frames):
        CbfImage(data=frame).write(str(tmp_path / name))
    got = read_frames([str(tmp_path / "b.cbf"), str(tmp_path / "a.cbf")])
    assert [g.tobytes() for g in got] == [frames[1].tobytes(), frames[0].tobytes()]
    series = [str(tmp_path / f"s_{i:03d}.cbf") for i in (2, 1)]  # one template, given in reverse
    for path, frame in zip(series, frames):
        CbfImage(data=frame).write(path)
    (inp, index), = inputs_from_specs(series)
    assert inp.files == tuple(series) and index is None
    assert [g.tobytes() for g in read_frames(series)] == [f.tobytes() for f in frames]


def test_other_image_formats_fabio_reads(tmp_path, rng):
    """Was: anything but CBF/SMV/MCCD refused ("not an HDF5 file ... or an image")."""
    from fabio.edfimage import EdfImage
    from fabio.tifimage import TifImage

    frames = _frames(rng, 2, dtype="uint16")
    TifImage(data=frames[0]).write(str(tmp_path / "a.tif"))
    EdfImage(data=frames[1]).write(str(tmp_path / "b.edf"))
    got = read_frames([str(tmp_path / "a.tif"), str(tmp_path / "b.edf")])
    assert [g.tobytes() for g in got] == [f.tobytes() for f in frames]
    (tmp_path / "notes.txt").write_text("not an image\n")
    out = _run("find-spots", "notes.txt", cwd=tmp_path)
    assert out.returncode == 1
    _one_error_line(out.stderr, "notes.txt: cannot read the image")


# ------------------------------------------------------------------ progress, Ctrl-C, scheduler


def test_progress_bar_only_on_a_terminal(tmp_path, rng):
    _nxmx(tmp_path / "in.h5", _frames(rng))
    quiet = _run("compress", "in.h5", "-o", "a.nxs", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([REDML, "compress", "in.h5", "-o", "b.nxs"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        try:
            chunk = os.read(primary, 4096) if ready else b""
        except OSError:  # the terminal closed with the process
            chunk = b""
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(primary)
    assert b"compress" in seen and b"3/3" in seen


def _wait_for(predicate, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)


def _ctrl_c_reaches_the_child():
    """Popen preexec_fn: SIGINT at its default in the child, as for a command typed at a
    terminal; a test run started in the background (sh's `cmd &`) ignores SIGINT, and a
    program started with SIGINT ignored rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_recompress_writes_the_report(tmp_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    frames = _frames(rng, 4, shape=(256, 256))
    for k in range(40):
        with h5py.File(src / f"r{k:02d}.h5", "w") as f:
            f["entry/data/data"] = frames
    manifest = tmp_path / "out" / "recompress-manifest.jsonl"
    proc = subprocess.Popen([REDML, "recompress", "in", "--out", "out", "--workers", "0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_reaches_the_child)
    _wait_for(lambda: manifest.exists() and manifest.read_text().count("\n") >= 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _one_error_line(err, "interrupted", "report in")
    report = json.loads((tmp_path / "out" / "recompress-report.json").read_text())
    status = [r["status"] for r in report["rows"]]
    assert len(status) == 40 and status.count("done") >= 1 and status.count("interrupted") >= 1
    assert set(status) == {"done", "interrupted"} and "interrupted" in out
    assert len(manifest.read_text().splitlines()) == status.count("done")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigint_during_acquire_linger_writes_the_summary(tmp_path):
    proc = subprocess.Popen([REDML, "acquire", "--bind", f"tcp://127.0.0.1:{_free_port()}", "--out", "a.nxs",
                             "--wait", "0.5", "--dashboard", f"127.0.0.1:{_free_port()}", "--linger", "120",
                             "--json", "s.json", "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_reaches_the_child)
    lines = []
    while not any("stays up" in line for line in lines):
        line = proc.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in "".join(lines) + err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["series"] == [] and "counts" in summary


def test_recompress_scheduler_with_relative_paths(tmp_path, rng, monkeypatch, capsys):
    from distributed import LocalCluster

    (tmp_path / "in").mkdir()
    frames = _frames(rng, 2)
    _nxmx(tmp_path / "in" / "a.h5", frames)
    # the worker runs in another folder than the command: relative paths would miss there
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        monkeypatch.chdir(tmp_path)
        rc = main(["recompress", "in", "--out", "out", "--scheduler", cluster.scheduler_address])
    assert rc == 0, capsys.readouterr()
    with h5py.File(tmp_path / "out" / "a.nxs") as f:
        assert f["entry/data/data"][...].tobytes() == frames.tobytes()


# ------------------------------------------------------------------ integrating detectors: --set


def _integrating(tmp_path, rng, n=2, shape=(128, 160)):
    """Pedestal-subtracted int32 ADU frames (20 ADU/photon, read noise 0.2 photon) in an HDF5 file."""
    from redml_study.detector import integrating_frame

    frames = np.stack([integrating_frame(still_frame(rng, shape, background=0.3, spots=20, dtype="int32",
                                                     peak_range=(5.0, 60.0)), rng, gain=20.0, dtype="int32")
                       for _ in range(n)])
    path = tmp_path / "adu.h5"
    with h5py.File(path, "w") as f:
        f["data"] = frames
    return path, frames


INTEGRATING = {"gain": 20.0, "markers": "extremes", "read_noise": 4.0}
SETS = [x for k, v in INTEGRATING.items() for x in ("--set", f"{k}={v}")]


def test_find_spots_takes_the_detectors_noise_model(tmp_path, rng):
    from redml_reduce.formats.peaklist import read_cxi_peaks

    path, frames = _integrating(tmp_path, rng)
    out = _run("find-spots", f"{path}:/data", *SETS, "--cxi", tmp_path / "p.cxi")
    assert out.returncode == 0, out.stderr
    for frame, peaks in zip(frames, read_cxi_peaks(tmp_path / "p.cxi")):
        want, default = rr.find_spots(frame, **INTEGRATING)[0], rr.find_spots(frame)[0]
        # the CLI found the spots the noise model finds (positions to float32), not the default's
        assert len(peaks) == len(want)
        np.testing.assert_allclose(np.stack([peaks["x"], peaks["y"]]), np.stack([want["x"], want["y"]]), atol=1e-3)
        assert len(want) != len(default) or not np.allclose(want["total"], default["total"])  # (counts can be equal by chance)


def test_compress_takes_codec_settings(tmp_path, rng):
    path, frames = _integrating(tmp_path, rng)
    out = _run("compress", f"{path}:/data", "-o", tmp_path / "c.h5", "-q", "2", *SETS)
    assert out.returncode == 0, out.stderr
    with h5py.File(tmp_path / "c.h5") as f:
        d = f["data"]  # the input's layout is kept
        for i, frame in enumerate(frames):
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            info = rr.inspect(chunk)  # gain applied; negative values are noise, not exact markers
            assert info["gain"] == 20.0 and info["n_exact"] < 0.25 * frame.size, info  # spots: ~8%; negatives: ~50%
            back = d[i].astype(np.float64)
            exact = rr.exact_mask(chunk)
            assert np.array_equal(d[i][exact], frame[exact])
            assert np.all(np.abs(back - frame)[~exact] <= error_bound(chunk)[~exact] * (1 + 1e-6))


@pytest.mark.parametrize("args, expected", [
    (["--set", "gain"], "--set takes KEY=VALUE, not 'gain'"),
    (["--set", "markers=nope"], "markers must be one of"),
])
def test_bad_settings_are_one_line(tmp_path, rng, args, expected):
    path, _ = _integrating(tmp_path, rng, n=1)
    for command in (["compress", f"{path}:/data", "-o", tmp_path / "x.h5"], ["find-spots", f"{path}:/data"]):
        out = _run(*command, *args)
        assert out.returncode != 0
        _one_error_line(out.stderr, expected)
    assert not (tmp_path / "x.h5").exists()


def test_receivers_get_every_set_option():
    """--receivers N starts N `redml acquire --receiver k/N` with the launcher's options: each
    --set KEY=VALUE again (a list-valued option forwarded as one string was lost)."""
    from redml_reduce.acquire.cli import _child_argv

    ap = __import__("argparse").ArgumentParser()
    sub = ap.add_subparsers()
    from redml_reduce.acquire.cli import add_commands
    from redml_reduce.cli import parse_q

    add_commands(sub, parse_q)
    args = ap.parse_args(["acquire", "--connect", "tcp://h:1", "--out", "a.nxs", "--receivers", "2", *SETS])
    args.parser = sub.choices["acquire"]
    argv = _child_argv(args, 1, 2, Path("r.json"), None)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == [f"{k}={v}" for k, v in INTEGRATING.items()]
