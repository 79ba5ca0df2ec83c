"""Lattice-aware reduction (issue 21): reflection prediction against DIALS, crystals from
DIALS .expt and CrystFEL .stream files, the "lattice" ROI source, the per-frame policy and
recompress --crystals. Reference: tests/data/lattice (DIALS 3.12 on the thaumatin stills)."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import check_decoded
from redml_reduce import _core
from redml_reduce.background import BeamGeometry
from redml_reduce.cli import main as cli_main
from redml_reduce.lattice import Crystal, LatticeSettings, lattice_roi, predict, read_crystals, read_expt
from redml_reduce.lattice.stream import HC_EV_A, parse_stream
from redml_reduce.pipeline import encode_by_policy, is_source, resolve_roi
from redml_reduce.recompress import recompress

DATA = Path(__file__).parent / "data"
EXPT = DATA / "lattice" / "thaumatin_integrated.expt"
PILATUS_SHAPE = (2527, 2463)


@pytest.fixture(scope="module")
def dials():
    """(crystal table, DIALS's predictions): the two indexed thaumatin stills."""
    with np.load(DATA / "lattice" / "thaumatin_predictions.npz") as z:
        ref = {k: z[k] for k in z.files}
    return read_expt(EXPT), ref


def _crystal(table, name):
    (crystal,) = table.for_frame(DATA / "thaumatin" / name, 0)
    return crystal


@pytest.mark.parametrize("j", [0, 1])
def test_positions_match_dials(dials, j):
    """Every reflection DIALS integrated is predicted, where DIALS predicts it (xyzcal.px,
    parallax of the 450 um silicon sensor included: without it positions differ by up to 0.66 px)."""
    table, ref = dials
    crystal = _crystal(table, str(ref["images"][j]))
    xy, hkl = predict(crystal, None, PILATUS_SHAPE)
    mine = {tuple(h): p for h, p in zip(hkl.tolist(), xy)}
    sel = ref["image"] == j
    assert sel.sum() > 1500
    missing = [tuple(h) for h in ref["hkl"][sel].tolist() if tuple(h) not in mine]
    assert not missing
    dist = np.array([np.hypot(*(mine[tuple(h)] - p)) for h, p in zip(ref["hkl"][sel].tolist(), ref["xy"][sel])])
    assert dist.max() < 1e-6, dist.max()
    no_parallax = Crystal(crystal.A, crystal.geometry, crystal.domain_size_a, crystal.half_mosaicity_deg)
    xy0, hkl0 = predict(no_parallax, None, PILATUS_SHAPE)
    plain = {tuple(h): p for h, p in zip(hkl0.tolist(), xy0)}
    geometric = np.array([np.hypot(*(plain[tuple(h)] - p / crystal.geometry.pixel_size_mm))
                          for h, p in zip(ref["hkl"][sel].tolist(), ref["xy_mm"][sel])])
    assert geometric.max() < 1e-6


def test_default_profile_covers_dials(dials):
    """Without the crystal's own mosaic model, the default profile still predicts every
    reflection DIALS integrates (the fraction predicted within 1 px is 1)."""
    table, ref = dials
    for j, name in enumerate(ref["images"]):
        c = _crystal(table, str(name))
        plain = Crystal(c.A, c.geometry, sensor_mu_per_mm=c.sensor_mu_per_mm, sensor_thickness_mm=c.sensor_thickness_mm)
        xy, hkl = predict(plain, None, PILATUS_SHAPE)
        mine = {tuple(h): p for h, p in zip(hkl.tolist(), xy)}
        sel = ref["image"] == j
        within = [tuple(h) in mine and np.hypot(*(mine[tuple(h)] - p)) < 1
                  for h, p in zip(ref["hkl"][sel].tolist(), ref["xy"][sel])]
        assert all(within)


def test_expt_geometry(dials):
    table, _ = dials
    c = _crystal(table, "thau_3_2_0001.cbf.bz2")
    g = c.geometry
    assert (g.beam_x, g.beam_y, g.distance_mm, g.wavelength_a) == pytest.approx((1261.61, 1306.96, 351.0, 0.96859))
    assert c.centring == "P" and c.domain_size_a == pytest.approx(899.58, abs=0.01)
    # Real-space axes from A (in redml's frame) have thaumatin's cell lengths.
    assert sorted(np.linalg.norm(np.linalg.inv(c.A), axis=1)) == pytest.approx([58.6, 58.6, 151.5], rel=0.02)
    assert table.for_frame("/elsewhere/thau_3_2_0017.cbf.bz2", 0) == []  # the blank has no crystal
    assert len(table.for_frame("/elsewhere/thau_3_2_0010.cbf.bz2", 0)) == 1  # matched by file name


def test_prediction_deterministic_and_ordered(dials):
    table, _ = dials
    c = _crystal(table, "thau_3_2_0010.cbf.bz2")
    a = predict(c, None, PILATUS_SHAPE, return_rotation=True)
    b = predict(c, None, PILATUS_SHAPE, return_rotation=True)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    hkl = a[1].astype(np.int64)
    assert np.all(np.diff((hkl[:, 0] * 1000 + hkl[:, 1]) * 1000 + hkl[:, 2]) > 0)  # h, then k, then l ascending


def test_resolution_limit_margin_and_centring(dials):
    table, _ = dials
    c = _crystal(table, "thau_3_2_0010.cbf.bz2")
    xy, hkl = predict(c, None, PILATUS_SHAPE)
    d = 1 / np.linalg.norm(hkl @ c.A.T, axis=1)
    xy3, hkl3 = predict(c, None, PILATUS_SHAPE, settings=LatticeSettings(d_min=3.0))
    assert {tuple(h) for h in hkl3.tolist()} == {tuple(h) for h, dd in zip(hkl.tolist(), d) if dd >= 3.0}
    xym, _ = predict(c, None, PILATUS_SHAPE, margin=20)
    assert len(xym) > len(xy) and (xym >= -20).all() and (xym[:, 0] < PILATUS_SHAPE[1] + 20).all()
    centred = Crystal(c.A, c.geometry, c.domain_size_a, c.half_mosaicity_deg, "I", c.sensor_mu_per_mm,
                      c.sensor_thickness_mm)
    _, hkl_i = predict(centred, None, PILATUS_SHAPE)
    assert {tuple(h) for h in hkl_i.tolist()} == {tuple(h) for h in hkl.tolist() if sum(h) % 2 == 0}


def test_enumeration_misses_nothing(dials):
    """Only l near the Ewald sphere are enumerated: the result is the wide prediction's subset
    that passes the tolerance (1/D + |r| eta/2), with nothing missing."""
    table, _ = dials
    for name in ("thau_3_2_0001.cbf.bz2", "thau_3_2_0010.cbf.bz2"):
        c = _crystal(table, name)
        xy, hkl = predict(c, None, PILATUS_SHAPE)
        wide = LatticeSettings(domain_size_a=1e-6, half_mosaicity_deg=c.half_mosaicity_deg)
        xyw, hklw, rot = predict(c, None, PILATUS_SHAPE, settings=wide, return_rotation=True)
        tol = 1 / c.domain_size_a + np.linalg.norm(hklw @ c.A.T, axis=1) * np.radians(c.half_mosaicity_deg) / 2
        got = {tuple(h) for h in hkl.tolist()}
        assert got <= {tuple(h) for h in hklw.tolist()}
        assert {tuple(h) for h in hklw[rot < tol * (1 - 1e-9)].tolist()} <= got
        assert not got & {tuple(h) for h in hklw[rot > tol * (1 + 1e-9)].tolist()}


def test_deterministic_exp():
    x = -np.concatenate([np.linspace(0, 40, 4001), [1e-300, 700.0, 744.0, 800.0]])
    got = np.array([_core.lattice_exp(float(v)) for v in x])
    assert np.allclose(got, np.exp(x), rtol=4e-16, atol=0)


def test_lattice_roi_discs(dials):
    """Every pixel whose centre lies within the radius of a prediction, and no other."""
    table, _ = dials
    c = _crystal(table, "thau_3_2_0001.cbf.bz2")
    xy, _ = predict(c, None, PILATUS_SHAPE, margin=5)
    roi = lattice_roi(PILATUS_SHAPE, None, c, radius=5)
    expected = np.zeros(PILATUS_SHAPE, bool)
    for x, y in xy:
        r0, r1 = max(int(y) - 6, 0), min(int(y) + 7, PILATUS_SHAPE[0])
        c0, c1 = max(int(x) - 6, 0), min(int(x) + 7, PILATUS_SHAPE[1])
        yy, xx = np.mgrid[r0:r1, c0:c1]
        expected[r0:r1, c0:c1] |= (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= 25
    assert roi.dtype == bool and np.array_equal(roi, expected)
    two = lattice_roi(PILATUS_SHAPE, None, [c, _crystal(table, "thau_3_2_0010.cbf.bz2")], radius=5)
    assert (two >= roi).all() and two.sum() > roi.sum()


@pytest.mark.parametrize("bad, match", [
    (dict(A=np.zeros((3, 3))), "invertible"),
    (dict(A=np.eye(3) * 1e-4), "too many reflections"),
    (dict(shape=(0, 10)), "shape"),
    (dict(settings=dict(radius=-1)), "radius"),
    (dict(settings=dict(domain_size_a=0.0)), "domain_size_a"),
])
def test_bad_arguments(bad, match):
    g = BeamGeometry(50, 50, 100, 0.1, 1.0)
    A = bad.get("A", np.eye(3) / 50)
    with pytest.raises(ValueError, match=match):
        settings = LatticeSettings(**bad["settings"]) if "settings" in bad else None
        predict(A, g, bad.get("shape", (100, 100)), settings=settings)


def test_predict_needs_geometry():
    with pytest.raises(TypeError, match="geometry"):
        predict(np.eye(3) / 50, None, (100, 100))


STREAM = """CrystFEL stream format 2.3
Generated by CrystFEL 0.10.2
----- Begin geometry file -----
photon_energy = {energy} eV
clen = {clen}
res = {res}
adu_per_photon = 1
p0/min_fs = 0
p0/max_fs = 2462
p0/min_ss = 0
p0/max_ss = 2526
p0/corner_x = {cx}
p0/corner_y = {cy}
p0/fs = {fs}
p0/ss = {ss}
----- End geometry file -----
----- Begin chunk -----
Image filename: /data/thau_master.h5
Event: //4
Image serial number: 5
hit = 1
indexed_by = xgandalf-nolatt-cell
photon_energy_eV = {energy}
average_camera_length = {clen} m
num_peaks = 0
Peaks from peak search
  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel
End of peak list
--- Begin crystal
Cell parameters 5.86 5.86 15.15 nm, 90.00 90.00 90.00 deg
astar = {astar} nm^-1
bstar = {bstar} nm^-1
cstar = {cstar} nm^-1
lattice_type = tetragonal
centering = P
unique_axis = c
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel
End of reflections
--- End crystal
----- End chunk -----
----- Begin chunk -----
Image filename: /data/thau_master.h5
Event: //5
hit = 0
indexed_by = none
----- End chunk -----
"""


def _stream(crystal, fs="+1.0x", ss="+1.0y"):
    """A hand-written stream holding `crystal` (redml frame) as CrystFEL would see it with
    the given panel axes."""
    g = crystal.geometry
    f, s = np.array([1.0, 0, 0]) * (1 if fs[0] == "+" else -1), np.array([0, 1.0, 0]) * (1 if ss[0] == "+" else -1)
    R = np.stack([f, s, [0, 0, 1.0]])
    A_lab = R.T @ crystal.A * 10  # CrystFEL's frame, nm^-1
    # corner + beam * (f, s) = 0 in the lab x, y of the geometry file
    corner = -(g.beam_x * f[:2] + g.beam_y * s[:2])
    vec = lambda v: " ".join(f"{x:+.12e}" for x in v)  # noqa: E731
    return STREAM.format(energy=f"{HC_EV_A / g.wavelength_a:.10f}", clen=f"{g.distance_mm / 1000:.9f}",
                         res=f"{1000 / g.pixel_size_mm:.10f}", cx=f"{corner[0]:.6f}", cy=f"{corner[1]:.6f}", fs=fs,
                         ss=ss, astar=vec(A_lab[:, 0]), bstar=vec(A_lab[:, 1]), cstar=vec(A_lab[:, 2]))


@pytest.mark.parametrize("fs, ss", [("+1.0x", "+1.0y"), ("-1.0x", "+1.0y"), ("+1.0x", "-1.0y")])
def test_stream_crystals(dials, fs, ss):
    """A stream's crystal predicts the reflections of the DIALS crystal it was written from,
    whatever the panel's axes in CrystFEL's frame."""
    table, _ = dials
    c = _crystal(table, "thau_3_2_0001.cbf.bz2")
    plain = Crystal(c.A, c.geometry)
    entries = parse_stream(_stream(plain, fs, ss))
    assert [(p, i) for p, i, _ in entries] == [("/data/thau_master.h5", 4)]
    got = entries[0][2]
    g0, g1 = plain.geometry, got.geometry
    assert (g1.beam_x, g1.beam_y, g1.distance_mm, g1.pixel_size_mm, g1.wavelength_a) == pytest.approx(
        (g0.beam_x, g0.beam_y, g0.distance_mm, g0.pixel_size_mm, g0.wavelength_a), rel=1e-9)
    assert np.allclose(got.A, plain.A, rtol=0, atol=1e-12)
    xy0, hkl0 = predict(plain, None, PILATUS_SHAPE)
    xy1, hkl1 = predict(got, None, PILATUS_SHAPE)
    assert np.array_equal(hkl0, hkl1) and np.abs(xy0 - xy1).max() < 1e-6


def test_stream_file(tmp_path, dials):
    table, _ = dials
    path = tmp_path / "run.stream"
    path.write_text(_stream(Crystal(_crystal(table, "thau_3_2_0001.cbf.bz2").A,
                                    _crystal(table, "thau_3_2_0001.cbf.bz2").geometry)))
    t = read_crystals(path)
    assert len(t) == 1 and len(t.for_frame("/data/thau_master.h5", 4)) == 1 and t.for_frame("/x/thau_master.h5", 5) == []
    (tmp_path / "bad.stream").write_text("not a stream")
    with pytest.raises(ValueError, match="CrystFEL stream"):
        read_crystals(tmp_path / "bad.stream")
    broken = _stream(Crystal(np.eye(3) / 50, BeamGeometry(1, 1, 100, 0.1, 1))).replace("cstar", "dstar")
    with pytest.raises(ValueError, match="without astar"):
        parse_stream(broken)


def test_expt_errors(tmp_path):
    (tmp_path / "a.expt").write_text("{}")
    with pytest.raises(ValueError, match="ExperimentList"):
        read_expt(tmp_path / "a.expt")
    d = json.loads(EXPT.read_text())
    d["detector"][0]["panels"][0]["slow_axis"] = [0.0, -0.7, 0.7]  # tilted 45 degrees
    (tmp_path / "b.expt").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="normal to the beam"):
        read_expt(tmp_path / "b.expt")
    d = json.loads(EXPT.read_text())
    del d["crystal"]
    (tmp_path / "c.expt").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="incomplete"):
        read_expt(tmp_path / "c.expt")
    with pytest.raises(ValueError, match=".expt or a CrystFEL"):
        read_crystals(tmp_path / "c.txt")


