"""The `redml` command line.

    redml tune FRAME... --reference REF [--radius 2]
    redml find-spots FRAME... [--cxi OUT.cxi]
    redml yield FRAME... --space-group SG --unit-cell a,b,c,al,be,ga [--codecs ...] [--json OUT]
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
    from .acqcli import add_commands as add_acquire_commands

    add_acquire_commands(sub)  # acquire, simulate-detector
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
