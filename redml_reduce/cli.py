"""The `redml` command line.

    redml find-spots FRAME... [--cxi OUT.cxi]
    redml recompress SRC... --out DIR [-q Q] [--workers N | --scheduler ADDRESS] [--format nxmx|zarr]
                     [--crystals indexed.expt|run.stream]
    redml compress INPUT... -o OUT.h5 [-q 0] [--roi classical|ml|union] [--force]
    redml compress RAW.h5[:/dataset]... -o OUT.h5 --jungfrau-calibration DIR|FILE.h5
    redml decompress IN.h5 OUT.h5 [--codec bslz4|none] [--force]
    redml inspect FILE.h5
    redml acquire --connect tcp://HOST:31001 --out run.nxs --q 1 [--veto sparse] [--dashboard :8080]

FRAME, INPUT: what `redml recompress` reads (redml_reduce.formats.sources): HDF5/NXmx files (every
frame of entry/data/data, Eiger masters with their data files; bitshuffle-LZ4, gzip, ...),
CBF/SMV images (a series per name template), folders of them, or FILE.h5:/dataset[:index].

The studies (tune, yield, simulate-detector) are the `redml-study` command (redml_study.cli).

Errors are one line on stderr (`redml: error: ...`) and exit status 1 (2 for a bad
argument, 130 for Ctrl-C); `redml --debug ...` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import errno
import itertools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .arrays import key_values

__all__ = ["main", "run", "Parser", "read_frames", "parse_q"]


def read_frames(specs) -> list[np.ndarray]:
    """Every frame named by specs (files, folders, FILE.h5:/dataset[:index]; redml_reduce.formats.sources)."""
    from .formats.sources import iter_frames

    return list(iter_frames(specs))


def parse_q(text: str):
    """-q/--q: 'sparse' or a number >= 0 (an int when whole), checked as CodecSettings checks it."""
    from .codec import CodecSettings

    if text == "sparse":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"q must be a number >= 0 or 'sparse', not {text!r}") from None
    try:
        CodecSettings(q=v).check_encodable()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return int(v) if v.is_integer() else v


def _require_file(path) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))


def _refuse_existing(path, force: bool) -> None:
    """An output is written only into an existing folder, and replaces a file only with --force."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(errno.EEXIST, "exists (--force overwrites it)", str(path))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such folder", folder)


def _find_spots(args) -> int:
    from .formats.peaklist import write_cxi_peaks
    from .progress import progress_bar
    from .formats.sources import iter_frames
    from .spots import find_spots

    finder = key_values(args.set)
    peaks = []
    with progress_bar(None, "find-spots") as bar:
        for i, frame in enumerate(iter_frames(args.frames)):
            peaks.append(find_spots(frame, **finder)[0])
            bar.update()
            print(f"frame {i}: {len(peaks[-1])} spots", flush=True)
    if args.cxi:
        write_cxi_peaks(args.cxi, peaks)
        print(f"peak lists written to {args.cxi} (/entry_1/result_1)")
    return 0


def _recompress(args) -> int:
    from .recompress.run import Interrupted, recompress

    settings = key_values(args.set)
    try:
        report = recompress(args.sources, args.out, args.q, workers=args.workers, scheduler=args.scheduler,
                            output=args.format, dataset=args.dataset, frames_per_task=args.frames_per_task,
                            resume=not args.no_resume, verify=not args.no_verify, nthreads=args.threads,
                            report_path=args.report, progress=None, crystals=args.crystals,
                            lattice=_lattice_arg(args), **settings)
    except Interrupted as stop:
        print(stop.report.table())
        t = stop.report.totals()
        print(f"redml: interrupted: {t['done']} of {t['inputs']} inputs done; report in {stop.report_path}",
              file=sys.stderr)
        return 130
    print(report.table())
    if report.errors:
        print(f"redml: error: {len(report.errors)} of {len(report.rows)} inputs failed (see the table)", file=sys.stderr)
    return 1 if report.errors else 0


