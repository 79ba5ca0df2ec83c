"""Crystal lattices: unit cells (cell.py), a known-cell still indexer (index.py), predicted
reflections kept exact (predict.py), crystals from DIALS (.expt) and CrystFEL (.stream) files.

    from redml_reduce.lattice import index_still, lattice_roi, read_crystals
    table = read_crystals("indexed.expt")                 # or run.stream
    crystals = table.for_frame("/data/thau_0001.cbf", 0)
    roi = lattice_roi(frame.shape, None, crystals)         # each crystal's own geometry
    chunk = redml_reduce.encode(frame, q=8, recon="draw", roi=LatticeRegion(crystals))  # models in the chunk
    found = index_still(peaks, geometry, (57.9, 57.9, 150.6, 90, 90, 90), "P41212")  # or None

Orientations are A = U @ B, columns a*, b*, c* in the laboratory frame described by
redml_reduce.background.BeamGeometry (x fast, y slow, z along the beam).
"""
from .cell import b_matrix, cell_of, centring, centring_allows, misorientation_deg, parse_cell
from .expt import CrystalTable, read_expt
from .index import IndexResult, IndexSettings, index_still
from .predict import Crystal, LatticeRegion, LatticeSettings, lattice_roi, predict
from .stream import read_stream

__all__ = ["predict", "lattice_roi", "Crystal", "LatticeRegion", "LatticeSettings", "CrystalTable", "read_expt", "read_stream",
           "read_crystals", "b_matrix", "cell_of", "centring", "centring_allows", "misorientation_deg", "parse_cell",
           "IndexResult", "IndexSettings", "index_still"]


def read_crystals(path) -> CrystalTable:
    """The crystals of a DIALS experiment list (.expt, .json) or a CrystFEL stream (.stream)."""
    name = str(path).lower()
    if name.endswith(".stream"):
        return read_stream(path)
    if name.endswith((".expt", ".json")):
        return read_expt(path)
    raise ValueError(f"{path}: crystals come from a DIALS .expt or a CrystFEL .stream file")
