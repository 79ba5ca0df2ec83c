"""The `redml-study` command line: the studies, apart from the product's `redml`.

    redml-study tune FRAME... --reference REF [--radius 2]
    redml-study yield FRAME... --space-group SG --unit-cell a,b,c,al,be,ga [--codecs ...] [--json OUT]
    redml-study simulate-detector --bind tcp://*:31001 --frames N --rate HZ [--compression bslz4]

FRAME: what `redml recompress` reads (redml_reduce.formats.sources). REF: a DIALS strong.refl
(read with the system python that has DIALS) or a .json file {"0": [[x, y], ...], "1": ...}
with one list per frame (pixel centres at +0.5). simulate-detector publishes simulated (or
your) frames as a DECTRIS Stream V2 detector, for `redml acquire`. Errors as `redml` reports them.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from redml_reduce.cli import Parser, read_frames, run

__all__ = ["main", "read_reference"]


def read_reference(path: str, n_frames: int) -> list[np.ndarray]:
    """Reference positions per frame from a DIALS .refl or a .json file."""
    if path.endswith(".refl"):
        from .dials_side import DIALS_PYTHON, script

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "spots.json"
            subprocess.run([DIALS_PYTHON, script("strong_json.py"), path, str(out)], check=True)
            data = json.loads(out.read_text())
    else:
        data = json.loads(Path(path).read_text())
    return [np.array(data.get(str(i), []), dtype=float).reshape(-1, 2) for i in range(n_frames)]


def _tune(args) -> int:
    from .tune import tune

    frames = read_frames(args.frames)
    if not frames:
        raise ValueError("no frames")
    reference = read_reference(args.reference, len(frames))
    result = tune(frames, reference, radius=args.radius)
    print(result.report())
    print("best settings:", json.dumps({k: v for k, v in vars(result.best).items()}))
    return 0


def _yield(args) -> int:
    from .yardstick import Dials
    from .yield_study import format_table, plot, series_from_files, study

    cell = tuple(float(v) for v in args.unit_cell.split(","))
    if len(cell) != 6:
        raise ValueError("--unit-cell needs six numbers: a,b,c,alpha,beta,gamma")
    series = series_from_files(args.frames)
    work = Path(args.workdir)
    results = study(series, args.codecs, Dials(args.space_group, cell, nproc=args.nproc), work)
    commands = results.pop("_commands")
    print(format_table(results, title=f"{series.name}: {series.n} frames"))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "commands": commands}, indent=1, default=float))
    if args.figure:
        plot({series.name: results}, args.figure)
    return 0


def _simulated_layout(detector: str):
    from .sim import DetectorLayout

    return {"4m": DetectorLayout(), "1m": DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated)"),
            "0.5m": DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")}[detector]


def _jungfrau_raw_frames(args):
    """Simulated shots of the assembled detector turned into raw JUNGFRAU words (module layout)
    by a simulated detector; its calibration, with the module geometry, goes in the start
    message, so the receiver assembles the images back (the shots' beam centre holds)."""
    from redml_reduce.jungfrau import ModuleLayout

    from .detector import simulate_detector
    from .sim import Crystal, ShotSettings, StillSimulator

    layout = _simulated_layout(args.detector)
    (rows, cols), (gap_y, gap_x) = layout.modules, layout.gap
    geometry = ModuleLayout.grid(rows * cols, cols, gap_x=gap_x, gap_y=gap_y)  # the layout's modules, row by row
    sim = StillSimulator(layout, Crystal(), ShotSettings(background=args.background, hit_rate=args.hit_rate,
                                                         dtype="int32", bad_pixel_fraction=0), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    det = simulate_detector(rng, n_modules=rows * cols, energy_keV=12.3984198 / sim.geometry.wavelength_a,
                            geometry=geometry)
    n = min(args.pool, args.frames) if args.pool else args.frames
    print(f"simulating {n} raw JUNGFRAU shots ({rows * cols} modules) ...", file=sys.stderr, flush=True)
    frames = [det.raw(sim.shot(i).frame, rng) for i in range(n)]
    return frames, sim.geometry, det.calibration.mask.astype(np.uint32), det.calibration


def _simulate(args) -> int:
    from redml_reduce.acquire.protocol import DEFAULT_PORT
    from redml_reduce.acquire.sender import StreamSender, publish_series

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    geometry, mask, start_kw = None, None, None
    if args.files and args.jungfrau_raw:
        raise ValueError("--jungfrau-raw simulates its own frames: give it without --files")
    if args.files:
        from redml_reduce.background import BeamGeometry

        frames = [np.asarray(f) for f in read_frames(args.files)]
        if not frames:
            raise ValueError("no frames in the files given")
        first = args.files[0].split(":")[0]
        if first.endswith((".nxs", ".h5")):
            try:
                geometry = BeamGeometry.from_nxmx(first)
            except (KeyError, OSError, ValueError):
                geometry = None
            try:
                import h5py

                with h5py.File(first, "r") as f:
                    if "entry/instrument/detector/pixel_mask" in f:
                        mask = f["entry/instrument/detector/pixel_mask"][...].astype(np.uint32)
            except OSError:
                mask = None
        if geometry is None:
            h, w = frames[0].shape
            geometry = BeamGeometry(beam_x=w / 2, beam_y=h / 2, distance_mm=100.0, pixel_size_mm=0.075, wavelength_a=1.0)
            print(f"no geometry in {first}: sending a made-up one ({geometry})", file=sys.stderr)
        if args.dtype:
            frames = [f.astype(args.dtype) for f in frames]
    elif args.jungfrau_raw:
        frames, geometry, mask, calibration = _jungfrau_raw_frames(args)
        start_kw = {"jungfrau_calibration": calibration.to_dict(), "detector_description": "JUNGFRAU (simulated, raw)"}
    else:
        from .sim import Crystal, ShotSettings, StillSimulator

        sim = StillSimulator(_simulated_layout(args.detector), Crystal(),
                             ShotSettings(background=args.background, hit_rate=args.hit_rate, dtype=args.dtype or "uint16"),
                             seed=args.seed)
        n = min(args.pool, args.frames) if args.pool else args.frames
        print(f"simulating {n} distinct shots of {sim.detector.name} ...", file=sys.stderr, flush=True)
        frames = [sim.shot(i).frame for i in range(n)]
        geometry, mask = sim.geometry, sim.mask.astype(np.uint32)
    endpoint = args.connect or args.bind or f"tcp://*:{DEFAULT_PORT}"
    with StreamSender(endpoint, bind=not args.connect, peers=args.peers, peer_wait_s=args.peer_wait) as sender:
        print(f"{'connected to' if args.connect else 'bound to'} {','.join(sender.endpoints)}: {args.series} series of "
              f"{args.frames} frames {frames[0].shape} {frames[0].dtype}, "
              f"{'as fast as taken' if args.rate <= 0 else f'{args.rate:g} Hz'}, compression {args.compression}",
              file=sys.stderr, flush=True)
        for k in range(args.series):
            r = publish_series(sender, frames, args.frames, rate_hz=args.rate,
                               compression=None if args.compression == "none" else args.compression,
                               geometry=geometry, pixel_mask=mask, start_kw=start_kw)
            print(f"series {sender.series_id}: {r['images']} images in {r['seconds']:.2f} s "
                  f"({r['rate_hz']:.1f} Hz, {r['wire_bytes'] / 1e6:.1f} MB)", file=sys.stderr, flush=True)
    return 0


def main(argv=None) -> int:
    from .yield_study import DEFAULT_CODECS

    ap = Parser(prog="redml-study", description="redml_reduce studies: spot-finder tuning, yield, detector simulator")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="tune the spot finder against reference spots")
    t.add_argument("frames", nargs="+")
    t.add_argument("--reference", required=True, help="DIALS strong.refl or positions .json")
    t.add_argument("--radius", type=float, default=2.0, help="matching radius in pixels")
    t.set_defaults(run=_tune)
    y = sub.add_parser("yield", help="compression ratio against DIALS indexing yield for your frames")
    y.add_argument("frames", nargs="+", help="CBF/SMV files (one frame each) or one NXmx file")
    y.add_argument("--space-group", required=True)
    y.add_argument("--unit-cell", required=True, help="a,b,c,alpha,beta,gamma")
    y.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS)
    y.add_argument("--workdir", default="redml-yield", help="files and DIALS runs go here")
    y.add_argument("--nproc", type=int, default=2)
    y.add_argument("--json")
    y.add_argument("--figure", help="PNG: ratio against yield and intensity CC")
    y.set_defaults(run=_yield)
    s = sub.add_parser("simulate-detector", help="publish simulated (or your) frames as a Stream V2 detector")
    dst = s.add_mutually_exclusive_group()
    dst.add_argument("--bind", metavar="ENDPOINT", help="default tcp://*:31001 (like a DCU)")
    dst.add_argument("--connect", metavar="ENDPOINT", help="push to a receiver that binds")
    s.add_argument("--frames", type=int, default=100, help="images per series")
    s.add_argument("--rate", type=float, default=10.0, help="images per second (0: as fast as the receiver takes them)")
    s.add_argument("--series", type=int, default=1)
    s.add_argument("--compression", choices=("none", "bslz4", "lz4"), default="bslz4")
    s.add_argument("--files", nargs="+", help="send these frames (CBF, FILE.h5:/dataset) instead of simulated shots")
    s.add_argument("--detector", choices=("4m", "1m", "0.5m"), default="4m", help="simulated JUNGFRAU size")
    s.add_argument("--hit-rate", type=float, default=0.5)
    s.add_argument("--background", type=float, default=0.5, help="photons/px near the beam")
    s.add_argument("--dtype", choices=("uint16", "int32", "uint32"), help="default uint16 (simulated)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pool", type=int, default=16, help="distinct simulated shots, cycled (0: all distinct)")
    s.add_argument("--jungfrau-raw", action="store_true",
                   help="send raw JUNGFRAU words (gain bits + ADC) with the calibration in the start message; "
                        "redml acquire converts them to photons")
    s.add_argument("--peers", type=int, default=1,
                   help="receivers: one socket each on consecutive ports (start and end to every one, the images "
                        "round-robin), as Jungfraujoch serves several writers")
    s.add_argument("--peer-wait", type=float, default=10.0,
                   help="with --peers: seconds a series' start waits for every receiver to be connected")
    s.set_defaults(run=_simulate)
    return run(ap.parse_args(argv), ap.prog)


if __name__ == "__main__":
    sys.exit(main())
