"""The `redml` command line.

    redml tune FRAME... --reference REF [--radius 2]
    redml find-spots FRAME... [--cxi OUT.cxi]
    redml recompress SRC... --out DIR [-q Q] [--workers N | --scheduler ADDRESS] [--format nxmx|zarr]
    redml yield FRAME... --space-group SG --unit-cell a,b,c,al,be,ga [--codecs ...] [--json OUT]
    redml compress RAW.h5[:/dataset]... -o OUT.h5 [-q 1] [--roi classical|ml|union] [--jungfrau-calibration DIR|FILE.h5]
    redml inspect FILE.h5
    redml simulate-detector --bind tcp://*:31001 --frames N --rate HZ [--compression bslz4]
    redml acquire --connect tcp://HOST:31001 --out run.nxs --q 1 [--veto sparse] [--dashboard :8080]

FRAME: any image fabio reads (CBF, SMV, ...) or FILE.h5:/path/to/dataset[:index].
REF: a DIALS strong.refl (read with the system python that has DIALS) or a .json file
{"0": [[x, y], ...], "1": ...} with one list per frame (pixel centres at +0.5).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["main", "read_frames", "read_reference"]

def read_frames(specs) -> list[np.ndarray]:
    """Frames from files fabio reads, or FILE.h5:/dataset[:index] (all frames of a 3-D dataset)."""
    frames = []
    for spec in specs:
        if ".h5:" in spec or ".nxs:" in spec or ".cxi:" in spec:
            import h5py

            path, _, rest = spec.partition(":")
            dset, _, index = rest.partition(":")
            with h5py.File(path, "r") as f:
                d = f[dset]
                if d.ndim == 2:
                    frames.append(d[...])
                elif index:
                    frames.append(d[int(index)])
                else:
                    frames.extend(d[i] for i in range(d.shape[0]))
        else:
            import fabio

            frames.append(np.asarray(fabio.open(spec).data))
    return frames


def read_reference(path: str, n_frames: int) -> list[np.ndarray]:
    """Reference positions per frame from a DIALS .refl or a .json file."""
    if path.endswith(".refl"):
        from .dials_side import script
        from .sim import DIALS_PYTHON

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
    reference = read_reference(args.reference, len(frames))
    result = tune(frames, reference, radius=args.radius)
    print(result.report())
    print("best settings:", json.dumps({k: v for k, v in vars(result.best).items()}))
    return 0


def _find_spots(args) -> int:
    from .peaklist import write_cxi_peaks
    from .spots import find_spots

    frames = read_frames(args.frames)
    peaks = [find_spots(f)[0] for f in frames]
    for i, p in enumerate(peaks):
        print(f"frame {i}: {len(p)} spots")
    if args.cxi:
        write_cxi_peaks(args.cxi, peaks)
        print(f"peak lists written to {args.cxi} (/entry_1/result_1)")
    return 0


def _recompress(args) -> int:
    from .recompress import recompress

    settings = {}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, not {item!r}")
        try:
            settings[key] = json.loads(value)  # numbers, true/false
        except ValueError:
            settings[key] = value  # names: codec=zstd, shuffle=bit
    q = args.q if args.q == "sparse" else float(args.q)
    report = recompress(args.sources, args.out, q, workers=args.workers, scheduler=args.scheduler,
                        output=args.format, dataset=args.dataset, frames_per_task=args.frames_per_task,
                        resume=not args.no_resume, verify=not args.no_verify, nthreads=args.threads,
                        report_path=args.report, progress=True, **settings)
    print(report.table())
    return 1 if report.errors else 0


def _yield(args) -> int:
    from .yardstick import Dials
    from .yield_study import format_table, plot, series_from_files, study

    cell = tuple(float(v) for v in args.unit_cell.split(","))
    if len(cell) != 6:
        raise SystemExit("--unit-cell needs six numbers: a,b,c,alpha,beta,gamma")
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


def _compress(args) -> int:
    from .jungfrau import compress_raw, load_calibration, read_frames_lazily
    from .writer import FrameWriter

    q = args.q if args.q == "sparse" else float(args.q)
    frames = (f for spec in args.frames for f in read_frames_lazily(spec))
    if args.jungfrau_calibration:
        if args.roi != "classical":
            raise SystemExit("--roi ml/union works on photon frames, not with --jungfrau-calibration")
        calib = load_calibration(args.jungfrau_calibration)
        r = compress_raw(frames, args.output, calib, q=q, photon_dtype=args.dtype, track_window=args.track_window,
                         track_threshold=args.track_threshold, snapshot_every=args.snapshot_every)
        marked = {k: v for k, v in r["counts"].items() if k not in ("g0", "g1", "g2") and v}
        print(f"{r['frames']} raw frames converted and written to {args.output} ({args.dtype} photons, q={q}); "
              f"calibration in /entry/instrument/detector/jungfrau_calibration; pixels by gain stage "
              f"G0 {r['counts']['g0']}, G1 {r['counts']['g1']}, G2 {r['counts']['g2']}; marked {marked or 'none'}")
        return 0
    first = next(frames, None)
    if first is None:
        raise SystemExit("no frames")
    with FrameWriter(args.output, first.shape, first.dtype, q=q, roi=args.roi) as w:
        w.write(first)
        for f in frames:
            w.write(f)
        print(f"{len(w)} frames written to {args.output} (q={q}, roi={args.roi})")
    return 0


def _inspect(args) -> int:
    import h5py

    from . import inspect as chunk_info
    from .h5filter import FILTER_ID
    from .jungfrau import CALIBRATION_GROUP, describe_calibration

    with h5py.File(args.file, "r") as f:
        def show(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks and obj.ndim == 3:
                line = f"{obj.name}: {obj.shape[0]} frames of {obj.shape[1]} x {obj.shape[2]} {obj.dtype}"
                dcpl = obj.id.get_create_plist()
                if any(dcpl.get_filter(k)[0] == FILTER_ID for k in range(dcpl.get_nfilters())):
                    if obj.shape[0]:
                        info = chunk_info(obj.id.read_direct_chunk((0, 0, 0))[1])
                        line += f", redml chunks (mode {info['mode']}, q={info['q']:g}, codec {info['codec']})"
                    line += f", {obj.id.get_storage_size()} bytes stored"
                print(line)
            elif isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == CALIBRATION_GROUP:
                print(describe_calibration(obj))
        f.visititems(show)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="redml", description="redml_reduce command line")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="tune the spot finder against reference spots")
    t.add_argument("frames", nargs="+")
    t.add_argument("--reference", required=True, help="DIALS strong.refl or positions .json")
    t.add_argument("--radius", type=float, default=2.0, help="matching radius in pixels")
    t.set_defaults(run=_tune)
    fs = sub.add_parser("find-spots", help="find spots and write CXI peak lists")
    fs.add_argument("frames", nargs="+")
    fs.add_argument("--cxi", help="write the peak lists to this HDF5/CXI file")
    fs.set_defaults(run=_find_spots)
    rc = sub.add_parser("recompress", help="recompress NXmx/Eiger HDF5, CBF and SMV inputs into redml (Dask)")
    rc.add_argument("sources", nargs="+", help="HDF5 files, Eiger masters, image files or folders of them")
    rc.add_argument("--out", required=True, help="output folder (NAME.nxs or NAME.zarr per input)")
    rc.add_argument("-q", default="0", help="0 lossless (default), a number (lossy, bounded) or 'sparse'")
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
    rc.set_defaults(run=_recompress)
    from .yield_study import DEFAULT_CODECS

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
    c = sub.add_parser("compress", help="write frames (or raw JUNGFRAU frames, converted) as redml chunks")
    c.add_argument("frames", nargs="+", help="FILE.h5[:/dataset] (default entry/data/data or data)")
    c.add_argument("-o", "--output", required=True, help="HDF5 file to write (entry/data/data)")
    c.add_argument("-q", default="1", help="0 lossless, > 0 quantized, 'sparse' (default 1)")
    c.add_argument("--roi", default="classical", choices=("classical", "ml", "union"),
                   help="exact region: the classical spot rule, the learned model (needs redml_reduce[ml]) or both")
    c.add_argument("--jungfrau-calibration", metavar="DIR", help="raw JUNGFRAU frames: calibration directory "
                   "(calibration.json) or HDF5 file written by redml; stored in the output")
    c.add_argument("--dtype", default="int32", choices=("int32", "int16"), help="photon dtype (JUNGFRAU)")
    c.add_argument("--track-window", type=int, default=0, help="pedestal tracking window in frames (0: off)")
    c.add_argument("--track-threshold", type=float, default=0.5, help="dark G0 pixel: |photons| below this")
    c.add_argument("--snapshot-every", type=int, default=0, help="store the tracked pedestal every N frames")
    c.set_defaults(run=_compress)
    i = sub.add_parser("inspect", help="datasets, redml chunk settings and stored calibrations of an HDF5 file")
    i.add_argument("file")
    i.set_defaults(run=_inspect)
    from .acqcli import add_commands as add_acquire_commands

    add_acquire_commands(sub)  # acquire, simulate-detector
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
