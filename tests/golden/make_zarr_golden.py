"""Writes the backward-compatibility fixtures of the numcodecs and zarr codecs (run once;
never regenerate existing files).

numcodecs_v1/: array.NN.npy (frames), codec.MM/config.json (RedmlCodec.get_config()),
codec.MM/encoded.NN.dat (the chunk) and codec.MM/decoded.NN.npy (what the decoder returned
when the fixture was written). zarr_v1/: small zarr stores written through the zarr v3
codec (redml_reduce.redml) and a zarr v2 array with the numcodecs codec, with the frames
they hold (NAME.input.npy) and what they decoded to (NAME.decoded.npy).

tests/test_zarr_codecs.py checks that today's code reads every fixture: configurations
still parse to equal codecs, chunks decode to the same frames, stores still open.

    python tests/golden/make_zarr_golden.py     # only writes what does not exist yet
"""
import json
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
NUMCODECS = HERE / "numcodecs_v1"
ZARR = HERE / "zarr_v1"

CONFIGS = [
    {"id": "redml", "q": 0.0},
    {"id": "redml", "q": 1.0},
    {"id": "redml", "q": 2.0, "codec": "zstd", "shuffle": "byte", "tile": 16},
    {"id": "redml", "q": "sparse"},
    {"id": "redml", "q": 0.0, "codec": "lz4"},
]


def frames():
    """Three frames: uint16 photons with a spot, int32 with a gap column, float32 with a NaN."""
    rng = np.random.default_rng(zlib.crc32(b"zarr golden"))
    lam = np.full((40, 56), 30.0)
    lam[18:21, 25:28] += 2000.0
    u16 = rng.poisson(lam).astype(np.uint16)
    i32 = rng.poisson(lam).astype(np.int32)
    i32[:, 30:32] = -1
    f32 = (rng.poisson(lam) * 1.5 + rng.uniform(-0.3, 0.3, lam.shape)).astype(np.float32)
    f32[0, 0] = np.nan
    return [u16, i32[None], f32]  # one of them as a (1, H, W) chunk


def write_numcodecs():
    from redml_reduce.formats.numcodecs_codec import RedmlCodec

    NUMCODECS.mkdir(exist_ok=True)
    arrays = frames()
    for i, arr in enumerate(arrays):
        path = NUMCODECS / f"array.{i:02d}.npy"
        if not path.exists():
            np.save(path, arr)
    for j, config in enumerate(CONFIGS):
        cdir = NUMCODECS / f"codec.{j:02d}"
        cdir.mkdir(exist_ok=True)
        codec = RedmlCodec.from_config(config)
        if not (cdir / "config.json").exists():
            (cdir / "config.json").write_text(json.dumps(codec.get_config(), indent=2, sort_keys=True))
        for i, arr in enumerate(arrays):
            enc = cdir / f"encoded.{i:02d}.dat"
            if enc.exists():
                continue
            chunk = codec.encode(arr)
            enc.write_bytes(chunk)
            np.save(cdir / f"decoded.{i:02d}.npy", codec.decode(chunk))
            print("wrote", enc, len(chunk), "bytes")


def write_zarr():
    import zarr

    from redml_reduce.formats.numcodecs_codec import RedmlCodec
    from redml_reduce.formats.zarr_codec import RedmlZarrCodec

    ZARR.mkdir(exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(b"zarr stores"))
    stack = np.stack([rng.poisson(25.0, (40, 56)) for _ in range(3)]).astype(np.uint16)
    stack[1, 10:13, 10:13] += 3000
    stores = {
        "v3_q1.zarr": dict(zarr_format=3, serializer=RedmlZarrCodec(q=1.0), compressors=None),
        "v3_lossless.zarr": dict(zarr_format=3, serializer=RedmlZarrCodec(q=0, codec="zstd"), compressors=None),
        "v2_q1.zarr": dict(zarr_format=2, compressors=RedmlCodec(q=1.0)),
    }
    for name, kw in stores.items():
        path = ZARR / name
        if path.exists():
            continue
        a = zarr.create_array(str(path), shape=stack.shape, chunks=(1, 40, 56), dtype="uint16", fill_value=0, **kw)
        a[:] = stack
        stem = name[: -len(".zarr")]
        np.save(ZARR / f"{stem}.input.npy", stack)
        np.save(ZARR / f"{stem}.decoded.npy", zarr.open_array(str(path), mode="r")[:])
        print("wrote", path)


if __name__ == "__main__":
    write_numcodecs()
    write_zarr()
