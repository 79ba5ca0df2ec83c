"""The lattice in the chunk (issue 21 item 5, docs/format.md "Lattice region"): a chunk may store
the crystal models whose predicted discs it keeps exact, instead of a run-length mask of the
discs; the decoder (the extension and the HDF5 plugin, one predictor: csrc/lattice.cpp) paints
the same discs. Reference: DIALS's crystal of thaumatin still 1 (tests/data/lattice)."""
import platform
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from chunkforge import Chunk, raw_stream, runs, xxh3
from helpers import check_decoded, poisson_frame
from redml_reduce.background import BeamGeometry
from redml_reduce.codec import lattice_records
from redml_reduce.lattice import Crystal, LatticeRegion, LatticeSettings, lattice_roi, read_expt
from redml_reduce.pipeline import _finder_roi, encode_by_policy

DATA = Path(__file__).parent / "data"
EXPT = DATA / "lattice" / "thaumatin_integrated.expt"
LATTICE = 5  # section type

# A small synthetic detector with a crystal whose c* lies along the beam: its hk0 zone lands
# around the beam centre (about 40 reflections on 200 x 240 pixels).
GEOMETRY = BeamGeometry(beam_x=117.3, beam_y=96.8, distance_mm=80.0, pixel_size_mm=0.172, wavelength_a=1.0)


def small_crystals():
    a = np.diag([1 / 61.0, 1 / 67.0, 1 / 90.0])
    c, s = np.cos(0.3), np.sin(0.3)
    tilt = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    second = np.array([[1, 0, 0], [0, np.cos(0.02), -np.sin(0.02)], [0, np.sin(0.02), np.cos(0.02)]]) @ tilt
    return [Crystal(tilt @ a), Crystal(second @ a * 1.1, centring="I", sensor_mu_per_mm=3.9, sensor_thickness_mm=0.45)]


@pytest.fixture(scope="module")
def thaumatin_lattice(thaumatin):
    """(frame, crystals, finder region) of thaumatin still 1."""
    crystals = read_expt(EXPT).for_frame("thau_3_2_0001.cbf.bz2", 0)
    frame = thaumatin[1]
    return frame, crystals, _finder_roi(frame, None, 2, 3.0)[1]


def test_model_form_decodes_as_the_mask_form(thaumatin_lattice):
    """The same region as a mask (lattice_roi | finder) and as the models: the same exact map,
    the same decoded pixels byte for byte, a smaller chunk; the models read back as written."""
    frame, crystals, finder = thaumatin_lattice
    settings = rr.CodecSettings(q=8, recon="draw")
    region = LatticeRegion(crystals, base=finder)
    model = rr.encode(frame, settings=settings, roi=region)
    mask = rr.encode(frame, settings=settings, roi=region.mask(frame.shape))
    assert rr.inspect(model)["lattice_crystals"] == 1 and rr.inspect(mask)["lattice_crystals"] == 0
    assert np.array_equal(rr.exact_mask(model), rr.exact_mask(mask))
    back = rr.decode(model)
    assert back.tobytes() == rr.decode(mask).tobytes()
    check_decoded(frame, back, model, 8)
    assert len(model) < len(mask)
    records, centrings = lattice_records(model)
    want, want_c = region.records()
    assert records.tobytes() == want.tobytes() and centrings == want_c
    assert lattice_records(mask)[0].shape == (0, 21)


def test_decoder_region_is_lattice_roi(rng):
    """With nothing else exact (the draw has no low-count rule; no markers; base empty), the
    decoder's exact map is lattice_roi's map pixel for pixel, for two crystals (centring I,
    parallax); the chunk's runs section holds no exact pixel."""
    frame = poisson_frame(rng, 5.0, (200, 240))
    crystals = small_crystals()
    settings = LatticeSettings(radius=3.5)
    discs = lattice_roi(frame.shape, GEOMETRY, crystals, 3.5, settings=settings)
    assert 1000 < discs.sum() < frame.size // 2
    chunk = rr.encode(frame, q=8, recon="draw", roi=LatticeRegion(crystals, GEOMETRY, settings,
                                                                   base=np.zeros(frame.shape, bool)))
    assert np.array_equal(rr.exact_mask(chunk), discs)
    assert rr.inspect(chunk)["n_exact"] == discs.sum()
    assert Chunk.parse(chunk).find(2).raw_size == len(runs(200 * 240))  # one run, of non-exact pixels
    back = rr.decode(chunk)
    assert back[discs].tobytes() == frame[discs].tobytes()
    as_mask = rr.encode(frame, q=8, recon="draw", roi=discs)
    assert back.tobytes() == rr.decode(as_mask).tobytes()


