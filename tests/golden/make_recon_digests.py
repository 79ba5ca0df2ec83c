"""Writes tests/golden/recon_v1: chunks of the conditional reconstructions (photon counts and
integrating data, several steps and background levels, models that vary from pixel to pixel)
and the SHA-256 of what the decoder of the time made of each, with recon mean and draw, on one
thread and on several (tests/test_recon_digests.py holds later decoders to those bytes).

    .venv/bin/python tests/golden/make_recon_digests.py   # only with the decoder to freeze
"""
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

import redml_reduce as rr
from redml_study.detector import integrating_frame

OUT = Path(__file__).parent / "recon_v1"
SHAPE = (130, 200)  # not a multiple of the tile: partial tiles at the edges


def ramp(lo, hi, shape=SHAPE):
    """A mean that climbs from lo to hi across the frame (log scale) and 20% down it."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), shape[1]))[None, :] * np.linspace(0.8, 1.2, shape[0])[:, None]


def counts(rng, lo, hi, dtype):
    f = rng.poisson(ramp(lo, hi)).astype(dtype)
    f[60:64, 90:94] += 3000  # a spot: exact pixels among the coded ones
    return f


def adu(rng, lo, hi, gain, rn, dtype):
    return integrating_frame(rng.poisson(ramp(lo, hi)), rng, gain=gain, read_noise=rn, dtype=dtype)


def photons(rng, lo, hi, rn):
    f = integrating_frame(rng.poisson(ramp(lo, hi)), rng, read_noise=rn)
    f[10, 10:14] = np.nan  # markers
    return f


def cases():
    rng = np.random.default_rng(2026)
    none = lambda f: np.zeros(f.shape, bool)  # noqa: E731
    yield "u16_q2_low", counts(rng, 0.05, 3.0, "uint16"), dict(q=2, recon="draw", tile=16)
    yield "u16_q4_mid", counts(rng, 0.5, 20.0, "uint16"), dict(q=4, recon="draw", tile=24)
    yield "u16_q8_high", counts(rng, 20.0, 400.0, "uint16"), dict(q=8, recon="mean", tile=16)
    yield "i32_q4_wide", counts(rng, 200.0, 3000.0, "int32"), dict(q=4, recon="draw", tile=20)
    yield "u32_q3_mix", counts(rng, 1.0, 80.0, "uint32"), dict(q=3, recon="mean", tile=32)
    for gain, rn, dt, q in [(20.0, 0.2, "int16", 4), (10.0, 0.3, "int32", 2), (1.0, 0.15, "int16", 6)]:
        rn_adu = math.sqrt((rn * gain) ** 2 + 1 / 12)
        for lo, hi in [(0.05, 2.0), (3.0, 60.0)]:
            f = adu(rng, lo, hi, gain, rn, dt)
            kw = dict(q=q, gain=gain, mu_min=0.0, markers="extremes", read_noise=rn_adu, recon="draw", tile=16, roi=none(f))
            yield f"adu_{dt}_g{gain:g}_q{q}_{lo:g}", f, kw
    for lo, hi, q in [(0.05, 2.0, 4), (2.0, 50.0, 2)]:
        f = photons(rng, lo, hi, 0.2)
        yield f"photons_q{q}_{lo:g}", f, dict(q=q, mu_min=0.0, markers="extremes", read_noise=0.2, recon="mean", tile=16)


def digests(chunk):
    return {f"{recon}_nt{nt}": hashlib.sha256(rr.decode(chunk, recon=recon, nthreads=nt).tobytes()).hexdigest()
            for recon in ("mean", "draw") for nt in (1, 3)}


def main():
    OUT.mkdir(exist_ok=True)
    table = {}
    for name, frame, kw in cases():
        chunk = rr.encode(frame, **kw)
        (OUT / f"{name}.rdml").write_bytes(chunk)
        table[name] = digests(chunk)
        print(name, len(chunk), file=sys.stderr)
    (OUT / "digests.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
