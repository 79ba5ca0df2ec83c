"""Training recipe of the shipped weights (seeded; a few minutes on 2 CPU cores).

    python -m redml_study.ml.train                  # writes redml_reduce/ml/weights/*.pt
    python -m redml_study.ml.train --out DIR        # elsewhere
    python -m redml_study.ml.train --compare --json compare.json   # transforms x patches x models x losses

Data (redml_study.ml.data, regenerated from the seeds, nothing downloaded): TRAIN_FRAMES
frames of each kind (strong, weak, artefact, mixed) with seed TRAIN_SEED to train on,
VAL_FRAMES of each with VAL_SEED to choose the spot threshold (the one of best F1 against
the simulator's detectable reflections). Training: random crops, half of them centred on a
lattice or artefact pixel; Adam (lr 0.005, cosine decay, gradients clipped at norm 1); planted artefacts weigh 3 in the
loss (recipe key artefact_weight), faint reflections
(SNR < 1) are ignored. Deterministic for a given torch build and thread count.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..metrics import score_spots
from .data import ARTEFACT, IGNORE, KINDS, LATTICE, make_set, make_sets
from redml_reduce.ml.infer import MODEL_FILES, WEIGHTS_DIR, Predictor, inputs_for, maps_of, peaks_from_map
from .losses import loss_fn
from redml_reduce.ml.models import build, n_parameters

TRAIN_SEED, VAL_SEED, TEST_SEED = 101, 202, 303
TRAIN_FRAMES, VAL_FRAMES = 6, 3
VERSION = 1

# Optional recipe keys (absent: the shipped behaviour): pos_weight (wbce's weight of lattice
# pixels, default 10), centre_share (share of crops centred on a lattice/artefact pixel, 0.5),
# extra_weak (that many more weak training frames, seed TRAIN_SEED, after the first
# TRAIN_FRAMES), max_weak_fp (spot-threshold rule, see choose_thresholds).
RECIPES = {
    "logistic": dict(specs=[{"arch": "logistic", "transform": "gfr", "patch": 9}], loss="wbce", steps=300, seeds=[0]),
    # v1's CNN was trained like the ensemble's members (positives x10, 600 steps, best-F1
    # threshold); this recipe trades its false positives for precision at the same F1
    # (docs/ml.md, "Recall at the same false-positive rate").
    "cnn": dict(specs=[{"arch": "cnn", "transform": "gfr+sqrt", "patch": 9, "width": 4}], loss="wbce", steps=2000,
                seeds=[0], pos_weight=3.0, extra_weak=12, max_weak_fp=1.0),
    "ensemble": dict(specs=[{"arch": "cnn", "transform": "gfr+sqrt", "patch": 9, "width": 4}] * 5, loss="wbce",
                     steps=600, seeds=[0, 1, 2, 3, 4]),
    "unet": dict(specs=[{"arch": "unet", "transform": "gfr+sqrt", "width": 4}], loss="wbce", steps=800, seeds=[0],
                 crop=128, batch=6, max_artefact_share=0.1),
}


class Prepared:
    """Model inputs and labels of a list of samples, with the truth for scoring."""

    def __add__(self, other: "Prepared") -> "Prepared":
        out = Prepared([])
        for k in ("samples", "inputs", "labels", "hot"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        return out

    def __init__(self, samples, bad_pixels: bool = False):
        """bad_pixels: mask the hot pixels too (label ARTEFACT on frames without planted
        features), as the pipeline's automatic bad-pixel mask does."""
        self.samples = samples
        self.inputs = [inputs_for(s.frame, s.mask | ((s.label == ARTEFACT) if bad_pixels and not KINDS[s.kind][2]
                                                     else False), s.geometry) for s in samples]
        self.labels = [s.label for s in samples]
        self.hot = [np.argwhere((s.label == LATTICE) | (s.label == ARTEFACT)) for s in samples]


