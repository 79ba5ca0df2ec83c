"""Unit cell and space-group symbol -> reciprocal basis B and lattice-centring absences.

    B = b_matrix((57.9, 57.9, 150.6, 90, 90, 90))     # columns a*, b*, c* (1/Angstrom)
    c = centring("P 41 21 2")                          # "P"
    allowed = centring_allows("C", hkl)                # False where C centring forbids hkl

B follows Busing & Levy (1967): a* along x, b* in the x-y plane, so r = B @ hkl in the
crystal's Cartesian frame and A = U @ B in the laboratory frame (see the lattice package).
Only the lattice centring is derived from the symbol: the screw axes' and glide planes'
absences are not (an indexer does not need them), so no crystallographic library is used.
"""
from __future__ import annotations

import itertools
import math
import re

import numpy as np

__all__ = ["parse_cell", "cell_of", "b_matrix", "centring", "centring_allows", "lattice_rotations", "misorientation_deg"]

CENTRINGS = ("P", "A", "B", "C", "I", "F", "R")
_SYMBOL = re.compile(r"^\s*([PABCIFRH])\s*[-0-9 /_a-eA-EmMnN]*(:[HRhr])?\s*$")


def parse_cell(cell) -> tuple:
    """(a, b, c, alpha, beta, gamma) in Angstrom and degrees, checked to describe a real cell."""
    try:
        values = tuple(float(v) for v in (cell.replace(",", " ").split() if isinstance(cell, str) else cell))
    except (TypeError, ValueError) as e:
        raise ValueError(f"unit cell must be six numbers a, b, c, alpha, beta, gamma, not {cell!r}") from e
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"unit cell must be six finite numbers a, b, c, alpha, beta, gamma, not {cell!r}")
    if min(values[:3]) <= 0:
        raise ValueError(f"cell lengths must be > 0, not {values[:3]}")
    if not all(0 < v < 180 for v in values[3:]):
        raise ValueError(f"cell angles must be between 0 and 180 degrees, not {values[3:]}")
    if _volume_factor(values[3:]) <= 1e-6:
        raise ValueError(f"cell angles {values[3:]} do not make a cell (zero or negative volume)")
    return values


def cell_of(A) -> tuple:
    """The unit cell (a, b, c, alpha, beta, gamma) of an orientation A (columns a*, b*, c*):
    the real axes are the rows of A^-1."""
    axes = np.linalg.inv(np.asarray(A, dtype=np.float64))
    lengths = np.linalg.norm(axes, axis=1)

    def angle(i, j):
        return math.degrees(math.acos(max(-1.0, min(1.0, float(axes[i] @ axes[j]) / (lengths[i] * lengths[j])))))

    return (*(float(v) for v in lengths), angle(1, 2), angle(0, 2), angle(0, 1))


def _volume_factor(angles) -> float:
    """V / (abc): sqrt(1 - cos^2 a - cos^2 b - cos^2 g + 2 cos a cos b cos g)."""
    ca, cb, cg = (math.cos(math.radians(v)) for v in angles)
    v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return math.sqrt(v2) if v2 > 0 else 0.0


def b_matrix(cell) -> np.ndarray:
    """The reciprocal basis (3, 3), columns a*, b*, c* (1/Angstrom), Busing-Levy orientation."""
    a, b, c, al, be, ga = parse_cell(cell)
    al, be, ga = (math.radians(v) for v in (al, be, ga))
    vol = a * b * c * _volume_factor(np.degrees([al, be, ga]))
    ra, rb, rc = b * c * math.sin(al) / vol, a * c * math.sin(be) / vol, a * b * math.sin(ga) / vol
    cos_be_r = (math.cos(al) * math.cos(ga) - math.cos(be)) / (math.sin(al) * math.sin(ga))
    cos_ga_r = (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be))
    sin_be_r, sin_ga_r = math.sqrt(1 - cos_be_r**2), math.sqrt(1 - cos_ga_r**2)
    return np.array([[ra, rb * cos_ga_r, rc * cos_be_r],
                     [0.0, rb * sin_ga_r, -rc * sin_be_r * math.cos(al)],
                     [0.0, 0.0, 1.0 / c]])


def centring(space_group: str) -> str:
    """The lattice centring letter of a Hermann-Mauguin symbol ("P 41 21 2", "C2", "R3:H",
    "H3"): one of P, A, B, C, I, F, R (R: rhombohedral centring of the hexagonal setting;
    "R3:R", the rhombohedral axes, is primitive)."""
    m = _SYMBOL.match(space_group) if isinstance(space_group, str) else None
    if m is None:
        raise ValueError(f"space group must be a Hermann-Mauguin symbol such as 'P41212' or 'C 1 2 1', "
                         f"not {space_group!r}")
    letter, setting = m.group(1), (m.group(2) or "").upper()
    if letter == "H":
        return "R"
    if letter == "R" and setting == ":R":
        return "P"
    return letter


def centring_allows(letter: str, hkl) -> np.ndarray:
    """Per reflection (rows of hkl), True unless the lattice centring makes it absent."""
    if letter not in CENTRINGS:
        raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, not {letter!r}")
    h, k, l = np.asarray(hkl, dtype=np.int64).reshape(-1, 3).T
    rules = {"P": np.ones_like(h, bool), "A": (k + l) % 2 == 0, "B": (h + l) % 2 == 0, "C": (h + k) % 2 == 0,
             "I": (h + k + l) % 2 == 0, "F": ((h + k) % 2 == 0) & ((k + l) % 2 == 0),
             "R": (-h + k + l) % 3 == 0}
    return rules[letter]


_SMALL_MATRICES = np.array(list(itertools.product((-1, 0, 1), repeat=9)), float).reshape(-1, 3, 3)


def lattice_rotations(B, tol: float = 1e-3) -> np.ndarray:
    """The lattice's proper rotations in its own basis: the integer matrices M (entries -1, 0,
    1, det +1) that keep the reciprocal metric B^T B (relative tolerance tol). A @ M indexes the
    same spots as A (a symmetry-equivalent setting) for each of them."""
    B = np.asarray(B, float)
    g = B.T @ B
    m = _SMALL_MATRICES
    m = m[np.rint(np.linalg.det(m)) == 1]
    keep = np.abs(np.einsum("nji,jk,nkl->nil", m, g, m) - g).max(axis=(1, 2)) <= tol * np.abs(g).max()
    return m[keep]


def _nearest_rotation(m) -> np.ndarray:
    """The rotation closest to m (polar decomposition): drops a refined cell's scale or strain."""
    v, _, wt = np.linalg.svd(m)
    return v @ np.diag([1.0, 1.0, np.linalg.det(v @ wt)]) @ wt


def misorientation_deg(A1, A2, B) -> float:
    """The smallest rotation (degrees) between orientations A1 and A2 (about U B, each possibly
    with a slightly different refined cell) of the lattice of B, over its symmetry-equivalent
    settings."""
    B = np.asarray(B, float)
    b_inv = np.linalg.inv(B)
    u2 = _nearest_rotation(np.asarray(A2, float) @ b_inv)
    best = 180.0
    for m in lattice_rotations(B):
        u1 = _nearest_rotation(np.asarray(A1, float) @ m @ b_inv)
        cos = (np.trace(u1 @ u2.T) - 1) / 2
        best = min(best, math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    return best