def test_crystal_margin_widens_its_own_discs(rng):
    """A crystal's margin_px (a lattice the indexer is less sure of) widens its discs alone: the
    exact map is lattice_roi's with radius + margin for it and radius for the other, the chunk
    records each crystal's radius, and the decoder predicts the same map."""
    frame = poisson_frame(rng, 5.0, (200, 240))
    plain, other = small_crystals()
    wide = replace(other, margin_px=2.0)
    settings = LatticeSettings(radius=3.5)
    want = lattice_roi(frame.shape, GEOMETRY, plain, 3.5) | lattice_roi(frame.shape, GEOMETRY, other, 5.5)
    assert want.sum() > lattice_roi(frame.shape, GEOMETRY, [plain, other], 3.5).sum()
    assert np.array_equal(lattice_roi(frame.shape, GEOMETRY, [plain, wide], 3.5), want)
    region = LatticeRegion([plain, wide], GEOMETRY, settings, base=np.zeros(frame.shape, bool))
    assert np.array_equal(region.mask(frame.shape), want)
    chunk = rr.encode(frame, q=8, recon="draw", roi=region)
    assert np.array_equal(rr.exact_mask(chunk), want)
    assert lattice_records(chunk)[0][:, 20].tolist() == [3.5, 5.5]
    with pytest.raises(ValueError):
        replace(other, margin_px=-1.0)


@pytest.mark.parametrize("q", [0, 2, 8])
def test_plugin_decodes_model_chunks(tmp_path, thaumatin_lattice, q):
    """A chunk written by the extension with the models (direct chunk write) reads through the
    HDF5 plugin (h5py) to the extension's pixels, byte for byte; lossless stays lossless."""
    frame, crystals, finder = thaumatin_lattice
    chunk = rr.encode(frame, q, recon="draw" if q else "midpoint", roi=LatticeRegion(crystals, base=finder))
    assert rr.inspect(chunk)["lattice_crystals"] == 1
    path = tmp_path / "lattice.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(1,) + frame.shape, dtype=frame.dtype, chunks=(1,) + frame.shape,
                             **rr.Redml(q))
        d.id.write_direct_chunk((0, 0, 0), chunk)
    with h5py.File(path, "r") as f:
        through_plugin = f["data"][0]
    back = rr.decode(chunk)
    assert through_plugin.tobytes() == back.tobytes()
    if q == 0:
        assert back.tobytes() == frame.tobytes()


def test_policy_writes_the_model_form(thaumatin_lattice):
    """encode_by_policy (the writer, recompress --crystals and acquire --cell encode through it)
    stores an indexed frame's crystals, not their discs' mask."""
    frame, crystals, _ = thaumatin_lattice
    chunk, kind = encode_by_policy(frame, rr.CodecSettings(q=8), crystals)
    assert kind == "lattice" and rr.inspect(chunk)["lattice_crystals"] == 1
    discs = lattice_roi(frame.shape, None, crystals)
    assert rr.exact_mask(chunk)[discs].all() and rr.decode(chunk)[discs].tobytes() == frame[discs].tobytes()


def lattice_section(records, centrings, region) -> bytes:
    """The section's raw bytes as docs/format.md lays them out, from Python: head (layout 1,
    count, reserved, XXH3-64 of the region map), then one 176-byte record per crystal."""
    out = struct.pack("<BBHQ", 1, len(centrings), 0, xxh3(np.ascontiguousarray(region, np.uint8).tobytes()))
    for rec, c in zip(records, centrings):
        out += np.asarray(rec, "<f8").tobytes() + c.encode() + bytes(7)
    return out


@pytest.fixture
def small_chunk(rng):
    """(chunk, region, parsed chunk) of a synthetic frame with the two small crystals."""
    frame = poisson_frame(rng, 5.0, (200, 240))
    region = LatticeRegion(small_crystals(), GEOMETRY, LatticeSettings(radius=3.5))
    chunk = rr.encode(frame, q=8, recon="draw", roi=region)
    return chunk, region, Chunk.parse(chunk)


def test_section_layout_and_flags(small_chunk):
    """The stored section is byte for byte the documented layout (the hash: XXH3-64 of Python's
    lattice_roi map), and it is flagged required: a decoder that does not know it refuses the
    chunk ("newer decoder") rather than decoding a frame without the discs."""
    chunk, region, parsed = small_chunk
    sec = parsed.find(LATTICE)
    assert sec.flags & 1 and sec.elem == 1 and sec.raw_size == 12 + 2 * 176
    records, centrings = region.records()
    want = lattice_section(records, centrings, region.mask((200, 240)))
    forged = Chunk(parsed.header, [s if s.type != LATTICE else replace(s, data=raw_stream(want))
                                   for s in parsed.sections]).build()
    assert rr.decode(forged).tobytes() == rr.decode(chunk).tobytes()  # accepted: the same region


