"""Bulk recompression benchmark: `redml recompress` on Dask against a serial bitshuffle-LZ4 rewrite.

    .venv/bin/python benchmarks/recompress.py --quick --json /tmp/recompress_quick.json   # < 5 min on 2 cores
    .venv/bin/python benchmarks/recompress.py --json /tmp/recompress_full.json            # all 19 stills, 4M frames

Inputs: a folder of simulated NXmx files (uint16 still shots, bitshuffle-LZ4 chunks, as an
Eiger/JUNGFRAU archive holds them) and a folder of the real Pilatus 6M thaumatin stills
(CBF, bz2). The same inputs are recompressed (lossless, q=0, every chunk verified):

- serially in this process (workers=0): the reference bytes;
- on a LocalCluster of 1 and of 2 worker processes (started before the clock runs);
- by the in-run peer: a serial loop that reads the same frames and rewrites them with
  hdf5plugin's bitshuffle-LZ4 (one frame per chunk).

Rates: MB/s = frame bytes (as arrays) / wall seconds; files/s = inputs / wall seconds.
CPU s: CPU time of the recompression tasks' threads (of this process for the peer); cores =
CPU s / wall s, how much of the machine the run actually got (on a shared machine, the
2-worker speed-up is bounded by it; the load average before and after is printed too).
The Dask outputs must be byte-identical to the serial ones; a run stopped after its first
finished input and started again must skip what finished and complete the rest, again
byte-identical. The script prints a table, writes the JSON and exits with status 1 when an
output differs or the resumed run is wrong.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("REDML_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402
import numpy as np  # noqa: E402

from _common import thaumatin_paths  # noqa: E402
from redml_reduce.recompress import recompress  # noqa: E402
from redml_reduce.formats.sources import find_inputs, open_frames  # noqa: E402
from redml_study.synthetic import still_frame  # noqa: E402



def make_simulated(folder: Path, n_files: int, n_frames: int, shape, seed: int = 1) -> None:
    """NXmx files of still shots (0.3 photons/px, a water ring, 40 spots), bitshuffle-LZ4."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(n_files):
        frames = np.stack([still_frame(rng, shape, background=0.3, water_ring=1.5, spots=40) for _ in range(n_frames)])
        with h5py.File(folder / f"sim_{k:03d}.nxs", "w") as f:
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = np.bytes_("NXentry")
            entry.create_dataset("definition", data=np.bytes_("NXmx"))
            data = entry.create_group("data")
            data.attrs["NX_class"] = np.bytes_("NXdata")
            data.attrs["signal"] = np.bytes_("data")
            data.create_dataset("data", data=frames, chunks=(1, *shape), **hdf5plugin.Bitshuffle(cname="lz4"))


def link_stills(folder: Path, n: int) -> None:
    paths = thaumatin_paths(indices=range(1, n + 1))
    folder.mkdir(parents=True)
    for p in paths:
        (folder / p.name).symlink_to(p)


def bslz4_peer(sources, out: Path) -> dict:
    """The in-run peer: a serial loop reading every frame and writing it with bitshuffle-LZ4."""
    out.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    raw = n_inputs = 0
    for inp in find_inputs(sources):
        with open_frames(inp) as frames, h5py.File(out / f"{inp.name}.h5", "w") as f:
            d = None
            for i in range(len(frames)):
                frame, _ = frames.read(i)
                if d is None:
                    d = f.create_dataset("entry/data/data", shape=(len(frames), *frame.shape), dtype=frame.dtype,
                                         chunks=(1, *frame.shape), **hdf5plugin.Bitshuffle(cname="lz4"))
                d[i] = frame
                raw += frame.nbytes
        n_inputs += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = sum(p.stat().st_size for p in out.glob("*.h5"))
    return {"wall_seconds": wall, "raw_bytes": raw, "bytes_out": size, "inputs": n_inputs, "ratio": raw / size,
            "mbps": raw / 1e6 / wall, "files_per_s": n_inputs / wall, "cpu_seconds": cpu, "cores_used": cpu / wall}


def outputs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nxs"))}


def summary(report) -> dict:
    t = report.totals()
    return {"wall_seconds": t["wall_seconds"], "raw_bytes": t["raw_bytes"], "bytes_out": t["bytes_out"],
            "inputs": t["done"], "ratio": t["ratio"], "mbps": t["mbps"], "files_per_s": t["files_per_s"],
            "errors": t["errors"], "cpu_seconds": t["cpu_seconds"], "cores_used": t["cpu_seconds"] / t["wall_seconds"]}


