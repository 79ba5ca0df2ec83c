"""Corrupt and hostile chunks: every bit of the header and section table, forged fields and
lengths with valid checksums, declared sizes far beyond the chunk (no allocation bombs),
in Python, h5py, h5dump, and the plugin under valgrind (no leak per chunk).

tests/test_errors.py covers truncation at every length, one flipped bit per byte, forged
header fields and random bytes; tests/test_hdf5.py corrupt chunks in h5py and h5dump.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from chunkforge import MASK, MODEL, RAW_FLAG, Chunk, big_valid_chunk, hostile_chunks, raw_stream
from helpers import ALL_DTYPES, poisson_frame

H5DUMP = shutil.which("h5dump")
VALGRIND = shutil.which("valgrind")
PLUGIN_ENV = dict(os.environ, HDF5_PLUGIN_PATH=rr.PLUGIN_PATH, REDML_NUM_THREADS="2")


def make_frame(rng, dtype, shape=(24, 40)):
    f = poisson_frame(rng, 25.0, shape, dtype, spots=2)
    if np.dtype(dtype).kind == "f":
        f[0, :2] = (np.nan, -np.inf)
    elif np.dtype(dtype).kind == "i":
        f[1, 3] = -1
    return f


@pytest.fixture(scope="module")
def chunks():
    rng = np.random.default_rng(17)
    out = {}
    for dtype in ALL_DTYPES:
        frame = make_frame(rng, dtype)
        for q in (0, 1.5, "sparse"):
            for codec in ("rans", "zstd", "lz4"):
                out[dtype, q, codec] = rr.encode(frame, q, codec=codec, tile=8, block_elems=256)
    return out


def decodes_identically_or_raises(bad, good):
    try:
        out = rr.decode(bad)
    except rr.RedmlError:
        return
    assert out.tobytes() == rr.decode(good).tobytes(), "a forged chunk decoded into different data"


# ---- every bit of the header and section table ----

@pytest.mark.parametrize("codec", ["rans", "zstd", "lz4"])
def test_every_bit_of_header_and_table(chunks, codec):
    for (dtype, q, c), chunk in chunks.items():
        if c != codec or dtype not in ("uint16", "float32"):
            continue
        hsize = struct.unpack_from("<I", chunk, 48)[0]
        for pos in range(hsize):
            for bit in range(8):
                bad = bytearray(chunk)
                bad[pos] ^= 1 << bit
                with pytest.raises(rr.RedmlError):
                    rr.decode(bytes(bad))


# ---- forged fields and lengths, checksums recomputed ----

def forged_headers(chunk):
    c = Chunk.parse(chunk)
    h = c.header
    n = h["height"] * h["width"]
    edits = [("nsec", h["nsec"] - 1, False), ("nsec", h["nsec"] + 1, False), ("header_size", h["header_size"] + 32, False),
             ("mu_min", float("nan"), True), ("mu_min", -1.0, True), ("mu_min", float("inf"), True),
             ("gain", 0.0, True), ("q", float("inf"), True), ("tile", 0, True),
             ("block_elems", 255, True), ("block_elems", (1 << 24) + 1, True), ("block_elems", h["block_elems"] * 2, True),
             ("n_exact", h["n_exact"] + 1, True), ("n_exact", n + 1, True), ("n_exact", 2**64 - 1, True),
             ("width", h["width"] + 1, True), ("height", h["height"] - 1, True), ("width", 1 << 21, True),
             ("version", 0, True), ("dtype", 0, True), ("dtype", 6, True), ("mode", 3, True), ("codec", 0, True),
             ("codec", 4, True), ("recon", 4, True), ("reserved", 1, True)]
    for name, value, fix in edits:
        f = Chunk.parse(chunk)
        f.header[name] = value
        yield f"{name}={value}", f.build(fix_counts=fix)


def test_forged_header_fields(chunks):
    for key, chunk in chunks.items():
        for what, bad in forged_headers(chunk):
            if what.startswith("block_elems") and int(what.split("=")[1]) % 8 == 0:
                decodes_identically_or_raises(bad, chunk)  # a valid block size: same blocks if they all fit
                continue
            if what == "reserved=1" and key[1] == "sparse":
                # the read noise field (a sparse chunk's noisy background: 1.4e-45 here, too small
                # to move a value): valid, the dithered frame unchanged
                assert rr.decode(bad).tobytes() == rr.decode(chunk).tobytes()
                continue
            with pytest.raises(rr.RedmlError):
                rr.decode(bad)
                pytest.fail(f"{key}: {what} decoded")


def forged_tables(chunk):
    base = Chunk.parse(chunk)
    for i, s in enumerate(base.sections):
        edits = {
            "type": [0, 5, 1000, MODEL if s.type != MODEL else MASK],
            "elem": [0, 3, 8] + [e for e in (1, 2, 4) if e != s.elem],
            "reserved8": [1],
            "reserved16": [1],
            "raw_size": [0, s.raw_size - 1, s.raw_size + 1, s.raw_size * 2 + 8, 2**40, 2**63, 2**64 - 1],
        }
        for name, values in edits.items():
            for v in values:
                if v == getattr(s, name) or v < 0:
                    continue
                f = Chunk.parse(chunk)
                setattr(f.sections[i], name, v)
                yield f"section {i} (type {s.type}) {name}={v}", f.build()
        for flags in (0, 3, 0xFF):  # the 'required' flag and unknown flag bits
            f = Chunk.parse(chunk)
            f.sections[i].flags = flags
            yield f"section {i} flags={flags}", f.build()
        for shuffle in (0, 1, 2, 3, 255):
            f = Chunk.parse(chunk)
            f.sections[i].shuffle = shuffle
            yield f"section {i} shuffle={shuffle}", f.build()
    f = Chunk.parse(chunk)  # a section missing, duplicated, reordered
    for name, secs in [("drop first", base.sections[1:]), ("drop last", base.sections[:-1]),
                       ("duplicate", base.sections + base.sections[-1:]), ("reversed", base.sections[::-1])]:
        f.sections = secs
        yield name, f.build()


def test_forged_section_tables(chunks):
    """Forged section-table entries: refused, or (flags, shuffle of raw blocks) harmless;
    never a crash and never other data than the chunk's own."""
    for key, chunk in chunks.items():
        for what, bad in forged_tables(chunk):
            if "flags" in what or "shuffle=" in what and not what.endswith(("=3", "=255")):
                # not covered by any check: may decode, but only to the chunk's own pixels
                # when the section has only raw blocks; otherwise just no crash
                try:
                    rr.decode(bad)
                except rr.RedmlError:
                    pass
                continue
            if what == "reversed":  # sections are found by type; phases by their order
                decodes_identically_or_raises(bad, chunk)
                continue
            with pytest.raises(rr.RedmlError):
                rr.decode(bad)
                pytest.fail(f"{key}: {what} decoded")


