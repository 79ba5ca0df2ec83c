"""Acquisition end to end: a detector stream of 4M-class uint16 frames in, a file out.

    python benchmarks/acquire.py --quick --json acquire.json     # < 5 minutes
    python benchmarks/acquire.py --json acquire.json             # more frames, more pipelines
    python benchmarks/acquire.py --quick --receivers 1,2 --json acquire.json   # and redml q=1 on 1, 2 receivers

The stream: simulated JUNGFRAU 4M still shots (2164 x 2068, uint16, half of them hits),
bitshuffle-LZ4 compressed like an EIGER/Jungfraujoch stream, published by `redml
simulate-detector` (its own process) as fast as the receiver takes them. Each pipeline is a
`redml acquire` process fed the same stream in the same run:

  bslz4      the plain writer: the detector's bslz4 chunks stored as they came, by direct
             chunk write (hdf5plugin's filter in the file), no decoding, no spots
  redml-q1   receive, decompress, mask, find spots, encode at q=1, write (the default)
  redml-q0   the same, lossless
  redml-q1-veto   q=1 for hits, blanks stored sparse
  bslz4-spots     the plain writer with live indicators: the chunks stored as they came, and
             each frame decompressed for its spots (no encoding): the floor of any pipeline
             that finds spots, as redml's exact region needs them
  bslz4-raw, redml-q1-raw   a raw JUNGFRAU stream instead (the sender simulates the shots
             and sends gain bits + ADC words with the calibration): every frame converted to
             photons (int16 here), then bitshuffle-LZ4 or redml q=1 (MB/s: raw words)

Figures: sustained frames/s and MB/s (uncompressed frame bytes) from the first image's
arrival to the last frame's flush; the receiving process's CPU time per frame over that span
(all its threads; unlike frames/s, robust to other load on the machine: cores / CPU per frame
is the rate its work allows), split by step (receive, decode, encode, indicators, thumbnail,
write, open: the file's creation, once a series, where it overlaps the frames; other: the
rest; the series summary's cpu_ms_per_frame_by_step), and the sender's (its whole run);
latency from a frame's arrival to its flush (median, p99); the receiving process's peak RSS;
frames lost (dropped + rejected + missing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {
    "bslz4": ["--codec", "bslz4", "--no-spots"],
    "redml-q1": ["--q", "1"],
    "redml-q0": ["--q", "0"],
    "redml-q1-veto": ["--q", "1", "--veto", "sparse"],
    "bslz4-spots": ["--codec", "bslz4"],
    # a raw JUNGFRAU stream (gain bits + ADC words, the calibration in the start message): each
    # frame converted to photons, then stored by bitshuffle-LZ4 or encoded at q=1
    "bslz4-raw": ["--codec", "bslz4", "--no-spots"],
    "redml-q1-raw": ["--q", "1"],
}
RAW_FRAME_MB = 8 * 512 * 1024 * 2 / 1e6  # a JUNGFRAU 4M's raw words


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def make_pool(path: Path, n: int, seed: int, hit_rate: float, background: float) -> dict:
    """n distinct simulated 4M shots in an uncompressed NXmx file (geometry, pixel mask)."""
    import redml_reduce as rr
    from redml_reduce.formats.nxmx import pixel_mask_from_gaps
    from redml_study.sim import Crystal, ShotSettings, StillSimulator, jungfrau_4m

    t = time.perf_counter()
    sim = StillSimulator(jungfrau_4m(), Crystal(), ShotSettings(dtype="uint16", hit_rate=hit_rate,
                                                                 background=background), seed=seed)
    hits = 0
    with rr.FrameWriter(path, sim.detector.shape, "uint16", filter={}, geometry=sim.geometry,
                        pixel_mask=pixel_mask_from_gaps(sim.mask), nxmx=sim.nxmx_options()) as w:
        for i in range(n):
            shot = sim.shot(i)
            hits += shot.hit
            w.write(shot.frame)
    return {"shape": list(sim.detector.shape), "hits": hits, "seconds": time.perf_counter() - t, "n": n,
            "hit_rate": hit_rate, "background": background}


def run_pipeline(name: str, pool: Path, n_frames: int, workers: int, work: Path) -> dict:
    port = free_port()
    out = work / f"{name}.nxs"
    summary = work / f"{name}.json"
    for p in (out, summary):
        if p.exists():
            p.unlink()
    recv_cmd = [sys.executable, "-m", "redml_reduce.cli", "acquire", "--connect", f"tcp://127.0.0.1:{port}",
                "--out", str(out), "--json", str(summary), "--quiet", "--wait", "300", "--workers", str(workers),
                *PIPELINES[name]]
    raw = name.endswith("-raw")
    meta = json.loads(pool.with_suffix(".json").read_text())
    # raw: the sender simulates its own pool of shots (as many, the same hit rate and background)
    source = (["--jungfrau-raw", "--detector", "4m", "--pool", str(meta["n"]), "--hit-rate", str(meta["hit_rate"]),
               "--background", str(meta["background"])] if raw else ["--files", f"{pool}:/entry/data/data"])
    send_cmd = [sys.executable, "-m", "redml_study.cli", "simulate-detector", "--bind", f"tcp://127.0.0.1:{port}",
                *source, "--frames", str(n_frames), "--rate", "0", "--compression", "bslz4"]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The receiver's output goes to a file: a pipe nobody reads until it exits fills up (64 KiB of
    # logged errors) and blocks its logging threads for good.
    r_log = open(work / f"{name}.stderr", "w+")
    recv = subprocess.Popen(recv_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=r_log, text=True)
    send = subprocess.Popen(send_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(recv.pid, 0)  # the receiver's own peak RSS
    recv.returncode = os.waitstatus_to_exitcode(status)
    with r_log:
        r_log.seek(0)
        r_err = r_log.read()
    s_out, s_err = send.communicate(timeout=600)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    send_cpu = sum(getattr(children1, k) - getattr(children0, k) - getattr(usage, k) for k in ("ru_utime", "ru_stime"))
    if recv.returncode != 0 or send.returncode != 0:
        raise RuntimeError(f"{name}: receiver rc {recv.returncode}, sender rc {send.returncode}\n{r_err[-3000:]}\n"
                           f"{s_err[-3000:]}")
    res = json.loads(summary.read_text())
    (series,) = res["series"]
    c = series["counts"]
    frame_mb = RAW_FRAME_MB if raw else np.prod(meta["shape"]) * 2 / 1e6
    fps = series["fps"]
    stored_mb = out.stat().st_size / 1e6
    return {"pipeline": name, "frames": c["received"], "written": c["written"], "sparse": c["sparse"],
            "lost": c["dropped"] + c["rejected"] + c["missing"], "fps": fps, "mb_per_s": fps * frame_mb,
            "written_mb_per_s": fps * stored_mb / max(1, c["written"] + c["sparse"]),
            "ratio": c["received"] * frame_mb / stored_mb, "latency_ms_p50": series["latency_ms_p50"],
            "latency_ms_p99": series["latency_ms_p99"], "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_ms_per_frame": series["cpu_ms_per_frame"], "cpu_ms_by_step": cpu_steps(series),
            "sender_cpu_ms_per_frame": 1e3 * send_cpu / max(1, c["received"]),
            "seconds": series["frames_seconds"], "hit_rate": res["indicators"].get("hit_rate_total"),
            "sender": s_err.strip().splitlines()[-1] if s_err.strip() else ""}


def cpu_steps(series: dict) -> dict:
    """The receiver's CPU ms per frame by step (the summary's), and "other": the rest of its
    process time (threads waiting on each other, ZeroMQ's I/O thread, the interpreter)."""
    steps = {k: round(v, 2) for k, v in (series.get("cpu_ms_per_frame_by_step") or {}).items()}
    if steps and series.get("cpu_ms_per_frame") is not None:
        steps["other"] = round(series["cpu_ms_per_frame"] - sum(steps.values()), 2)
    return steps


# -- fan-out: N receivers (`redml acquire --receivers N`) share one stream, one master file per series




def master_ok(path: Path, n_frames: int) -> bool:
    """The master reads as the series: n_frames images, nothing missing, first and last decode."""
    import h5py
    import redml_reduce  # noqa: F401  (the filter, for the data files behind the virtual dataset)
    from redml_reduce.acquire.master import read_master

    try:
        m = read_master(path)
        with h5py.File(path, "r") as f:
            d = f["entry/data/data"]
            ok = d.is_virtual and d.shape[0] == n_frames and d[0].any() and d[n_frames - 1].any()
        return bool(ok and m["counts"]["missing"] == 0 and m["counts"]["received"] == n_frames)
    except (OSError, KeyError, ValueError):
        return False


def run_fanout(n: int, pool: Path, n_frames: int, work: Path, workers: int) -> dict:
    """redml q=1 with n receivers on this machine (each `workers` encoder threads); frames/s:
    frames stored over the longest receiver's time from its first image to its last flush."""
    from redml_reduce.acquire.sender import free_consecutive_ports

    base = free_consecutive_ports(n)
    out = work / f"fanout{n}.nxs"
    summary = work / f"fanout{n}.json"
    endpoints = ",".join(f"tcp://127.0.0.1:{base + k}" for k in range(n))
    recv_cmd = [sys.executable, "-m", "redml_reduce.cli", "acquire", "--receivers", str(n), "--connect", endpoints,
                "--out", str(out), "--json", str(summary), "--quiet", "--wait", "300", "--workers", str(workers),
                "--q", "1", "--overwrite"]
    send_cmd = [sys.executable, "-m", "redml_study.cli", "simulate-detector", "--bind", f"tcp://127.0.0.1:{base}",
                "--peers", str(n), "--peer-wait", "120", "--files", f"{pool}:/entry/data/data", "--frames",
                str(n_frames), "--rate", "0", "--compression", "bslz4"]
    recv = subprocess.Popen(recv_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    send = subprocess.Popen(send_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r_out, r_err = recv.communicate(timeout=900)
    s_out, s_err = send.communicate(timeout=600)
    if recv.returncode != 0 or send.returncode != 0:
        raise RuntimeError(f"fanout {n}: receivers rc {recv.returncode}, sender rc {send.returncode}\n"
                           f"{r_err[-3000:]}\n{s_err[-3000:]}")
    res = json.loads(summary.read_text())
    series = [s for r in res["receivers"] for s in r["series"]]
    stored = sum(s["counts"]["written"] + s["counts"]["sparse"] for s in series)
    span = max(s["frames_seconds"] for s in series)
    (m,) = res["masters"]
    return {"receivers": n, "fps": stored / span if span > 0 else None, "frames_lost": int(m["counts"]["missing"] +
            m["counts"]["dropped"] + m["counts"]["rejected"]), "master_ok": master_ok(Path(m["path"]), n_frames),
            "per_receiver_fps": [s["fps"] for s in series], "workers_per_receiver": workers}


def table(rows, title) -> str:
    head = ("| pipeline | frames | frames/s | MB/s (raw) | MB/s written | ratio | latency p50 ms | latency p99 ms "
            "| peak RSS MB | lost | receiver CPU ms/frame | sender CPU ms/frame |")
    lines = [f"### {title}", "", head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['frames']} | {r['fps']:.2f} | {r['mb_per_s']:.0f} | "
                     f"{r['written_mb_per_s']:.1f} | {r['ratio']:.2f} | {r['latency_ms_p50']:.0f} | "
                     f"{r['latency_ms_p99']:.0f} | {r['peak_rss_mb']:.0f} | {r['lost']} | {r['cpu_ms_per_frame']:.1f} "
                     f"| {r['sender_cpu_ms_per_frame']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="bslz4, bslz4-spots and redml-q1, 40 frames (< 5 minutes)")
    ap.add_argument("--frames", type=int, help="images in each stream (default 40 quick, 200 full)")
    ap.add_argument("--pool", type=int, help="distinct simulated shots, cycled (default 6 quick, 16 full)")
    ap.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES))
    ap.add_argument("--workers", type=int, default=0, help="encoder threads (default: one per core)")
    ap.add_argument("--hit-rate", type=float, default=0.5)
    ap.add_argument("--background", type=float, default=0.5, help="photons/px near the beam")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--receivers", help="also redml q=1 shared by N receivers, for each N of this list (e.g. 1,2)")
    args = ap.parse_args(argv)
    n_frames = args.frames or (40 if args.quick else 200)
    n_pool = args.pool or (6 if args.quick else 16)
    pipelines = args.pipelines or (["bslz4", "bslz4-spots", "redml-q1"] if args.quick else
                                   ["bslz4", "bslz4-spots", "redml-q1", "redml-q0", "redml-q1-veto", "bslz4-raw",
                                    "redml-q1-raw"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="redml-acq-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        pool = work / "pool.nxs"
        meta = make_pool(pool, n_pool, args.seed, args.hit_rate, args.background)
        pool.with_suffix(".json").write_text(json.dumps(meta))
        print(f"pool: {n_pool} simulated JUNGFRAU 4M shots {meta['shape']} uint16 ({meta['hits']} hits) "
              f"in {meta['seconds']:.0f} s", flush=True)
        rows = []
        for name in pipelines:
            r = run_pipeline(name, pool, n_frames, args.workers, work)
            rows.append(r)
            print(f"{name}: {r['fps']:.2f} frames/s, {r['cpu_ms_per_frame']:.1f} CPU ms/frame, {r['mb_per_s']:.0f} MB/s, latency p99 "
                  f"{r['latency_ms_p99']:.0f} ms, peak RSS {r['peak_rss_mb']:.0f} MB, lost {r['lost']} "
                  f"[sender: {r['sender']}]", flush=True)
            if r["cpu_ms_by_step"]:
                print("    CPU ms/frame by step: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_by_step"].items()),
                      flush=True)
        from redml_reduce.acquire.server import usable_cores

        fanout = {}
        for n in [int(v) for v in args.receivers.split(",")] if args.receivers else []:
            per = max(1, (args.workers or usable_cores()) // n)  # the same cores, split between the receivers
            fanout[str(n)] = run_fanout(n, pool, n_frames, work, per)
            print(f"fan-out, {n} receivers: {fanout[str(n)]['fps']:.2f} frames/s, lost "
                  f"{fanout[str(n)]['frames_lost']}, master ok: {fanout[str(n)]['master_ok']}", flush=True)
    cores = usable_cores()  # what the receiver's default workers count
    title = (f"{n_frames} frames of {meta['shape'][0]} x {meta['shape'][1]} uint16 (bslz4 stream), "
             f"{cores} cores shared by sender and receiver, workers={args.workers or cores}")
    print()
    print(table(rows, title))
    by = {r["pipeline"]: r for r in rows}
    out = {"fps": {k: r["fps"] for k, r in by.items()},
           "mb_per_s": {k: r["mb_per_s"] for k, r in by.items()},
           "latency_ms_p50": {k: r["latency_ms_p50"] for k, r in by.items()},
           "latency_ms_p99": {k: r["latency_ms_p99"] for k, r in by.items()},
           "ratio": {k: r["ratio"] for k, r in by.items()},
           "cpu_ms_per_frame": {k: r["cpu_ms_per_frame"] for k, r in by.items()},
           "cpu_ms_by_step": {k: r["cpu_ms_by_step"] for k, r in by.items()},
           "frames_lost": int(sum(r["lost"] for r in rows)),
           "peak_rss_mb": float(max(r["peak_rss_mb"] for r in rows)),
           "peak_rss_mb_by_pipeline": {k: r["peak_rss_mb"] for k, r in by.items()},
           "rows": rows, "frames": n_frames, "pool": n_pool, "frame_shape": meta["shape"], "cores": cores,
           "workers": args.workers or cores, "machine": platform.platform(), "seconds": time.perf_counter() - t0}
    if "redml-q1" in by and "bslz4" in by:
        out["redml_q1_vs_bslz4_fps"] = by["redml-q1"]["fps"] / by["bslz4"]["fps"]
    if "redml-q1-raw" in by and "bslz4-raw" in by:
        out["redml_q1_raw_vs_bslz4_raw_fps"] = by["redml-q1-raw"]["fps"] / by["bslz4-raw"]["fps"]
    if "bslz4-spots" in by and "bslz4" in by:  # what finding the spots alone leaves of the plain writer's rate
        out["bslz4_spots_vs_bslz4_fps"] = by["bslz4-spots"]["fps"] / by["bslz4"]["fps"]
    if fanout:
        out["fanout"] = fanout
        if "1" in fanout and fanout["1"]["fps"]:
            out["fanout_speedup"] = {k: v["fps"] / fanout["1"]["fps"] for k, v in fanout.items() if v["fps"]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\ntotal {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
