"""The per-frame lattice policy (issue 21 item 4) in FrameWriter: crystals= encodes each frame
by redml_reduce.pipeline.encode_by_policy and the file records which region kept each frame
(/entry/redml/roi_kind). Reference: the thaumatin stills and DIALS's crystals of two of them."""
import json
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import check_decoded, poisson_frame
from redml_reduce.formats.writer import KIND_PATH, ROI_KINDS, read_roi_kinds
from redml_reduce.lattice import CrystalTable, lattice_roi, read_expt
from redml_reduce.pipeline import FRAME_KINDS, ROI_SOURCES, encode_by_policy

EXPT = Path(__file__).parent / "data" / "lattice" / "thaumatin_integrated.expt"


@pytest.fixture(scope="module")
def crystals():
    """DIALS's crystal of thaumatin still 1 (each carries its geometry)."""
    found = read_expt(EXPT).for_frame("thau_3_2_0001.cbf.bz2", 0)
    assert len(found) == 1
    return found


def test_writer_policy_mixed_series(tmp_path, thaumatin, crystals):
    """An indexed still, a hit given no crystal and a blank: the indexed one keeps its finder
    spots and every predicted disc byte for byte and draws the rest, the hit is decoded by the
    midpoint, the blank drawn; every other pixel within the bound; the kinds are in the file."""
    frames = [thaumatin[1], thaumatin[10], thaumatin[17]]
    path = tmp_path / "run.h5"
    s = rr.CodecSettings(q=8)
    with rr.FrameWriter(path, frames[0].shape, frames[0].dtype, crystals=[crystals, [], []], q=8) as w:
        for k, frame in enumerate(frames):
            assert w.write(frame) == k
    assert read_roi_kinds(path) == ["lattice", "hit", "blank"]
    discs = lattice_roi(frames[0].shape, None, crystals)
    assert discs.sum() > 100000
    with h5py.File(path, "r") as f:
        d = f["entry/data/data"]
        assert h5py.check_enum_dtype(f[KIND_PATH].dtype) == {k: i for i, k in enumerate(ROI_KINDS)}
        for k, (frame, frame_crystals) in enumerate(zip(frames, [crystals, [], []])):
            chunk = bytes(d.id.read_direct_chunk((k, 0, 0))[1])
            assert chunk == encode_by_policy(frame, s, frame_crystals)[0]
            back = d[k]
            check_decoded(frame, back, chunk, 8)
            assert rr.inspect(chunk)["recon"] == ("dither" if k == 1 else "draw")  # midpoint as chunks store it
    back = rr.decode(encode_by_policy(frames[0], s, crystals)[0])
    assert back[discs].tobytes() == frames[0][discs].tobytes()


