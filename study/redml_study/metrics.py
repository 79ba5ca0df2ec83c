"""Spot-list metrics: one-to-one matching within a radius, precision / recall / F1."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["match_spots", "SpotScore", "score_spots"]


def match_spots(found: np.ndarray, reference: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """One-to-one matching of two (n, 2) arrays of positions: pairs closer than `radius`,
    closest first, each spot used at most once. Returns an (m, 2) array of index pairs."""
    found = np.asarray(found, dtype=float).reshape(-1, 2)
    reference = np.asarray(reference, dtype=float).reshape(-1, 2)
    if not len(found) or not len(reference):
        return np.zeros((0, 2), dtype=int)
    pairs_i, pairs_j, dists = [], [], []
    order = np.argsort(reference[:, 1])
    ref_y = reference[order, 1]
    for i, (x, y) in enumerate(found):  # only references within radius in y
        lo, hi = np.searchsorted(ref_y, [y - radius, y + radius])
        cand = order[lo:hi]
        d = np.hypot(reference[cand, 0] - x, reference[cand, 1] - y)
        keep = d <= radius
        pairs_i.extend([i] * int(keep.sum()))
        pairs_j.extend(cand[keep].tolist())
        dists.extend(d[keep].tolist())
    used_i, used_j, out = set(), set(), []
    for k in np.argsort(dists, kind="stable"):
        i, j = pairs_i[k], pairs_j[k]
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j))
    return np.array(out, dtype=int).reshape(-1, 2)


@dataclass
class SpotScore:
    true_positives: int
    false_positives: int
    false_negatives: int
    frames: int

    @property
    def precision(self) -> float:
        n = self.true_positives + self.false_positives
        return self.true_positives / n if n else 1.0

    @property
    def recall(self) -> float:
        n = self.true_positives + self.false_negatives
        return self.true_positives / n if n else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_positives_per_frame(self) -> float:
        return self.false_positives / self.frames if self.frames else 0.0

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "false_positives_per_frame": self.false_positives_per_frame, "tp": self.true_positives,
                "fp": self.false_positives, "fn": self.false_negatives, "frames": self.frames}


def score_spots(found_per_frame, reference_per_frame, radius: float = 2.0) -> SpotScore:
    """Precision, recall, F1 and false positives per frame of spot lists (one (n, 2) array
    of positions per frame) against reference lists, matched one to one within radius."""
    if len(found_per_frame) != len(reference_per_frame):
        raise ValueError("found and reference must have one entry per frame")
    tp = fp = fn = 0
    for found, ref in zip(found_per_frame, reference_per_frame):
        m = len(match_spots(found, ref, radius))
        tp += m
        fp += len(np.reshape(found, (-1, 2))) - m
        fn += len(np.reshape(ref, (-1, 2))) - m
    return SpotScore(tp, fp, fn, len(found_per_frame))
