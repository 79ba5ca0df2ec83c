"""Lattice-aware reduction: predicted reflections kept exact (redml_reduce.lattice.predict),
crystals from DIALS (.expt) and CrystFEL (.stream) files.

    from redml_reduce.lattice import predict, lattice_roi, read_crystals
    table = read_crystals("indexed.expt")                 # or run.stream
    crystals = table.for_frame("/data/thau_0001.cbf", 0)
    roi = lattice_roi(frame.shape, None, crystals)         # each crystal's own geometry
"""
from .expt import CrystalTable, read_expt
from .predict import Crystal, LatticeSettings, lattice_roi, predict
from .stream import read_stream

__all__ = ["predict", "lattice_roi", "Crystal", "LatticeSettings", "CrystalTable", "read_expt", "read_stream",
           "read_crystals"]


def read_crystals(path) -> CrystalTable:
    """The crystals of a DIALS experiment list (.expt, .json) or a CrystFEL stream (.stream)."""
    name = str(path).lower()
    if name.endswith(".stream"):
        return read_stream(path)
    if name.endswith((".expt", ".json")):
        return read_expt(path)
    raise ValueError(f"{path}: crystals come from a DIALS .expt or a CrystFEL .stream file")
