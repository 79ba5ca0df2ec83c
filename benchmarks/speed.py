"""Encoder and decoder speed on one core against bitshuffle-LZ4 and blosc2, plus the
encoder's time per stage.

    .venv/bin/python benchmarks/speed.py --quick --json /tmp/speed.json   # < 5 min on 2 cores
    .venv/bin/python benchmarks/speed.py --json /tmp/speed_full.json      # more frames and repeats
    .venv/bin/python benchmarks/speed.py --quick --baseline DIR           # also time another build's core

Method: the process is pinned to one core and every codec runs on one thread
(REDML_NUM_THREADS, OMP_NUM_THREADS and blosc2's nthreads = 1); times are CPU time
(time.process_time) of one call, the median over interleaved repeats (each repeat runs
every setting on every frame, in a shuffled order), so the peers and redml see the same
machine load. Ratios to bitshuffle-LZ4 are taken in the same run.

Frame sets: simulated JUNGFRAU 4M uint16 frames (Poisson background of 1 photon/px plus 300
Gaussian spots; the full run adds 0.05 and 10 photons/px), and the thaumatin Pilatus 6M
stills (int32, read from ../shared/data/thaumatin_grid; skipped with a note if missing).

Integrating data: the decode time of one pedestal-subtracted int16 ADU frame of the same
shape (20 ADU per photon, 1 photon/px, read noise 0.2 photon) at q=4 with the mean and the
draw reconstruction ("integrating_decode_ms"; the baseline's too with --baseline).

Settings: bslz4 (the `bitshuffle` wheel, its SIMD build, automatic block size), blosc2
(LZ4 + bitshuffle, clevel 5), redml q=0/1/2, q=4 with the draw reconstruction, sparse.
Stage times come from the core itself (_core.stage_timing / _core.last_stages: the
calling thread's CPU time per encoder stage). cores_for_16_8_gbps: cores one setting needs
to encode a JUNGFRAU 4M at 2 kHz (16.8 GB/s) at the measured per-core rate;
..._raw_with_conversion adds the conversion of a raw frame to int16 photons (the core's
JUNGFRAU conversion, one thread) to each setting's encode time (an estimate: the encode
is timed on the uint16 frames of the same counts).

--baseline DIR: a directory holding another build's _core*.so (e.g. built from an older
commit); its redml settings are timed in the same interleaved loop as "base:<setting>".
"""
from __future__ import annotations

import os

# One thread everywhere, set before the libraries load.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["REDML_NUM_THREADS"] = "1"
os.environ["BLOSC_NTHREADS"] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402

from redml_reduce import _core  # noqa: E402
from redml_reduce.codec import CodecSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, FrameSet, load_thaumatin, synthetic_set  # noqa: E402

DETECTOR_RATE = 16.8e9  # bytes/s: a JUNGFRAU 4M (uint16) at 2 kHz
REDML_SETTINGS = {
    "redml-q0": dict(q=0),
    "redml-q1": dict(q=1),
    "redml-q2": dict(q=2),
    "redml-draw4": dict(q=4, recon="draw"),
    "redml-sparse": dict(q="sparse"),
}
# The aims on the JUNGFRAU frames, as ratios to bitshuffle-LZ4 in the same run.
AIMS = [("redml-q1", "encode", 4.0), ("redml-q0", "decode", 2.0), ("redml-q1", "decode", 2.0),
        ("redml-q2", "decode", 2.0), ("redml-draw4", "decode", 6.0)]


class Setting:
    """One codec configuration: encode(frame) -> bytes-like, decode(chunk, frame) -> array."""

    def __init__(self, name: str, encode: Callable, decode: Callable, lossless: bool):
        self.name, self.encode, self.decode, self.lossless = name, encode, decode, lossless


