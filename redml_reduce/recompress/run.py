"""Bulk recompression of detector archives into redml chunks, on Dask.

    from redml_reduce.recompress.run import recompress
    report = recompress(["/data/run1", "/data/eiger_master.h5"], "/data/redml", q=0, workers=2)
    print(report.table())

    redml recompress /data/run1 /data/eiger_master.h5 --out /data/redml --workers 2
    redml recompress ... --out DIR --scheduler tcp://host:8786      # an existing cluster

Inputs (redml_reduce.formats.sources): NXmx/Eiger HDF5 files (bitshuffle-LZ4, gzip or
uncompressed), Eiger masters with their data files, folders of CBF/SMV images (one input
per template). Each input becomes one output: `DIR/NAME.nxs` (NXmx, redml chunks; the
input's other groups copied) or `DIR/NAME.zarr` (zarr v3 store, codec redml_reduce.redml).

How it runs (dask.distributed: a LocalCluster of worker processes by default, since h5py
holds a global lock that makes threads useless for HDF5 work; `scheduler=` or `client=`
for an existing cluster, e.g. dask-jobqueue's SLURMCluster):

1. one small task per input opens it and counts its frames;
2. one task per frame range reads, encodes and verifies its frames (each decoded again:
   lossless byte for byte, lossy within the stated bound, exact pixels exact) and stores the
   chunks in a part file; an input of one range skips the part file;
3. one task per input writes the output under a temporary name from the chunks, checks it
   (frame count, every chunk byte-identical to the verified one), renames it to its final
   name and records it in `DIR/recompress-manifest.jsonl`.

Files are opened inside the tasks (only paths and bytes travel between processes). Chunks
do not depend on how the frames were split or on which worker encoded them, so outputs are
byte-identical to a serial run (`workers=0`). A rerun skips inputs whose manifest entry
matches (same input files, sizes and times, same settings and format) and whose output is
intact (its recorded size and digest); a damaged or missing output is redone, with a note
in the report. An input that cannot be read or verified is reported with its error;
the others go on. A worker that dies mid-task is replaced and its tasks rerun (temporary
names are unique per attempt).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import time
from pathlib import Path

from ..codec import CodecSettings
from ..formats.numcodecs_codec import settings_to_config
from .outputs import OUTPUT_SUFFIX, output_path
from ..progress import progress_bar
from .report import Manifest, Report, row as _row
from .tasks import (VerificationError, check_output, encode_part, inspect_input, policy_slice, verify_chunk,
                    write_output)
from ..formats.sources import find_inputs

__all__ = ["recompress", "Report", "Manifest", "VerificationError", "Interrupted", "verify_chunk", "MANIFEST_NAME",
           "TMP_NAME"]

MANIFEST_NAME = "recompress-manifest.jsonl"
REPORT_NAME = "recompress-report.json"
TMP_NAME = ".recompress-tmp"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or KeyboardInterrupt from on_result) stopped a run: `report` (saved at
    `report_path`) holds what was done, the inputs left marked "interrupted"."""

    def __init__(self, report, report_path):
        super().__init__(f"interrupted; report in {report_path}")
        self.report, self.report_path = report, report_path


# ---------------------------------------------------------------- executors

class _Done:
    """A call run when its result is first asked for (so a serial run does its work in
    order, input by input), shaped like the part of a distributed Future used here."""

    def __init__(self, fn, args, kwargs):
        self._call, self._ran = (fn, args, kwargs), False
        self._value = self._error = None

    def result(self):
        if not self._ran:
            fn, args, kwargs = self._call
            self._ran = True
            try:
                self._value = fn(*_resolve(args), **kwargs)
            except Exception as e:
                self._error = e
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self):
        pass


def _resolve(args):
    out = []
    for a in args:
        if isinstance(a, _Done):
            a = a.result()
        elif isinstance(a, list):
            a = [x.result() if isinstance(x, _Done) else x for x in a]
        out.append(a)
    return out


class _Serial:
    """Runs the tasks in this process, in order."""

    workers = 0

    def submit(self, fn, *args, **kwargs):
        return _Done(fn, args, kwargs)

    def as_completed(self, futures):
        return iter(list(futures))

    def cancel(self, futures):
        pass

    def close(self):
        pass