def test_forged_block_tables(chunks):
    """Every entry of every block table (count, lengths, raw flag) forged, checksums
    recomputed: the block structure is checked, whatever the value."""
    for key, chunk in chunks.items():
        base = Chunk.parse(chunk)
        for i, s in enumerate(base.sections):
            nb = struct.unpack_from("<I", s.data, 0)[0]
            for k in range(1 + nb):
                word = struct.unpack_from("<I", s.data, 4 * k)[0]
                for v in {0, 1, word - 1, word + 1, word ^ RAW_FLAG, 0xFFFFFFFF, 0x7FFFFFFF} - {word}:
                    f = Chunk.parse(chunk)
                    d = bytearray(s.data)
                    struct.pack_into("<I", d, 4 * k, v & 0xFFFFFFFF)
                    f.sections[i].data = bytes(d)
                    with pytest.raises(rr.RedmlError):
                        rr.decode(f.build())
                        pytest.fail(f"{key}: section {i} block word {k} = {v} decoded")


# ---- declared sizes beyond the chunk: no allocation bombs ----

@pytest.mark.parametrize("codec", ["rans", "zstd", "lz4"])
def test_no_allocation_bomb(tmp_path, codec):
    """Declared sizes are checked against the frame and against the chunk's own bytes
    before anything is allocated: decoding these tiny chunks neither takes memory nor time
    (run in a fresh process to read its peak memory)."""
    cases = dict(hostile_chunks(codec))
    assert all(len(c) < 2048 for c in cases.values())
    for name, c in cases.items():
        (tmp_path / f"{len(os.listdir(tmp_path))}.bin").write_bytes(c)
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        from pathlib import Path
        import redml_reduce as rr
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = []
        for p in sorted(Path({str(tmp_path)!r}).glob("*.bin")):
            t = time.perf_counter()
            try:
                rr.decode(p.read_bytes())
                out.append("decoded")
            except rr.RedmlError as e:
                out.append(str(e))
            out[-1] = (out[-1], time.perf_counter() - t)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(dict(results=out, grew_mb=(peak - base) / 1024)))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, REDML_NUM_THREADS="2"))
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    for msg, seconds in r["results"]:
        assert msg.startswith("corrupt chunk"), msg
        assert seconds < 0.5, (msg, seconds)
    assert r["grew_mb"] < 40, r


# ---- hostile chunks in HDF5: h5py raises, the process lives, h5dump exits non-zero ----

