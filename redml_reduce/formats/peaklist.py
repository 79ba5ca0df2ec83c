"""Peak lists in the CXI layout that CrystFEL (`indexamajig --peaks=cxi`) and Cheetah use.

    /entry_1/result_1/nPeaks              (frames,)            int32
    /entry_1/result_1/peakXPosRaw         (frames, max_peaks)  float32   fast-scan position
    /entry_1/result_1/peakYPosRaw         (frames, max_peaks)  float32   slow-scan position
    /entry_1/result_1/peakTotalIntensity  (frames, max_peaks)  float32   background-subtracted
    /entry_1/result_1/peakMaximumValue, peakNPixels, peakSNR   (redml additions)

Positions follow the CXI convention: the centre of the first pixel is (0, 0); redml's own
peak arrays (and DIALS) put it at (0.5, 0.5), so 0.5 is subtracted on writing and added
back on reading.
"""
from __future__ import annotations

import h5py
import numpy as np

from ..spots import PEAK_DTYPE

__all__ = ["write_cxi_peaks", "read_cxi_peaks"]

GROUP = "entry_1/result_1"


def write_cxi_peaks(target, peaks_per_frame, max_peaks: int | None = None) -> None:
    """Writes one peak array (PEAK_DTYPE) per frame into `target` (a path or an open
    h5py File/Group) under /entry_1/result_1. Frames with more than max_peaks peaks keep
    their strongest (by total intensity)."""
    counts = [len(p) for p in peaks_per_frame]
    width = max_peaks if max_peaks is not None else max([1] + counts)
    n = len(peaks_per_frame)
    fields = {"peakXPosRaw": np.zeros((n, width), np.float32), "peakYPosRaw": np.zeros((n, width), np.float32),
              "peakTotalIntensity": np.zeros((n, width), np.float32),
              "peakMaximumValue": np.zeros((n, width), np.float32), "peakNPixels": np.zeros((n, width), np.int32),
              "peakSNR": np.zeros((n, width), np.float32)}
    npeaks = np.zeros(n, np.int32)
    for i, p in enumerate(peaks_per_frame):
        p = np.asarray(p, dtype=PEAK_DTYPE)
        if len(p) > width:
            p = p[np.argsort(-p["total"], kind="stable")[:width]]
        k = len(p)
        npeaks[i] = k
        fields["peakXPosRaw"][i, :k] = p["x"] - 0.5
        fields["peakYPosRaw"][i, :k] = p["y"] - 0.5
        fields["peakTotalIntensity"][i, :k] = p["total"]
        fields["peakMaximumValue"][i, :k] = p["max"]
        fields["peakNPixels"][i, :k] = p["npix"]
        fields["peakSNR"][i, :k] = p["snr"]
    own = not isinstance(target, (h5py.File, h5py.Group))
    f = h5py.File(target, "a") if own else target
    try:
        if GROUP in f:
            del f[GROUP]
        g = f.require_group(GROUP)
        g.create_dataset("nPeaks", data=npeaks)
        for name, data in fields.items():
            g.create_dataset(name, data=data, chunks=(1, width) if n else None)
    finally:
        if own:
            f.close()


def read_cxi_peaks(source) -> list[np.ndarray]:
    """Reads the peak lists written by write_cxi_peaks (or by Cheetah/OnDA: fields redml
    does not find are left at zero). Returns one PEAK_DTYPE array per frame."""
    own = not isinstance(source, (h5py.File, h5py.Group))
    f = h5py.File(source, "r") if own else source
    try:
        g = f[GROUP]
        npeaks = g["nPeaks"][...]
        cols = {name: g[name][...] for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity",
                                                 "peakMaximumValue", "peakNPixels", "peakSNR") if name in g}
    finally:
        if own:
            f.close()
    out = []
    for i, k in enumerate(npeaks):
        p = np.zeros(int(k), PEAK_DTYPE)
        p["x"] = cols["peakXPosRaw"][i, :k] + 0.5
        p["y"] = cols["peakYPosRaw"][i, :k] + 0.5
        p["total"] = cols["peakTotalIntensity"][i, :k]
        for name, field in (("peakMaximumValue", "max"), ("peakNPixels", "npix"), ("peakSNR", "snr")):
            if name in cols:
                p[field] = cols[name][i, :k]
        out.append(p)
    return out
