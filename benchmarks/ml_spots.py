"""Learned spot finding against the classical finder: F1 against truth and DIALS, speed, ratio and yield.

    python benchmarks/ml_spots.py --quick --json ml.json    # shipped weights, no training; < 10 min on 2 cores
    python benchmarks/ml_spots.py --json ml.json            # more frames, every mask through DIALS

1. Spots against the simulator's truth (redml_study.ml.data, test seed 303, never trained
   on): strong, weak and artefact frames (blank shots with planted ice-ring spots,
   zingers, hot pixels, streaks, module-edge glow: every spot found there is false).
   Truth = reflections of expected SNR >= 1; one-to-one matching within 2 px.
2. Spots against DIALS on the real thaumatin stills (Pilatus 6M): its strong spots, and
   the strong spots that indexed (P41212, 58.6 58.6 151.5); DIALS runs once, cached.
1b. Weak frames: recall against false positives per frame as each method's threshold
   varies (classical: DIALS's sigma_b), and the best recall within each false-positive
   budget: the comparison at the same false-positive rate.
3. Inference ms per JUNGFRAU 4M frame, one thread (classical C++ finder nthreads=1, torch
   set_num_threads(1)) and all cores; medians of interleaved repeats and of the per-repeat
   ratio to the classical finder; ML times include the background model and the peaks.
4. Each mask fed to the encoder (q=2 and sparse) through FrameWriter(roi=...), then the
   DIALS yield study (redml_study.yield_study): ratio and frames indexed relative to the
   uncompressed file, on a weak simulated JUNGFRAU 1M set; on ordinary strong hits (one
   JUNGFRAU module) with the classical, CNN and U-Net masks; and (--artefact-yield, default
   without --quick) on strong hits with planted artefacts, the same masks.
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
from redml_study.metrics import SpotScore, score_spots  # noqa: E402
from redml_study.ml.data import make_set  # noqa: E402
from redml_reduce.ml.infer import inputs_for, load, peaks_from_map  # noqa: E402
from redml_reduce.ml.models import Transform  # noqa: E402
from redml_study.ml.train import TEST_SEED, WEAK_GRID  # noqa: E402
from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator, jungfrau_4m  # noqa: E402
from redml_study.yardstick import Dials  # noqa: E402
from redml_study.yield_study import cached, render_table, series_from_simulator, study  # noqa: E402

MODELS = ("logistic", "cnn", "ensemble", "unet")
METHODS = ("classical",) + MODELS
THAUMATIN_CELL = ("P41212", (58.6, 58.6, 151.5, 90, 90, 90))
LYSOZYME = ("P43212", (79.1, 79.1, 37.9, 90, 90, 90))
YIELD_SET = (DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated)"),
             ShotSettings(background=1.0, water_ring=2.0, signal=150, hit_rate=0.8, distance_mm=70.0))


def classical_spots(frame, mask, threads=1, **settings):
    peaks, _ = rr.find_spots(frame, mask, nthreads=threads, **settings)
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


CLASSICAL_SIGMA_B = (6.0, 5.0, 4.0, 3.0, 2.5, 2.25, 2.0, 1.75, 1.5, 1.25)   # DIALS dispersion threshold; 6 is the default
MODEL_THRESHOLDS = WEAK_GRID + (0.97, 0.98, 0.99, 0.995)  # logits -3 ... 3 by 0.1, then the U-Net's range
FP_BUDGETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
MATCHED_FILTER_SIGMA = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.25, 6.5, 7.0)


def operating_curves(n_frames, log):
    """Recall against false positives per frame on the weak frames (gaps and hot pixels
    masked): the classical finder over its dispersion threshold sigma_b, the matched filter
    over its SNR, each model over its probability threshold. Then,
    per false-positive budget, the best recall each method reaches within it: the
    comparison at the same false-positive rate."""
    from redml_study.ml.data import simulator

    t0 = time.perf_counter()
    samples = make_set("weak", n_frames, TEST_SEED)
    # every method gets the mask the pipeline has: gaps and the detector's hot pixels (the
    # automatic bad-pixel mask finds those), so no one's false positives are a hot pixel
    hot = simulator("weak", TEST_SEED).hot
    for s in samples:
        s.mask = s.mask | hot
    truth = [s.truth for s in samples]
    curves = {"classical": []}
    for sb in CLASSICAL_SIGMA_B:
        found = [classical_spots(s.frame, s.mask, 0, sigma_b=sb) for s in samples]
        sc = score_spots(found, truth)
        curves["classical"].append({"setting": f"sigma_b={sb}", "recall": sc.recall,
                                    "fp_per_frame": sc.false_positives_per_frame})
    # The matched filter (Gaussian-filter ratio, the models' first input): its local maxima
    # over a threshold in sigma. The optimal linear detector of a known spot profile in
    # noise, so the reference for what any local detector can reach.
    gfr = Transform("gfr").eval()
    with torch.inference_mode():
        snr = [gfr(torch.from_numpy(inputs_for(s.frame, s.mask, s.geometry, resolution=False))[None])[0, 0]
               for s in samples]
    curves["matched filter"] = []
    for t in MATCHED_FILTER_SIGMA:
        sc = score_spots([peaks_from_map(m.clamp(min=0), t, m) for m in snr], truth)
        curves["matched filter"].append({"setting": f"snr>={t}", "recall": sc.recall,
                                         "fp_per_frame": sc.false_positives_per_frame})
    for name in MODELS:
        model = load(name)
        maps = [model.maps(s.frame, s.mask, s.geometry) for s in samples]
        curves[name] = []
        for t in sorted(set(MODEL_THRESHOLDS) | {model.threshold}):
            sc = score_spots([model.spots(None, threshold=t, maps=m) for m in maps], truth)
            curves[name].append({"setting": f"threshold={t}", "recall": sc.recall,
                                 "fp_per_frame": sc.false_positives_per_frame})
    at_budget = {str(b): {m: max([p["recall"] for p in pts if p["fp_per_frame"] <= b], default=0.0)
                          for m, pts in curves.items()} for b in FP_BUDGETS}
    log(f"  operating curves, {n_frames} weak frames: {time.perf_counter() - t0:.0f} s")
    return curves, at_budget


def dials_scores(n_frames, cache, log):
    from redml_study.ml.dials_labels import dials_labels

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


def timing(repeats, log, threads=1):
    """Median ms per 4M frame of each method and the median of its per-repeat ratio to the
    classical finder, timed interleaved (classical, then each model, in every repeat) so
    that the shared machine's load hits all of them alike. threads: torch's and the C++
    finder's (0: all cores)."""
    sim = StillSimulator(jungfrau_4m(), Crystal(), ShotSettings(background=1.0, water_ring=2.0, signal=120,
                                                                   hit_rate=1.0), seed=TEST_SEED)
    frame, mask, geom = sim.shot(0).frame, sim.mask, sim.geometry
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count())
    runs = {"classical": lambda: classical_spots(frame, mask, threads)}
    for name in MODELS:
        model = load(name)
        runs[name] = lambda model=model: model.spots(frame, mask, geom)
    for fn in runs.values():
        fn()  # warm-up (caches, weights)
    times = {m: [] for m in runs}
    for _ in range(repeats):
        for m, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    ms = {m: 1e3 * statistics.median(v) for m, v in times.items()}
    ratio = {m: statistics.median([a / c for a, c in zip(v, times["classical"])]) for m, v in times.items()}
    log(f"  timing on a {frame.shape} frame, {repeats} interleaved repeats, threads={threads or os.cpu_count()}")
    return ms, ratio, list(frame.shape)


