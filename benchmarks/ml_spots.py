"""Learned spot finding against the classical finder: F1 against truth and DIALS, speed, ratio and yield.

    python benchmarks/ml_spots.py --quick --json ml.json    # shipped weights, no training; < 10 min on 2 cores
    python benchmarks/ml_spots.py --json ml.json            # more frames, every mask through DIALS

1. Spots against the simulator's truth (redml_reduce.ml.data, test seed 303, never trained
   on): strong, weak and artefact frames (blank shots with planted ice-ring spots,
   zingers, hot pixels, streaks, module-edge glow: every spot found there is false).
   Truth = reflections of expected SNR >= 1; one-to-one matching within 2 px.
2. Spots against DIALS on the real thaumatin stills (Pilatus 6M): its strong spots, and
   the strong spots that indexed (P41212, 58.6 58.6 151.5); DIALS runs once, cached.
3. Inference ms per JUNGFRAU 4M frame (one thread each: classical C++ finder, torch with
   torch.set_num_threads(1); median of repeats; ML times include the background model).
4. Each mask fed to the encoder (q=2 and sparse) through FrameWriter(roi=...), then the
   DIALS yield study (redml_reduce.yield_study): ratio and frames indexed relative to the
   uncompressed file, on a weak simulated JUNGFRAU 1M set; and (--artefact-yield, default
   without --quick) strong hits with planted artefacts at sparse with the classical, CNN
   and U-Net masks.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import thaumatin_paths  # noqa: E402

import redml_reduce as rr  # noqa: E402
from redml_reduce.metrics import SpotScore, score_spots  # noqa: E402
from redml_reduce.ml.data import make_set  # noqa: E402
from redml_reduce.ml.infer import load  # noqa: E402
from redml_reduce.ml.train import TEST_SEED  # noqa: E402
from redml_reduce.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator, jungfrau_4m  # noqa: E402
from redml_reduce.yardstick import Dials  # noqa: E402
from redml_reduce.yield_study import cached, render_table, series_from_simulator, study  # noqa: E402

MODELS = ("logistic", "cnn", "ensemble", "unet")
METHODS = ("classical",) + MODELS
THAUMATIN_CELL = ("P41212", (58.6, 58.6, 151.5, 90, 90, 90))
LYSOZYME = ("P43212", (79.1, 79.1, 37.9, 90, 90, 90))
YIELD_SET = (DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated)"),
             ShotSettings(background=1.0, water_ring=2.0, signal=150, hit_rate=0.8, distance_mm=70.0))


def classical_spots(frame, mask):
    peaks, _ = rr.find_spots(frame, mask, nthreads=1)
    return np.stack([peaks["x"], peaks["y"]], axis=1)


def all_spots(frames, masks, geometries):
    """{method: [(n, 2) per frame]}."""
    out = {"classical": [classical_spots(f, m) for f, m in zip(frames, masks)]}
    for name in MODELS:
        model = load(name)
        out[name] = [model.spots(f, m, g) for f, m, g in zip(frames, masks, geometries)]
    return out


def truth_scores(n_frames, log):
    results = {}
    for kind in ("strong", "weak", "artefact"):
        t0 = time.perf_counter()
        samples = make_set(kind, n_frames, TEST_SEED)
        found = all_spots([s.frame for s in samples], [s.mask for s in samples], [s.geometry for s in samples])
        truth = [s.truth for s in samples]
        results[kind] = {m: score_spots(found[m], truth).as_dict() for m in METHODS}
        for m in METHODS:
            results[kind][m]["spots_per_frame"] = float(np.mean([len(f) for f in found[m]]))
        log(f"  {kind}: {n_frames} frames, {time.perf_counter() - t0:.0f} s")
    return results


def dials_scores(n_frames, cache, log):
    from redml_reduce.ml.dials_labels import dials_labels

    paths = thaumatin_paths()
    if not paths:
        return None
    t0 = time.perf_counter()
    labels = dials_labels(paths, cache, THAUMATIN_CELL)
    log(f"  DIALS labels ({len(paths)} frames, cache {cache}): {time.perf_counter() - t0:.0f} s; "
        f"{int(labels.indexed_frames.sum())} frames indexed")
    pick = list(range(min(n_frames, len(paths))))
    frames = [labels.frames[i] for i in pick]
    masks = [labels.mask] * len(pick)
    found = all_spots(frames, masks, [labels.geometry] * len(pick))
    out = {}
    for ref_name, ref in (("strong", labels.strong), ("indexed", labels.indexed)):
        rows = [i for i in pick if ref_name == "strong" or labels.indexed_frames[i]]
        out[ref_name] = {m: score_spots([found[m][pick.index(i)] for i in rows], [ref[i] for i in rows]).as_dict()
                         for m in METHODS}
        out[ref_name]["frames"] = len(rows)
    return out


def timing(repeats, log):
    sim = StillSimulator(jungfrau_4m(), Crystal(), ShotSettings(background=1.0, water_ring=2.0, signal=120,
                                                                   hit_rate=1.0), seed=TEST_SEED)
    frame, mask, geom = sim.shot(0).frame, sim.mask, sim.geometry
    torch.set_num_threads(1)
    ms = {}

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    ms["classical"] = best(lambda: classical_spots(frame, mask))
    for name in MODELS:
        model = load(name)
        ms[name] = best(lambda: model.spots(frame, mask, geom))
    log(f"  timing on a {frame.shape} frame, {repeats} repeats")
    return ms, list(frame.shape)


def yield_scores(n_frames, codecs, workdir, log):
    det, settings = YIELD_SET
    sim = StillSimulator(det, Crystal(), settings, seed=TEST_SEED)
    series = cached(series_from_simulator(sim, n_frames, name="ml-weak"))
    res = study(series, codecs, Dials(*LYSOZYME, nproc=2, reuse=True), workdir, log=log, reuse=True)
    res.pop("_commands", None)
    return res


def artefact_series(n_frames):
    """Strong lysozyme hits with planted artefacts (redml_reduce.ml.data kind "mixed", one
    JUNGFRAU module, test seed) as a yield-study series."""
    from redml_reduce.ml.data import sample, simulator
    from redml_reduce.nxmx import pixel_mask_from_gaps
    from redml_reduce.yield_study import Series

    sim = simulator("mixed", TEST_SEED)
    frames = [sample(sim, "mixed", i, TEST_SEED).frame for i in range(n_frames)]
    return Series("ml-artefacts", n_frames, frames[0].shape, frames[0].dtype, sim.geometry, lambda: iter(frames),
                  pixel_mask_from_gaps(sim.mask), sim.nxmx_options())


def yield_rows(y):
    out = {c: {k: y[c].get(k) for k in ("ratio", "indexed", "indexed_uncompressed", "indexed_both", "lost", "gained",
                                        "cc_intensity", "dials")} for c in y}
    for r in out.values():
        r["lost"], r["gained"] = len(r["lost"] or []), len(r["gained"] or [])
        r["yield"] = r["indexed_both"] / r["indexed_uncompressed"] if r["indexed_uncompressed"] else float("nan")
    return out


def yield_table(rows, title):
    return table([[c, f"{r['ratio']:.2f}", f"{r['indexed']}/{r['indexed_uncompressed']}", f"{r['yield']:.3f}",
                   str(r["lost"]), str(r["gained"]), f"{r['cc_intensity']:.4f}"] for c, r in rows.items()],
                 ["codec", "ratio", "indexed", "yield", "lost", "gained", "CC"], title)


def table(rows, columns, title):
    return render_table([(c, "{}") for c in columns], rows, title)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--frames", type=int, default=None, help="test frames per kind (default 12; quick 4)")
    ap.add_argument("--dials-frames", type=int, default=None, help="thaumatin frames scored (default 19; quick 4)")
    ap.add_argument("--yield-frames", type=int, default=None, help="frames of the yield set (default 20; quick 6)")
    ap.add_argument("--no-yield", action="store_true", help="skip the DIALS yield study")
    ap.add_argument("--codecs", nargs="+", help="yield study codecs (redml_reduce.yield_study.CODECS names)")
    ap.add_argument("--artefact-yield", action=argparse.BooleanOptionalAction, default=None,
                    help="also hits with planted artefacts at sparse: classical, cnn and U-Net masks (default: on; "
                         "off with --quick)")
    ap.add_argument("--no-dials", action="store_true", help="skip the scores against DIALS labels")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("REDML_CACHE", Path.home() / ".cache/redml_reduce"))
                    / "ml_dials_thaumatin", help="DIALS labels of the thaumatin frames are kept here")
    ap.add_argument("--workdir", type=Path, default=None, help="yield study files (default: a temporary directory)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    n = args.frames or (4 if args.quick else 12)
    n_dials = args.dials_frames or (4 if args.quick else 19)
    n_yield = args.yield_frames or (6 if args.quick else 20)
    if args.artefact_yield is None:
        args.artefact_yield = not args.quick
    codecs = args.codecs or (["uncompressed", "redml-q2", "redml-q2-ml", "redml-sparse", "redml-sparse-ml"] if args.quick else
              ["uncompressed"] + [f"redml-{q}{s}" for q in ("q2", "sparse")
                                  for s in ("", "-logistic", "-ml", "-ensemble", "-unet", "-union")])
    log = lambda m: print(m, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    out = {"argv": sys.argv, "frames_per_kind": n, "test_seed": TEST_SEED}

    log("1. spots against simulator truth")
    truth = truth_scores(n, log)
    out["truth"] = truth
    rows = [[kind, m, f"{r['f1']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
             f"{r['false_positives_per_frame']:.1f}", f"{r['spots_per_frame']:.1f}"]
            for kind, per in truth.items() for m, r in per.items()]
    print(table(rows, ["frames", "method", "F1", "precision", "recall", "FP/frame", "spots/frame"],
                f"\nagainst simulator truth (SNR >= 1), {n} frames per kind"), flush=True)

    if not args.no_dials:
        log("2. spots against DIALS labels (thaumatin)")
        d = dials_scores(n_dials, args.cache, log)
        out["dials"] = d
        if d is not None:
            rows = [[ref, m, f"{per[m]['f1']:.3f}", f"{per[m]['precision']:.3f}", f"{per[m]['recall']:.3f}",
                     f"{per[m]['false_positives_per_frame']:.1f}", str(per["frames"])]
                    for ref, per in d.items() for m in METHODS]
            print(table(rows, ["DIALS labels", "method", "F1", "precision", "recall", "unmatched/frame", "frames"],
                        "\nagainst DIALS on thaumatin (Pilatus 6M)"), flush=True)

    log("3. inference time")
    ms, shape = timing(2 if args.quick else 5, log)
    out["ms_per_frame"], out["timing_shape"] = ms, shape
    print(table([[m, f"{v:.0f}", f"{v / ms['classical']:.1f}x"] for m, v in ms.items()],
                ["method", "ms/frame", "vs classical"], f"\nms per {shape[0]}x{shape[1]} frame, one thread"), flush=True)

    if not args.no_yield:
        log("4. ratio and DIALS yield per mask")
        tmp = None
        work = args.workdir
        if work is None:
            tmp = tempfile.TemporaryDirectory(prefix="redml-ml-yield-")
            work = Path(tmp.name)
        out["yield"] = yield_rows(yield_scores(n_yield, codecs, work, log))
        print(yield_table(out["yield"], f"\nratio and DIALS yield, weak JUNGFRAU 1M set ({n_yield} frames)"), flush=True)
        if args.artefact_yield:
            series = artefact_series(n_yield)
            y = study(series, ["uncompressed", "redml-sparse", "redml-sparse-ml", "redml-sparse-unet"],
                      Dials(*LYSOZYME, nproc=2, reuse=True), work / "artefacts", log=log, reuse=True)
            y.pop("_commands", None)
            out["yield_artefacts"] = yield_rows(y)
            print(yield_table(out["yield_artefacts"], f"\nratio and DIALS yield, hits with planted artefacts "
                                                      f"({n_yield} frames, one JUNGFRAU module)"), flush=True)
        if tmp is not None:
            tmp.cleanup()

    pooled = {m: SpotScore(*(sum(truth[k][m][c] for k in truth) for c in ("tp", "fp", "fn")),
                           sum(truth[k][m]["frames"] for k in truth)) for m in METHODS}
    out["f1_truth"] = {m: pooled[m].f1 for m in METHODS}  # strong, weak and artefact frames pooled
    out["f1_truth_by_kind"] = {k: {m: truth[k][m]["f1"] for m in METHODS} for k in ("strong", "weak")}
    out["recall_weak"] = {m: truth["weak"][m]["recall"] for m in METHODS}
    out["false_positives_weak"] = {m: truth["weak"][m]["false_positives_per_frame"] for m in METHODS}
    out["false_spots_artefacts"] = {m: truth["artefact"][m]["false_positives_per_frame"] for m in METHODS}
    out["seconds"] = time.perf_counter() - t_start
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
        log(f"json: {args.json}")
    log(f"total {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