def batch(rng: np.random.Generator, data: Prepared, n: int, size: int, artefact_weight: float = 3.0,
          centre_share: float = 0.5):
    xs, ts, ws, hits = [], [], [], []
    for _ in range(n):
        k = int(rng.integers(len(data.inputs)))
        inp, lab = data.inputs[k], data.labels[k]
        h, w = lab.shape
        if len(data.hot[k]) and rng.random() < centre_share:
            cy, cx = data.hot[k][rng.integers(len(data.hot[k]))]
            y0 = int(np.clip(cy - rng.integers(size), 0, h - size))
            x0 = int(np.clip(cx - rng.integers(size), 0, w - size))
        else:
            y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        sl = np.s_[y0:y0 + size, x0:x0 + size]
        xs.append(inp[:, y0:y0 + size, x0:x0 + size])
        t = lab[sl] == LATTICE
        ts.append(t)
        crop = lab[sl]
        ws.append(np.where(crop == IGNORE, 0.0, np.where(crop == ARTEFACT, artefact_weight, 1.0)))
        hits.append(t.sum() >= 20)
    f = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
    return f(xs), f(ts)[:, None], f(ws)[:, None], f(hits)


def train_one(spec: dict, loss: str, steps: int, seed: int, data: Prepared, crop: int = 64, batch_size: int = 16,
              lr: float = 0.005, log=None, artefact_weight: float = 3.0, pos_weight: float | None = None,
              centre_share: float = 0.5):
    """One model; pos_weight (wbce only; None: the loss's default 10) weighs lattice pixels,
    centre_share is the share of crops centred on a lattice or artefact pixel."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x7A1])
    model = build(spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    fn = loss_fn(loss)
    if pos_weight is not None:
        fn = functools.partial(fn, pos_weight=pos_weight)
    unet = spec["arch"] == "unet"
    for step in range(steps):
        x, t, w, hit = batch(rng, data, batch_size, crop, artefact_weight, centre_share)
        if unet:
            logits, hit_logit = model(x, with_hit=True)
            value = fn(logits, t, w) + 0.2 * torch.nn.functional.binary_cross_entropy_with_logits(hit_logit, hit)
        else:
            value = fn(model(x), t, w)
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"    step {step + 1}/{steps} loss {value.item():.4f}")
    return model.eval()


def train_member(spec: dict, seed: int, recipe: dict, data: Prepared, log=None):
    """One model of a recipe (RECIPES entry): its loss, steps and optional keys."""
    return train_one(spec, recipe["loss"], recipe["steps"], seed, data, recipe.get("crop", 64), recipe.get("batch", 16),
                     log=log, artefact_weight=recipe.get("artefact_weight", 3.0), pos_weight=recipe.get("pos_weight"),
                     centre_share=recipe.get("centre_share", 0.5))


THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
# finer grid (logits -3 ... 3 in steps of 0.1) for the false-positive-capped rule (max_weak_fp)
WEAK_GRID = tuple(round(1 / (1 + math.exp(-i / 10)), 4) for i in range(-30, 31))


def score_at(pred: Predictor, data: Prepared, thresholds=THRESHOLDS, kinds=None) -> dict:
    """{threshold: SpotScore} of the predictor's spots against the detectable reflections
    (on the frames of the given kinds; all by default)."""
    pick = [i for i, s in enumerate(data.samples) if kinds is None or s.kind in kinds]
    maps = [maps_of(pred._logits(torch.from_numpy(data.inputs[i]).to(pred.device), None)) for i in pick]
    truth = [data.samples[i].truth for i in pick]
    return {t: score_spots([peaks_from_map(m[0], t, m[2]) for m in maps], truth) for t in thresholds}


def classical_false_spots(data: Prepared) -> float:
    """Spots per artefact-only frame of the classical finder (all of them false)."""
    from redml_reduce.spots import find_spots

    frames = [s for s in data.samples if s.kind == "artefact"]
    return float(np.mean([len(find_spots(s.frame, s.mask)[0]) for s in frames]))


def choose_thresholds(pred: Predictor, recipe: dict, val: Prepared, log=print):
    """(spot threshold, ROI threshold, validation score at the spot threshold). Both are the
    threshold of best validation F1, except for a recipe with max_artefact_share (the
    global model, whose job is telling lattice spots from everything else): its spot
    threshold is the best-F1 one among those calling at most that share of the classical
    finder's false spots on the artefact-only validation frames, while its ROI keeps the
    best-F1 threshold (pixels it is unsure of stay exact). A recipe with max_weak_fp (the
    CNNs) takes as spot threshold the lowest of WEAK_GRID (so the highest recall) that calls
    at most that many false spots per weak validation frame (hot pixels masked, as the
    pipeline's bad-pixel mask does); its ROI keeps the best-F1 threshold."""
    scores = score_at(pred, val)
    best = max(scores, key=lambda t: scores[t].f1)
    cap_weak = recipe.get("max_weak_fp")
    if cap_weak is not None:
        weak = Prepared([s for s in val.samples if s.kind == "weak"], bad_pixels=True)
        wscores = score_at(pred, weak, WEAK_GRID)
        allowed = [t for t in WEAK_GRID if wscores[t].false_positives_per_frame <= cap_weak] or [max(WEAK_GRID)]
        spot = min(allowed)
        log(f"  weak validation frames (hot pixels masked): at most {cap_weak} false spots per frame -> spot threshold "
            f"{spot} (recall {wscores[spot].recall:.3f}, {wscores[spot].false_positives_per_frame:.2f} per frame)")
        return spot, best, score_at(pred, val, (spot,))[spot]
    share = recipe.get("max_artefact_share")
    if share is None:
        return best, best, scores[best]
    cap = share * classical_false_spots(val)
    false = score_at(pred, val, kinds=("artefact",))
    allowed = [t for t in scores if false[t].false_positives_per_frame <= cap] or [max(scores)]
    spot = max(allowed, key=lambda t: scores[t].f1)
    log(f"  artefact-only validation frames: at most {cap:.1f} false spots per frame -> spot threshold {spot} "
        f"({false[spot].false_positives_per_frame:.2f} per frame; at {best}: {false[best].false_positives_per_frame:.2f})")
    return spot, best, scores[spot]


def make_blob(name, recipe, models, threshold, roi_threshold=None) -> dict:
    roi_threshold = threshold if roi_threshold is None else roi_threshold
    extra = {k: recipe[k] for k in ("max_artefact_share", "pos_weight", "extra_weak", "centre_share", "max_weak_fp")
             if k in recipe}
    return {"version": VERSION, "name": name, "specs": recipe["specs"], "states": [m.state_dict() for m in models],
            "threshold": float(threshold), "roi_threshold": float(roi_threshold),
            "recipe": {"loss": recipe["loss"], "steps": recipe["steps"], "seeds": recipe["seeds"],
                       "crop": recipe.get("crop", 64), "batch": recipe.get("batch", 16),
                       "artefact_weight": recipe.get("artefact_weight", 3.0), "train_seed": TRAIN_SEED,
                       "val_seed": VAL_SEED, "train_frames_per_kind": TRAIN_FRAMES, "val_frames_per_kind": VAL_FRAMES,
                       "kinds": list(KINDS), "torch": str(torch.__version__), **extra}}


def fit(name, recipe, train, val, log=print, members=None):
    t0 = time.perf_counter()
    models = members or [train_member(spec, seed, recipe, train, log)
                         for spec, seed in zip(recipe["specs"], recipe["seeds"])]
    spot, roi, score = choose_thresholds(Predictor(make_blob(name, recipe, models, 0.5), "cpu"), recipe, val, log)
    blob = make_blob(name, recipe, models, spot, roi)
    log(f"  {name}: {sum(map(n_parameters, models))} parameters, threshold {spot} (ROI {roi}; validation F1 "
        f"{score.f1:.3f}), {time.perf_counter() - t0:.0f} s")
    return blob, models, score


def compare(train, val, steps: int, log=print) -> list:
    """Validation F1 / precision / recall of each transform x patch x model (wbce) and of
    each loss on the default CNN."""
    rows = []
    variants = [({"arch": a, "transform": t, "patch": p, "width": 4}, "wbce")
                for a in ("logistic", "cnn") for p in (9, 21) for t in ("raw", "sqrt", "log", "gfr")]
    variants += [({"arch": "cnn", "transform": "gfr", "patch": 9, "width": 4}, loss) for loss in ("focal", "dice")]
    for spec, loss in variants:
        recipe = {"specs": [spec], "loss": loss, "steps": steps, "seeds": [0]}
        _, models, s = fit(f"{spec['arch']}-{spec['patch']}-{spec['transform']}-{loss}", recipe, train, val, log)
        rows.append({**spec, "loss": loss, "parameters": n_parameters(models[0]), "f1": s.f1, "precision": s.precision,
                     "recall": s.recall, "false_positives_per_frame": s.false_positives_per_frame})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--compare", action="store_true", help="compare transforms, patch sizes, models and losses")
    ap.add_argument("--compare-steps", type=int, default=250)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it; 1 is the recipe)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    print(f"data: {TRAIN_FRAMES} + {VAL_FRAMES} frames per kind (seeds {TRAIN_SEED}, {VAL_SEED})", flush=True)
    train = Prepared(make_sets(TRAIN_FRAMES, TRAIN_SEED))
    val = Prepared(make_sets(VAL_FRAMES, VAL_SEED))
    print(f"  made in {time.perf_counter() - t0:.0f} s", flush=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.compare:
        rows = compare(train, val, args.compare_steps, log)
        print(f"\n{'model':9s} {'patch':>5s} {'transform':9s} {'loss':6s} {'params':>6s} {'F1':>6s} {'prec':>6s} "
              f"{'recall':>6s} {'FP/fr':>6s}")
        for r in rows:
            print(f"{r['arch']:9s} {r['patch']:5d} {r['transform']:9s} {r['loss']:6s} {r['parameters']:6d} {r['f1']:6.3f} "
                  f"{r['precision']:6.3f} {r['recall']:6.3f} {r['false_positives_per_frame']:6.1f}")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0}, indent=1))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    done, extra = {}, {}
    for name in args.models:
        recipe = RECIPES[name]
        members = None
        data = train
        if recipe.get("extra_weak"):  # more weak frames (seed TRAIN_SEED, after the first TRAIN_FRAMES)
            n = recipe["extra_weak"]
            if n not in extra:
                extra[n] = Prepared(make_set("weak", n, TRAIN_SEED, start=TRAIN_FRAMES))
            data = train + extra[n]
        same = ("loss", "steps", "pos_weight", "extra_weak", "centre_share", "artefact_weight", "crop", "batch")
        if name == "ensemble" and "cnn" in done and recipe["specs"][0] == RECIPES["cnn"]["specs"][0] \
                and recipe["seeds"][0] == RECIPES["cnn"]["seeds"][0] \
                and all(recipe.get(k) == RECIPES["cnn"].get(k) for k in same):
            # member 0 is the default CNN (same spec, seed, recipe): reuse it
            rest = [train_member(spec, seed, recipe, data, log)
                    for spec, seed in zip(recipe["specs"][1:], recipe["seeds"][1:])]
            members = [done["cnn"][0]] + rest
        print(f"{name}:", flush=True)
        blob, models, _ = fit(name, recipe, data, val, log, members)
        done[name] = models
        torch.save(blob, args.out / MODEL_FILES[name])
        print(f"  wrote {args.out / MODEL_FILES[name]} ({(args.out / MODEL_FILES[name]).stat().st_size} bytes)",
              flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
