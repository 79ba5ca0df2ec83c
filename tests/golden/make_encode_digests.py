"""The encoder's chunks, byte for byte: sha256 of the chunk of every case below, as the encoder
that wrote tests/golden/encode_v1/digests.json produced it (tests/test_encode_digests.py checks
the encoder of today against it). A faster encoder must write the same bytes: random Poisson
frames (several levels, every pixel type, spots, hot pixels, a mask), integrating ADU with read
noise, and the thaumatin stills of tests/data, at q = 0, 1, 2, 4 (midpoint, mean, draw) and
sparse, on one thread and on several.

    python tests/golden/make_encode_digests.py   # rewrites digests.json (only when the format changes)
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "encode_v1" / "digests.json"
SHAPE = (200, 264)  # several bands of 64 rows, partial tiles at the edges
THAUMATIN = HERE.parent / "data" / "thaumatin"

PHOTON_SETTINGS = {
    "q0": dict(q=0),
    "q1": dict(q=1),
    "q2": dict(q=2),
    "q4mean": dict(q=4, recon="mean"),
    "q4draw": dict(q=4, recon="draw"),
    "sparse": dict(q="sparse", sparse_noise=False),  # the chunks as first written (before noise became the default)
}
INTEGRATING_SETTINGS = {
    "q1": dict(q=1),
    "q2": dict(q=2),
    "q4draw": dict(q=4, recon="draw"),
    "sparse": dict(q="sparse", sparse_noise=False),  # the chunks as first written (before noise became the default); the cut above the model, its neighbours, the read noise in the header
}


def photon_frame(level: float, dtype, seed: int) -> np.ndarray:
    """Poisson counts of a flat background, a few bright spots and hot pixels."""
    rng = np.random.default_rng([seed, int(level * 1000)])
    mu = np.full(SHAPE, level)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for _ in range(6):
        y, x = rng.uniform(0, SHAPE[0]), rng.uniform(0, SHAPE[1])
        mu += 400.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.0)
    frame = rng.poisson(mu).astype(np.int64)
    frame[rng.integers(0, SHAPE[0], 5), rng.integers(0, SHAPE[1], 5)] = 60000
    return frame.astype(dtype)


def adu_frame(level: float, dtype, gain: float, read_noise: float, seed: int) -> np.ndarray:
    """Integrating detector: gain * Poisson photons + Gaussian read noise, in ADU."""
    rng = np.random.default_rng([seed, int(level * 1000), int(gain)])
    adu = gain * rng.poisson(level, SHAPE) + rng.normal(0.0, read_noise, SHAPE)
    return adu.astype(np.float32) if dtype == np.float32 else np.round(adu).astype(dtype)


def cases():
    """(name, frame, encode keyword arguments) of every case."""
    mask = np.zeros(SHAPE, bool)
    mask[:, 130:134] = True  # a module gap
    for level in (0.05, 1.0, 10.0, 100.0):
        for dtype in (np.uint16, np.int16, np.int32, np.uint32, np.float32):
            frame = photon_frame(level, dtype, 11)
            for sname, kw in PHOTON_SETTINGS.items():
                if dtype == np.float32 and kw.get("recon") in ("mean", "draw"):
                    continue  # conditional reconstructions of floats need integrating data
                yield f"photon_bg{level:g}_{np.dtype(dtype).name}_{sname}", frame, dict(kw)
            yield f"photon_bg{level:g}_{np.dtype(dtype).name}_q1_mask", frame, dict(q=1, mask=mask)
    for dtype in (np.int16, np.int32, np.float32):
        for level, gain, rn in ((0.1, 20.0, 6.0), (3.0, 20.0, 6.0), (30.0, 9.0, 2.0)):
            frame = adu_frame(level, dtype, gain, rn, 12)
            for sname, kw in INTEGRATING_SETTINGS.items():
                for rname, read_noise in (("rnauto", "auto"), ("rn", rn)):
                    yield (f"adu_bg{level:g}_g{gain:g}_{np.dtype(dtype).name}_{sname}_{rname}", frame,
                           dict(kw, gain=gain, markers="extremes", read_noise=read_noise))


def thaumatin_cases():
    import fabio

    for n in (1, 10):
        frame = fabio.open(str(THAUMATIN / f"thau_3_2_{n:04d}.cbf.bz2")).data
        for sname in ("q0", "q1", "q2", "q4draw"):
            yield f"thau_{n:04d}_{sname}", frame, dict(PHOTON_SETTINGS[sname])


def chunk_digest(frame: np.ndarray, kw: dict, nthreads: int) -> str:
    import redml_reduce as rr

    kw = dict(kw)
    q = kw.pop("q")
    mask = kw.pop("mask", None)
    chunk = rr.codec.encode(frame, q, mask=mask, nthreads=nthreads, **kw)
    return hashlib.sha256(bytes(chunk)).hexdigest()


def main() -> int:
    import redml_reduce

    print(f"encoder: {redml_reduce.__file__}")
    digests = {}
    for name, frame, kw in cases():
        digests[name] = {f"nt{nt}": chunk_digest(frame, kw, nt) for nt in (1, 3)}
    for name, frame, kw in thaumatin_cases():
        digests[name] = {"nt2": chunk_digest(frame, kw, 2)}
    OUT.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests)} cases -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