def peer_settings() -> list[Setting]:
    try:
        import bitshuffle
        import blosc2
    except ImportError as e:
        raise SystemExit(f"speed.py: the peers need the bench extra ({e}): .venv/bin/python -m pip install -e '.[bench]'")

    blosc2.set_nthreads(1)
    cparams = {"codec": blosc2.Codec.LZ4, "clevel": 5, "filters": [blosc2.Filter.BITSHUFFLE], "nthreads": 1}

    def bs_dec(chunk, frame):
        return bitshuffle.decompress_lz4(chunk, frame.shape, frame.dtype)

    def bl_enc(frame):
        return blosc2.compress2(frame, typesize=frame.itemsize, **cparams)

    def bl_dec(chunk, frame):
        return np.frombuffer(blosc2.decompress2(chunk, nthreads=1), dtype=frame.dtype).reshape(frame.shape)

    return [Setting("bslz4", bitshuffle.compress_lz4, bs_dec, True), Setting("blosc2", bl_enc, bl_dec, True)]


def redml_settings(core, prefix: str = "") -> list[Setting]:
    out = []
    for name, kw in REDML_SETTINGS.items():
        core_kw = CodecSettings(**kw).core_kwargs()

        def enc(frame, core_kw=core_kw):
            return core.encode(frame, None, None, nthreads=1, **core_kw)

        def dec(chunk, frame):
            return core.decode(chunk, -1, 1)

        out.append(Setting(prefix + name, enc, dec, kw["q"] == 0))
    return out


