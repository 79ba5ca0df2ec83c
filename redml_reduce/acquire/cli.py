"""`redml acquire` and `redml simulate-detector` (registered by cli.py).

    redml simulate-detector --bind tcp://*:31001 --frames 1000 --rate 100 --compression bslz4
    redml acquire --connect tcp://localhost:31001 --out run.nxs --q 1 --dashboard :8080
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_commands"]


def _acquire(args) -> int:
    from .acquire import AcquireSettings, Acquisition
    from .dashboard import Dashboard, parse_listen

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    settings = AcquireSettings(q=args.q, codec=args.codec, veto=args.veto, min_spots=args.min_spots,
                               spots=not args.no_spots, workers=args.workers, max_pending=args.max_pending,
                               on_full=args.on_full, idle_timeout_s=args.timeout, overwrite=args.overwrite,
                               channel=args.channel)
    acq = Acquisition(args.out, settings)
    dash = None
    if args.dashboard:
        host, port = parse_listen(args.dashboard)
        dash = Dashboard(acq.stats, host, port, token=args.token, allow_remote=args.dashboard_public).start()
        print(f"dashboard: {dash.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    endpoint = args.bind or args.connect
    print(f"{'listening on' if args.bind else 'connecting to'} {endpoint}; files: {args.out}", file=sys.stderr, flush=True)
    code = 0
    try:
        acq.serve(endpoint, bind=bool(args.bind), max_series=args.series, stop=stop, wait_s=args.wait,
                  status_every_s=0 if args.quiet else args.status_every)
    except KeyboardInterrupt:
        code = 130
    finally:
        summaries = [s for s in acq.close() if s is not None]
        if dash is not None:
            code = _linger(dash, stop, args.linger, code)
    snap = acq.stats.snapshot()
    if args.json:
        Path(args.json).write_text(json.dumps({"series": summaries, "indicators": snap["indicators"],
                                               "counts": snap["counts"], "max_pending_seen": snap["max_pending_seen"]},
                                              indent=1, default=float))
    for s in summaries:
        c = s["counts"]
        print(f"series {s['series_id']}: {c['written']} written, {c['sparse']} sparse, {c['vetoed']} vetoed, "
              f"{c['dropped']} dropped, {c['rejected']} rejected, {c['missing']} missing of {c['expected']} "
              f"({s['ended']}) -> {s['path']}")
    if not summaries and code == 0:
        print("no series received", file=sys.stderr)
        code = 2
    return code


def _linger(dash, stop, seconds: float, code: int) -> int:
    """Keeps the dashboard up `seconds` after the end (Ctrl-C ends it: exit status 130), then stops it."""
    try:
        if seconds > 0 and code == 0:
            print(f"dashboard stays up {seconds:g} s at {dash.url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
            stop.wait(seconds)
    except KeyboardInterrupt:
        code = 130
    finally:
        dash.stop()
    return code


def _simulated_layout(detector: str):
    from .sim import DetectorLayout

    return {"4m": DetectorLayout(), "1m": DetectorLayout(modules=(2, 1), name="JUNGFRAU 1M (simulated)"),
            "0.5m": DetectorLayout(modules=(1, 1), name="JUNGFRAU 0.5M (simulated)")}[detector]


def _jungfrau_raw_frames(args):
    """Simulated shots of the assembled detector turned into raw JUNGFRAU words (module layout)
    by a simulated detector; its calibration, with the module geometry, goes in the start
    message, so the receiver assembles the images back (the shots' beam centre holds)."""
    import numpy as np

    from .jungfrau import Geometry, simulate_detector
    from .sim import Crystal, ShotSettings, StillSimulator

    layout = _simulated_layout(args.detector)
    (rows, cols), (gap_y, gap_x) = layout.modules, layout.gap
    geometry = Geometry.grid(rows * cols, cols, gap_x=gap_x, gap_y=gap_y)  # the layout's modules, row by row
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
    import numpy as np

    from .stream import DEFAULT_PORT, StreamSender, publish_series

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    geometry, mask, start_kw = None, None, None
    if args.files and args.jungfrau_raw:
        raise ValueError("--jungfrau-raw simulates its own frames: give it without --files")
    if args.files:
        from .background import Geometry
        from .cli import read_frames

        frames = [np.asarray(f) for f in read_frames(args.files)]
        if not frames:
            raise ValueError("no frames in the files given")
        first = args.files[0].split(":")[0]
        if first.endswith((".nxs", ".h5")):
            try:
                geometry = Geometry.from_nxmx(first)
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
            geometry = Geometry(beam_x=w / 2, beam_y=h / 2, distance_mm=100.0, pixel_size_mm=0.075, wavelength_a=1.0)
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
    with StreamSender(endpoint, bind=not args.connect) as sender:
        print(f"{'connected to' if args.connect else 'bound to'} {sender.endpoint}: {args.series} series of "
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


def add_commands(sub) -> None:
    from .cli import parse_q

    a = sub.add_parser("acquire", help="receive a detector stream (DECTRIS Stream V2 / Jungfraujoch), write "
                                       "compressed NXmx, show live indicators")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", metavar="ENDPOINT", help="the detector's PUSH socket, e.g. tcp://dcu:31001")
    src.add_argument("--bind", metavar="ENDPOINT", help="listen instead, e.g. tcp://*:31001")
    a.add_argument("--out", required=True, help="file per series; {series} is replaced by the series id")
    a.add_argument("--q", "-q", type=parse_q, default=1, help="0 lossless, > 0 bounded lossy (default 1), or 'sparse'")
    a.add_argument("--codec", choices=("redml", "bslz4"), default="redml",
                   help="bslz4: store the detector's bitshuffle-LZ4 frames as they come (no redml)")
    a.add_argument("--veto", choices=("none", "sparse", "drop"), default="none",
                   help="non-hits: stored at --q (none), sparse, or not stored (drop); counts are kept")
    a.add_argument("--min-spots", type=int, default=10, help="spots that make a hit")
    a.add_argument("--no-spots", action="store_true", help="no spot finding (no hit/spot indicators, no veto)")
    a.add_argument("--workers", type=int, default=0, help="encoder threads (default: one per core)")
    a.add_argument("--max-pending", type=int, default=0, help="frames between arrival and disk (default 2*workers+2)")
    a.add_argument("--on-full", choices=("block", "drop"), default="block",
                   help="when the encoder is behind: slow the detector down (block) or drop frames with a record")
    a.add_argument("--channel", help="image channel to store (default: the first one)")
    a.add_argument("--series", type=int, default=1, help="series to record before exiting (0: until Ctrl-C)")
    a.add_argument("--timeout", type=float, default=60.0, help="close a series after this many silent seconds")
    a.add_argument("--wait", type=float, default=None, help="give up when no series starts within this many seconds")
    a.add_argument("--overwrite", action="store_true", help="overwrite existing files (default: add -1, -2, ...)")
    a.add_argument("--dashboard", metavar="[HOST]:PORT", help="serve the live dashboard (default host: localhost)")
    a.add_argument("--dashboard-public", action="store_true",
                   help="allow a dashboard HOST beyond localhost (then always with an access token)")
    a.add_argument("--token", help="the dashboard's access token (default: made up when public)")
    a.add_argument("--linger", type=float, default=0.0, help="keep the dashboard up this many seconds after the end")
    a.add_argument("--status-every", type=float, default=1.0, help="seconds between terminal status lines")
    a.add_argument("--quiet", action="store_true", help="no status lines, warnings only")
    a.add_argument("--json", help="write the series summaries and final indicators here")
    a.set_defaults(run=_acquire)

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
    s.set_defaults(run=_simulate)