def test_writer_policy_sources(tmp_path, rng):
    """crystals= as a callable, a CrystalTable (this file's name) and write(crystals=) give
    the chunks encode_by_policy gives; a list too short is refused, not guessed."""
    frames = [poisson_frame(rng, 5.0, (96, 128), "int32", spots=k * 20) for k in range(3)]
    s = rr.CodecSettings(q=4)
    expected = [encode_by_policy(f, s, [], min_peaks=3)[0] for f in frames]
    with rr.FrameWriter(tmp_path / "a.h5", (96, 128), "int32", crystals=lambda i: None, min_peaks=3, q=4) as w:
        for f in frames:
            w.write(f)
    table = CrystalTable([], source="none")
    with rr.FrameWriter(tmp_path / "b.h5", (96, 128), "int32", crystals=table, min_peaks=3, q=4) as w:
        for f in frames:
            w.write(f)
    with rr.FrameWriter(tmp_path / "c.h5", (96, 128), "int32", min_peaks=3, q=4) as w:
        for f in frames:
            w.write(f, crystals=[])
        w.write(frames[0])  # no crystals: the writer's ROI source
    for name in ("a.h5", "b.h5", "c.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            d = f["entry/data/data"]
            assert [bytes(d.id.read_direct_chunk((k, 0, 0))[1]) for k in range(3)] == expected
    assert read_roi_kinds(tmp_path / "a.h5") == read_roi_kinds(tmp_path / "b.h5") == ["blank", "hit", "hit"]
    assert read_roi_kinds(tmp_path / "c.h5") == ["blank", "hit", "hit", "classical"]
    with rr.FrameWriter(tmp_path / "d.h5", (96, 128), "int32", crystals=[[]], q=4) as w:
        w.write(frames[0])
        with pytest.raises(ValueError, match="frame 1"):
            w.write(frames[1])
        with pytest.raises(ValueError, match="no roi"):
            w.write(frames[1], roi="classical", crystals=[])
        assert len(w) == 1
    assert read_roi_kinds(tmp_path / "d.h5") == ["blank"]


def test_writer_records_roi_kinds(tmp_path, rng):
    """Without the policy each frame's ROI source is recorded: the writer's, a boolean map,
    or a chunk's given kind; another filter writes no kinds; bad kinds are refused."""
    f0 = poisson_frame(rng, 5.0, (16, 24), "uint16", spots=2)
    path = tmp_path / "k.h5"
    with rr.FrameWriter(path, (16, 24), "uint16", q=1) as w:
        w.write(f0)
        w.write(f0, roi=np.zeros((16, 24), bool))
        w.write_chunk(rr.encode(f0, 1))
        w.write_chunk(rr.encode(f0, 1), kind="ml")
        with pytest.raises(ValueError, match="kind"):
            w.write_chunk(rr.encode(f0, 1), kind="nonsense")
    assert read_roi_kinds(path) == ["classical", "map", "unknown", "ml"]
    assert set(FRAME_KINDS) | set(ROI_SOURCES) <= set(ROI_KINDS)
    with rr.FrameWriter(tmp_path / "plain.h5", (16, 24), "uint16", filter={}) as w:
        w.write(f0)
        with pytest.raises(ValueError, match="redml filter"):
            w.write(f0, crystals=[])
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        assert KIND_PATH not in f
    with pytest.raises(ValueError, match="roi must be 'classical' or 'lattice'"):
        rr.FrameWriter(tmp_path / "e.h5", (16, 24), "uint16", roi="ml", crystals=[])
    with pytest.raises(ValueError, match="redml filter"):
        rr.FrameWriter(tmp_path / "f.h5", (16, 24), "uint16", filter={}, crystals=[])


def test_writer_lattice_roi_needs_no_torch(tmp_path, rng, monkeypatch):
    """roi="lattice" is the core's prediction and the finder: no torch (as if not installed);
    ml and union still say how to get it."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    f0 = poisson_frame(rng, 5.0, (16, 24), "uint16", spots=2)
    with rr.FrameWriter(tmp_path / "l.h5", (16, 24), "uint16", roi="lattice", q=1) as w:
        w.write(f0)
    assert read_roi_kinds(tmp_path / "l.h5") == ["classical"]  # no crystals: the finder's region alone
    for roi in ("ml", "union:cnn"):
        with pytest.raises(ImportError, match="pip install"):
            rr.FrameWriter(tmp_path / "m.h5", (16, 24), "uint16", roi=roi, q=1)


# ---- acquisition: hits indexed with the known cell, frames stored by the policy ----

CELL = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)  # the simulator's default crystal (lysozyme, P43212)


@pytest.fixture(scope="module")
def stills():
    """(simulator, frames, truth): simulated stills of one JUNGFRAU module with a known crystal
    (uint16 photons, gaps at the maximum), then a frame of random spots (a hit of no lattice);
    truth per frame: the true A in the lattice package's frame (None for blanks and the
    random hit). The simulator's frame is DIALS's (y up, beam along -z): a half turn about x."""
    from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator
    from redml_reduce.lattice import b_matrix

    sim = StillSimulator(DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)"), Crystal(),
                         ShotSettings(distance_mm=50.0, hit_rate=0.6, background=1.0, sensor_thickness_mm=0.0,
                                      dtype="uint16"), seed=7)
    shots = [sim.shot(i) for i in range(6)]
    to_lab = np.diag([1.0, -1.0, -1.0])
    truth = [None if s.orientation is None else to_lab @ s.orientation @ b_matrix(CELL) for s in shots]
    rng = np.random.default_rng(11)
    frames = [s.frame for s in shots] + [poisson_frame(rng, 1.0, sim.detector.shape, "uint16", spots=60)]
    assert sum(t is not None for t in truth) >= 2 and any(t is None for t in truth)
    return sim, frames, truth + [None]


def test_acquire_indexes_hits_and_applies_the_policy(tmp_path, stills):
    """redml acquire with a known cell: the simulated hits index with the true orientation and
    keep every predicted reflection's disc byte for byte (the rest drawn within the bound), the
    random-spot hit does not index (midpoint), blanks are drawn; the file records each frame's
    kind, whether it indexed and the orientation; the live indicators give the indexing rate
    and the cell."""
    from test_acquire import check_counts, serve_in_thread, stored_frames
    from redml_reduce.acquire import AcquireSettings, Acquisition
    from redml_reduce.acquire.indicators import format_line
    from redml_reduce.acquire.sender import StreamSender
    from redml_reduce.acquire.series import read_acquisition
    from redml_reduce.lattice import Crystal, b_matrix, misorientation_deg

    sim, frames, truth = stills
    out = tmp_path / "run.nxs"
    acq = Acquisition(out, AcquireSettings(q=4, workers=2, cell=",".join(map(str, CELL)), space_group="P 43 21 2"))
    with StreamSender("tcp://127.0.0.1:*") as sender:
        t, res = serve_in_thread(acq, sender.endpoint, max_series=1)
        sender.start(sim.detector.shape, "uint16", sim.geometry, number_of_images=len(frames))
        for i, f in enumerate(frames):
            sender.image(f, i)
        sender.end()
        t.join(120)
    snap = acq.stats.snapshot()
    acq.close()
    (summary,) = res["summaries"]
    check_counts(summary["counts"])
    assert summary["counts"]["written"] == len(frames)
    info = read_acquisition(out)
    kinds = read_roi_kinds(out)
    lattice_frames = [i for i, a in enumerate(truth) if a is not None]
    assert kinds == ["lattice" if a is not None else "blank" for a in truth[:-1]] + ["hit"]
    assert list(info["indexed"]) == [1 if a is not None else -1 for a in truth[:-1]] + [0]
    assert info["attrs"]["space_group"] == "P 43 21 2" and np.allclose(info["attrs"]["cell"], CELL)
    back, chunks = stored_frames(out)
    B = b_matrix(CELL)
    for i, (frame, b, chunk) in enumerate(zip(frames, back, chunks)):
        check_decoded(frame, b, chunk, 4)
        assert rr.inspect(chunk)["recon"] == ("dither" if kinds[i] == "hit" else "draw")  # midpoint as stored
        if i in lattice_frames:
            A = info["orientation"][i]
            assert misorientation_deg(A, truth[i], B) < 0.1
            # the chunk's crystal: this orientation with the profile its spots showed
            (record,), _ = rr.codec.lattice_records(chunk)
            assert np.allclose(record[:9], A.reshape(-1))
            domain, eta = record[16], record[17]
            assert domain > 0 and 0 < eta < 5
            discs = lattice_roi(frame.shape, sim.geometry, Crystal(A, domain_size_a=domain, half_mosaicity_deg=eta))
            assert discs.sum() > 10000 and rr.exact_mask(chunk)[discs].all()
            assert b[discs].tobytes() == frame[discs].tobytes()
        else:
            assert np.isnan(info["orientation"][i]).all()
    ind = snap["indicators"]
    assert ind["indexing_rate"] == ind["indexing_rate_total"] == len(lattice_frames) / (len(lattice_frames) + 1)
    assert ind["frames_indexed"] == len(lattice_frames)
    assert np.allclose(ind["cell"], CELL, rtol=0.005)
    assert "indexed" in format_line(snap) and "cell 79.1 79.1 37.9" in format_line(snap)
    assert any(v is not None for v in snap["history"]["indexing_rate"])
    json.dumps(snap)  # what the dashboard serves


def test_acquire_lattice_settings_refused():
    from redml_reduce.acquire import AcquireSettings

    with pytest.raises(ValueError, match="both"):
        AcquireSettings(cell=CELL)
    with pytest.raises(ValueError, match="six"):
        AcquireSettings(cell="79,79", space_group="P1")
    with pytest.raises(ValueError, match="space group"):
        AcquireSettings(cell=CELL, space_group="lysozyme")
    with pytest.raises(ValueError, match="spot finding"):
        AcquireSettings(cell=CELL, space_group="P1", spots=False)
    with pytest.raises(ValueError, match="redml codec"):
        AcquireSettings(cell=CELL, space_group="P1", codec="bslz4")


def _acquire_stills(tmp_path, stills):
    """The stills fed to an acquisition with the known cell; returns it once they are written."""
    from redml_reduce.acquire import AcquireSettings, Acquisition
    from redml_reduce.acquire import protocol

    sim, frames, _ = stills
    acq = Acquisition(tmp_path / "run.nxs", AcquireSettings(q=4, workers=1, cell=CELL, space_group="P43212"))
    acq.feed(protocol.encode_start(sim.detector.shape, "uint16", sim.geometry, number_of_images=len(frames)))
    for i, f in enumerate(frames):
        acq.feed(protocol.encode_image(f, i))
    acq.feed(protocol.encode_end())
    assert acq.wait(120)
    return acq


def test_dashboard_shows_indexing(tmp_path, stills):
    """The page shows the indexing rate of the hits and the median cell (headless chromium)."""
    from test_dashboard import chromium
    from redml_reduce.acquire.dashboard import Dashboard

    acq = _acquire_stills(tmp_path, stills)
    try:
        with Dashboard(acq.stats, "127.0.0.1", 0) as dash:
            dom = chromium(tmp_path, dash.url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'id="indexing_rate">67 %<' in dom.stdout
        assert 'id="cell">79.10 79.10 37.90 90.0 90.0 90.0<' in dom.stdout
    finally:
        acq.close()


def test_cli_acquire_cell_and_space_group(tmp_path, stills):
    """redml acquire --cell --space-group: the stream's hits are indexed (the summary's
    indicators) and the file records the kinds."""
    from redml_reduce.acquire.sender import StreamSender
    from redml_reduce.cli import main as cli_main

    sim, frames, truth = stills
    out, summary = tmp_path / "run.nxs", tmp_path / "summary.json"
    with StreamSender("tcp://127.0.0.1:*") as sender:
        def send():  # the sender's socket is used by this thread alone from here on
            sender.start(sim.detector.shape, "uint16", sim.geometry, number_of_images=len(frames))
            for i, f in enumerate(frames):
                sender.image(f, i)
            sender.end()

        t = threading.Thread(target=send, daemon=True)
        t.start()
        code = cli_main(["acquire", "--connect", sender.endpoint, "--out", str(out), "-q", "4", "--workers", "2",
                         "--cell", ",".join(map(str, CELL)), "--space-group", "P43212", "--json", str(summary),
                         "--quiet", "--wait", "60"])
        t.join(60)
    assert code == 0
    ind = json.loads(summary.read_text())["indicators"]
    n = sum(a is not None for a in truth)
    assert ind["frames_indexed"] == n and ind["indexing_rate_total"] == n / (n + 1)
    assert read_roi_kinds(out).count("lattice") == n


def test_master_file_leaves_the_data_files_kinds(tmp_path, stills):
    """A master over receivers' data files does not take one data file's per-frame kinds as
    its own (they are rows of that file, not of the series' image ids)."""
    from redml_reduce.acquire.master import write_master

    _acquire_stills(tmp_path, stills).close()
    write_master(tmp_path / "m.nxs", [tmp_path / "run.nxs"])
    assert len(read_roi_kinds(tmp_path / "run.nxs")) == len(stills[1])
    with h5py.File(tmp_path / "m.nxs", "r") as f:
        assert "entry/instrument" in f and "entry/redml" not in f


def test_a_failing_indexer_loses_no_frame(tmp_path, stills, monkeypatch):
    """Whatever the indexer raises, the hit is stored (as a hit that did not index)."""
    from redml_reduce.acquire import worker

    def broken(*args, **kw):
        raise RuntimeError("broken indexer")

    monkeypatch.setattr(worker, "index_still", broken)
    acq = _acquire_stills(tmp_path, stills)
    acq.close()
    truth = stills[2]
    assert acq.series[0].summary["counts"]["written"] == len(truth)
    assert read_roi_kinds(tmp_path / "run.nxs") == ["hit" if a is not None else "blank" for a in truth[:-1]] + ["hit"]
