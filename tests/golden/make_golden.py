"""Writes the golden chunks of format v1 (run once; never regenerate existing files).

Each case stores the input frame, the chunk and the frame the v1 decoder returned when
the chunk was written. tests/test_golden.py checks that today's decoder still returns
exactly that frame, so old files stay readable as the code evolves.

    python tests/golden/make_golden.py     # only writes cases that do not exist yet
"""
import zlib
from pathlib import Path

import numpy as np

import redml_reduce as rr

OUT = Path(__file__).parent / "v1"

CASES = {
    "u16_lossless_rans": ("uint16", 0, {}),
    "u16_q1_rans": ("uint16", 1.0, {}),
    "u16_q4_lz4": ("uint16", 4.0, {"codec": "lz4"}),
    "i16_q2_zstd_byte": ("int16", 2.0, {"codec": "zstd", "shuffle": "byte"}),
    "i32_lossless_zstd": ("int32", 0, {"codec": "zstd"}),
    "i32_q2_gaps": ("int32", 2.0, {"tile": 16}),
    "u32_sparse": ("uint32", "sparse", {}),
    "u32_sparse_noise": ("uint32", "sparse", {"sparse_noise": True}),
    "f32_lossless": ("float32", 0, {}),
    "f32_q1_gain": ("float32", 1.0, {"gain": 2.5}),
    # added with the conditional reconstructions (recon codes 2 and 3 of format v1)
    "u16_q2_mean": ("uint16", 2.0, {"recon": "mean"}),
    "i32_q4_draw_gaps": ("int32", 4.0, {"recon": "draw"}),
    "u16_q4_draw_lowcount": ("uint16", 4.0, {"recon": "draw"}),
}


def frame_for(name, dtype):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lam = np.full((45, 67), 0.8 if "lowcount" in name else 60.0)
    lam[20:23, 30:33] += 3000.0  # a spot
    x = rng.poisson(lam).astype(np.float64)
    if dtype == "float32":
        x = x * 2.5 + rng.uniform(-0.5, 0.5, x.shape)
        x[0, 0] = np.nan
    if dtype in ("int32", "int16"):
        x[:, 40:42] = -1  # gap
    return x.astype(dtype)


def main():
    OUT.mkdir(exist_ok=True)
    for name, (dtype, q, kw) in CASES.items():
        if (OUT / f"{name}.rdml").exists():
            continue
        frame = frame_for(name, dtype)
        chunk = rr.encode(frame, q, **kw)
        np.save(OUT / f"{name}.input.npy", frame)
        (OUT / f"{name}.rdml").write_bytes(chunk)
        np.save(OUT / f"{name}.decoded.npy", rr.decode(chunk))
        print("wrote", name, len(chunk), "bytes")


if __name__ == "__main__":
    main()