def load_core(directory: Path):
    """Another build's _core extension, loaded under its own package name."""
    so = sorted(Path(directory).glob("_core*.so"))
    if not so:
        raise SystemExit(f"speed.py: no _core*.so in {directory}")
    spec = importlib.util.spec_from_file_location("redml_baseline._core", so[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_time(fn: Callable):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def measure(fs: FrameSet, settings: list[Setting], repeats: int) -> dict:
    """Per setting: encode_ms and decode_ms (mean over frames of the median over repeats)
    and ratio (raw bytes / chunk bytes over the set). Lossless settings must round-trip."""
    frames = [np.ascontiguousarray(f) for f in fs.frames]
    enc = {s.name: [[] for _ in frames] for s in settings}
    dec = {s.name: [[] for _ in frames] for s in settings}
    size = {s.name: 0 for s in settings}
    for r in range(repeats):
        order = list(settings)
        random.Random(r).shuffle(order)  # what runs before a setting (allocator, caches) changes its time
        for s in order:
            for k, frame in enumerate(frames):
                te, chunk = cpu_time(lambda: s.encode(frame))
                td, back = cpu_time(lambda: s.decode(chunk, frame))
                enc[s.name][k].append(te)
                dec[s.name][k].append(td)
                if r == 0:
                    size[s.name] += len(memoryview(chunk).cast("B"))
                    if s.lossless and not np.array_equal(np.asarray(back).reshape(frame.shape), frame):
                        raise SystemExit(f"speed.py: {s.name} does not decode {fs.name} frame {k} exactly")
    out = {}
    for s in settings:
        out[s.name] = {
            "encode_ms": 1e3 * statistics.fmean(statistics.median(t) for t in enc[s.name]),
            "decode_ms": 1e3 * statistics.fmean(statistics.median(t) for t in dec[s.name]),
            "ratio": fs.nbytes / size[s.name],
        }
    return out


def stage_times(frames: np.ndarray, repeats: int) -> dict:
    """Median CPU ms per encoder stage and redml setting (first frame of the set)."""
    frame = np.ascontiguousarray(frames[0])
    out = {}
    _core.stage_timing(True)
    try:
        for name, kw in REDML_SETTINGS.items():
            core_kw = CodecSettings(**kw).core_kwargs()
            runs = []
            for _ in range(repeats):
                t, _chunk = cpu_time(lambda: _core.encode(frame, None, None, nthreads=1, **core_kw))
                st = dict(_core.last_stages())
                st["binding + python"] = max(0.0, 1e3 * t - sum(st.values()))
                runs.append(st)
            out[name] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    finally:
        _core.stage_timing(False)
    return out


def conversion_ms(frames: np.ndarray, repeats: int) -> float:
    """CPU ms of converting one raw JUNGFRAU 4M frame (the first of `frames`, made raw with a
    simulated detector's calibration) to int16 photons, assembled, into a reused array (a
    stream's case): median of repeats after a few warm-up conversions (the first ones of a
    process run several times slower while the calibration's and the output's pages settle)."""
    from redml_reduce import jungfrau as jf
    from redml_study.detector import simulate_detector

    rng = np.random.default_rng(7)
    det = simulate_detector(rng, 8)
    calib = det.calibration
    raw = det.raw(frames[0].astype(np.int32), rng)
    out = np.empty(frames[0].shape, np.int16)
    times = [cpu_time(lambda: jf.convert(raw, calib, out_dtype=np.int16, nthreads=1, out=out))[0]
             for _ in range(repeats + 4)][4:]
    return 1e3 * statistics.median(times)


def integrating_decode_ms(shape, repeats: int, cores: dict) -> dict:
    """CPU ms of decoding one integrating frame of `shape` (pedestal-subtracted int16 ADU at 20
    ADU per photon, 1 photon/px, read noise 0.2 photon: a JUNGFRAU 4M written in ADU) encoded
    at q=4 with the mean and with the draw reconstruction: median of interleaved repeats, per
    core (name -> _core module: this build, and the baseline's when given)."""
    from redml_study.detector import integrating_frame

    gain, rn = 20.0, 0.2
    rng = np.random.default_rng(22)
    frame = integrating_frame(rng.poisson(1.0, shape), rng, gain=gain, read_noise=rn, dtype="int16")
    kw = dict(q=4, gain=gain, mu_min=0.0, markers="extremes", read_noise=float(np.hypot(rn * gain, 12 ** -0.5)))
    chunks = {recon: _core.encode(frame, None, None, nthreads=1, **CodecSettings(recon=recon, **kw).core_kwargs())
              for recon in ("mean", "draw")}
    times = {f"{name}{recon}": [] for name in cores for recon in chunks}
    for r in range(repeats):
        for name, core in random.Random(r).sample(sorted(cores.items()), len(cores)):
            for recon, chunk in chunks.items():
                times[f"{name}{recon}"].append(cpu_time(lambda: core.decode(chunk, -1, 1))[0])
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def print_table(results: dict, jf_name: str, stages: dict, cores: dict, cores_raw: dict) -> None:
    for set_name, rows in results.items():
        ref = rows.get("bslz4")
        nbytes = rows["_nbytes"]
        print(f"\n{set_name}  ({nbytes / 1e6:.1f} MB per frame; one core, CPU time, median of repeats)")
        print(f"{'setting':<22}{'enc ms':>9}{'dec ms':>9}{'enc MB/s':>10}{'dec MB/s':>10}{'ratio':>8}"
              f"{'enc/bslz4':>11}{'dec/bslz4':>11}")
        for name, r in rows.items():
            if name.startswith("_"):
                continue
            e, d = r["encode_ms"], r["decode_ms"]
            print(f"{name:<22}{e:9.1f}{d:9.1f}{nbytes / e / 1e3:10.0f}{nbytes / d / 1e3:10.0f}{r['ratio']:8.3f}"
                  f"{e / ref['encode_ms']:11.2f}{d / ref['decode_ms']:11.2f}")
    print(f"\nencoder stages, ms (CPU, one thread, {jf_name} frame 0):")
    names = list(next(iter(stages.values())))
    for st in stages.values():
        names += [k for k in st if k not in names]
    print(f"{'stage':<20}" + "".join(f"{n.replace('redml-', ''):>9}" for n in stages))
    for k in names:
        print(f"{k:<20}" + "".join(f"{st.get(k, 0.0):9.1f}" for st in stages.values()))
    print(f"{'total':<20}" + "".join(f"{sum(st.values()):9.1f}" for st in stages.values()))
    print("\ncores to encode 16.8 GB/s (JUNGFRAU 4M at 2 kHz): " +
          ", ".join(f"{k} {v:.0f}" for k, v in cores.items()))
    print("  raw frames, conversion to photons included: " +
          ", ".join(f"{k} {v:.0f}" for k, v in cores_raw.items()))


def check_aims(rows: dict) -> list[dict]:
    out = []
    for name, what, limit in AIMS:
        if name not in rows:
            continue
        ratio = rows[name][f"{what}_ms"] / rows["bslz4"][f"{what}_ms"]
        out.append({"setting": name, "what": what, "x_bslz4": ratio, "aim": limit, "met": ratio <= limit})
    return out


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 JUNGFRAU frames at 1 photon/px, 2 stills, 3 repeats")
    ap.add_argument("--repeats", type=int, help="interleaved repeats (default 3 quick, 5 full)")
    ap.add_argument("--data", type=Path, default=DATA_DIR, help="thaumatin stills folder")
    ap.add_argument("--baseline", type=Path, help="folder with another build's _core*.so, timed alongside")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    repeats = args.repeats or (3 if args.quick else 5)

    settings = peer_settings() + redml_settings(_core)
    baseline = load_core(args.baseline) if args.baseline else None
    if baseline:
        settings += redml_settings(baseline, prefix="base:")
    n_jf = 2 if args.quick else 3
    sets = [synthetic_set(1.0, np.uint16, n_frames=n_jf)]
    if not args.quick:
        sets += [synthetic_set(0.05, np.uint16, n_frames=n_jf), synthetic_set(10.0, np.uint16, n_frames=n_jf)]
    jf_name = sets[0].name
    try:
        sets.append(load_thaumatin(args.data, indices=(1, 10) if args.quick else (1, 4, 10, 13, 17)))
    except SystemExit as e:
        print(f"speed.py: skipping the thaumatin stills ({e})", file=sys.stderr)

    results = {}
    for fs in sets:
        t0 = time.perf_counter()
        rows = measure(fs, settings, repeats)
        rows["_nbytes"] = fs.nbytes / len(fs.frames)
        results[fs.name] = rows
        print(f"{fs.name}: {len(fs.frames)} frames x {len(settings)} settings x {repeats} repeats "
              f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    stages = stage_times(sets[0].frames, repeats)
    jf = results[jf_name]
    cores = {name: DETECTOR_RATE * r["encode_ms"] / 1e3 / jf["_nbytes"]
             for name, r in jf.items() if not name.startswith("_")}
    convert_ms = conversion_ms(sets[0].frames, max(5, repeats))
    # raw frames: every setting stores the converted photons (bslz4 and blosc2 too)
    cores_raw = {name: DETECTOR_RATE * (r["encode_ms"] + convert_ms) / 1e3 / jf["_nbytes"]
                 for name, r in jf.items() if not name.startswith("_")}
    aims = check_aims(jf)
    cores_timed = {"": _core, **({"base:": baseline} if baseline else {})}
    integrating = integrating_decode_ms(sets[0].frames[0].shape, repeats, cores_timed)
    print_table(results, jf_name, stages, cores, cores_raw)
    print("\nintegrating frame (int16 ADU, 20 ADU/photon, 1 photon/px, read noise 0.2 photon), q=4, decode ms: " +
          ", ".join(f"{k} {v:.0f}" for k, v in integrating.items()))
    print("\naims on " + jf_name + ": " + "; ".join(
        f"{a['setting']} {a['what']} {a['x_bslz4']:.2f}x bslz4 (aim <= {a['aim']:g}x: {'met' if a['met'] else 'not met'})"
        for a in aims))
    if args.json:
        doc = {
            "method": "one core (sched_setaffinity), one thread per codec, CPU time, median of interleaved repeats",
            "repeats": repeats,
            "frames": {k: {n: r for n, r in v.items() if not n.startswith("_")} for k, v in results.items()},
            "bytes_per_frame": {k: v["_nbytes"] for k, v in results.items()},
            "stages_ms": stages["redml-q1"],
            "stages_ms_by_setting": stages,
            "stages_frame_set": jf_name,
            "cores_for_16_8_gbps": cores,
            "jungfrau_conversion_ms": convert_ms,
            "cores_for_16_8_gbps_raw_with_conversion": cores_raw,
            "aims": aims,
            "integrating_decode_ms": integrating,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
