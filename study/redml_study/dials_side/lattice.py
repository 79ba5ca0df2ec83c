"""Reciprocal lattice of a crystal, from cctbx (run by DIALS's python3).

    python3 lattice.py SPACE_GROUP a,b,c,alpha,beta,gamma D_MIN OUT.npz

Writes every reflection of the full sphere to D_MIN with its systematic absences removed
(Friedel mates included) as OUT.npz: hkl (n, 3) int32, asu (n,) int32 (the index of its
symmetry-unique reflection, so equivalents share an intensity), d (n,) float64 in
Angstrom, and B (3, 3), the reciprocal basis as columns (r = B @ hkl, 1/Angstrom, in the
crystal's Cartesian frame).
"""
import sys

import numpy as np
from cctbx import crystal, miller
from scitbx.array_family import flex


def main(space_group, cell, d_min, out):
    symmetry = crystal.symmetry(unit_cell=tuple(float(v) for v in cell.split(",")), space_group_symbol=space_group)
    unique = miller.build_set(symmetry, anomalous_flag=False, d_min=float(d_min))
    ids = miller.array(unique, data=flex.double(range(unique.size())))
    full = ids.expand_to_p1().generate_bijvoet_mates()
    hkl = np.array(full.indices(), dtype=np.int32).reshape(-1, 3)
    asu = np.array(full.data(), dtype=np.float64).round().astype(np.int32)
    d = np.array(full.d_spacings().data(), dtype=np.float64)
    # Rows of the fractionalization matrix are a*, b*, c*: r = F^T h.
    frac = np.array(symmetry.unit_cell().fractionalization_matrix(), dtype=np.float64).reshape(3, 3)
    np.savez(out, hkl=hkl, asu=asu, d=d, B=frac.T, n_unique=unique.size())


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
