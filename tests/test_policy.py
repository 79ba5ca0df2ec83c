"""The per-frame lattice policy (issue 21 item 4) in FrameWriter: crystals= encodes each frame
by redml_reduce.pipeline.encode_by_policy and the file records which region kept each frame
(/entry/redml/roi_kind). Reference: the thaumatin stills and DIALS's crystals of two of them."""
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import check_decoded, poisson_frame
from redml_reduce.formats.writer import KIND_PATH, ROI_KINDS, read_roi_kinds
from redml_reduce.lattice import CrystalTable, lattice_roi, read_expt
from redml_reduce.pipeline import encode_by_policy

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