def _lattice_arg(args):
    """The footprint of --crystals (None without crystals)."""
    if args.crystals is None:
        return None
    from .lattice import LatticeSettings

    return LatticeSettings(radius=args.lattice_radius)


def _compress(args) -> int:
    _refuse_existing(args.output, args.force)
    if args.jungfrau_calibration:
        return _compress_jungfrau(args)
    from .codec import CodecSettings
    from .progress import progress_bar
    from .recompress.tasks import inspect_input, write_output
    from .pipeline import require_torch
    from .formats.sources import inputs_from_specs

    inputs = inputs_from_specs(args.frames)
    if len(inputs) != 1 or inputs[0][1] is not None:
        raise ValueError(f"compress writes one input per file (an HDF5 file, an Eiger master or the images of one "
                         f"series), not {len(inputs)} inputs; `redml recompress` writes one file per input")
    inp = inputs[0][0]
    if args.roi != "classical":
        require_torch()
    settings = CodecSettings(q=args.q, **key_values(args.set))
    n = inspect_input(inp)["frames"]
    out = Path(args.output).absolute()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".redml-compress-") as tmp, \
            progress_bar(n, "compress") as bar:
        r = write_output(inp, n, None, settings, str(out), tmp, "nxmx", nthreads=args.threads, roi=args.roi,
                         on_frame=bar.update)
    print(f"{n} frames written to {args.output} (q={args.q}, roi={args.roi}, every frame verified; "
          f"ratio {r['raw_bytes'] / r['bytes_out']:.2f} with the metadata)")
    return 0


def _compress_jungfrau(args) -> int:
    from .formats.jungfrau_raw import compress_raw, load_calibration
    from .formats.sources import iter_frames

    if args.roi != "classical":
        raise ValueError("--roi ml/union works on photon frames, not with --jungfrau-calibration")
    calib = load_calibration(args.jungfrau_calibration)
    frames = iter_frames(args.frames, modules=True)
    r = compress_raw(frames, args.output, calib, q=args.q, photon_dtype=args.dtype, track_window=args.track_window,
                     track_threshold=args.track_threshold, snapshot_every=args.snapshot_every)
    marked = {k: v for k, v in r["counts"].items() if k not in ("g0", "g1", "g2") and v}
    print(f"{r['frames']} raw frames converted and written to {args.output} ({r['dtype']} photons, q={args.q}); "
          f"calibration in /entry/instrument/detector/jungfrau_calibration; pixels by gain stage "
          f"G0 {r['counts']['g0']}, G1 {r['counts']['g1']}, G2 {r['counts']['g2']}; marked {marked or 'none'}")
    return 0


def _decompress(args) -> int:
    import h5py

    from .recompress.outputs import redml_datasets, write_decoded
    from .progress import progress_bar

    _require_file(args.input)
    _refuse_existing(args.output, args.force)
    try:
        with h5py.File(args.input, "r") as f:
            n = sum(f[name].shape[0] if f[name].ndim == 3 else 1 for name in redml_datasets(f))
    except OSError as e:
        raise OSError(f"{args.input}: not a readable HDF5 file ({e})") from None
    with progress_bar(n, "decompress") as bar:
        r = write_decoded(args.input, args.output, args.codec, on_frame=bar.update)
    print(f"{r['frames']} frames of {', '.join(r['datasets'])} written to {args.output} ({args.codec}), "
          f"everything else copied")
    return 0


def _stored_chunks(d) -> list:
    """The StoreInfo of every stored chunk, in one pass over the chunk index (get_chunk_info(k)
    walks the index from its start for each k: quadratic in the number of chunks)."""
    infos = []
    if hasattr(d.id, "chunk_iter"):  # h5py built against HDF5 >= 1.12.3 / 1.14
        d.id.chunk_iter(infos.append)
        return infos
    grid = [range(0, n, c) for n, c in zip(d.shape, d.chunks)]
    for coord in itertools.product(*grid):
        info = d.id.get_chunk_info_by_coord(coord)
        if info.byte_offset is not None:  # None: not stored (fill value)
            infos.append(info)
    return infos