class _Dask:
    def __init__(self, workers, scheduler, client):
        from distributed import Client, LocalCluster

        self._own_client = client is None
        self._cluster = None
        if client is None:
            if scheduler:
                client = Client(scheduler)
            else:
                # Errors of tasks are in the report; the workers' own log of them is noise.
                self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                             dashboard_address=":0", silence_logs=logging.CRITICAL)
                client = Client(self._cluster)
        self.client = client
        self.workers = len(client.scheduler_info().get("workers", {})) or workers

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(futures)

    def cancel(self, futures):
        self.client.cancel(list(futures))

    def close(self):
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------- the run

def _split(n: int, work: float, total_work: float, frames_per_task: int | None, workers: int):
    """Frame ranges of an input: frames_per_task each, or (default) so that the run has
    about three tasks per worker of similar work (frames x pixels); serial runs: one range."""
    if frames_per_task is None:
        target = total_work / (3 * workers) if workers > 1 else float("inf")
        parts = min(n, max(1, round(work / target))) if target > 0 else 1
        frames_per_task = math.ceil(n / parts)
    step = max(1, int(frames_per_task))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def recompress(sources, out_dir, q=0.0, *, workers: int = 2, scheduler: str | None = None, client=None,
               output: str = "nxmx", dataset: str | None = None, frames_per_task: int | None = None,
               resume: bool = True, verify: bool = True, nthreads: int = 1, report_path=None,
               progress: bool = False, on_result=None, crystals=None, lattice=None, min_peaks: int = 10,
               **settings) -> Report:
    """Recompresses every input named by `sources` (files and folders) into `out_dir`.

    q and settings: redml CodecSettings. workers: LocalCluster worker processes (0: serial,
    in this process); scheduler: address of a running dask scheduler; client: a
    distributed.Client to use (left open). output: "nxmx" or "zarr". dataset: image dataset
    of HDF5 inputs when not entry/data/data. frames_per_task: frames per encoding task
    (default: inputs split so that there are about two tasks per worker). resume: skip
    inputs the manifest records as finished. verify: decode every chunk and check it.
    nthreads: encoder threads per task. report_path: where the JSON report goes (default
    out_dir/recompress-report.json). progress: a progress bar over the frames on stderr
    (True, False, or None: only when stderr is a terminal).
    on_result(row): called as each input finishes (an exception from it stops the run).
    crystals: a DIALS .expt or CrystFEL .stream path (or a redml_reduce.lattice.CrystalTable):
    each frame is then encoded by the per-frame policy (redml_reduce.pipeline.encode_by_policy:
    frames with a crystal keep the finder's region and a disc around every predicted
    reflection exact and draw the rest at q; frames without one are hits (at least min_peaks
    spots, midpoint) or blanks (draw)); lattice: the discs (redml_reduce.lattice.LatticeSettings).
    Each row of the report then counts its frames by kind (frames_by_kind).
    Paths are made absolute first (workers of a scheduler may run in another folder).
    Ctrl-C saves the report of what was done and raises Interrupted (a KeyboardInterrupt).
    """
    t_start = time.perf_counter()
    codec_settings = CodecSettings(q=q, **settings)
    codec_settings.check_encodable()  # refused before any output is written
    config = settings_to_config(codec_settings)
    table, lattice = _crystal_table(crystals), _lattice_settings(lattice)
    if table is not None:  # a different crystal file or footprint is a different output
        config = {**config, "crystals": {"source": os.path.basename(table.source), "digest": _file_digest(table.source),
                                         "lattice": dataclasses.asdict(lattice), "min_peaks": int(min_peaks)}}
    if output not in OUTPUT_SUFFIX:
        raise ValueError(f"output must be one of {sorted(OUTPUT_SUFFIX)}, not {output!r}")
    inputs = find_inputs([os.path.abspath(s) for s in sources], dataset)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir / TMP_NAME
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # what a stopped run left behind
    tmp_dir.mkdir()
    manifest = Manifest(out_dir / MANIFEST_NAME)
    ex = _Serial() if (workers == 0 and scheduler is None and client is None) else _Dask(workers, scheduler, client)
    report = Report(workers=ex.workers, settings=config)
    rows = {}
    live = []
    interrupted = False
    bar = progress_bar(0, "recompress", enabled=progress)
    try:
        inspected = {}
        futures = [ex.submit(inspect_input, inp) for inp in inputs]
        live = list(futures)
        for inp, fut in zip(inputs, futures):
            try:
                inspected[inp.name] = fut.result()
            except Exception as e:
                rows[inp.name] = _row(inp, "error", error=_message(e))
        entries = {inp.name: manifest.finished(inp.name, inspected[inp.name]["signature"], config, output)
                   for inp in inputs if resume and inp.name not in rows}
        outs = {inp.name: output_path(out_dir, inp, output) for inp in inputs}
        checks = {name: ex.submit(check_output, str(outs[name]), e) for name, e in entries.items() if e is not None}
        live = list(checks.values())
        todo, notes = [], {}
        for inp in inputs:
            if inp.name in rows:
                continue
            info, out = inspected[inp.name], outs[inp.name]
            if inp.name in checks:  # an earlier run finished it: skipped if its output is intact
                problem = checks[inp.name].result()
                if problem is None:
                    entry = entries[inp.name]
                    rows[inp.name] = _row(inp, "skipped", **{k: entry.get(k, 0) for k in (
                        "frames", "raw_bytes", "bytes_in", "bytes_out", "seconds", "cpu_seconds", "output")})
                    continue
                notes[inp.name] = f"redone: {problem}"
            todo.append((inp, info, out))
        jobs, live = {}, []
        total_work = sum(info["frames"] * info["frame_pixels"] for _, info, _ in todo)
        for inp, info, out in todo:
            n = info["frames"]
            ranges = _split(n, n * info["frame_pixels"], total_work, frames_per_task, ex.workers)
            parts = None
            policy = None if table is None else {"crystals": table.for_input(inp, n), "lattice": lattice,
                                                 "min_peaks": int(min_peaks)}
            if len(ranges) > 1:
                parts = [ex.submit(encode_part, inp, a, b, codec_settings,
                                   str(tmp_dir / f"{inp.name}.{a:06d}-{b:06d}.part.h5"), verify, nthreads,
                                   policy_slice(policy, a, b))
                         for a, b in ranges]
                live += parts
            fut = ex.submit(write_output, inp, n, parts, codec_settings, str(out), str(tmp_dir), output, verify,
                            nthreads, policy=policy)
            jobs[fut] = (inp, info)
            live.append(fut)
        bar.reset(total=sum(info["frames"] for _, info in jobs.values()))
        for fut in ex.as_completed(list(jobs)):
            inp, info = jobs[fut]
            bytes_in = sum(size for _, size, _ in info["signature"])
            try:
                res = fut.result()
                row = rows[inp.name] = _row(inp, "done", bytes_in=bytes_in, note=notes.get(inp.name),
                                            **res)  # reported even if Ctrl-C ...
                manifest.record({"name": inp.name, "signature": info["signature"], "settings": config,
                                 "format": output, "bytes_in": bytes_in, **res})  # ... stops the record
            except Exception as e:
                row = rows[inp.name] = _row(inp, "error", bytes_in=bytes_in, error=_message(e),
                                            note=notes.get(inp.name))
            bar.update(info["frames"])
            if on_result is not None:
                on_result(row)
    except KeyboardInterrupt:
        ex.cancel(live)
        interrupted = True
    except BaseException:
        ex.cancel(live)
        raise
    finally:
        bar.close()
        ex.close()
    shutil.rmtree(tmp_dir, ignore_errors=True)
    report.rows = [rows.get(inp.name) or _row(inp, "interrupted") for inp in inputs]
    report.wall_seconds = time.perf_counter() - t_start
    report_path = Path(report_path or out_dir / REPORT_NAME)
    report.save(report_path)
    if interrupted:
        raise Interrupted(report, report_path)
    return report


def _crystal_table(crystals):
    """A CrystalTable from a path (DIALS .expt, CrystFEL .stream), a table, or None."""
    if crystals is None:
        return None
    from ..lattice import CrystalTable, read_crystals

    return crystals if isinstance(crystals, CrystalTable) else read_crystals(os.path.abspath(crystals))


def _lattice_settings(lattice):
    from ..lattice import LatticeSettings

    if lattice is None:
        return LatticeSettings()
    if not isinstance(lattice, LatticeSettings):
        raise TypeError(f"lattice must be a LatticeSettings, not {type(lattice).__name__}")
    return lattice


def _file_digest(path) -> str | None:
    """Digest of a crystal file's bytes (None for a table built in memory)."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        return hashlib.blake2b(fh.read(), digest_size=16).hexdigest()


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
