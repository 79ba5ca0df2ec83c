"""Spot finding against DIALS: F1 / precision / recall and ms per frame, in one run.

    python benchmarks/spotfinding.py [--quick] [--json PATH] [--data DIR]

Frames: the real Pilatus 6M thaumatin stills (all 19; --quick: 3 of them) and simulated
still shots with known spot positions (written as SMV images so DIALS reads them too).
DIALS 3.12 (Debian `dials`, system python) runs `dials.import` and `dials.find_spots`
with its defaults (dispersion_extended) and nproc=1; redml_reduce.find_spots runs with
its defaults on one thread. Spots are matched one to one within 2 px.

DIALS time per frame = (time on all frames - time on one frame) / (frames - 1), so the
program start and imports are not counted against it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA_DIR, thaumatin_paths  # noqa: E402

import redml_reduce as rr  # noqa: E402
from redml_study.metrics import score_spots  # noqa: E402
from redml_study.synthetic import still_frame  # noqa: E402

EXPORT = r"""
import sys, json
from dials.array_family import flex
r = flex.reflection_table.from_file(sys.argv[1])
x, y, z = r["xyzobs.px.value"].parts()
ids = list(r["id"])
out = {}
for i, xx, yy in zip(ids, x, y):
    out.setdefault(str(i), []).append([xx, yy])
