"""Bulk recompression (redml_reduce.recompress): serial and on a 2-worker LocalCluster."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from fabio.adscimage import AdscImage
from fabio.cbfimage import CbfImage

import redml_reduce as rr
from conftest import BASE_SEED
from redml_reduce.cli import main as cli_main
from redml_reduce.codec import error_bound
from redml_reduce.recompress.outputs import OUTPUT_SUFFIX, path_size
from redml_reduce.recompress import MANIFEST_NAME, TMP_NAME, VerificationError, recompress, verify_chunk
from redml_reduce.formats.sources import find_inputs, open_frames
from redml_study.synthetic import still_frame
from redml_reduce.formats.zarr_view import open_view

PILATUS_HEADER = ("# Detector: PILATUS3 6M, S/N 60-0000\n# Pixel_size 172e-6 m x 172e-6 m\n"
                  "# Silicon sensor, thickness 0.000450 m\n# Exposure_time 0.0190000 s\n"
                  "# Count_cutoff 115897 counts\n# Wavelength 0.96859 A\n# Detector_distance 0.35100 m\n"
                  "# Beam_xy (51.5, 40.25) pixels\n")


def _stack(rng, n, shape=(96, 112), dtype="uint16", background=20.0):
    return np.stack([still_frame(rng, shape, background=background, spots=6, dtype=dtype) for _ in range(n)])


def _nxmx(path, frames, **filters):
    with h5py.File(path, "w") as f:
        f.attrs["file_name"] = np.bytes_(path.name)
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = np.bytes_("NXentry")
        entry.create_dataset("definition", data=np.bytes_("NXmx"))
        data = entry.create_group("data")
        data.attrs["NX_class"] = np.bytes_("NXdata")
        data.attrs["signal"] = "data"
        d = data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]), **filters)
        d.attrs["units"] = "counts"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = np.bytes_("NXdetector")
        det.create_dataset("x_pixel_size", data=7.5e-5).attrs["units"] = "m"
        det.create_dataset("pixel_mask", data=np.zeros(frames.shape[1:], np.uint32), compression="gzip")
        det["data"] = h5py.SoftLink("/entry/data/data")


def _eiger(folder, prefix, parts):
    for k, frames in enumerate(parts, 1):
        with h5py.File(folder / f"{prefix}_data_{k:06d}.h5", "w") as f:
            d = f.create_dataset("entry/data/data", data=frames, chunks=(1, *frames.shape[1:]),
                                 **hdf5plugin.Bitshuffle(cname="lz4"))
            d.attrs["image_nr_low"] = np.int32(1)
    with h5py.File(folder / f"{prefix}_master.h5", "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = np.bytes_("NXentry")
        data = entry.create_group("data")
        data.attrs["NX_class"] = np.bytes_("NXdata")
        for k in range(1, len(parts) + 1):
            data[f"data_{k:06d}"] = h5py.ExternalLink(f"{prefix}_data_{k:06d}.h5", "/entry/data/data")
        entry.create_dataset("instrument/detector/description", data=np.bytes_("Dectris EIGER2 X 4M"))


def make_inputs(root: Path, rng) -> dict:
    """NXmx (bitshuffle-LZ4 and uncompressed), an Eiger master with two data files, a CBF
    series, an SMV series, and a corrupt HDF5 file."""
    hdf = root / "hdf5"
    hdf.mkdir(parents=True)
    _nxmx(hdf / "a.nxs", _stack(rng, 3), **hdf5plugin.Bitshuffle(cname="lz4"))
    _nxmx(hdf / "b.h5", _stack(rng, 2, dtype="uint32", background=60.0))
    _eiger(hdf, "c", [_stack(rng, 2), _stack(rng, 2)])
    (hdf / "d_broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    cbf = root / "cbf"
    cbf.mkdir()
    for i in range(3):
        frame = still_frame(rng, (80, 103), background=3.0, spots=4, dtype="int32")
        frame[:, 40:42] = -1
        CbfImage(data=frame, header={"_array_data.header_contents": PILATUS_HEADER}).write(str(cbf / f"t_{i + 1:04d}.cbf"))
    smv = root / "smv"
    smv.mkdir()
    for i in range(2):
        AdscImage(data=still_frame(rng, (64, 72), background=10.0, dtype="uint16"),
                  header={"DISTANCE": "150.0", "PIXEL_SIZE": "0.1"}).write(str(smv / f"s_{i + 1:03d}.img"))
    return {"sources": [str(hdf), str(cbf), str(smv)], "names": ["t", "a", "b", "c", "d_broken", "s"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = np.random.default_rng([BASE_SEED, 11])
    return make_inputs(tmp_path_factory.mktemp("inputs"), rng)


@pytest.fixture(scope="module")
def serial(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, recompress(inputs["sources"], out, workers=0)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as client:
        yield client


def _outputs(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.nxs"))}


def _source_frames(inp):
    with open_frames(inp) as frames:
        return np.stack([frames.read(i)[0] for i in range(len(frames))])


def test_find_inputs(inputs):
    found = find_inputs(inputs["sources"])
    assert [i.name for i in found] == inputs["names"]
    kinds = {i.name: i for i in found}
    assert kinds["c"].files[0].endswith("c_master.h5")  # the data files are read through the master
    assert len(kinds["t"].files) == 3 and kinds["t"].kind == "images"
    assert [Path(f).name for f in kinds["s"].files] == ["s_001.img", "s_002.img"]
    with pytest.raises(FileNotFoundError):
        find_inputs(["/no/such/folder"])
    with pytest.raises(ValueError, match="not an HDF5 file"):
        find_inputs([__file__])


def test_serial_run_is_lossless_and_keeps_metadata(inputs, serial):
    out, report = serial
    status = {r["name"]: r["status"] for r in report.rows}
    assert status == {"a": "done", "b": "done", "c": "done", "d_broken": "error", "t": "done", "s": "done"}
    for inp in find_inputs(inputs["sources"]):
        if inp.name == "d_broken":
            continue
        expected = _source_frames(inp)
        with h5py.File(out / f"{inp.name}.nxs", "r") as f:
            d = f["entry/data/data"]
            assert list(d._filters) == [str(rr.FILTER_ID)] and d.chunks == (1, *expected.shape[1:])
            assert d[...].tobytes() == expected.tobytes()
            row = next(r for r in report.rows if r["name"] == inp.name)
            assert row["frames"] == len(expected) and row["raw_bytes"] == expected.nbytes
            assert row["bytes_out"] == (out / f"{inp.name}.nxs").stat().st_size
            if inp.name == "a":  # the input's other groups, links and attributes are copied
                assert f.attrs["file_name"] == b"a.nxs" and d.attrs["units"] == "counts"
                assert f["entry/instrument/detector/data"].shape == expected.shape
                assert f["entry/instrument/detector/pixel_mask"].compression == "gzip"
                assert f["entry/definition"][()] == b"NXmx"
            if inp.name == "c":  # Eiger: data_000001/2 links become one dataset
                assert "data_000001" not in f["entry/data"] and len(expected) == 4
                assert f["entry/instrument/detector/description"][()] == b"Dectris EIGER2 X 4M"
            if inp.name == "t":  # CBF: NXmx geometry from the Pilatus header, headers kept
                det = f["entry/instrument/detector"]
                assert det["distance"][()] == pytest.approx(0.351) and det["beam_center_x"][()] == 51.5
                assert det["sensor_thickness"][()] == pytest.approx(0.45)
                assert f["entry/instrument/beam/incident_wavelength"][()] == pytest.approx(0.96859)
                headers = f["entry/redml_source/headers"].asstr()[...]
                assert len(headers) == 3 and "Beam_xy" in json.loads(headers[0])["_array_data.header_contents"]
        assert open_view(out / f"{inp.name}.nxs")[...].tobytes() == expected.tobytes()
    broken = next(r for r in report.rows if r["name"] == "d_broken")
    assert "OSError" in broken["error"] and not (out / "d_broken.nxs").exists()
    assert len((out / MANIFEST_NAME).read_text().splitlines()) == 5
    saved = json.loads((out / "recompress-report.json").read_text())
    assert saved["totals"]["errors"] == 1 and saved["totals"]["done"] == 5
    assert not (out / TMP_NAME).exists()
    assert "d_broken" in report.table()


def test_two_workers_identical_to_serial(inputs, serial, cluster, tmp_path):
    report = recompress(inputs["sources"], tmp_path, client=cluster, frames_per_task=1)
    assert report.workers == 2
    assert [r["status"] for r in report.rows] == [r["status"] for r in serial[1].rows]
    assert _outputs(tmp_path) == _outputs(serial[0])
    # default split (about three tasks per worker) gives the same bytes too
    report = recompress(inputs["sources"], tmp_path / "default", client=cluster)
    assert _outputs(tmp_path / "default") == _outputs(serial[0])


def test_rerun_skips_finished_inputs(inputs, serial, tmp_path):
    out = tmp_path / "out"
    stopped = []

    def stop_after_two(row):
        stopped.append(row["name"])
        if len(stopped) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recompress(inputs["sources"], out, workers=0, on_result=stop_after_two)
    assert sorted(p.name for p in out.glob("*.nxs")) == [f"{n}.nxs" for n in sorted(stopped)]
    report = recompress(inputs["sources"], out, workers=0)
    status = {r["name"]: r["status"] for r in report.rows}
    assert sorted(n for n, s in status.items() if s == "skipped") == sorted(stopped)
    assert sum(s == "done" for s in status.values()) == 5 - len(stopped)
    assert _outputs(out) == _outputs(serial[0])
    # a changed setting or a touched input is not "finished"
    report = recompress(inputs["sources"], out, 1.0, workers=0)
    assert not any(r["status"] == "skipped" for r in report.rows)
    report = recompress(inputs["sources"], out, 1.0, workers=0)
    assert sum(r["status"] == "skipped" for r in report.rows) == 5
    a = Path(inputs["sources"][0]) / "a.nxs"
    os.utime(a, ns=(time.time_ns(), time.time_ns()))
    report = recompress(inputs["sources"], out, 1.0, workers=0)
    assert {r["name"] for r in report.rows if r["status"] == "done"} == {"a"}


def _corrupt_chunk(out, fmt, i):
    """Flips a byte in the middle of frame i's chunk, in place (the output keeps its size)."""
    if fmt == "zarr":
        path, offset = out / "a.zarr" / "data" / "c" / str(i) / "0" / "0", None
    else:
        path = out / "a.nxs"
        with h5py.File(path, "r") as f:
            info = f["entry/data/data"].id.get_chunk_info(i)
            offset = info.byte_offset + info.size // 2
    raw = bytearray(path.read_bytes())
    offset = len(raw) // 2 if offset is None else offset
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _read(out, fmt):
    if fmt == "zarr":
        return zarr.open_group(str(out / "a.zarr"), mode="r")["data"][...]
    with h5py.File(out / "a.nxs", "r") as f:
        return f["entry/data/data"][...]


