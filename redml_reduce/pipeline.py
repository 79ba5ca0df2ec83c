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
  "lattice"    the classical finder's strong pixels (dilated by roi_margin) or a disc around
               every reflection the frame's crystals predict (redml_reduce.lattice: needs
               `crystals` and the frame's `geometry`, or crystals that carry their own);
               without crystals, the finder's region alone. resolve_roi returns a
               LatticeRegion: the chunk stores the crystal models, and the decoder predicts
               the discs again (docs/format.md, "Lattice region").
  a boolean map, or a redml_reduce.lattice.LatticeRegion: used as is.

Per-frame policy (encode_by_policy, issue 21): frames with a crystal keep the lattice region
exact and draw the rest at q; frames without one are hits (at least `min_peaks` spots:
midpoint at q, unbiased for any signal a later integration may look for) or blanks (draw);
each frame keeps the smaller of that chunk and the lossless one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from . import codec
from .codec import CodecSettings, QLike
from .jungfrau.conversion import convert
from .lattice.predict import LatticeRegion, LatticeSettings
from .spots import find_spots, is_hit, roi_mask

__all__ = ["encode", "photons", "ROI_SOURCES", "resolve_roi", "require_torch", "is_source", "encode_by_policy",
           "FRAME_KINDS"]

ROI_SOURCES = ("classical", "ml", "union", "lattice")
FRAME_KINDS = ("lattice", "hit", "blank")  # what encode_by_policy made of a frame


def require_torch():
    """Imports the ML inference module, or raises ImportError saying how to get torch."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("roi='ml' and roi='union' need PyTorch: pip install 'redml_reduce[ml]'") from e
    from .ml import infer

    return infer


def is_source(roi) -> bool:
    """True for a ROI source name ("classical", "ml", "union", "lattice", "ml:MODEL", "union:MODEL")."""
    if not isinstance(roi, str):
        return False
    source, sep, name = roi.partition(":")
    return source in ROI_SOURCES and (not sep or (source in ("ml", "union") and bool(name)))


def _finder_roi(frame, mask, margin: int, roi_snr: float):
    """(peaks, region): the classical finder's spots and its strong pixels dilated by margin."""
    peaks, strong = find_spots(frame, mask, sigma_s=roi_snr)
    return peaks, roi_mask(strong, margin)


def resolve_roi(frame, roi, mask=None, *, margin: int = 2, roi_snr: float = 3.0, geometry=None, model: str = "cnn",
                crystals=None, lattice=None):
    """The encoder's roi argument for a ROI source (see the module doc): None for the
    built-in rule, a LatticeRegion for "lattice" with crystals, else a boolean map of the
    frame's shape. crystals, lattice: the "lattice"
    source's crystals (A matrices or redml_reduce.lattice.Crystal) and footprint
    (redml_reduce.lattice.LatticeSettings; default discs of 8 px)."""
    if roi is None or (isinstance(roi, str) and roi == "classical"):
        return None
    if isinstance(roi, str):
        source, _, name = roi.partition(":")
        if not is_source(roi):
            raise ValueError(f"roi must be one of {ROI_SOURCES} (ml and union optionally as ml:MODEL) or a boolean "
                             f"map, not {roi!r}")
        if source == "lattice":
            return _lattice_region(_finder_roi(frame, mask, margin, roi_snr)[1], crystals, geometry, lattice)
        infer = require_torch()
        learned = infer.load(name or model).roi(frame, mask, geometry, margin=margin)
        if source == "ml":
            return learned
        return _finder_roi(frame, mask, margin, roi_snr)[1] | learned
    return roi if isinstance(roi, LatticeRegion) else np.asarray(roi)


def _lattice_region(base, crystals, geometry, lattice):
    """The finder's region `base` with the crystals' discs: a LatticeRegion (the chunk stores
    the crystal models), or base alone without crystals."""
    if crystals is None or len(crystals) == 0:
        return base
    return LatticeRegion(crystals, geometry, lattice or LatticeSettings(), base=base)


def photons(raw, calibration, *, nthreads: int = 0) -> np.ndarray:
    """A raw JUNGFRAU frame (uint16 words) converted to int32 photons by its calibration
    (assembled by the calibration's geometry; bad pixels become markers, see redml_reduce.jungfrau)."""
    return convert(raw, calibration, nthreads=nthreads)[0]


def encode(frame, q: QLike = 0.0, *, roi=None, mask=None, nthreads: int = 0, calibration=None, geometry=None,
           crystals=None, lattice=None, settings: Optional[CodecSettings] = None, **fields) -> bytes:
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
    geometry: the beam geometry (redml_reduce.background.BeamGeometry) the learned model and
        the lattice prediction use.
    crystals, lattice: roi="lattice": the frame's crystals (A matrices or
        redml_reduce.lattice.Crystal) and their footprint (redml_reduce.lattice.LatticeSettings).
    settings: a CodecSettings (then q and fields are not given); fields: further
        CodecSettings fields (codec, level, shuffle, gain, tile, ...).
    """
    s = codec.resolve_settings(settings, q, fields)
    if calibration is not None:
        frame = photons(frame, calibration, nthreads=nthreads)
    if isinstance(roi, str):
        roi = resolve_roi(codec.as_frame(frame), roi, mask, margin=s.roi_margin, roi_snr=s.roi_snr, geometry=geometry,
                          crystals=crystals, lattice=lattice)
    return codec.encode(frame, roi=roi, mask=mask, nthreads=nthreads, settings=s)


def encode_by_policy(frame, settings: CodecSettings, crystals=(), *, geometry=None, lattice=None, min_peaks: int = 10,
                     mask=None, nthreads: int = 0, found=None, hit: Optional[bool] = None):
    """(chunk, kind): one photon frame encoded by the per-frame policy (module doc), kind one
    of FRAME_KINDS. settings give q and the other fields; recon is chosen here ("draw" for
    "lattice" and "blank", "midpoint" for "hit"; lossless and sparse settings are kept as
    they are). The exact region is the classical finder's (as roi="classical"), plus the
    crystals' predicted discs on a "lattice" frame. found: (peaks, region) the caller's finder
    already gave for this frame (acquisition), instead of finding them again; hit: whether
    the frame is a hit when the caller decided it (None: at least min_peaks spots). A lossy
    frame's chunk is the smaller of that encoding and the lossless one (which satisfies any
    policy), so a policy never costs more than lossless coding."""
    arr = codec.as_frame(frame)
    peaks, region = found if found is not None else _finder_roi(arr, mask, settings.roi_margin, settings.roi_snr)
    if crystals is not None and len(crystals) > 0:
        kind = "lattice"
        region = _lattice_region(region, crystals, geometry, lattice)
    else:
        kind = "hit" if (is_hit(peaks, min_peaks) if hit is None else hit) else "blank"
    if settings.mode == "quantized":
        settings = replace(settings, recon="midpoint" if kind == "hit" else "draw")
    chunk = codec.encode(arr, roi=region, mask=mask, nthreads=nthreads, settings=settings)
    if settings.mode != "lossless":
        # Lossless satisfies every policy; at very low backgrounds it is also the smaller chunk.
        exact = codec.encode(arr, mask=mask, nthreads=nthreads, settings=replace(settings, q=0))
        chunk = min(chunk, exact, key=len)
    return chunk, kind