def test_lattice_roi_source(thaumatin, dials):
    """roi="lattice": the finder's region or the crystals' discs; encode with it equals
    encode with that map; no crystals: the finder's region alone."""
    table, _ = dials
    c = _crystal(table, "thau_3_2_0001.cbf.bz2")
    frame = thaumatin[1]
    assert is_source("lattice") and not is_source("lattice:cnn")
    finder = resolve_roi(frame, "lattice", crystals=[])
    region = resolve_roi(frame, "lattice", crystals=[c])  # a LatticeRegion: the models go in the chunk
    discs = lattice_roi(frame.shape, None, c)
    assert np.array_equal(region.base, finder) and np.array_equal(region.mask(frame.shape), finder | discs)
    assert discs.sum() > 100000 and (discs & ~finder).any()
    chunk = rr.encode(frame, q=8, recon="draw", roi="lattice", crystals=[c])
    assert chunk == rr.encode(frame, q=8, recon="draw", roi=region)
    back = rr.decode(chunk)
    check_decoded(frame, back, chunk, 8)
    assert np.array_equal(back[discs], frame[discs])
    # The mask form of the same region decodes to the same pixels, in a larger chunk.
    as_mask = rr.encode(frame, q=8, recon="draw", roi=finder | discs)
    assert rr.decode(as_mask).tobytes() == back.tobytes() and len(as_mask) > len(chunk)


