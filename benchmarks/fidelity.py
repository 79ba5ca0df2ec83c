"""Fidelity beyond indexing yield: intensities, false spots on blanks, the reconstructions side by side.

    python benchmarks/fidelity.py --quick --json fidelity.json   # 6 thaumatin stills (4 hits, 2 blanks), < 15 min
    python benchmarks/fidelity.py --json fidelity.json           # all 19 thaumatin stills + 100 weak simulated shots
                                                                 # + 100 integrating shots
    python benchmarks/fidelity.py --quick --datasets sim-integrating --json f.json   # 16 integrating shots, 49 min here

The yield benchmark's machinery (redml_study.yield_study) with the fidelity columns: frames
indexed frame by frame (lost and gained apart), strong spots on blank frames, reflections
integrated when the uncompressed file's crystals are integrated on the decoded frames,
mean (I_dec - I_orig)/sigma_orig overall and for weak reflections (I/sigma < 2), the change
of sigma, and for simulated shots the error against the simulator's true intensities.
Lossy peers' decoded counts are clipped at 0 before DIALS sees them ("-clip0"), as a careful
user of a photon counter would do; the ratio is the peer's file. redml's quantized modes
appear with each reconstruction: "midpoint" (q1, q2, q4), "draw" and "mean"; the lattice
settings "redml-lattice-dials-qK" keep a disc of 8 px ("-rR" at the end of the name: R px,
e.g. redml-lattice-dials-q32-r10) around every reflection that DIALS's crystals of the
uncompressed file predict (with the finder's spots) exact and draw the rest at q; frames without a crystal are hits (midpoint) or blanks (draw); "redml-lattice-qK" do the same
with the built-in indexer's crystals (the finder's spots -> index_still with the cell and space
group the data set declares: thaumatin P41212 57.9 57.9 150.6 90 90 90, the simulated set its
own crystal). Each frame keeps the smaller of its policy's chunk and the lossless chunk. Lattice
settings add the indexer's figures: index_ms_per_frame (index_still alone, spots found),
frames_indexed_redml, frames_indexed_dials, median_misorientation_deg (frames both index) and
predicted_fraction (the setting's crystals predict a reflection within 1 px of DIALS's xyzcal.px
of that fraction of its integrated reflections). The sparse mode's peer is
pyFAI's sparsify-Bragg ("pyfai-sparsify", benchmarks/peers_pyfai.py: its own file, its own
densify for DIALS, which adds its noise), run where pyFAI and an OpenCL device are installed,
skipped otherwise; "redml-sparse" decodes with its noisy background (sparse_noise=True, the default).

sim-integrating (benchmarks/yield.py: the simulator's shots as a JUNGFRAU 1M writes them after
pedestal subtraction, int32 ADU at 20 ADU per photon, read noise 0.2 photon) runs its own codec
list (QUICK_INTEGRATING_CODECS; full run: yield.py's INTEGRATING_CODECS) under the usual names
with the detector's settings applied: every redml codec gets gain=20, markers="extremes",
read_noise="auto"; SZ3's bounds are in ADU (sz3-abs10/20/40: 0.5, 1, 2 photons) and unclipped,
negative values being the detector's read noise; DIALS is given the gain (yield.py's
docstring). Its truth_dsig compares with the simulator's photons times the gain.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import indexer
import peers_pyfai
from redml_study.yardstick import Dials
from redml_study.yield_study import cached, render_table, series_from_files, study

bench = importlib.import_module("yield")  # benchmarks/yield.py: data sets and cells
# The built-in indexer's known cell of the thaumatin stills (benchmarks/indexer.py: their refined
# cell; DIALS is started from bench.THAUMATIN_CELL and refines its own).
THAUMATIN_INDEX = (indexer.SPACE_GROUP, indexer.CELL)

CODECS = ["bslz4", "bszstd", "zstd", "sz3-abs1-clip0", "sz3-abs2-clip0", "zfp-acc4-clip0", "redml-lossless",
          "redml-q1", "redml-q2", "redml-q4", "redml-mean-q2", "redml-mean-q4", "redml-draw-q2", "redml-draw-q4",
          "redml-draw-q8", "redml-sparse", "redml-lattice-dials-q8", "redml-lattice-dials-q16", "redml-lattice-q8",
          "redml-lattice-q16", peers_pyfai.NAME]
QUICK_CODECS = ["bslz4", "sz3-abs1-clip0", "sz3-abs2-clip0", "redml-q2", "redml-q4", "redml-mean-q4",
                "redml-draw-q2", "redml-draw-q4", "redml-draw-q8", "redml-lattice-dials-q8", "redml-lattice-dials-q16",
                "redml-lattice-q8", "redml-lattice-q16", "redml-sparse", peers_pyfai.NAME]
QUICK_FRAMES = [1, 2, 5, 10, 16, 18]  # thaumatin stills: 4 hits (strong to weak) and 2 blanks
# sim-integrating: the yield benchmark's list (bench.INTEGRATING_CODECS); quick: the settings the issue
# names (SZ3 at 0.5, 1, 2 photons in ADU, midpoint q1/q2/q4, mean and draw q2/q4/q8, sparse and its peer)
QUICK_INTEGRATING_CODECS = ["bslz4", "sz3-abs10", "sz3-abs20", "sz3-abs40", "redml-lossless", "redml-q1", "redml-q2",
                            "redml-q4", "redml-mean-q2", "redml-mean-q4", "redml-mean-q8", "redml-draw-q2",
                            "redml-draw-q4", "redml-draw-q8", "redml-sparse", peers_pyfai.NAME]
QUICK_INTEGRATING_FRAMES = 16
KEYS = ["ratio", "indexed", "indexed_uncompressed", "lost", "gained", "reflections_matched", "reflections_uncompressed",
        "mean_dsig", "weak_mean_dsig", "sigma_ratio", "cc_intensity", "blank_spots", "blank_spots_uncompressed",
        "blank_frames", "strong_spots", "truth_mean_dsig", "truth_weak_mean_dsig", "dials",
        # lattice settings (exact region from DIALS's crystals of the original, or the built-in indexer's)
        "index_ms_per_frame", "frames_indexed_redml", "frames_indexed_dials", "median_misorientation_deg",
        "predicted_fraction"]


def fidelity_table(results: dict, title: str) -> str:
    cols = [("codec", "{}"), ("ratio", "{:.2f}"), ("indexed", "{}"), ("lost", "{}"), ("gained", "{}"),
            ("refl", "{}"), ("dsig", "{:+.3f}"), ("weak", "{:+.3f}"), ("sig_ratio", "{:.3f}"), ("blank_spots", "{}"),
            ("truth_dsig", "{:+.3f}")]
    rows = []
    for codec, r in results.items():
        if codec.startswith("_"):
            continue
        rows.append([codec, r["ratio"], f"{r['indexed']}/{r['indexed_uncompressed']}", len(r["lost"]), len(r["gained"]),
                     f"{r['reflections_matched']}/{r['reflections_uncompressed']}", r["mean_dsig"], r["weak_mean_dsig"],
                     r["sigma_ratio"], f"{r['blank_spots']} ({r['blank_spots_uncompressed']})",
                     r.get("truth_mean_dsig", float("nan"))])
    legend = ("blank_spots: strong spots on blank frames (uncompressed in brackets); -clip0: decoded counts "
              "clipped at 0 before DIALS; dsig/weak: mean (I_dec - I_orig)/sigma_orig, all / I/sigma < 2")
    return render_table(cols, rows, title) + "\n" + legend


def safe(r: dict) -> bool:
    """The issue's fidelity bar: no frame lost, >= 99.5% of the reflections integrated, mean
    (I_dec - I_orig)/sigma within 0.02 for all and for weak reflections."""
    return (not r["lost"] and r["reflections_matched"] >= 0.995 * r["reflections_uncompressed"]
            and abs(r["mean_dsig"]) <= 0.02 and abs(r["weak_mean_dsig"]) <= 0.02)


def aim(results: dict) -> dict:
    """The issue's benchmark aim on one data set: the best safe redml setting against
    bitshuffle-LZ4 (>= 2x its ratio) and SZ3's best safe bound; the sparse mode against pyFAI
    sparsify (higher ratio, no lost frame more, smaller |bias| on all and on weak reflections)."""
    def best(prefix):
        ok = {c: r["ratio"] for c, r in results.items() if c.startswith(prefix) and not c.startswith("_")
              and c != "redml-sparse" and safe(r)}
        return max(ok, key=ok.get) if ok else None

    out = {"best_redml": best("redml"), "best_sz3": best("sz3")}
    ratio = {k: results[v]["ratio"] if v else float("nan") for k, v in out.items()}
    if "bslz4" in results and out["best_redml"]:
        out["redml_over_bslz4"] = ratio["best_redml"] / results["bslz4"]["ratio"]
        out["twice_bslz4"] = out["redml_over_bslz4"] >= 2
        out["beats_sz3"] = out["best_sz3"] is None or ratio["best_redml"] > ratio["best_sz3"]
    sparse, peer = results.get("redml-sparse"), results.get(peers_pyfai.NAME)
    if sparse and peer:
        out["sparse_beats_pyfai"] = bool(sparse["ratio"] > peer["ratio"] and len(sparse["lost"]) <= len(peer["lost"])
                                         and abs(sparse["mean_dsig"]) < abs(peer["mean_dsig"])
                                         and abs(sparse["weak_mean_dsig"]) < abs(peer["weak_mean_dsig"]))
    return out


def plot(all_results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = (("mean (I_dec - I_orig) / sigma, all reflections", lambda r: r["mean_dsig"]),
              ("mean (I_dec - I_orig) / sigma, weak (I/sigma < 2)", lambda r: r["weak_mean_dsig"]),
              ("reflections lost, % of uncompressed",
               lambda r: 100 * (1 - r["reflections_matched"] / max(r["reflections_uncompressed"], 1))))
    markers = "osD^"
    for k, (name, results) in enumerate(all_results.items()):
        for codec, r in results.items():
            if codec.startswith("_") or codec == "uncompressed":
                continue
            color = ("C3" if "draw" in codec else "C1" if "mean" in codec else "C2" if codec.startswith("redml")
                     else "C0" if codec.startswith(("sz3", "zfp")) else "C4" if codec.startswith("pyfai") else "0.45")
            for ax, (_, f) in zip(axes, panels):
                ax.scatter(r["ratio"], f(r), color=color, marker=markers[k % 4], s=36)
                if r["dials"] == "run":
                    ax.annotate(codec.replace("redml-", ""), (r["ratio"], f(r)), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    for ax, (label, _) in zip(axes, panels):
        ax.set_xscale("log")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("compression ratio")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=l) for c, l in
               (("C3", "redml draw"), ("C1", "redml mean"), ("C2", "redml midpoint / sparse"),
                ("C0", "SZ3 / ZFP, clipped at 0"), ("C4", "pyFAI sparsify"), ("0.45", "lossless peers"))]
    handles += [plt.Line2D([], [], marker=markers[k % 4], ls="", color="k", label=n) for k, n in enumerate(all_results)]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle("Fidelity: intensity bias and lost reflections against compression ratio (benchmarks/fidelity.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--codecs", nargs="+", default=None)
    p.add_argument("--frames", type=int, default=100, help="simulated shots (full run)")
    p.add_argument("--datasets", nargs="+", default=None,
                   choices=["thaumatin", "sim-weak", "sim-highbg", "sim-lowbg", "sim-integrating"],
                   help="full run: thaumatin, sim-weak and sim-integrating (default); --quick: thaumatin")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the files and DIALS runs here (the yield benchmark's "
                   "--workdir can be shared: same data sets, same codec names)")
    p.add_argument("--resume", action="store_true", help="with --workdir: reuse files and DIALS runs finished there")
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    default = args.codecs or (QUICK_CODECS if args.quick else CODECS)
    tmp = tempfile.TemporaryDirectory(prefix="redml-fidelity-") if args.workdir is None else None
    work = Path(tmp.name if tmp else args.workdir)
    names = args.datasets or (["thaumatin"] if args.quick else ["thaumatin", "sim-weak", "sim-integrating"])
    datasets = []
    if "thaumatin" in names:
        paths = sorted(bench.THAUMATIN.glob("*.cbf.bz2"))
        if not paths:
            print(f"no thaumatin frames in {bench.THAUMATIN}", file=sys.stderr)
            return 2
        chosen = [paths[i - 1] for i in QUICK_FRAMES] if args.quick else paths
        datasets.append(("thaumatin", lambda: series_from_files(chosen, name="thaumatin"),
                         Dials(*bench.THAUMATIN_CELL, nproc=args.nproc, reuse=args.resume), THAUMATIN_INDEX, default))
    crystal = bench.LYSOZYME  # the simulator's Crystal()
    for name in ("sim-weak", "sim-highbg", "sim-lowbg"):  # the yield benchmark's photon-counting shots
        if name in names:
            datasets.append((name, lambda name=name: bench.simulated_series(name, args.seed, args.frames),
                             bench.dials_for(name, bench.LYSOZYME, args.nproc, args.resume), crystal, default))
    if "sim-integrating" in names:
        frames = QUICK_INTEGRATING_FRAMES if args.quick else args.frames
        datasets.append(("sim-integrating", lambda: bench.simulated_series("sim-integrating", args.seed, frames),
                         bench.dials_for("sim-integrating", bench.LYSOZYME, args.nproc, args.resume), crystal,
                         args.codecs or (QUICK_INTEGRATING_CODECS if args.quick else bench.INTEGRATING_CODECS)))
    t0 = time.perf_counter()
    all_results, skipped = {}, {}
    for name, make, dials, crystal, wanted in datasets:
        codecs, why = peers_pyfai.register(wanted)
        for codec, reason in why.items():
            print(f"{codec} skipped: {reason}", flush=True)
        skipped.update(why)
        series = cached(make())
        print(f"{name}: {series.n} frames", flush=True)
        results = study(series, codecs, dials, work / name, log=lambda m: print(m, flush=True), reuse=args.resume,
                        crystal=crystal)
        results.pop("_commands")
        results["_aim"] = aim(results)
        all_results[name] = results
        print(fidelity_table(results, f"\n{name} ({series.n} frames)"), flush=True)
        print(f"aim: {results['_aim']}", flush=True)
    first = next(iter(all_results.values()))
    out = {c: {k: (len(v) if isinstance(v, list) else v) for k, v in r.items() if k in KEYS}
           for c, r in first.items() if not c.startswith("_")}
    out["datasets"] = all_results
    out["seconds"] = time.perf_counter() - t0
    out["note"] = ("lossy peers (-clip0): decoded counts clipped at 0 before DIALS; top level: "
                   f"{next(iter(all_results))}; {peers_pyfai.NOTE}; sim-integrating: redml codecs with gain=20 "
                   "(ADU per photon), markers='extremes', read_noise='auto'; SZ3 bounds in ADU, unclipped")
    out["skipped"] = skipped
    figure = args.figure or (str(Path(args.json).with_suffix(".png")) if args.json else "fidelity.png")
    try:
        plot(all_results, figure)
        out["figure"] = figure
        print(f"figure: {figure}")
    except ImportError:
        print("matplotlib is not installed: no figure")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(f"json: {args.json}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
