"""`redml acquire` (registered by redml_reduce.cli).

    redml acquire --connect tcp://localhost:31001 --out run.nxs --q 1 --dashboard :8080
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from ..arrays import key_values

__all__ = ["add_commands"]


def _acquire(args) -> int:
    from .server import AcquireSettings, Acquisition
    from .dashboard import Dashboard, parse_listen
    from .indicators import LiveStats

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.receivers:
        return _launch(args)
    fanout = _fanout_role(args)
    settings = AcquireSettings(q=args.q, codec=args.codec, veto=args.veto, min_spots=args.min_spots,
                               spots=not args.no_spots, workers=args.workers, max_pending=args.max_pending,
                               on_full=args.on_full, idle_timeout_s=args.timeout, overwrite=args.overwrite,
                               channel=args.channel, cell=args.cell, space_group=args.space_group,
                               receiver=None if fanout is None else f"{fanout['k']}/{fanout['n']}",
                               codec_settings=key_values(args.set))
    # the latest hit's picture only where a dashboard shows it
    acq = Acquisition(args.out if fanout is None else fanout["out"], settings,
                      stats=LiveStats(thumbnails=bool(args.dashboard)))
    hook = None
    if fanout is not None and fanout["k"] == 0:  # receiver 0 writes the master files
        from .fanout import FanoutHook

        hook = FanoutHook(acq, args.out, fanout["n"], master_wait_s=args.master_wait).start()
    dash = None
    if args.dashboard:
        host, port = parse_listen(args.dashboard)
        dash = Dashboard(acq.stats, host, port, token=args.token, allow_remote=args.dashboard_public).start()
        print(f"dashboard: {dash.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    endpoint = args.bind or (args.connect if fanout is None else fanout["endpoint"])
    print(f"{'listening on' if args.bind else 'connecting to'} {endpoint}; files: {args.out}", file=sys.stderr, flush=True)
    code = 0
    try:
        acq.serve(endpoint, bind=bool(args.bind), max_series=args.series, stop=stop, wait_s=args.wait,
                  status_every_s=0 if args.quiet else args.status_every)
    except KeyboardInterrupt:
        code = 130
    finally:
        summaries = [s for s in acq.close() if s is not None]
        if hook is not None:
            hook.finish()  # the master files of the series that ended (receiver 0)
        if dash is not None:
            code = _linger(dash, stop, args.linger, code)
    snap = acq.stats.snapshot()
    if args.json:
        extra = {} if fanout is None else {"receiver": settings.receiver, "masters": hook.masters if hook else [],
                                           "master_errors": hook.errors if hook else []}
        Path(args.json).write_text(json.dumps({"series": summaries, "indicators": snap["indicators"],
                                               "counts": snap["counts"], "max_pending_seen": snap["max_pending_seen"],
                                               **extra}, indent=1, default=float))
    for s in summaries:
        c = s["counts"]
        print(f"series {s['series_id']}: {c['written']} written, {c['sparse']} sparse, {c['vetoed']} vetoed, "
              f"{c['dropped']} dropped, {c['rejected']} rejected, {c['missing']} missing of {c['expected']} "
              f"({s['ended']}) -> {s['path']}")
    if hook is not None and hook.errors and code == 0:
        print(f"redml acquire: master files not written: {'; '.join(hook.errors)}", file=sys.stderr)
        code = 1
    if acq.fatal and code == 0:
        print(f"redml acquire: stopped, frames cannot be stored: {acq.fatal}", file=sys.stderr)
        code = 1
    if not summaries and code == 0:
        print("no series received", file=sys.stderr)
        code = 2
    return code


def _receiver_arg(text: str) -> tuple:
    from .fanout import parse_receiver

    try:
        return parse_receiver(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"N must be a whole number >= 1, not {text!r}")
    return int(text)


def _fanout_role(args):
    """--receiver K/N: this receiver's index, count, endpoint (the K-th of a list, or the one
    all share) and data file pattern; None without it."""
    if not args.receiver:
        if args.connect and "," in args.connect:
            raise ValueError("several --connect endpoints need --receiver K/N or --receivers N")
        return None
    from .fanout import data_pattern

    k, n = args.receiver
    if not args.connect:
        raise ValueError("--receiver needs --connect (the detector's socket, or one per receiver)")
    endpoints = args.connect.split(",")
    if len(endpoints) not in (1, n):
        raise ValueError(f"--connect lists {len(endpoints)} endpoints for {n} receivers (give 1 or {n})")
    return {"k": k, "n": n, "endpoint": endpoints[k % len(endpoints)], "out": data_pattern(args.out, k)}


def _launch(args) -> int:
    """--receivers N: N receiver processes on this machine (receiver k of N each, receiver 0
    writing the master files) and one dashboard over them all (--dashboard); a receiver that
    dies is reported, the others go on; a master receiver 0 could not write is written here."""
    import shutil
    import tempfile

    from .fanout import write_missing_masters

    if args.bind or not args.connect:
        raise ValueError("--receivers needs --connect (the receivers connect to the detector)")
    n = args.receivers
    tmp = Path(tempfile.mkdtemp(prefix="redml-receivers-"))
    try:
        codes, results, code = _run_receivers(args, n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, c in enumerate(codes):
        if c != 0:
            print(f"receiver {k}/{n} exited with status {c}", file=sys.stderr)
    series = [s for r in results if r for s in r["series"]]
    masters = [m for r in results if r for m in r.get("masters", [])]
    more, errors = write_missing_masters(args.out, n, series, overwrite=args.overwrite)
    for m in more:
        print(f"master of series {m['series_id']}: {m['stored']} of {m['counts']['expected']} images stored, "
              f"{m['counts']['missing']} missing -> {m['path']}", flush=True)
    for e in errors:
        print(f"redml acquire: master file not written: {e}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"receivers": [{"receiver": f"{k}/{n}", "status": c, "series": (r or {}).get("series", [])}
                           for k, (c, r) in enumerate(zip(codes, results))], "masters": masters + more},
            indent=1, default=float))
    if code == 0 and (any(codes) or errors):
        code = 1
    if not series and code == 0:
        print("no series received", file=sys.stderr)
        code = 2
    return code


def _run_receivers(args, n: int, tmp: Path) -> tuple:
    """Starts the n receivers (and the dashboard over them), waits for them; returns their
    exit statuses, their --json results (None for one that died) and 130 after Ctrl-C, else 0."""
    import subprocess

    ports = [_free_port() for _ in range(n)] if args.dashboard else []
    children = [subprocess.Popen([sys.executable, "-m", "redml_reduce.cli", "acquire",
                                  *_child_argv(args, k, n, tmp / f"receiver_{k}.json", ports[k] if ports else None)])
                for k in range(n)]
    print(f"{n} receivers started (pids {' '.join(str(c.pid) for c in children)}); files: {args.out}",
          file=sys.stderr, flush=True)
    dash = None
    if args.dashboard:
        from .aggregate import AggregateStats
        from .dashboard import Dashboard, parse_listen

        host, port = parse_listen(args.dashboard)
        dash = Dashboard(AggregateStats([f"http://127.0.0.1:{p}/" for p in ports]), host, port, token=args.token,
                         allow_remote=args.dashboard_public, title=f"redml acquire: {n} receivers").start()
        print(f"dashboard: {dash.url}", file=sys.stderr, flush=True)

    def stop_children(*_):  # SIGTERM or Ctrl-C: every receiver closes its files and stops
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_children)
    code = 0
    try:
        codes = [c.wait() for c in children]
    except KeyboardInterrupt:
        stop_children()
        codes = [c.wait() for c in children]
        code = 130
    finally:
        if dash is not None:
            code = _linger(dash, threading.Event(), args.linger, code)
    paths = [tmp / f"receiver_{k}.json" for k in range(n)]
    return codes, [json.loads(p.read_text()) if p.exists() else None for p in paths], code


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


_NOT_FORWARDED = {"receivers", "receiver", "json", "dashboard", "dashboard_public", "token", "linger", "run",
                  "command", "debug", "parser"}  # the launcher's own, or set per receiver


def _child_argv(args, k: int, n: int, json_path: Path, dashboard_port) -> list:
    """The command line of receiver k of n: this one's options less the launcher's own."""
    out = []
    for action in args.parser._actions:
        dest = action.dest
        if dest in _NOT_FORWARDED or not action.option_strings:
            continue
        value = getattr(args, dest, None)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        values = value if isinstance(value, list) else [value]  # action="append": the flag again per value
        out += [flag] if action.nargs == 0 else [x for v in values for x in (flag, str(v))]
    out += ["--receiver", f"{k}/{n}", "--json", str(json_path)]
    if dashboard_port is not None:
        out += ["--dashboard", f"127.0.0.1:{dashboard_port}"]
    return out


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


def _aggregate_dashboard(args) -> int:
    from .aggregate import AggregateStats
    from .dashboard import Dashboard, parse_listen

    host, port = parse_listen(args.dashboard)
    dash = Dashboard(AggregateStats(args.urls), host, port, token=args.token, allow_remote=args.dashboard_public,
                     title=f"redml acquire: {len(args.urls)} receivers").start()
    print(f"dashboard: {dash.url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        dash.stop()
    return 0


def add_commands(sub, parse_q) -> None:
    """Adds `acquire` to the subcommands `sub`; parse_q: the -q argument type of the redml command line."""
    a = sub.add_parser("acquire", help="receive a detector stream (DECTRIS Stream V2 / Jungfraujoch), write "
                                       "compressed NXmx, show live indicators")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", metavar="ENDPOINT", help="the detector's PUSH socket, e.g. tcp://dcu:31001; with "
                     "several receivers, one socket per receiver as a comma-separated list (Jungfraujoch) or one "
                     "that all share (DECTRIS)")
    src.add_argument("--bind", metavar="ENDPOINT", help="listen instead, e.g. tcp://*:31001")
    a.add_argument("--out", required=True, help="file per series; {series} is replaced by the series id")
    a.add_argument("--q", "-q", type=parse_q, default=1, help="0 lossless, > 0 bounded lossy (default 1), or 'sparse'")
    a.add_argument("--codec", choices=("redml", "bslz4"), default="redml",
                   help="bslz4: store the detector's bitshuffle-LZ4 frames as they come (no redml)")
    a.add_argument("--veto", choices=("none", "sparse", "drop"), default="none",
                   help="non-hits: stored at --q (none), sparse, or not stored (drop); counts are kept")
    a.add_argument("--min-spots", type=int, default=10, help="spots that make a hit")
    a.add_argument("--no-spots", action="store_true", help="no spot finding (no hit/spot indicators, no veto)")
    a.add_argument("--cell", metavar="a,b,c,al,be,ga", help="the crystal's unit cell (Angstrom, degrees): each hit is "
                   "indexed and stored by the lattice policy (every predicted reflection exact, the rest drawn; hits "
                   "that do not index by the midpoint); needs --space-group")
    a.add_argument("--space-group", metavar="SG", help="the crystal's space group, e.g. P43212 (with --cell)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="other codec settings, e.g. integrating "
                   "detectors' gain=20 markers=extremes read_noise=auto (the spot search follows their noise model)")
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
    f = a.add_mutually_exclusive_group()
    f.add_argument("--receiver", metavar="K/N", type=_receiver_arg, help="receiver K of N sharing the stream: its frames go to "
                   "OUT_data_00000{K+1}, receiver 0 also writes OUT as the master file")
    f.add_argument("--receivers", type=_count_arg, metavar="N", help="start N receivers here (and one dashboard over them)")
    a.add_argument("--master-wait", type=float, default=30.0,
                   help="receiver 0 gives up on a receiver whose data file made no progress for this many seconds")
    a.set_defaults(run=_acquire, parser=a)
    d = sub.add_parser("acquire-dashboard", help="one dashboard over several `redml acquire` receivers")
    d.add_argument("urls", nargs="+", help="the receivers' dashboard URLs (as they print them, token included)")
    d.add_argument("--dashboard", default="127.0.0.1:8080", metavar="[HOST]:PORT", help="where to serve it")
    d.add_argument("--dashboard-public", action="store_true", help="allow a HOST beyond localhost (with a token)")
    d.add_argument("--token", help="its access token (default: made up when public)")
    d.set_defaults(run=_aggregate_dashboard)