@pytest.mark.parametrize("fmt", ["nxmx", "zarr"])
def test_resume_redoes_a_damaged_output(inputs, fmt, tmp_path):
    """Was: an output with a corrupt chunk but its recorded size was skipped, and stayed unreadable."""
    out = tmp_path / "out"
    recompress(inputs["sources"], out, workers=0, output=fmt)
    a = next(i for i in find_inputs(inputs["sources"]) if i.name == "a")
    expected = _source_frames(a)
    size = path_size(out / f"a{OUTPUT_SUFFIX[fmt]}")
    _corrupt_chunk(out, fmt, 1)
    assert path_size(out / f"a{OUTPUT_SUFFIX[fmt]}") == size
    with pytest.raises((OSError, ValueError)):
        _read(out, fmt)
    report = recompress(inputs["sources"], out, workers=0, output=fmt)
    rows = {r["name"]: r for r in report.rows}
    assert rows["a"]["status"] == "done" and "digest differs" in rows["a"]["note"]
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == {"b", "c", "s", "t"}
    assert "redone" in report.table()
    assert _read(out, fmt).tobytes() == expected.tobytes()
    # a manifest without digests (an older version's) proves nothing: its outputs are redone
    manifest = out / MANIFEST_NAME
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "digest"}) + "\n" for e in lines))
    report = recompress(inputs["sources"], out, workers=0, output=fmt)
    assert all(r["status"] == "done" and "no digest" in r["note"] for r in report.rows if r["name"] != "d_broken")
    assert recompress(inputs["sources"], out, workers=0, output=fmt).totals()["skipped"] == 5