def test_tampered_models_are_refused(small_chunk):
    """A lattice section whose crystals do not predict the region the encoder stored (its hash)
    is refused, as is a malformed one; never a silently different frame."""
    chunk, region, parsed = small_chunk
    records, centrings = region.records()
    mask = region.mask((200, 240))

    def forged(body: bytes) -> bytes:
        secs = [s if s.type != LATTICE else replace(s, data=raw_stream(body), raw_size=len(body))
                for s in parsed.sections]
        return Chunk(parsed.header, secs).build()

    moved = records.copy()
    moved[0, 9] += 3.0  # beam_x of the first crystal
    with pytest.raises(rr.RedmlError, match="differs from the encoder"):
        rr.decode(forged(lattice_section(moved, centrings, mask)))
    good = lattice_section(records, centrings, mask)
    with pytest.raises(rr.RedmlError, match="lattice"):
        rr.decode(forged(good[:1] + bytes([3]) + good[2:]))  # count does not match the size
    with pytest.raises(rr.RedmlError, match="lattice"):
        rr.decode(forged(lattice_section(records, "PZ", mask)))  # unknown centring
    with pytest.raises(rr.RedmlError, match="lattice"):
        rr.exact_mask(forged(bytes([2]) + good[1:]))  # unknown layout
    with pytest.raises(rr.RedmlError, match="lattice"):
        rr.decode(forged(good + bytes(3)))  # wrong size
    everything = runs(0, 200 * 240)  # mask runs that cover the discs too
    secs = [s if s.type != 2 else replace(s, data=raw_stream(everything), raw_size=len(everything))
            for s in parsed.sections]
    with pytest.raises(rr.RedmlError, match="overlap"):
        rr.decode(Chunk(parsed.header, secs).build())
    singular = records.copy()
    singular[1, :9] = 0
    with pytest.raises(rr.RedmlError, match="invertible"):
        rr.decode(forged(lattice_section(singular, centrings, mask)))


def test_hostile_models_cost_bounded_work(small_chunk, thaumatin_lattice):
    """Models that would search 1e8 index pairs, or paint discs over the frame thousands of
    times, are refused at once (decoder: corrupt chunk; encoder: bad argument), not run for
    minutes."""
    chunk, region, parsed = small_chunk
    records, centrings = region.records()
    huge = records.copy()
    huge[0, :9] = np.diag([1 / 16000.0, 1 / 16000.0, 1.0]).ravel()  # 1e8 (h, k) pairs, few l
    body = lattice_section(huge, centrings, region.mask((200, 240)))
    secs = [s if s.type != LATTICE else replace(s, data=raw_stream(body), raw_size=len(body)) for s in parsed.sections]
    with pytest.raises(rr.RedmlError, match="work limit"):
        rr.decode(Chunk(parsed.header, secs).build())
    frame, crystals, _ = thaumatin_lattice
    with pytest.raises(ValueError, match="too large to paint"):
        rr.encode(frame, q=8, recon="draw", roi=LatticeRegion(crystals, settings=LatticeSettings(radius=1e4)))


def test_lattice_region_arguments(rng):
    frame = poisson_frame(rng, 5.0, (64, 64))
    with pytest.raises(ValueError, match="255"):
        LatticeRegion([np.eye(3) / 50] * 256, GEOMETRY)
    with pytest.raises(ValueError, match="invertible"):
        rr.encode(frame, q=2, roi=LatticeRegion([np.zeros((3, 3))], GEOMETRY))
    with pytest.raises(TypeError, match="BeamGeometry"):
        rr.encode(frame, q=2, roi=LatticeRegion([np.eye(3) / 50]))
    # No crystals: the base region (or the built-in finder) alone, an ordinary chunk.
    assert rr.encode(frame, q=2, roi=LatticeRegion([], GEOMETRY)) == rr.encode(frame, q=2)


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _builds():
    """(compiler, flags) of stand-alone builds: other compilers, optimization levels, and an
    instruction set with FMA (contraction off, as the project's builds)."""
    out = []
    for cxx, level in (("g++", "-O0"), ("clang++", "-O2")):
        if shutil.which(cxx):
            out.append((cxx, [level]))
            if platform.machine() == "x86_64" and {"avx2", "fma", "bmi2"} <= _cpu_flags():
                out.append((cxx, ["-O3", "-march=x86-64-v3"]))
    return out


