"""encode_by_policy keeps, per frame, the smaller of its policy's chunk and the lossless chunk
(issue 21 item 6): a lattice setting is never larger than lossless coding."""
from dataclasses import replace
from pathlib import Path

import numpy as np

import redml_reduce as rr
from redml_reduce import codec
from redml_reduce.lattice import LatticeRegion, lattice_roi, read_expt
from redml_reduce.pipeline import _finder_roi, encode_by_policy

EXPT = Path(__file__).parent / "data" / "lattice" / "thaumatin_integrated.expt"
PILATUS_SHAPE = (2527, 2463)


def _policy_chunk(frame, settings, crystals):
    """What the policy alone writes for a lattice frame: finder region plus discs (stored as
    the crystal models), drawn."""
    region = _finder_roi(frame, None, settings.roi_margin, settings.roi_snr)[1]
    return codec.encode(frame, roi=LatticeRegion(crystals, base=region), settings=replace(settings, recon="draw"))


def test_low_background_lattice_frame_keeps_lossless():
    """A lattice frame at 0.005 photons per pixel at q=1: the draw's steps are all 1 there, so
    its chunk is lossless coding plus the split streams and the crystals' section, and the
    policy keeps the lossless chunk."""
    crystals = read_expt(EXPT).for_frame("thau_3_2_0001.cbf.bz2", 0)
    frame = np.random.default_rng(21).poisson(0.005, PILATUS_SHAPE).astype(np.int32)
    s = rr.CodecSettings(q=1)
    chunk, kind = encode_by_policy(frame, s, crystals)
    lossless = rr.encode(frame, q=0)
    assert kind == "lattice"
    assert chunk == lossless and rr.decode(chunk).tobytes() == frame.tobytes()
    assert len(_policy_chunk(frame, s, crystals)) > len(lossless)


def test_low_background_lattice_frame_model_beats_lossless():
    """The same frame at q=8: with the crystals stored instead of the discs' run-length mask
    (which made the chunk about twice the lossless one), the drawn chunk is the smaller and
    is kept; the discs decode byte for byte."""
    crystals = read_expt(EXPT).for_frame("thau_3_2_0001.cbf.bz2", 0)
    frame = np.random.default_rng(21).poisson(0.005, PILATUS_SHAPE).astype(np.int32)
    s = rr.CodecSettings(q=8)
    chunk, kind = encode_by_policy(frame, s, crystals)
    lossless = rr.encode(frame, q=0)
    assert kind == "lattice" and rr.inspect(chunk)["lattice_crystals"] == 1
    assert chunk == _policy_chunk(frame, s, crystals) and len(chunk) < len(lossless)
    discs = lattice_roi(frame.shape, None, crystals)
    mask_form = codec.encode(frame, roi=_finder_roi(frame, None, 2, 3.0)[1] | discs, settings=replace(s, recon="draw"))
    assert len(mask_form) > 2 * len(chunk)
    assert rr.decode(chunk)[discs].tobytes() == frame[discs].tobytes()


def test_thaumatin_lattice_frame_keeps_draw(thaumatin):
    """A thaumatin still with DIALS's crystal: the drawn chunk (discs and finder spots exact)
    is smaller than lossless and is kept; its exact region decodes byte for byte."""
    frame = thaumatin[1]
    crystals = read_expt(EXPT).for_frame("thau_3_2_0001.cbf.bz2", 0)
    s = rr.CodecSettings(q=8)
    chunk, kind = encode_by_policy(frame, s, crystals)
    lossless = rr.encode(frame, q=0)
    assert kind == "lattice" and rr.inspect(chunk)["recon"] == "draw"
    assert chunk == _policy_chunk(frame, s, crystals)
    assert len(chunk) < len(lossless)
    discs = lattice_roi(frame.shape, None, crystals)
    assert np.array_equal(rr.decode(chunk)[discs], frame[discs])

