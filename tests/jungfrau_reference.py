"""numpy reference of the JUNGFRAU conversion (csrc/jungfrau.h), written independently of the
core: the tests compare the core with it pixel for pixel, and benchmarks/jungfrau.py times it.

Same float32 arithmetic as the core: keV = (adc - pedestal) / gain, photons = keV * (1 / E),
rounded half away from zero; markers as in redml_reduce/jungfrau.py.
"""
from __future__ import annotations

import numpy as np

STATUS = dict(g0=0, g1=1, g2=2, saturated=3, masked=4, invalid_gain=5, overload=6, error=7)


def convert_reference(raw, pedestal, gain, energy_keV, mask=None, dtype=np.int32, ped0=None):
    """(photons, keV, status) of a raw frame in the raw layout. ped0: G0 pedestal to use
    instead of pedestal[0] (tracking)."""
    raw = np.asarray(raw, np.uint16)
    info = np.iinfo(dtype)
    bits = raw >> 14
    stage = np.where(bits == 3, 2, np.where(bits == 2, 0, bits)).astype(np.intp)  # invalid: any plane, masked below
    p = np.take_along_axis(pedestal, stage[None], 0)[0]
    if ped0 is not None:
        p = np.where(stage == 0, ped0, p)
    g = np.take_along_axis(gain, stage[None], 0)[0]
    with np.errstate(all="ignore"):
        kev = ((raw & 0x3FFF).astype(np.float32) - p.astype(np.float32)) / g.astype(np.float32)
        ph = kev * (np.float32(1.0) / np.float32(energy_keV))
        r = np.sign(ph) * np.floor(np.abs(ph.astype(np.float64)) + 0.5)
    status = stage.astype(np.uint8)
    photons = np.where(np.isfinite(r), r, 0)
    sat_hi, sat_lo = np.isfinite(r) & (r >= info.max), np.isfinite(r) & (r <= info.min)
    photons = np.where(sat_hi, info.max, np.where(sat_lo, info.min + 1, photons))
    status[sat_hi | sat_lo] = STATUS["saturated"]
    special = [(~np.isfinite(ph) | np.isinf(g), "masked", info.min, np.nan), (bits == 2, "invalid_gain", info.min, np.nan),
               (raw == 0xC000, "overload", info.max, np.inf), (raw == 0xFFFF, "error", info.min, np.nan)]
    if mask is not None:
        special.append((np.asarray(mask, bool), "masked", info.min, np.nan))
    for where, name, value, kv in special:  # later entries win: the mask over everything
        status[where] = STATUS[name]
        photons = np.where(where, value, photons)
        kev = np.where(where, np.float32(kv), kev)
    return photons.astype(dtype), kev.astype(np.float32), status


def track_reference(ped0, raw, status, kev, energy_keV, alpha, threshold):
    """The tracked G0 pedestal after one frame (float32, as the core)."""
    raw = np.asarray(raw, np.uint16)
    with np.errstate(all="ignore"):
        dark = (status == 0) & (np.abs(kev * (np.float32(1.0) / np.float32(energy_keV))) < np.float32(threshold))
        new = ped0 + ((raw & 0x3FFF).astype(np.float32) - ped0) * np.float32(alpha)
    return np.where(dark, new, ped0).astype(np.float32)


def assemble_reference(values, modules, shape, fill):
    """Assembled image of a raw-layout frame (n*512, 1024): chip-border pixels split into 2
    (corners 4) parts, part j = floor(v/k) + (j < v mod k) for integers (markers copied;
    `fill` is also the gap value), v/k for floats."""
    values = np.asarray(values)
    is_float = values.dtype.kind == "f"
    out = np.full(shape, fill, values.dtype)
    rr, cc = np.mgrid[0:512, 0:1024]

    def first_and_extra(x):
        chip, j = x // 256, x % 256
        last = 1 if x is rr else 3
        return x + 2 * chip, np.where((j == 255) & (chip < last), 1, np.where((j == 0) & (chip > 0), -1, 0))

    r0, rex = first_and_extra(rr)
    c0, cex = first_and_extra(cc)
    nrows, ncols = 1 + (rex != 0), 1 + (cex != 0)
    k = nrows * ncols
    for m, (oy, ox, fy, fx, sy, sx) in enumerate(modules):
        v = values[512 * m:512 * (m + 1)]
        A = np.empty((514, 1030), values.dtype)
        for a in (0, 1):
            for b in (0, 1):
                has = (a < nrows) & (b < ncols)
                j = a * ncols + b
                if is_float:
                    part = v / k
                else:
                    vv = v.astype(np.int64)
                    q, rem = np.floor_divide(vv, k), np.mod(vv, k)
                    part = np.where((v == fill) | (v == np.iinfo(values.dtype).max), vv, q + (j < rem))
                A[(r0 + a * rex)[has], (c0 + b * cex)[has]] = part[has]
        ar, ac = np.mgrid[0:514, 0:1030]
        out[oy + ar * sy + ac * fy, ox + ar * sx + ac * fx] = A
    return out