json.dump(out, open(sys.argv[2], "w"))
"""

SIM_SHAPE = (2048, 2048)


def run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def dials_spots(image_paths, workdir: Path):
    """DIALS strong spots per image (list of (n, 2) arrays) and the seconds find_spots took."""
    workdir.mkdir(parents=True, exist_ok=True)
    run(["dials.import", *map(str, image_paths), "output.experiments=imported.expt"], workdir)
    t0 = time.perf_counter()
    run(["dials.find_spots", "imported.expt", "output.reflections=strong.refl", "nproc=1"], workdir)
    seconds = time.perf_counter() - t0
    (workdir / "export.py").write_text(EXPORT)
    run(["/usr/bin/python3", "export.py", "strong.refl", "spots.json"], workdir)
    found = json.loads((workdir / "spots.json").read_text())
    # one imageset (experiment id) per still, in input order
    return [np.array(found.get(str(i), []), dtype=float).reshape(-1, 2) for i in range(len(image_paths))], seconds


def dials_ms_per_frame(image_paths, workdir: Path):
    spots, t_all = dials_spots(image_paths, workdir / "all")
    _, t_one = dials_spots(image_paths[:1], workdir / "one")
    n = len(image_paths)
    return spots, 1e3 * (t_all - t_one) / (n - 1) if n > 1 else 1e3 * t_all


def redml_spots(frames):
    spots, times = [], []
    for f in frames:
        t0 = time.perf_counter()
        peaks, _ = rr.find_spots(f, nthreads=1)
        times.append(time.perf_counter() - t0)
        spots.append(np.stack([peaks["x"], peaks["y"]], axis=1))
    return spots, 1e3 * float(np.median(times))


def write_smv(path: Path, frame: np.ndarray):
    """A square SMV (ADSC) image that dxtbx reads: 75 um pixels, 120 mm, 1 A, beam centred."""
    h, w = frame.shape
    header = {"HEADER_BYTES": "512", "DIM": "2", "BYTE_ORDER": "little_endian", "TYPE": "unsigned_short",
              "SIZE1": str(w), "SIZE2": str(h), "PIXEL_SIZE": "0.075", "DISTANCE": "120.0", "WAVELENGTH": "1.0",
              "BEAM_CENTER_X": f"{w * 0.075 / 2:.3f}", "BEAM_CENTER_Y": f"{h * 0.075 / 2:.3f}",
              "PHI": "0.0", "OSC_START": "0.0", "OSC_RANGE": "0.0", "TWOTHETA": "0.0", "DETECTOR_SN": "unknown"}
    text = "{\n" + "".join(f"{k}={v};\n" for k, v in header.items()) + "}\n"
    raw = text.encode().ljust(512, b" ")
    path.write_bytes(raw + frame.astype("<u2").tobytes())


def simulated_set(n, background, seed):
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for _ in range(n):
        f, c = still_frame(rng, SIM_SHAPE, background=background, spots=300, peak_range=(15, 800),
                           water_ring=background, dtype="uint16", return_spots=True)
        frames.append(f)
        truth.append(c)
    return np.stack(frames), truth


def scores(found, reference):
    return score_spots(found, reference, radius=2.0).as_dict()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 real frames + 2 simulated per background")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)

    import fabio

    indices = [1, 10, 17] if args.quick else None
    paths = thaumatin_paths(args.data, indices)
    real = [np.asarray(fabio.open(str(p)).data) for p in paths]
    results = {"sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d_spots, d_ms = dials_ms_per_frame(paths, tmp / "real")
        r_spots, r_ms = redml_spots(real)
        results["sets"]["thaumatin"] = {
            "frames": len(real), "spots_dials": int(sum(map(len, d_spots))), "spots_redml": int(sum(map(len, r_spots))),
            "redml_vs_dials": scores(r_spots, d_spots), "ms_per_frame": {"redml": r_ms, "dials": d_ms}}
        for bg in (1.0, 10.0):
            n = 2 if args.quick else 6
            frames, truth = simulated_set(n, bg, seed=int(bg * 100))
            sim_paths = []
            for i, f in enumerate(frames):
                sim_paths.append(tmp / f"sim{bg:g}_{i:03d}.img")
                write_smv(sim_paths[-1], f)
            ds, dms = dials_ms_per_frame(sim_paths, tmp / f"sim{bg:g}")
            rs, rms = redml_spots(frames)
            results["sets"][f"simulated-bg{bg:g}"] = {
                "frames": n, "spots_truth": int(sum(map(len, truth))), "spots_dials": int(sum(map(len, ds))),
                "spots_redml": int(sum(map(len, rs))), "redml_vs_dials": scores(rs, ds),
                "redml_vs_truth": scores(rs, truth), "dials_vs_truth": scores(ds, truth),
                "ms_per_frame": {"redml": rms, "dials": dms}}

    real_set = results["sets"]["thaumatin"]
    results.update({
        "f1_vs_dials": real_set["redml_vs_dials"]["f1"], "precision_vs_dials": real_set["redml_vs_dials"]["precision"],
        "recall_vs_dials": real_set["redml_vs_dials"]["recall"], "ms_per_frame": real_set["ms_per_frame"],
        "speedup_per_core": real_set["ms_per_frame"]["dials"] / real_set["ms_per_frame"]["redml"],
        "quick": args.quick, "cores": os.cpu_count(),
    })
    print(f"{'set':<18} {'frames':>6} {'DIALS':>6} {'redml':>6} {'truth':>6} {'F1 vs DIALS':>11} {'P':>6} {'R':>6} "
          f"{'F1 redml/truth':>14} {'F1 DIALS/truth':>14} {'ms redml':>9} {'ms DIALS':>9} {'speed':>6}")
    for name, s in results["sets"].items():
        vd = s["redml_vs_dials"]
        rt = s.get("redml_vs_truth", {}).get("f1")
        dt = s.get("dials_vs_truth", {}).get("f1")
        ms = s["ms_per_frame"]
        print(f"{name:<18} {s['frames']:>6} {s['spots_dials']:>6} {s['spots_redml']:>6} {s.get('spots_truth', '-'):>6} "
              f"{vd['f1']:>11.3f} {vd['precision']:>6.3f} {vd['recall']:>6.3f} "
              f"{(f'{rt:.3f}' if rt is not None else '-'):>14} {(f'{dt:.3f}' if dt is not None else '-'):>14} "
              f"{ms['redml']:>9.1f} {ms['dials']:>9.1f} {ms['dials'] / ms['redml']:>5.1f}x")
    print(f"\nheadline (real frames): F1 vs DIALS {results['f1_vs_dials']:.3f}, "
          f"{results['speedup_per_core']:.1f}x DIALS's speed per core (aim: F1 >= 0.95, >= 10x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
