"""The HDF5 filter: h5py, direct chunk write, and C tools through HDF5_PLUGIN_PATH."""
import os
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

import redml_reduce as rr
from helpers import ALL_DTYPES, bound_map, poisson_frame

H5DUMP = shutil.which("h5dump")
H5REPACK = shutil.which("h5repack")
PLUGIN_ENV = dict(os.environ, HDF5_PLUGIN_PATH=rr.PLUGIN_PATH)


def frames_of(rng, dtype, n=3, shape=(60, 70), mu=25.0):
    return np.stack([poisson_frame(rng, mu, shape, dtype, spots=3) for _ in range(n)])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_create_dataset_lossless(tmp_path, rng, dtype):
    frames = frames_of(rng, dtype)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=0))
    with h5py.File(path) as f:
        d = f["data"]
        assert d.id.get_create_plist().get_filter(0)[0] == rr.FILTER_ID
        assert d[...].tobytes() == frames.tobytes()
        assert d.id.get_storage_size() < frames.nbytes


def test_create_dataset_lossy_within_bound(tmp_path, rng):
    frames = frames_of(rng, "uint16", mu=60.0)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=2.0))
    with h5py.File(path) as f:
        d = f["data"]
        for i in range(len(frames)):
            back = d[i]
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            err = np.abs(back.astype(float) - frames[i])
            assert (err <= bound_map(chunk, 2.0) + 1e-9).all()
            assert err.max() > 0  # it is lossy


@pytest.mark.parametrize("q", [0, 1.0, "sparse"])
def test_direct_chunk_write_equals_filter(tmp_path, rng, q):
    frames = frames_of(rng, "int32")
    path = tmp_path / "f.h5"
    kw = rr.Redml(q=q)
    with h5py.File(path, "w") as f:
        a = f.create_dataset("filtered", data=frames, chunks=(1,) + frames.shape[1:], **kw)
        b = f.create_dataset("direct", shape=frames.shape, dtype=frames.dtype, chunks=(1,) + frames.shape[1:], **kw)
        for i, fr in enumerate(frames):
            b.id.write_direct_chunk((i, 0, 0), rr.encode(fr, q))
    with h5py.File(path) as f:
        for i in range(len(frames)):
            fa = f["filtered"].id.read_direct_chunk((i, 0, 0))
            fb = f["direct"].id.read_direct_chunk((i, 0, 0))
            assert fa == fb
        assert np.array_equal(f["filtered"][...], f["direct"][...])
        assert np.array_equal(f["direct"][1], rr.decode(rr.encode(frames[1], q)))


