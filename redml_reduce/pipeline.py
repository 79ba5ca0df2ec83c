"""Where the encoder's exact region (ROI) comes from: one interface for every path.

    roi = resolve_roi(frame, "ml", mask=bad, geometry=geom)      # a boolean map, or None
    redml_reduce.encode(frame, q=2, roi="ml")                     # the same, inside encode
    FrameWriter(path, shape, dtype, q=2, roi="union")             # per frame, direct chunk write

Sources:
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

import numpy as np

__all__ = ["ROI_SOURCES", "resolve_roi", "require_torch", "is_source"]

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
        from .spots import find_spots, roi_mask

        _, strong = find_spots(frame, mask, sigma_s=roi_snr)
        return roi_mask(strong, margin) | learned
    return np.asarray(roi)
