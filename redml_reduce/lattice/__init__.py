"""Crystal lattices: unit cells (cell.py) and a known-cell still indexer (index.py).

Orientations are A = U @ B, columns a*, b*, c* in the laboratory frame described by
redml_reduce.background.BeamGeometry (x fast, y slow, z along the beam)."""
from .cell import b_matrix, centring, centring_allows, misorientation_deg, parse_cell
from .index import IndexResult, IndexSettings, index_still

__all__ = ["b_matrix", "centring", "centring_allows", "misorientation_deg", "parse_cell", "IndexResult",
           "IndexSettings", "index_still"]