def test_policy_kinds(thaumatin, dials):
    table, _ = dials
    s = rr.CodecSettings(q=8)
    chunk, kind = encode_by_policy(thaumatin[1], s, table.for_frame("thau_3_2_0001.cbf.bz2", 0))
    assert kind == "lattice" and rr.inspect(chunk)["recon"] == "draw"
    chunk, kind = encode_by_policy(thaumatin[1], s, [])
    assert kind == "hit" and rr.inspect(chunk)["recon"] == "dither"  # midpoint, as chunks store it
    chunk, kind = encode_by_policy(thaumatin[17], s, [])
    assert kind == "blank" and rr.inspect(chunk)["recon"] == "draw"
    chunk, kind = encode_by_policy(thaumatin[17], rr.CodecSettings(q=0), [])
    assert rr.decode(chunk).tobytes() == thaumatin[17].tobytes()


def test_recompress_crystals(tmp_path, dials, thaumatin):
    """recompress --crystals on the three stills: the indexed frames keep every predicted
    reflection's disc (and the finder's spots) byte for byte, the rest within its bound;
    the blank is drawn."""
    src = tmp_path / "src"
    src.mkdir()
    for n in (1, 10, 17):
        shutil.copy(DATA / "thaumatin" / f"thau_3_2_{n:04d}.cbf.bz2", src)
    out = tmp_path / "out"
    report = recompress([src], out, q=8, workers=0, crystals=EXPT)
    (row,) = report.rows
    assert row["status"] == "done", row["error"]
    assert row["frames_by_kind"] == {"lattice": 2, "hit": 0, "blank": 1}
    assert "crystals" in report.settings
    table, _ = dials
    with h5py.File(row["output"], "r") as f:
        d = f["entry/data/data"]
        for i, n in enumerate((1, 10, 17)):
            chunk = bytes(d.id.read_direct_chunk((i, 0, 0))[1])
            back = d[i]
            check_decoded(thaumatin[n], back, chunk, 8)
            crystals = table.for_frame(f"thau_3_2_{n:04d}.cbf.bz2", 0)
            if crystals:
                discs = lattice_roi(back.shape, None, crystals)
                assert rr.exact_mask(chunk)[discs].all()
                assert back[discs].tobytes() == thaumatin[n][discs].tobytes()
            assert rr.inspect(chunk)["recon"] == "draw"
    # The command line, resumed: the same settings and crystals are skipped.
    assert cli_main(["recompress", str(src), "--out", str(out), "-q", "8", "--workers", "0",
                     "--crystals", str(EXPT)]) == 0
    rows = json.loads((out / "recompress-report.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["skipped"]
