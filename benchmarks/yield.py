"""Compression ratio against DIALS indexing yield and intensity fidelity, all codecs in one run.

    python benchmarks/yield.py --quick --json yield.json     # a small simulated set, < 10 min on 2 cores
    python benchmarks/yield.py --json yield.json             # 100 shots x 4 simulated settings + thaumatin
    python benchmarks/yield.py --datasets sim-integrating    # 100 integrating shots (ADU, read noise)
    python benchmarks/yield.py --frames 30 --datasets thaumatin sim-weak

Each data set is written once per codec through the same NXmx writer (redml_reduce.FrameWriter),
read back and compared with the original frames; DIALS 3.12 (Debian) indexes every file
whose frames differ from the original (dials.import, find_spots, ssx_index with the known
cell) and integrates the uncompressed file's crystals on it (ssx_integrate,
algorithm=stills). Prints one table per data set, writes JSON (top level: each codec
summed over the data sets, cc_intensity the worst data set's) and a figure (PNG).
Simulated data: redml_study.sim (lysozyme, P43212, JUNGFRAU 4M geometry). sim-integrating: the
same simulator's shots as an integrating detector writes them (redml_study.detector.
IntegratingDetector: pedestal-subtracted int32 ADU at 20 ADU per photon, read noise 0.2 photon,
so about half the background pixels negative; module gaps at the dtype's minimum). On that set
the codec names are the usual ones with the detector's settings applied: every redml codec gets
gain=20 (ADU per photon), markers="extremes" and read_noise="auto"; SZ3 runs at absolute bounds
in ADU (sz3-abs10/20/40/80: 0.5, 1, 2, 4 photons), unclipped (negative values are the
detector's read noise, which the uncompressed file keeps too); DIALS is told the gain
(spotfinder.threshold.dispersion.gain, integration.summation.detector_gain) and uses its
simple background model, as for any detector that is not a photon counter; the NXmx trusted
range starts above the gap marker. pyfai-sparsify (benchmarks/peers_pyfai.py) runs where pyFAI
and an OpenCL device are installed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import peers_pyfai
from redml_study.detector import IntegratingDetector
from redml_study.sim import Crystal, DetectorLayout, ShotSettings, StillSimulator, jungfrau_4m
from redml_study.yardstick import Dials
from redml_study.yield_study import (DEFAULT_CODECS, cached, format_table, plot, series_from_files,
                                      series_from_simulator, study)

THAUMATIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "thaumatin_grid"
LYSOZYME = ("P43212", (79.1, 79.1, 37.9, 90, 90, 90))
THAUMATIN_CELL = ("P41212", (58.6, 58.6, 151.5, 90, 90, 90))

# name -> (detector, shot settings); 'weak' puts most spots at SNR ~1-2.
SIMULATED = {
    "sim-lowbg": (jungfrau_4m(), ShotSettings(background=0.3, water_ring=0.6, signal=2000, hit_rate=0.3)),
    "sim-highbg": (jungfrau_4m(), ShotSettings(background=4.0, water_ring=6.0, signal=2000, hit_rate=0.3)),
    "sim-weak": (jungfrau_4m(), ShotSettings(background=1.0, water_ring=2.0, signal=120, hit_rate=0.3)),
    # Quick: two modules (a JUNGFRAU 1M) closer to the sample, mostly hits.
    "sim-quick": (DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated)"),
                  ShotSettings(background=2.0, water_ring=3.0, signal=2000, hit_rate=0.75, distance_mm=60.0)),
    # An integrating detector's frames (INTEGRATING) of a JUNGFRAU 1M: a low background, where
    # about half the pixels are negative after pedestal subtraction.
    "sim-integrating": (DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated, integrating)"),
                        ShotSettings(background=0.3, water_ring=0.6, signal=1000, hit_rate=0.75, distance_mm=100.0)),
}
# Simulated sets whose frames an integrating detector writes (the others: photon counts).
INTEGRATING = {"sim-integrating": IntegratingDetector(gain=20.0, read_noise=0.2, dtype="int32")}


# Each simulated set has its own seed (base seed + offset), whatever the order it runs in,
# so the yield and fidelity benchmarks see the same shots and can share DIALS runs.
SEED_OFFSET = {"sim-lowbg": 0, "sim-highbg": 1, "sim-weak": 2, "sim-quick": 0, "sim-integrating": 3}


def simulator(name: str, seed: int) -> StillSimulator:
    detector, settings = SIMULATED[name]
    return StillSimulator(detector, Crystal(), settings, seed=seed + SEED_OFFSET[name])


def simulated_series(name: str, seed: int, frames: int):
    """The Series of a simulated set: photon counts, or INTEGRATING's frames of the same shots."""
    return series_from_simulator(simulator(name, seed), frames, name=name, detector=INTEGRATING.get(name))


