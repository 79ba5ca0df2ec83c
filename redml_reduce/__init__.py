"""redml_reduce: spot-preserving, Poisson-bounded compression of X-ray diffraction frames.

    import redml_reduce                       # registers the HDF5 filter with h5py
    dset = f.create_dataset(..., chunks=(1, h, w), **redml_reduce.Redml(q=1))
    chunk = redml_reduce.encode(frame, q=1)   # the bytes the filter stores
    frame = redml_reduce.decode(chunk)
"""
from . import _core
from .codec import CodecSettings, RedmlError, background_model, decode, exact_mask, inspect
from .formats.h5filter import FILTER_ID, PLUGIN_PATH, Redml, register
from .spots import PEAK_DTYPE, FinderSettings, find_spots, is_hit, roi_mask
from .formats.writer import FrameWriter
from .pipeline import encode  # photons (or raw JUNGFRAU frames) -> ROI -> chunk

__version__ = "0.1.0"
FORMAT_VERSION = _core.FORMAT_VERSION

__all__ = ["encode", "decode", "inspect", "exact_mask", "background_model", "Redml", "CodecSettings", "RedmlError", "FILTER_ID",
           "PLUGIN_PATH", "FORMAT_VERSION", "register", "find_spots", "FinderSettings", "PEAK_DTYPE",
           "roi_mask", "is_hit", "FrameWriter"]

register()
