"""Unsupervised look at spot patches: dictionary learning and KernelPCA (an experiment, not a product path).

    python benchmarks/ml_unsupervised.py [--json PATH] [--figure PNG]

Patches of 9 x 9 pixels of simulated frames (redml_study.ml.data, seed 404; transform:
Anscombe difference against the radial background) in three classes: centred on a true
reflection (SNR >= 1), on a planted spot-like artefact (ice-ring spot, zinger, hot pixel),
or on a random background pixel. Without using the labels:
  * a dictionary (scikit-learn MiniBatchDictionaryLearning, 16 atoms, L1 sparse codes) is
    fitted on all patches; each patch scores by the L1 norm of its code (how much
    structure it has). AUC of that score: reflections against background, and against
    artefacts.
  * KernelPCA (RBF) maps the patches to 2-D; a logistic regression on those two coordinates
    (5-fold cross-validated, labels used only here, to measure) says how separable the
    classes are in the embedding.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from redml_study.ml.data import LATTICE, make_set
from redml_reduce.ml.features import prepare

SEED = 404
HALF = 4


def patches_of(samples, rng, per_frame=60):
    X, y = [], []
    for s in samples:
        excess, bg = prepare(s.frame, s.mask, s.geometry)
        t = 2 * (np.sqrt(np.maximum(excess + bg, 0) + 0.375) - np.sqrt(bg + 0.375))
        t = np.pad(t, HALF)
        h, w = s.frame.shape
        groups = {0: np.argwhere(s.label == 0), 1: np.floor(s.truth[:, ::-1]).astype(int),
                  2: np.floor(s.artefacts[:, ::-1]).astype(int)}
        for cls, pos in groups.items():
            pos = pos[(pos[:, 0] >= 0) & (pos[:, 0] < h) & (pos[:, 1] >= 0) & (pos[:, 1] < w)]
            if cls == 1:
                pos = pos[s.label[pos[:, 0], pos[:, 1]] == LATTICE]
            if not len(pos):
                continue
            for i, j in pos[rng.choice(len(pos), min(per_frame, len(pos)), replace=False)]:
                X.append(t[i:i + 2 * HALF + 1, j:j + 2 * HALF + 1].ravel())
                y.append(cls)
    return np.clip(np.array(X, np.float32), -10, 30), np.array(y)


def auc(score, positive):
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main(argv=None) -> int:
    from sklearn.decomposition import KernelPCA, MiniBatchDictionaryLearning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(SEED)
    samples = make_set("strong", 2, SEED) + make_set("weak", 2, SEED) + make_set("mixed", 2, SEED)
    X, y = patches_of(samples, rng)
    counts = {name: int((y == c).sum()) for c, name in enumerate(("background", "reflection", "artefact"))}
    dico = MiniBatchDictionaryLearning(n_components=16, alpha=1.0, batch_size=64, random_state=SEED, max_iter=20)
    codes = dico.fit(X).transform(X)
    score = np.abs(codes).sum(1)
    out = {"patches": counts, "patch": 2 * HALF + 1,
           "dictionary_auc": {"reflection_vs_background": auc(score[y != 2], y[y != 2] == 1),
                              "reflection_vs_artefact": auc(score[y != 0], y[y != 0] == 1)}}
    emb = KernelPCA(n_components=2, kernel="rbf", gamma=1.0 / X.shape[1], random_state=SEED).fit_transform(X)
    clf = LogisticRegression(max_iter=1000)
    out["kernel_pca_cv_accuracy"] = {
        "reflection_vs_background": float(cross_val_score(clf, emb[y != 2], y[y != 2], cv=5).mean()),
        "reflection_vs_artefact": float(cross_val_score(clf, emb[y != 0], y[y != 0], cv=5).mean()),
        "chance_reflection_vs_background": float(max(np.mean(y[y != 2] == 1), np.mean(y[y != 2] == 0))),
        "chance_reflection_vs_artefact": float(max(np.mean(y[y != 0] == 1), np.mean(y[y != 0] == 2)))}
    print(json.dumps(out, indent=1))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for c, name in enumerate(("background", "reflection", "artefact")):
            ax.scatter(emb[y == c, 0], emb[y == c, 1], s=4, label=name, alpha=0.6)
        ax.set_xlabel("KernelPCA 1")
        ax.set_ylabel("KernelPCA 2")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
