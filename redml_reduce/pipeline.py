"""One frame's way to a chunk: raw frame -> photons -> ROI -> chunk. The writer, acquisition,
recompression and the command line all encode through encode() here; redml_reduce.encode is it.

    chunk = redml_reduce.encode(frame, q=2, roi="ml")             # ROI from the learned model
    chunk = redml_reduce.encode(raw, q=1, calibration=calib)      # raw JUNGFRAU words, converted first
    roi = resolve_roi(frame, "ml", mask=bad, geometry=geom)      # a boolean map, or None
    FrameWriter(path, shape, dtype, q=2, roi="union")             # per frame, direct chunk write

Photons: raw JUNGFRAU frames are converted by their calibration (redml_reduce.jungfrau),
other frames are taken as they are. The exact region (ROI) comes from one of these sources:

  "classical"  the encoder's built-in spot rule (C++ finder with sigma_strong = roi_snr,
               dilated by roi_margin); resolve_roi returns None and the encoder applies it.
               This is also what the HDF5 filter does: it sees no ROI argument.
  "ml"         the learned model's map (redml_reduce.ml.infer; the default CNN unless
               `model` names another): pixels at or above its ROI threshold (an ensemble:
               mean + 2 spread), dilated by roi_margin. Needs torch: pip install redml_reduce[ml].
  "union"      both: the classical finder's strong pixels (sigma_strong = roi_snr, dilated
               by roi_margin) or the ML map.
  "ml:NAME", "union:NAME"  the same with another shipped model (logistic, cnn, ensemble, unet).
  a boolean map: used as is.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import codec
from .codec import CodecSettings, QLike
from .jungfrau.conversion import convert
from .spots import find_spots, roi_mask

__all__ = ["encode", "photons", "ROI_SOURCES", "resolve_roi", "require_torch", "is_source"]

ROI_SOURCES = ("classical", "ml", "union")


def require_torch():
    """Imports the ML inference module, or raises ImportError saying how to get torch."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("roi='ml' and roi='union' need PyTorch: pip install 'redml_reduce[ml]'") from e
    from .ml import infer

    return infer


def is_source(roi) -> bool:
    """True for a ROI source name ("classical", "ml", "union", "ml:MODEL", "union:MODEL")."""
    if not isinstance(roi, str):
        return False
    source, sep, name = roi.partition(":")
    return source in ROI_SOURCES and (not sep or (source != "classical" and bool(name)))


def resolve_roi(frame, roi, mask=None, *, margin: int = 2, roi_snr: float = 3.0, geometry=None, model: str = "cnn"):
    """The encoder's roi argument for a ROI source (see the module doc): None for the
    built-in rule, else a boolean map of the frame's shape."""
    if roi is None or (isinstance(roi, str) and roi == "classical"):
        return None
    if isinstance(roi, str):
        source, _, name = roi.partition(":")
        if not is_source(roi):
            raise ValueError(f"roi must be one of {ROI_SOURCES} (ml and union optionally as ml:MODEL) or a boolean "
                             f"map, not {roi!r}")
        infer = require_torch()
        learned = infer.load(name or model).roi(frame, mask, geometry, margin=margin)
        if source == "ml":
            return learned
        _, strong = find_spots(frame, mask, sigma_s=roi_snr)
        return roi_mask(strong, margin) | learned
    return np.asarray(roi)


def photons(raw, calibration, *, nthreads: int = 0) -> np.ndarray:
    """A raw JUNGFRAU frame (uint16 words) converted to int32 photons by its calibration
    (assembled by the calibration's geometry; bad pixels become markers, see redml_reduce.jungfrau)."""
    return convert(raw, calibration, nthreads=nthreads)[0]


def encode(frame, q: QLike = 0.0, *, roi=None, mask=None, nthreads: int = 0, calibration=None, geometry=None,
           settings: Optional[CodecSettings] = None, **fields) -> bytes:
    """Encodes one frame into one redml chunk (format v1, docs/format.md).

    frame: 2-D array of uint16, int16, int32, uint32 or float32 (other byte orders are
        converted; other dtypes are refused, never cast silently).
    q: 0 lossless, > 0 quantized background (|error| <= q*sigma/2, unbiased), "sparse".
    roi: where the exactly kept region comes from: None or "classical" (default, the built-in spot
        rule), "ml" (the learned model, needs the [ml] extra), "union" (both), or a boolean
        map of pixels to keep exactly (see the module doc).
    mask: optional boolean map of bad pixels: kept exactly, ignored by the model.
    nthreads: 0 = REDML_NUM_THREADS or all cores.
    calibration: a redml_reduce.jungfrau.Calibration: `frame` is then a raw JUNGFRAU frame
        (uint16 words), converted to int32 photons first (photons()).
    geometry: the beam geometry (redml_reduce.background.BeamGeometry) the learned model uses.
    settings: a CodecSettings (then q and fields are not given); fields: further
        CodecSettings fields (codec, level, shuffle, gain, tile, ...).
    """
    s = codec.resolve_settings(settings, q, fields)
    if calibration is not None:
        frame = photons(frame, calibration, nthreads=nthreads)
    if isinstance(roi, str):
        roi = resolve_roi(codec.as_frame(frame), roi, mask, margin=s.roi_margin, roi_snr=s.roi_snr, geometry=geometry)
    return codec.encode(frame, roi=roi, mask=mask, nthreads=nthreads, settings=s)