def hostile_file(path, rng, n_valid=4, copies=1):
    """A dataset of valid frames, and one single-chunk dataset per corrupt or hostile chunk
    (h5dump goes on to the next dataset after a failed one)."""
    shape = (32, 48)
    valid = {q: [make_frame(rng, "uint16", shape) for _ in range(n_valid)] for q in (0, 1.5, "sparse")}
    bad = []
    good = rr.encode(valid[0][0], 1.5, codec="zstd", tile=8, block_elems=256)
    for _ in range(copies):
        bad.append(good[:100])
        flipped = bytearray(good)
        flipped[-3] ^= 4
        bad.append(bytes(flipped))
        for what, c in forged_headers(good):
            if what.startswith(("n_exact", "mu_min")) or what in ("block_elems=255", f"block_elems={(1 << 24) + 1}"):
                bad.append(c)
        for what, c in forged_tables(good):
            if "raw_size" in what or "type" in what:
                bad.append(c)
    with h5py.File(path, "w") as f:
        for q, frames in valid.items():
            d = f.create_dataset(f"valid_{q}", shape=(n_valid,) + shape, dtype="u2", chunks=(1,) + shape,
                                 **rr.Redml(q=q))
            for i, fr in enumerate(frames):
                d.id.write_direct_chunk((i, 0, 0), rr.encode(fr, q))
        for k, c in enumerate(bad):
            d = f.create_dataset(f"bad_{k:03d}", shape=(1,) + shape, dtype="u2", chunks=(1,) + shape, **rr.Redml(q=1.5))
            d.id.write_direct_chunk((0, 0, 0), c)
    return valid, len(bad)


def test_hostile_chunks_in_h5py(tmp_path, rng):
    valid, nbad = hostile_file(tmp_path / "h.h5", rng)
    with h5py.File(tmp_path / "h.h5") as f:
        for k in range(nbad):
            with pytest.raises(OSError):
                f[f"bad_{k:03d}"][0]
        for q, frames in valid.items():  # the process is alive and reads on
            for i, fr in enumerate(frames):
                assert np.array_equal(f[f"valid_{q}"][i], rr.decode(rr.encode(fr, q)))


@pytest.mark.skipif(H5DUMP is None, reason="hdf5-tools not installed (make test installs it)")
def test_hostile_chunks_in_h5dump(tmp_path, rng):
    _, nbad = hostile_file(tmp_path / "h.h5", rng)
    for k in range(0, nbad, max(1, nbad // 8)):
        p = subprocess.run([H5DUMP, "-d", f"/bad_{k:03d}", str(tmp_path / "h.h5")], env=PLUGIN_ENV,
                           capture_output=True, text=True, timeout=60)
        assert 0 < p.returncode < 128 and "unable to print data" in p.stderr, (k, p.returncode, p.stderr)
        assert "(0,0,0):" not in p.stdout  # no values printed
    p = subprocess.run([H5DUMP, str(tmp_path / "h.h5")], env=PLUGIN_ENV, capture_output=True, text=True, timeout=60)
    assert 0 < p.returncode < 128
    assert p.stdout.count("DATASET") == nbad + 3  # went through every dataset


def valgrind_h5dump(path):
    p = subprocess.run([VALGRIND, "--leak-check=full", "--show-leak-kinds=definite,indirect,possible",
                        "--num-callers=40", "--error-exitcode=99", H5DUMP, str(path)],
                       env=PLUGIN_ENV, capture_output=True, text=True, timeout=300)
    log = p.stderr
    errors = int(re.search(r"ERROR SUMMARY: (\d+) errors", log).group(1))
    in_use = int(re.search(r"in use at exit: ([\d,]+) bytes", log).group(1).replace(",", ""))
    lost = {k: int(re.search(rf"{k} lost: ([\d,]+) bytes", log).group(1).replace(",", "")) if
            re.search(rf"{k} lost: ([\d,]+) bytes", log) else 0 for k in ("definitely", "indirectly", "possibly")}
    return p.returncode, errors, in_use, lost, log


@pytest.mark.skipif(H5DUMP is None or VALGRIND is None, reason="hdf5-tools or valgrind missing (make test installs them)")
def test_plugin_path_under_valgrind(tmp_path, rng):
    """h5dump decodes valid, corrupt and hostile chunks through the plugin under valgrind:
    no memory error, nothing lost, and the memory still in use at exit does not grow with
    the number of chunks decoded (no leak per chunk)."""
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    hostile_file(small, rng, n_valid=2, copies=1)
    hostile_file(big, rng, n_valid=8, copies=3)
    results = [valgrind_h5dump(p) for p in (small, big)]
    for rc, errors, in_use, lost, log in results:
        assert errors == 0 and rc != 99, log[-4000:]
        assert lost == {"definitely": 0, "indirectly": 0, "possibly": 0}, log[-4000:]
        assert "libh5redml" not in "".join(re.findall(r"lost in loss record.*?\n==\d+== \n", log, re.S))
    assert results[1][2] <= results[0][2], f"memory in use at exit grew with the chunks: {results[0][2]} -> {results[1][2]}"


# ---- under a memory limit: a forged chunk is a RedmlError, never a MemoryError ----

LIMITED = textwrap.dedent("""
    import resource
    def limit_memory(extra_mb):
        # address space: what the process holds now and extra_mb more (no room for a 2^27-pixel frame)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        lim = vm + (extra_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
""")


def run_limited(body: str, extra_mb: int = 128) -> dict:
    """Runs `body` (which sets `out`) in a fresh process whose address space is limited;
    returns `out`."""
    script = LIMITED + textwrap.dedent("""
        import json, sys
        sys.path.insert(0, {tests!r})
        import numpy as np
        import redml_reduce as rr
        out = {{}}
    """).format(tests=os.path.dirname(__file__)) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, REDML_NUM_THREADS="2"))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_forged_chunks_raise_redml_errors_under_a_memory_limit():
    """Every section is checked against the header before the frame is allocated: the
    hostile chunks (2^27 pixels declared) fail with RedmlError in a process that has no room
    for their frame, from decode, inspect, exact_mask and background_model alike (the
    output used to be allocated first: MemoryError)."""
    out = run_limited("""
        from chunkforge import hostile_chunks
        chunks = [(c, name, ch) for c in ("rans", "zstd", "lz4") for name, ch in hostile_chunks(c)]
        limit_memory(128)
        for codec, name, ch in chunks:
            for fn in (rr.decode, rr.inspect, rr.exact_mask, rr.background_model):
                try:
                    fn(ch)
                    r = "accepted"
                except rr.RedmlError as e:
                    r = str(e)
                except MemoryError as e:
                    r = f"MemoryError: {e}"
                out[f"{codec} {name} {fn.__name__}"] = r
    """)
    assert len(out) == 4 * sum(len(list(hostile_chunks(c))) for c in ("rans", "zstd", "lz4"))
    for what, r in out.items():
        assert r.startswith("corrupt chunk"), (what, r)