def test_interrupted_dask_run_resumes(inputs, serial, cluster, tmp_path):
    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recompress(inputs["sources"], tmp_path, client=cluster, frames_per_task=1, on_result=stop)
    finished = [json.loads(line)["name"] for line in (tmp_path / MANIFEST_NAME).read_text().splitlines()]
    assert len(finished) == 1
    report = recompress(inputs["sources"], tmp_path, client=cluster, frames_per_task=1)
    status = {r["name"]: r["status"] for r in report.rows}
    assert status[finished[0]] == "skipped"
    assert sorted(n for n, s in status.items() if s in ("done", "skipped")) == ["a", "b", "c", "s", "t"]
    assert _outputs(tmp_path) == _outputs(serial[0])
    assert not (tmp_path / TMP_NAME).exists()


def test_killed_worker_still_completes_every_file(inputs, serial, tmp_path):
    """SIGKILL a worker while it holds tasks: its nanny starts a new one, the scheduler
    reruns the lost tasks, and every output is still identical to the serial run."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as client:
        result, killed = {}, []
        runner = threading.Thread(target=lambda: result.update(report=recompress(
            inputs["sources"], tmp_path, client=client, frames_per_task=1)))
        runner.start()
        pids = client.run(os.getpid)
        while runner.is_alive() and not killed:
            busy = [w for w, keys in client.processing().items() if any("encode_part" in str(k) for k in keys)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.005)
        runner.join(timeout=300)
        assert killed, "no worker was busy: nothing was killed"
        assert not runner.is_alive()
        report = result["report"]
        assert {r["name"]: r["status"] for r in report.rows} == {r["name"]: r["status"] for r in serial[1].rows}
        assert _outputs(tmp_path) == _outputs(serial[0])


def test_lossy_outputs_within_bound(inputs, tmp_path):
    report = recompress(inputs["sources"][:1], tmp_path, 1.0, workers=0)
    assert {r["status"] for r in report.rows} == {"done", "error"}
    for inp in find_inputs(inputs["sources"][:1]):
        if inp.name == "d_broken":
            continue
        frames = _source_frames(inp)
        with h5py.File(tmp_path / f"{inp.name}.nxs", "r") as f:
            d = f["entry/data/data"]
            changed = 0
            for i, frame in enumerate(frames):
                chunk = bytes(d.id.read_direct_chunk((i, 0, 0))[1])
                back = d[i]
                exact = rr.exact_mask(chunk)
                err = np.abs(back.astype(float) - frame)
                assert np.array_equal(back[exact], frame[exact])
                assert (err[~exact] <= error_bound(chunk)[~exact] * (1 + 1e-6)).all()
                changed += int((err > 0).sum())
            assert changed > 0


def test_zarr_output(inputs, tmp_path):
    report = recompress(inputs["sources"][1:], tmp_path, workers=0, output="zarr")
    assert [r["status"] for r in report.rows] == ["done", "done"]
    for inp in find_inputs(inputs["sources"][1:]):
        group = zarr.open_group(str(tmp_path / f"{inp.name}.zarr"), mode="r")
        assert group["data"][...].tobytes() == _source_frames(inp).tobytes()
        assert group["data"].metadata.codecs[0].to_dict()["name"] == "redml_reduce.redml"
        assert len(group.attrs["redml_source"]["files"]) == len(inp.files)


def test_corrupt_image_is_reported_others_finish(inputs, tmp_path):
    cbf = tmp_path / "cbf"
    cbf.mkdir()
    for p in Path(inputs["sources"][1]).iterdir():
        (cbf / p.name).write_bytes(p.read_bytes())
    (cbf / "t_0002.cbf").write_bytes((cbf / "t_0002.cbf").read_bytes()[:3000])  # truncated
    report = recompress([str(cbf), inputs["sources"][2]], tmp_path / "out", workers=0)
    rows = {r["name"]: r for r in report.rows}
    assert rows["t"]["status"] == "error" and "t_0002.cbf" in rows["t"]["error"]
    assert rows["s"]["status"] == "done"
    assert not (tmp_path / "out" / "t.nxs").exists()


def test_verify_chunk_catches_a_wrong_chunk(rng):
    a = still_frame(rng, (64, 64), background=30.0, spots=3)
    b = a.copy()
    b[5, 5] += 7
    settings = rr.CodecSettings(q=0)
    verify_chunk(a, rr.encode(a), settings)
    with pytest.raises(VerificationError, match="lossless"):
        verify_chunk(a, rr.encode(b), settings)
    lossy = rr.CodecSettings(q=1.0)
    verify_chunk(a, rr.encode(a, 1.0), lossy)
    far = a.copy()
    far[20:40, 20:40] += 25  # far outside half a Poisson sigma, not strong enough to be exact
    with pytest.raises(VerificationError):
        verify_chunk(far, rr.encode(a, 1.0), lossy)


def test_cli_recompress(inputs, serial, tmp_path, capsys):
    rc = cli_main(["recompress", *inputs["sources"], "--out", str(tmp_path), "--workers", "0",
                   "--report", str(tmp_path / "r.json")])
    assert rc == 1  # the corrupt input
    printed = capsys.readouterr().out
    assert "d_broken" in printed and "5 done, 0 skipped, 1 errors" in printed
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["done"] == 5
    assert _outputs(tmp_path) == _outputs(serial[0])
    rc = cli_main(["recompress", inputs["sources"][2], "--out", str(tmp_path / "z"), "--workers", "0", "-q", "2",
                   "--set", "codec=zstd", "--set", "tile=16"])
    assert rc == 0
    with h5py.File(tmp_path / "z" / "s.nxs", "r") as f:
        info = rr.inspect(bytes(f["entry/data/data"].id.read_direct_chunk((0, 0, 0))[1]))
    assert info["codec"] == "zstd" and info["tile"] == 16 and info["q"] == 2.0


def test_bad_arguments(inputs, tmp_path):
    with pytest.raises(ValueError, match="output"):
        recompress(inputs["sources"], tmp_path, workers=0, output="tiff")
    with pytest.raises(ValueError, match="q must be"):
        recompress(inputs["sources"], tmp_path, q=-1, workers=0)
    with pytest.raises(FileNotFoundError):
        recompress(["/no/such/file.h5"], tmp_path, workers=0)


def test_scheduler_address(inputs, serial, cluster, tmp_path):
    """`scheduler=` (the CLI's --scheduler) connects to a running cluster and leaves it running."""
    report = recompress(inputs["sources"][1:], tmp_path, scheduler=cluster.scheduler.address)
    assert report.workers == 2 and [r["status"] for r in report.rows] == ["done", "done"]
    assert _outputs(tmp_path) == {k: v for k, v in _outputs(serial[0]).items() if k in ("t.nxs", "s.nxs")}
    assert cluster.submit(sum, [1, 2]).result() == 3