def _summarise_chunks(d) -> str:
    """Modes, q and codecs of every chunk of a redml dataset, and its ratio."""
    from collections import Counter

    from . import RedmlError, inspect as chunk_info

    kinds, stored, bad = Counter(), 0, 0
    infos = _stored_chunks(d)
    n = len(infos)
    for info in infos:
        stored += info.size
        try:
            h = chunk_info(d.id.read_direct_chunk(info.chunk_offset)[1])
        except RedmlError:
            bad += 1
            continue
        kinds[(h["mode"], f" q={h['q']:g}" if h["mode"] == "quantized" else "", h["codec"])] += 1
    parts = [f"{c} {mode}{q} ({codec})" for (mode, q, codec), c in sorted(kinds.items())]
    if bad:
        parts.append(f"{bad} unreadable")
    raw = n * d.dtype.itemsize * int(np.prod(d.chunks))
    ratio = f", ratio {raw / stored:.2f}" if stored else ""
    return f", {n} redml chunks: {', '.join(parts) or 'none'}; {stored} bytes stored{ratio}"


def _inspect(args) -> int:
    import h5py

    from .formats.h5filter import FILTER_ID
    from .jungfrau.calibration import CALIBRATION_GROUP, describe_calibration

    _require_file(args.file)
    try:
        f = h5py.File(args.file, "r")
    except OSError as e:
        raise OSError(f"{args.file}: not a readable HDF5 file ({e})") from None
    with f:
        def show(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks and obj.ndim == 3:
                line = f"{obj.name}: {obj.shape[0]} frames of {obj.shape[1]} x {obj.shape[2]} {obj.dtype}"
                dcpl = obj.id.get_create_plist()
                if any(dcpl.get_filter(k)[0] == FILTER_ID for k in range(dcpl.get_nfilters())):
                    line += _summarise_chunks(obj)
                print(line)
            elif isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == CALIBRATION_GROUP:
                print(describe_calibration(obj))
        f.visititems(show)
    return 0


def _error_line(e: BaseException) -> str:
    """One line saying what went wrong, without the traceback."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"  # "No such file..." -> "no such file..."
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    text = " ".join(str(e).split())
    if isinstance(e, (OSError, ValueError, TypeError, ImportError, RuntimeError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Parser(argparse.ArgumentParser):
    """Argument errors on one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from . import FORMAT_VERSION, __version__

    return f"redml {__version__} (chunk format version {FORMAT_VERSION})"


def main(argv=None) -> int:
    ap = Parser(prog="redml", description="redml_reduce command line")
    ap.add_argument("--version", action="version", version=_version())
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    fs = sub.add_parser("find-spots", help="find spots and write CXI peak lists")
    fs.add_argument("frames", nargs="+")
    fs.add_argument("--cxi", help="write the peak lists to this HDF5/CXI file")
    fs.add_argument("--set", action="append", metavar="KEY=VALUE", help="finder settings (gain=20, markers=extremes, "
                    "read_noise=auto: integrating detectors; sigma_b=6...)")
    fs.set_defaults(run=_find_spots)
    rc = sub.add_parser("recompress", help="recompress NXmx/Eiger HDF5, CBF and SMV inputs into redml (Dask)")
    rc.add_argument("sources", nargs="+", help="HDF5 files, Eiger masters, image files or folders of them")
    rc.add_argument("--out", required=True, help="output folder (NAME.nxs or NAME.zarr per input)")
    rc.add_argument("-q", type=parse_q, default=0, help="0 lossless (default), a number (lossy, bounded) or 'sparse'")
    rc.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (0: serial)")
    rc.add_argument("--scheduler", help="address of a running dask scheduler (instead of a LocalCluster)")
    rc.add_argument("--format", choices=("nxmx", "zarr"), default="nxmx")
    rc.add_argument("--dataset", help="image dataset of HDF5 inputs (default entry/data/data or Eiger data_NNNNNN)")
    rc.add_argument("--frames-per-task", type=int, help="frames per encoding task (default: about 3 tasks per worker)")
    rc.add_argument("--threads", type=int, default=1, help="encoder threads per task")
    rc.add_argument("--set", action="append", metavar="KEY=VALUE", help="other codec settings (codec=zstd, tile=16...)")
    rc.add_argument("--report", help="JSON report path (default OUT/recompress-report.json)")
    rc.add_argument("--no-resume", action="store_true", help="redo inputs the manifest records as finished")
    rc.add_argument("--no-verify", action="store_true", help="skip decoding every chunk against its frame")
    rc.add_argument("--crystals", metavar="FILE", help="DIALS .expt or CrystFEL .stream: per-frame policy (indexed "
                    "frames: predicted reflections and spots exact, the rest drawn at q; other hits midpoint, "
                    "blanks drawn)")
    rc.add_argument("--lattice-radius", type=float, default=8.0, help="--crystals: disc radius in pixels around "
                    "each predicted reflection (default 8)")
    rc.set_defaults(run=_recompress)
    c = sub.add_parser("compress", help="write one input (HDF5/NXmx, Eiger master, CBF/SMV series) as redml chunks, "
                                        "its metadata kept; or raw JUNGFRAU frames, converted")
    c.add_argument("frames", nargs="+", help="what recompress reads, or FILE.h5:/dataset")
    c.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    c.add_argument("-q", type=parse_q, default=0, help="0 lossless (default), > 0 quantized, 'sparse'")
    c.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="other codec settings (gain=20, markers="
                   "extremes, read_noise=auto: integrating detectors; codec=zstd...)")
    c.add_argument("--threads", type=int, default=0, help="encoder threads (default: all cores)")
    c.add_argument("--roi", default="classical", choices=("classical", "ml", "union"),
                   help="exact region: the classical spot rule, the learned model (needs redml_reduce[ml]) or both")
    c.add_argument("--jungfrau-calibration", metavar="DIR", help="raw JUNGFRAU frames: calibration directory "
                   "(calibration.json) or HDF5 file written by redml; stored in the output")
    c.add_argument("--dtype", default="auto", choices=("auto", "int32", "int16"),
                   help="photon dtype (JUNGFRAU); auto: int16 where the calibration cannot reach its ends")
    c.add_argument("--track-window", type=int, default=0, help="pedestal tracking window in frames (0: off)")
    c.add_argument("--track-threshold", type=float, default=0.5, help="dark G0 pixel: |photons| below this")
    c.add_argument("--snapshot-every", type=int, default=0, help="store the tracked pedestal every N frames")
    c.set_defaults(run=_compress)
    dc = sub.add_parser("decompress", help="rewrite a redml file with bitshuffle-LZ4 or uncompressed, "
                                           "everything else kept (XDS/Neggia, archives leaving redml)")
    dc.add_argument("input")
    dc.add_argument("output")
    dc.add_argument("--codec", choices=("bslz4", "none"), default="bslz4")
    dc.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    dc.set_defaults(run=_decompress)
    i = sub.add_parser("inspect", help="datasets, redml chunks (modes, q, ratio) and stored calibrations of an HDF5 file")
    i.add_argument("file")
    i.set_defaults(run=_inspect)
    from .acquire.cli import add_commands as add_acquire_commands

    add_acquire_commands(sub, parse_q)
    return run(ap.parse_args(argv), ap.prog)


def run(args, prog: str) -> int:
    """Runs the command that args.run names; errors as one line on stderr (the traceback with --debug)."""
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