def test_zarr_codec_checks_the_chunk_header_before_decoding(tmp_path):
    """A 2^27-pixel chunk in a 16 x 16 zarr v3 array: refused from its header, in a process
    with no room for the frame (it used to be decoded, 512 MB, then compared)."""
    pytest.importorskip("zarr")
    chunk = big_valid_chunk()
    assert len(chunk) < 512 and rr.inspect(chunk)["shape"] == (1 << 14, 1 << 13)
    (tmp_path / "chunk.bin").write_bytes(chunk)
    out = run_limited(f"""
        import zarr
        from pathlib import Path
        from redml_reduce.formats.zarr_codec import RedmlZarrCodec
        a = zarr.create_array(str(Path({str(tmp_path)!r}) / "a.zarr"), shape=(2, 16, 16), chunks=(1, 16, 16),
                              dtype="uint32", serializer=RedmlZarrCodec(q=0), compressors=None)
        a[1] = np.arange(256, dtype=np.uint32).reshape(16, 16)
        key = Path({str(tmp_path)!r}) / "a.zarr" / "c" / "0" / "0" / "0"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(Path({str(tmp_path)!r}, "chunk.bin").read_bytes())
        limit_memory(128)
        try:
            a[0]
            out["r"] = "decoded"
        except rr.RedmlError as e:
            out["r"] = str(e)
        except MemoryError as e:
            out["r"] = f"MemoryError: {{e}}"
        out["other"] = int(a[1].sum())
    """)
    assert "the array expects" in out["r"], out
    assert out["other"] == sum(range(256))


def test_tile_is_bounded_by_what_the_encoder_supports():
    """The encoder gathers one tile's pixels per thread: tile is refused above MAX_TILE by
    the settings and by the core (the HDF5 filter's path), with a clear error, not a
    MemoryError on every frame."""
    from redml_reduce import _core
    from redml_reduce.codec import MAX_TILE, CodecSettings

    frame = np.ones((40, 50), np.uint16)
    assert rr.decode(rr.encode(frame, 1, tile=MAX_TILE)).tobytes() == frame.tobytes()
    for tile in (MAX_TILE + 1, 65535):
        with pytest.raises(ValueError, match="tile"):
            CodecSettings(tile=tile).cd_values()  # the format holds it; this encoder does not write it
        kw = CodecSettings(q=1).core_kwargs()
        kw["tile"] = tile
        with pytest.raises(ValueError, match="tile"):
            _core.encode(frame, None, None, nthreads=1, **kw)
    # a chunk of a larger tile (written by hand: the format allows 65535) still decodes
    c = Chunk.parse(rr.encode(frame, "sparse"))
    c.header["tile"] = 65535
    c.find(MODEL).raw_size, c.find(MODEL).data = 8, raw_stream(struct.pack("<ff", 1.0, 1.0))
    assert rr.decode(c.build()).shape == frame.shape