def ratio_of(report, prefix: str):
    rows = [r for r in report.rows if r["name"].startswith(prefix) and r["status"] == "done"]
    return sum(r["raw_bytes"] for r in rows) / sum(r["bytes_out"] for r in rows) if rows else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer and smaller inputs (under five minutes)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--workdir", help="keep inputs and outputs here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    if args.quick:
        n_files, n_frames, shape, n_stills = 8, 3, (1024, 1024), 4
    else:
        n_files, n_frames, shape, n_stills = 16, 6, (2068, 2164), 19
    work = Path(args.workdir or tempfile.mkdtemp(prefix="redml-recompress-"))
    if work.exists() and args.workdir:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        make_simulated(work / "in" / "sim", n_files, n_frames, shape)
        link_stills(work / "in" / "stills", n_stills)
        sources = [str(work / "in" / "sim"), str(work / "in" / "stills")]
        load0 = os.getloadavg()[0]
        runs = {}
        serial = recompress(sources, work / "out-serial", workers=0)
        runs["serial"] = summary(serial)
        reference = outputs(work / "out-serial")
        identical = True
        for n in (1, 2):
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                report = recompress(sources, work / f"out-{n}", client=client)
                runs[str(n)] = summary(report)
                same = outputs(work / f"out-{n}") == reference
                identical &= same
                runs[str(n)]["identical_to_serial"] = same
                if n == 2:  # stop after the first finished input, then start again
                    out = work / "out-resume"
                    finished = []

                    def stop(row):
                        finished.append(row["name"])
                        raise KeyboardInterrupt

                    try:
                        recompress(sources, out, client=client, on_result=stop)
                    except KeyboardInterrupt:
                        pass
                    again = recompress(sources, out, client=client)
                    status = {r["name"]: r["status"] for r in again.rows}
                    resume_ok = (status[finished[0]] == "skipped" and set(status.values()) <= {"done", "skipped"}
                                 and outputs(out) == reference)
        runs["serial-bslz4"] = bslz4_peer(sources, work / "out-bslz4")
        load1 = os.getloadavg()[0]
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"inputs: {n_files} simulated NXmx files x {n_frames} frames {shape[0]}x{shape[1]} uint16 (bitshuffle-LZ4) "
          f"+ {n_stills} Pilatus 6M CBF stills; lossless, every chunk verified")
    head = (f"{'engine':<22} {'inputs':>6} {'MB frames':>10} {'MB out':>9} {'ratio':>7} {'wall s':>8} {'files/s':>8} "
            f"{'MB/s':>8} {'CPU s':>7} {'cores':>6}")
    print(head)
    print("-" * len(head))
    for name, label in (("serial", "redml serial"), ("1", "redml 1 worker"), ("2", "redml 2 workers"),
                        ("serial-bslz4", "bslz4 serial (peer)")):
        r = runs[name]
        print(f"{label:<22} {r['inputs']:>6} {r['raw_bytes'] / 1e6:>10.1f} {r['bytes_out'] / 1e6:>9.1f} "
              f"{r['ratio']:>7.2f} {r['wall_seconds']:>8.1f} {r['files_per_s']:>8.2f} {r['mbps']:>8.1f} "
              f"{r['cpu_seconds']:>7.1f} {r['cores_used']:>6.2f}")
    speedup = runs["2"]["mbps"] / runs["1"]["mbps"]
    print(f"2 workers / 1 worker: {speedup:.2f}x; outputs identical to the serial run: {identical}; "
          f"resume after a stop: {'ok' if resume_ok else 'FAILED'}; load average {load0:.1f} -> {load1:.1f}")
    print(f"ratio by input set: simulated {ratio_of(serial, 'sim'):.2f}, stills {ratio_of(serial, 'thau'):.2f} "
          f"(bitshuffle-LZ4 overall {runs['serial-bslz4']['ratio']:.2f})")
    result = {
        "mbps": {k: runs[k]["mbps"] for k in ("serial", "1", "2", "serial-bslz4")},
        "files_per_s": {k: runs[k]["files_per_s"] for k in ("serial", "1", "2", "serial-bslz4")},
        "identical_to_serial": identical, "resume_ok": resume_ok, "ratio": runs["serial"]["ratio"],
        "ratio_bslz4": runs["serial-bslz4"]["ratio"], "ratio_simulated": ratio_of(serial, "sim"),
        "ratio_stills": ratio_of(serial, "thau"), "speedup_2_vs_1": speedup, "runs": runs,
        "inputs": {"simulated_files": n_files, "frames_per_file": n_frames, "shape": list(shape), "stills": n_stills},
        "load_average": [load0, load1], "quick": args.quick,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print("figures written to", args.json)
    return 0 if identical and resume_ok else 1


if __name__ == "__main__":
    sys.exit(main())
