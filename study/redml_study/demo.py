"""The main job in one command: compress still shots with the HDF5 filter and check them.

    python -m redml_study.demo [--frames 4] [--out DIR]

Makes JUNGFRAU-4M-sized synthetic still shots (and uses the real Pilatus 6M thaumatin
stills when ../shared/data is there), writes them with the redml filter at several q,
reads them back with h5py and with h5dump through HDF5_PLUGIN_PATH, and prints the
compression ratio, the speed and the largest error against the stated bound.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import redml_reduce as rr
from redml_reduce.codec import error_bound
from redml_study.synthetic import JUNGFRAU_4M_SHAPE, still_frame

THAUMATIN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thaumatin_grid"
SETTINGS = [("lossless", 0), ("q=1", 1.0), ("q=2", 2.0), ("q=4", 4.0), ("sparse", "sparse")]


def synthetic_frames(n: int) -> np.ndarray:
    rng = np.random.default_rng(2026)
    return np.stack([still_frame(rng, JUNGFRAU_4M_SHAPE, background=8.0, water_ring=12.0, spots=150)
                     for _ in range(n)])


def real_frames(n: int):
    files = sorted(THAUMATIN.glob("*.cbf.bz2"))[:n]
    if not files:
        return None
    try:
        import fabio  # noqa: F401  (reads the images for redml_reduce.formats.sources)
    except ImportError:
        return None
    from redml_reduce.formats.sources import iter_frames

    return np.stack(list(iter_frames(map(str, files))))


def worst_bound_ratio(path: Path, frames: np.ndarray, q) -> float:
    """max |error| / (q sigma / 2) over background pixels (<= 1 means within the bound)."""
    if q in (0, "sparse"):
        return 0.0
    worst = 0.0
    with h5py.File(path) as f:
        d = f["data"]
        for i, frame in enumerate(frames):
            chunk = d.id.read_direct_chunk((i, 0, 0))[1]
            bound = error_bound(chunk)
            bg = ~rr.exact_mask(chunk)
            err = np.abs(d[i].astype(np.float64) - frame)
            worst = max(worst, float((err[bg] / bound[bg]).max(initial=0.0)))
    return worst


def h5dump_check(path: Path, frames: np.ndarray) -> str:
    h5dump = shutil.which("h5dump")
    if not h5dump:
        return "h5dump not installed"
    env = dict(os.environ, HDF5_PLUGIN_PATH=rr.PLUGIN_PATH)
    out = subprocess.run([h5dump, "-d", "/data", "-s", "0,100,100", "-c", "1,1,4", str(path)], env=env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return f"h5dump FAILED: {out.stderr.strip()[:200]}"
    with h5py.File(path) as f:
        expected = f["data"][0, 100, 100:104].tolist()
    values = [int(v) for v in out.stdout.split("(0,100,100):")[1].split("}")[0].replace(",", " ").split()]
    return "h5dump reads the same values" if values == expected else f"h5dump MISMATCH {values} vs {expected}"


def run(name: str, frames: np.ndarray, outdir: Path) -> None:
    raw = frames.nbytes
    print(f"\n{name}: {len(frames)} frames {frames.shape[1]}x{frames.shape[2]} {frames.dtype} ({raw / 1e6:.0f} MB)")
    print(f"{'setting':>9} {'ratio':>7} {'write MB/s':>11} {'read MB/s':>10} {'max err/bound':>14}  check")
    for label, q in SETTINGS:
        path = outdir / f"{name}_{label.replace('=', '')}.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=frames, chunks=(1,) + frames.shape[1:], **rr.Redml(q=q))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        with h5py.File(path) as f:
            back = f["data"][...]
            stored = f["data"].id.get_storage_size()
        t_read = time.perf_counter() - t0
        if q == 0:
            check = "byte-exact" if back.tobytes() == frames.tobytes() else "LOSSLESS MISMATCH"
            check += "; " + h5dump_check(path, frames)
        else:
            check = ""
        print(f"{label:>9} {raw / stored:7.1f} {raw / t_write / 1e6:11.0f} {raw / t_read / 1e6:10.0f} "
              f"{worst_bound_ratio(path, frames, q):14.2f}  {check}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = ap.parse_args(argv)
    print(f"redml_reduce {rr.__version__}: filter {rr.FILTER_ID}, plugin path {rr.PLUGIN_PATH}")
    with tempfile.TemporaryDirectory() as tmp:
        outdir = args.out or Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        run("synthetic-4M", synthetic_frames(args.frames), outdir)
        real = real_frames(args.frames)
        if real is not None:
            run("thaumatin-6M", real, outdir)
    print("\nmax err/bound <= 1 means every background pixel is within q*sigma/2 (spots are exact).")


if __name__ == "__main__":
    main()