def dials_for(name: str, cell: tuple, nproc: int, reuse: bool) -> Dials:
    """DIALS for one data set, told an integrating detector's gain (IntegratingDetector.dials_options)."""
    options = INTEGRATING[name].dials_options() if name in INTEGRATING else {}
    return Dials(*cell, nproc=nproc, reuse=reuse, **options)


QUICK_CODECS = ["uncompressed", "bslz4", "bszstd", "zstd", "sz3-abs0.5", "sz3-abs1", "sz3-abs2", "redml-lossless",
                "redml-q0.5", "redml-q1", "redml-q2", "redml-q4", "redml-draw-q4", "redml-sparse", peers_pyfai.NAME]
# On an integrating set: SZ3's bounds in ADU (0.5 to 4 photons at 20 ADU), the integrating reconstructions.
INTEGRATING_CODECS = ["uncompressed", "bslz4", "bszstd", "zstd", "sz3-abs10", "sz3-abs20", "sz3-abs40", "sz3-abs80",
                      "redml-lossless", "redml-q1", "redml-q2", "redml-q4", "redml-mean-q2", "redml-mean-q4",
                      "redml-mean-q8", "redml-draw-q2", "redml-draw-q4", "redml-draw-q8", "redml-sparse",
                      peers_pyfai.NAME]


def codecs_for(name: str, given, quick: bool) -> list:
    """The codecs run on one data set: the ones given, or the set's defaults."""
    if given:
        return list(given)
    if name in INTEGRATING:
        return INTEGRATING_CODECS
    return QUICK_CODECS if quick else DEFAULT_CODECS + [peers_pyfai.NAME]


def snr_summary(truth) -> dict:
    if truth is None or len(truth) == 0:
        return {}
    snr = truth["intensity"] / np.sqrt(truth["intensity"] + truth["background"])
    return {"reflections": int(len(truth)), "median_snr": float(np.median(snr)),
            "fraction_snr_below_2": float(np.mean(snr < 2))}


def summarize(all_results: dict) -> dict:
    codecs = {c for r in all_results.values() for c in r if not c.startswith("_")}
    out = {}
    for codec in sorted(codecs):
        rows = [r[codec] for r in all_results.values() if codec in r]
        raw, stored = sum(r["raw_bytes"] for r in rows), sum(r["stored_bytes"] for r in rows)
        indexed_u = sum(r["indexed_uncompressed"] for r in rows)
        both = sum(r["indexed_both"] for r in rows)
        ccs = [r["cc_intensity"] for r in rows if not np.isnan(r["cc_intensity"])]
        out[codec] = {"ratio": raw / stored, "indexed": sum(r["indexed"] for r in rows), "indexed_uncompressed": indexed_u,
                      "indexed_both": both, "yield": both / indexed_u if indexed_u else float("nan"),
                      "lost": sum(len(r["lost"]) for r in rows), "gained": sum(len(r["gained"]) for r in rows),
                      "cc_intensity": min(ccs) if ccs else float("nan"),
                      "reflections_matched": sum(r["reflections_matched"] for r in rows),
                      "reflections_uncompressed": sum(r["reflections_uncompressed"] for r in rows)}
    return out