@pytest.mark.parametrize("build", _builds(), ids=lambda b: " ".join([b[0], *b[1]]))
def test_prediction_same_bits_across_builds(tmp_path, thaumatin_lattice, build):
    """Other compilers, optimization levels and SIMD instruction sets (with -ffp-contract=off,
    as setup.py and the Makefile build the core) predict the region whose hash the extension's
    encoder stored, for DIALS's thaumatin crystal (parallax: deterministic_exp) and the two
    synthetic ones (centring I)."""
    cxx, flags = build
    root = Path(__file__).resolve().parent.parent
    exe = tmp_path / "host"
    subprocess.run([cxx, "-std=c++17", *flags, "-ffp-contract=off", f"-I{root / 'csrc'}", "-DREDML_API=",
                    str(root / "tests" / "lattice_region_host.cpp"), str(root / "csrc" / "lattice.cpp"),
                    str(root / "csrc" / "lattice_chunk.cpp"), "-lxxhash", "-o", str(exe)], check=True)
    frame, crystals, _ = thaumatin_lattice
    cases = [(frame.shape, LatticeRegion(crystals)),
             ((200, 240), LatticeRegion(small_crystals(), GEOMETRY, LatticeSettings(radius=3.5)))]
    for shape, region in cases:
        records, centrings = region.records()
        expected = xxh3(region.mask(shape).astype(np.uint8).tobytes())
        chunk = rr.encode(np.zeros(shape, np.uint16), q=2, roi=region)
        rr.decode(chunk)  # the decoder checks the region it predicts against the stored hash
        assert lattice_section(records, centrings, region.mask(shape)) in chunk  # the hash is `expected`
        text = f"{shape[0]} {shape[1]} {len(centrings)}\n" + "".join(
            " ".join(float(v).hex() for v in rec) + f" {c}\n" for rec, c in zip(records, centrings))
        out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
        assert int(out, 16) == expected, (cxx, flags)


def test_writer_records_lattice_kind(tmp_path, rng):
    """FrameWriter records "lattice" for a frame written with a LatticeRegion and for a chunk
    that stores crystals (the chunk says which region kept it); the file reads back through
    the plugin with the discs exact."""
    from redml_reduce.formats.writer import read_roi_kinds

    frame = poisson_frame(rng, 5.0, (200, 240))
    region = LatticeRegion(small_crystals(), GEOMETRY, LatticeSettings(radius=3.5))
    path = tmp_path / "w.h5"
    with rr.FrameWriter(path, frame.shape, "uint16", q=8, recon="draw") as w:
        w.write(frame, roi=region)
        w.write_chunk(rr.encode(frame, q=8, recon="draw", roi=region))
        w.write(frame, roi=LatticeRegion([], GEOMETRY, base=np.zeros(frame.shape, bool)))
        w.write_chunk(rr.encode(frame, q=8))
    assert read_roi_kinds(path) == ["lattice", "lattice", "map", "unknown"]
    discs = region.mask(frame.shape)
    with h5py.File(path, "r") as f:
        for i in (0, 1):
            assert f["entry/data/data"][i][discs].tobytes() == frame[discs].tobytes()


def test_every_build_keeps_the_floating_point_rules():
    """The extension and the plugin (setup.py, release and debug flags) and the fuzz build
    (Makefile) compile the predictor without FMA contraction or fast-math, and the predictor
    is part of the plugin's sources."""
    import ast
    import re

    root = Path(__file__).resolve().parent.parent
    tree = ast.parse((root / "setup.py").read_text())
    flag_lists = [ast.literal_eval(n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "CFLAGS" for t in n.targets)]
    assert len(flag_lists) == 2  # release and REDML_DEBUG
    for flags in flag_lists:
        assert "-ffp-contract=off" in flags and "-ffast-math" not in flags and not any(f.startswith("-march") for f in flags)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") in
             ("Pybind11Extension", "Extension")]
    assert len(calls) == 2
    for call in calls:  # both artifacts take CFLAGS (the plugin: CFLAGS + a standard)
        args = next(k.value for k in call.keywords if k.arg == "extra_compile_args")
        assert "CFLAGS" in ast.unparse(args)
    fuzz = re.search(r"^FUZZ_CXXFLAGS :=(.*)$", (root / "Makefile").read_text(), re.M).group(1)
    assert "-ffp-contract=off" in fuzz and "fast-math" not in fuzz
    codec_src = re.search(r"^REDML_CODEC_SRC :=(.*)$", (root / "csrc" / "sources.mk").read_text(), re.M).group(1)
    assert {"csrc/lattice.cpp", "csrc/lattice_chunk.cpp"} <= set(codec_src.split())