def test_multi_frame_chunks_refused(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises((ValueError, OSError), match="a chunk must hold one frame"):
            f.create_dataset("data", shape=(4, 8, 8), dtype="u2", chunks=(2, 8, 8), **rr.Redml())


def test_unsupported_dtype_refused(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises((ValueError, OSError), match="element type not supported"):
            f.create_dataset("data", shape=(4, 8, 8), dtype="f8", chunks=(1, 8, 8), **rr.Redml())


def test_invalid_settings_refused_at_creation(tmp_path):
    opts = list(rr.Redml(q=1.0).filter_options)
    opts[7] = 0  # tile 0
    with h5py.File(tmp_path / "f.h5", "w") as f:
        with pytest.raises((ValueError, OSError), match="redml filter: invalid argument: .*tile"):
            f.create_dataset("data", shape=(2, 16, 16), dtype="u2", chunks=(1, 16, 16),
                             compression=rr.FILTER_ID, compression_opts=tuple(opts))


def test_filter_is_mandatory(tmp_path):
    # h5py adds filters given by id as optional; set_local makes redml mandatory so a
    # refused frame can never be stored uncompressed behind the user's back.
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("data", shape=(2, 16, 16), dtype="u2", chunks=(1, 16, 16), **rr.Redml(q=1.0))
        fid, flags = d.id.get_create_plist().get_filter(0)[:2]
        assert fid == rr.FILTER_ID and flags & h5py.h5z.FLAG_OPTIONAL == 0


def write_corrupt(path, frames):
    """Frame 0 valid, frame 1 bit-flipped, frame 2 truncated, frame 3 foreign bytes."""
    good = [rr.encode(fr, 1.0) for fr in frames]
    flipped = bytearray(good[1])
    flipped[len(flipped) // 2] ^= 0x10
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(4,) + frames.shape[1:], dtype=frames.dtype,
                             chunks=(1,) + frames.shape[1:], **rr.Redml(q=1.0))
        d.id.write_direct_chunk((0, 0, 0), good[0])
        d.id.write_direct_chunk((1, 0, 0), bytes(flipped))
        d.id.write_direct_chunk((2, 0, 0), good[2][: len(good[2]) // 2])
        d.id.write_direct_chunk((3, 0, 0), b"\x89HDF" + bytes(300))


def test_corrupt_chunks_raise_oserror_in_h5py(tmp_path, rng):
    frames = frames_of(rng, "uint16")
    write_corrupt(tmp_path / "bad.h5", frames)
    with h5py.File(tmp_path / "bad.h5") as f:
        d = f["data"]
        assert np.array_equal(d[0], rr.decode(rr.encode(frames[0], 1.0)))
        for i in (1, 2, 3):
            with pytest.raises(OSError):
                d[i]
        assert d[0].shape == frames.shape[1:]  # still alive and reading


def test_chunk_of_other_shape_refused(tmp_path, rng):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("data", shape=(1, 16, 16), dtype="u2", chunks=(1, 16, 16), **rr.Redml())
        d.id.write_direct_chunk((0, 0, 0), rr.encode(np.ones((8, 32), np.uint16)))
        with pytest.raises(OSError):
            d[0]


def damaged_file(path, frames, damage):
    """frames stored losslessly, frame 1 damaged: 'checksum' flips a byte of its chunk on
    disk (found with get_chunk_info_by_coord), 'truncated' stores half of it, 'version'
    marks it as written by a newer format, 'shape' stores a frame of another shape."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=0))
        good = d.id.read_direct_chunk((1, 0, 0))[1]
        if damage == "truncated":
            d.id.write_direct_chunk((1, 0, 0), good[: len(good) // 2])
        elif damage == "version":
            d.id.write_direct_chunk((1, 0, 0), good[:4] + bytes([9]) + good[5:])
        elif damage == "shape":
            d.id.write_direct_chunk((1, 0, 0), rr.encode(frames[1].reshape(frames.shape[2], -1), 0))
        where = d.id.get_chunk_info_by_coord((1, 0, 0))
    if damage == "checksum":
        with open(path, "r+b") as fh:
            fh.seek(where.byte_offset + where.size - 3)
            byte = fh.read(1)[0]
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte ^ 0x10]))


# what the error says, as a regular expression
REASONS = {"checksum": "corrupt chunk: section checksum mismatch",
           "truncated": "corrupt chunk: .*(truncated|past the end|shorter than)",
           "version": "unsupported format version", "shape": "it holds a 70 x 60 uint16 frame, the dataset's frames "
                                                             "are 60 x 70 uint16"}


@pytest.mark.parametrize("damage", REASONS)
def test_h5py_says_why_a_chunk_failed(tmp_path, rng, damage):
    frames = frames_of(rng, "uint16")
    damaged_file(tmp_path / "bad.h5", frames, damage)
    with h5py.File(tmp_path / "bad.h5") as f:
        d = f["data"]
        with pytest.raises(OSError) as err:
            d[1]
        assert re.search("redml filter: cannot decode a chunk of .*" + REASONS[damage], str(err.value))
        # the intact chunks around it still read, byte for byte, and so does the next read
        assert d[0].tobytes() == frames[0].tobytes() and d[2].tobytes() == frames[2].tobytes()
        with pytest.raises(OSError, match=REASONS[damage]):
            d[1, :4, :4]
        with pytest.raises(KeyError, match="doesn't exist"):  # HDF5's own errors are unchanged
            f["missing"]


@pytest.mark.skipif(H5DUMP is None, reason="hdf5-tools not installed (make test installs it)")
def test_h5dump_says_why_a_chunk_failed(tmp_path, rng):
    frames = frames_of(rng, "uint16")
    path = tmp_path / "bad.h5"
    damaged_file(path, frames, "checksum")

    def dump(*args):
        return subprocess.run([H5DUMP, "--enable-error-stack", "-d", "/data", *args, str(path)], env=PLUGIN_ENV,
                              capture_output=True, text=True, timeout=60)

    out = dump("-s", "1,0,0", "-c", "1,4,4")
    assert re.search("redml filter: cannot decode a chunk of .*" + REASONS["checksum"], out.stderr)
    assert "(1,0,0):" not in out.stdout  # no value of the damaged frame is printed
    # HDF5's tools ignore a failed read of a subset (h5dump exits 0 there, whatever the
    # filter says); a dump of the whole dataset exits non-zero, with the reason
    whole = dump()
    assert 0 < whole.returncode < 128 and re.search(REASONS["checksum"], whole.stderr)
    intact = dump("-s", "2,0,0", "-c", "1,1,3")
    assert intact.returncode == 0 and "redml" not in intact.stderr
    assert re.findall(r"\(2,0,0\): (\d+), (\d+), (\d+)", intact.stdout) == [tuple(map(str, frames[2, 0, :3]))]


@pytest.mark.skipif(H5DUMP is None, reason="hdf5-tools not installed (make test installs it)")
def test_h5dump_reads_through_plugin_path(tmp_path, rng):
    frames = frames_of(rng, "int32")
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=0))
    out = subprocess.run([H5DUMP, "-d", "/data", "-s", "1,5,10", "-c", "1,2,6", str(path)],
                         env=PLUGIN_ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = out.stdout.split("DATA {")[1]
    values = [int(v) for v in re.findall(r"-?\d+", re.sub(r"\(\d+,\d+,\d+\):", "", data))]
    assert values == frames[1, 5:7, 10:16].ravel().tolist()
    # without the plugin path h5dump cannot decode
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env["HDF5_PLUGIN_PATH"] = str(tmp_path)
    out = subprocess.run([H5DUMP, "-d", "/data", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


@pytest.mark.skipif(H5DUMP is None, reason="hdf5-tools not installed (make test installs it)")
def test_h5dump_fails_cleanly_on_corrupt_chunks(tmp_path, rng):
    frames = frames_of(rng, "uint16")
    path = tmp_path / "bad.h5"
    write_corrupt(path, frames)

    def dump(*sel):
        return subprocess.run([H5DUMP, "-d", "/data", *sel, str(path)], env=PLUGIN_ENV, capture_output=True,
                              text=True, timeout=60)

    ok = dump("-s", "0,0,0", "-c", "1,2,2")
    assert ok.returncode == 0 and "DATA {\n      (0,0,0):" in ok.stdout, ok.stderr
    full = dump()  # the dataset holds corrupt chunks: an error exit, not a signal
    assert 0 < full.returncode < 128 and "unable to print data" in full.stderr
    for i in (1, 2, 3):
        # h5dump 1.10 exits 0 on a failed hyperslab read, but prints no values: never garbage
        sub = dump("-s", f"{i},0,0", "-c", "1,2,2")
        assert sub.returncode < 128 and f"({i},0,0):" not in sub.stdout


@pytest.mark.skipif(H5REPACK is None, reason="hdf5-tools not installed (make test installs it)")
@pytest.mark.parametrize("q", [0, 2.0])
def test_h5repack_encodes_from_c(tmp_path, rng, q):
    frames = frames_of(rng, "uint16", mu=40.0)
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:])
    arg = rr.Redml(q=q).h5repack_arg("data")
    out = subprocess.run([H5REPACK, "-f", arg, str(plain), str(packed)], env=PLUGIN_ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with h5py.File(packed) as f:
        d = f["data"]
        assert d.id.get_storage_size() < frames.nbytes / 2
        for i in range(len(frames)):
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            assert rr.inspect(chunk)["mode"] == ("lossless" if q == 0 else "quantized")
            back = d[i]
            if q == 0:
                assert back.tobytes() == frames[i].tobytes()
            else:
                assert (np.abs(back.astype(float) - frames[i]) <= bound_map(chunk, q) + 1e-9).all()
            # the C-side encoder writes exactly what the Python encoder writes
            assert chunk == rr.encode(frames[i], q)