def write_json(path, all_results, meta, figure, t_start) -> None:
    out = {**summarize(all_results), "datasets": all_results, "meta": meta, "figure": figure, "note": peers_pyfai.NOTE,
           "seconds": time.perf_counter() - t_start, "argv": sys.argv}
    Path(path).write_text(json.dumps(out, indent=1, default=float))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small simulated set (JUNGFRAU 1M, 8 shots)")
    p.add_argument("--frames", type=int, default=None, help="shots per simulated set (default 100; quick 10)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help=f"from {', '.join(SIMULATED)}, thaumatin (default: all but sim-quick; quick: sim-quick)")
    p.add_argument("--codecs", nargs="+", default=None, help="default: all; quick: the issue's list and draw-q4; "
                   "sim-integrating: INTEGRATING_CODECS")
    p.add_argument("--nproc", type=int, default=2, help="processes per DIALS program")
    p.add_argument("--dials-identical", action="store_true",
                   help="run DIALS on lossless files too (their frames equal the original's)")
    p.add_argument("--workdir", default=None, help="keep the files and DIALS runs here")
    p.add_argument("--resume", action="store_true", help="with --workdir: reuse files and DIALS runs finished there")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="PNG path (default: beside the JSON, or yield.png)")
    args = p.parse_args(argv)
    datasets = args.datasets or (["sim-quick"] if args.quick else ["sim-lowbg", "sim-highbg", "sim-weak",
                                                                  "sim-integrating", "thaumatin"])
    frames = args.frames or (8 if args.quick else 100)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="redml-yield-")
        work = Path(tmp.name)
    else:
        work = Path(args.workdir)
    t_start = time.perf_counter()
    all_results, meta = {}, {}
    for name in datasets:
        if name == "thaumatin":
            paths = sorted(THAUMATIN.glob("*.cbf.bz2"))
            if not paths:
                print(f"no thaumatin frames in {THAUMATIN}", file=sys.stderr)
                return 2
            series = series_from_files(paths, name="thaumatin")
            dials = Dials(*THAUMATIN_CELL, nproc=args.nproc, reuse=args.resume)
            meta[name] = {"source": str(THAUMATIN), "frames": series.n, "detector": "Pilatus 6M (real data)"}
        elif name in SIMULATED:
            series = simulated_series(name, args.seed, frames)
            dials = dials_for(name, LYSOZYME, args.nproc, args.resume)
            meta[name] = {"frames": series.n, "hits": int(series.hits.sum()), "detector": SIMULATED[name][0].name,
                          "shape": list(series.shape), "settings": SIMULATED[name][1].__dict__,
                          **snr_summary(series.truth)}
            if name in INTEGRATING:
                meta[name].update(integrating=INTEGRATING[name].__dict__, redml_options=series.redml_options,
                                  dtype=str(series.dtype),
                                  dials_options=dials.find_spots_options + dials.integrate_options)
        else:
            print(f"unknown data set {name!r}", file=sys.stderr)
            return 2
        series = cached(series)
        print(f"{name}: {series.n} frames {series.shape} {series.dtype}", flush=True)
        codecs, why = peers_pyfai.register(codecs_for(name, args.codecs, args.quick))
        for codec, reason in why.items():
            print(f"{codec} skipped: {reason}", flush=True)
        meta[name].update(codecs=codecs, skipped=why)
        results = study(series, codecs, dials, work / name, dials_identical=args.dials_identical,
                        log=lambda m: print(m, flush=True), reuse=args.resume)
        meta[name]["commands"] = results.pop("_commands")
        all_results[name] = results
        print(format_table(results, title=f"\n{name} ({series.n} frames)"), flush=True)
        if args.json:  # after every data set, so a long run that stops keeps what it measured
            write_json(args.json, all_results, meta, None, t_start)
    summary = summarize(all_results)
    print("\nall data sets (ratio over all bytes; cc_intensity of the worst data set)")
    for codec, r in summary.items():
        print(f"  {codec:15s} ratio {r['ratio']:7.2f}  indexed {r['indexed']}/{r['indexed_uncompressed']} "
              f"(lost {r['lost']}, gained {r['gained']})  CC {r['cc_intensity']:.4f}")
    figure = args.figure or (str(Path(args.json).with_suffix(".png")) if args.json else "yield.png")
    try:
        plot(all_results, figure)
        print(f"figure: {figure}")
    except ImportError:
        figure = None
        print("matplotlib is not installed: no figure (pip install .[bench])")
    if args.json:
        write_json(args.json, all_results, meta, figure, t_start)
        print(f"json: {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