def yield_scores(n_frames, codecs, workdir, log):
    det, settings = YIELD_SET
    sim = StillSimulator(det, Crystal(), settings, seed=TEST_SEED)
    series = cached(series_from_simulator(sim, n_frames, name="ml-weak"))
    res = study(series, codecs, Dials(*LYSOZYME, nproc=2, reuse=True), workdir, log=log, reuse=True)
    res.pop("_commands", None)
    return res


def module_series(kind, n_frames):
    """n frames of one kind of redml_study.ml.data (one JUNGFRAU module, test seed) as a
    yield-study series: "strong" = ordinary lysozyme hits, "mixed" = the same with planted
    artefacts."""
    from redml_study.ml.data import sample, simulator
    from redml_reduce.formats.nxmx import pixel_mask_from_gaps
    from redml_study.yield_study import Series

    sim = simulator(kind, TEST_SEED)
    frames = [sample(sim, kind, i, TEST_SEED).frame for i in range(n_frames)]
    return Series(f"ml-{kind}", n_frames, frames[0].shape, frames[0].dtype, sim.geometry, lambda: iter(frames),
                  pixel_mask_from_gaps(sim.mask), sim.nxmx_options())


MODULE_CODECS = ["uncompressed", "redml-q2", "redml-q2-ml", "redml-q2-unet", "redml-sparse", "redml-sparse-ml",
                 "redml-sparse-unet"]


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
    ap.add_argument("--codecs", nargs="+", help="yield study codecs (redml_study.yield_study.CODECS names)")
    ap.add_argument("--artefact-yield", action=argparse.BooleanOptionalAction, default=None,
                    help="also hits with planted artefacts at sparse: classical, cnn and U-Net masks (default: on; "
                         "off with --quick)")
    ap.add_argument("--no-dials", action="store_true", help="skip the scores against DIALS labels")
    ap.add_argument("--skip", nargs="+", default=[], choices=["truth", "curves", "dials", "timing", "yield"],
                    help="parts to leave out (to rerun one part alone)")
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
    codecs = args.codecs or (["uncompressed", "redml-sparse", "redml-sparse-ml"] if args.quick else
              ["uncompressed"] + [f"redml-{q}{s}" for q in ("q2", "sparse")
                                  for s in ("", "-logistic", "-ml", "-ensemble", "-unet", "-union")])
    log = lambda m: print(m, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    out = {"argv": sys.argv, "frames_per_kind": n, "test_seed": TEST_SEED}

    skip = set(args.skip) | ({"dials"} if args.no_dials else set()) | ({"yield"} if args.no_yield else set())
    truth = None
    if "truth" not in skip:
        log("1. spots against simulator truth")
        truth = truth_scores(n, log)
        out["truth"] = truth
        rows = [[kind, m, f"{r['f1']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                 f"{r['false_positives_per_frame']:.1f}", f"{r['spots_per_frame']:.1f}"]
                for kind, per in truth.items() for m, r in per.items()]
        print(table(rows, ["frames", "method", "F1", "precision", "recall", "FP/frame", "spots/frame"],
                    f"\nagainst simulator truth (SNR >= 1), {n} frames per kind"), flush=True)

    if "curves" not in skip:
        log("1b. recall against false positives on the weak frames")
        curves, at_budget = operating_curves(n, log)
        out["weak_curves"], out["recall_weak_at_fp"] = curves, at_budget
        cols = list(METHODS) + ["matched filter"]
        print(table([[b] + [f"{r[m]:.3f}" for m in cols] + [f"{max(r[m] for m in MODELS) - r['classical']:+.3f}"]
                     for b, r in at_budget.items()], ["FP/frame <="] + cols + ["best model - classical"],
                    f"\nweak frames: best recall within a false-positive budget ({n} frames; classical over sigma_b "
                    f"{CLASSICAL_SIGMA_B[0]}..{CLASSICAL_SIGMA_B[-1]}, models over their threshold)"), flush=True)

    if "dials" not in skip:
        log("2. spots against DIALS labels (thaumatin)")
        d = dials_scores(n_dials, args.cache, log)
        out["dials"] = d
        if d is not None:
            rows = [[ref, m, f"{per[m]['f1']:.3f}", f"{per[m]['precision']:.3f}", f"{per[m]['recall']:.3f}",
                     f"{per[m]['false_positives_per_frame']:.1f}", str(per["frames"])]
                    for ref, per in d.items() for m in METHODS]
            print(table(rows, ["DIALS labels", "method", "F1", "precision", "recall", "unmatched/frame", "frames"],
                        "\nagainst DIALS on thaumatin (Pilatus 6M)"), flush=True)

    if "timing" not in skip:
        log("3. inference time")
        repeats = 5 if args.quick else 15
        ms, ratio, shape = timing(repeats, log, threads=1)
        ms_all, ratio_all, _ = timing(max(repeats // 2, 3), log, threads=0)
        out["ms_per_frame"], out["ratio_to_classical"], out["timing_shape"] = ms, ratio, shape
        out["ms_per_frame_all_cores"], out["ratio_to_classical_all_cores"] = ms_all, ratio_all
        print(table([[m, f"{ms[m]:.0f}", f"{ratio[m]:.2f}x", f"{ms_all[m]:.0f}", f"{ratio_all[m]:.2f}x"] for m in ms],
                    ["method", "ms/frame (1 thread)", "vs classical", f"ms/frame ({os.cpu_count()} threads)", "vs classical"],
                    f"\nms per {shape[0]}x{shape[1]} frame (medians of interleaved repeats)"), flush=True)

    if "yield" not in skip:
        log("4. ratio and DIALS yield per mask")
        tmp = None
        work = args.workdir
        if work is None:
            tmp = tempfile.TemporaryDirectory(prefix="redml-ml-yield-")
            work = Path(tmp.name)
        out["yield"] = yield_rows(yield_scores(n_yield, codecs, work, log))
        print(yield_table(out["yield"], f"\nratio and DIALS yield, weak JUNGFRAU 1M set ({n_yield} frames)"), flush=True)
        for kind, key, what in (("strong", "yield_ordinary", "ordinary lysozyme hits"),
                                ("mixed", "yield_artefacts", "hits with planted artefacts")):
            if kind == "mixed" and not args.artefact_yield:
                continue
            module_codecs = [c for c in MODULE_CODECS if not (args.quick and "-q2" in c)]
            y = study(module_series(kind, n_yield), module_codecs, Dials(*LYSOZYME, nproc=2, reuse=True),
                      work / kind, log=log, reuse=True)
            y.pop("_commands", None)
            out[key] = yield_rows(y)
            print(yield_table(out[key], f"\nratio and DIALS yield, {what} ({n_yield} frames, one JUNGFRAU module)"),
                  flush=True)
        if tmp is not None:
            tmp.cleanup()

    if truth is not None:
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
