"""`redml acquire` (registered by redml_reduce.cli).

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
    from .server import AcquireSettings, Acquisition
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
    if acq.fatal and code == 0:
        print(f"redml acquire: stopped, frames cannot be stored: {acq.fatal}", file=sys.stderr)
        code = 1
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


def add_commands(sub, parse_q) -> None:
    """Adds `acquire` to the subcommands `sub`; parse_q: the -q argument type of the redml command line."""
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
