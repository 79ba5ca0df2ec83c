"""Bulk recompression of detector archives into redml chunks, on Dask.

    from redml_reduce.recompress import recompress
    report = recompress(["/data/run1", "/data/eiger_master.h5"], "/data/redml", q=0, workers=2)
    print(report.table())

    redml recompress /data/run1 /data/eiger_master.h5 --out /data/redml --workers 2
    redml recompress ... --out DIR --scheduler tcp://host:8786      # an existing cluster

Inputs (redml_reduce.sources): NXmx/Eiger HDF5 files (bitshuffle-LZ4, gzip or
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
matches (same input files, sizes and times, same settings and format, output present with
its recorded size). An input that cannot be read or verified is reported with its error;
the others go on. A worker that dies mid-task is replaced and its tasks rerun (temporary
names are unique per attempt).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .codec import CodecSettings, decode, encode, error_bound, exact_mask
from .h5filter import Redml
from .numcodecs_codec import settings_to_config
from .outputs import OUTPUT_SUFFIX, open_writer, output_chunks, output_path, path_size
from .sources import Input, find_inputs, open_frames

__all__ = ["recompress", "Report", "Manifest", "VerificationError", "verify_chunk", "MANIFEST_NAME", "TMP_NAME"]

MANIFEST_NAME = "recompress-manifest.jsonl"
REPORT_NAME = "recompress-report.json"
TMP_NAME = ".recompress-tmp"


class VerificationError(RuntimeError):
    """A chunk does not decode to its frame (lossless), or leaves the stated bound (lossy),
    or an output does not hold the chunks that were verified."""


def _digest(chunk) -> str:
    return hashlib.blake2b(chunk, digest_size=16).hexdigest()


def verify_chunk(frame: np.ndarray, chunk: bytes, settings: CodecSettings) -> None:
    """Decodes `chunk` and checks it against `frame`: lossless byte for byte; otherwise the
    exact pixels exact and (quantized) every other finite pixel within error_bound(chunk)."""
    back = decode(chunk, nthreads=1)
    native = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
    if back.shape != native.shape or back.dtype != native.dtype:
        raise VerificationError(f"chunk decodes to {back.shape} {back.dtype}, the frame is {native.shape} {native.dtype}")
    if settings.mode == "lossless":
        if back.tobytes() != native.tobytes():
            raise VerificationError("lossless chunk does not decode to the frame")
        return
    exact = exact_mask(chunk)
    if not np.array_equal(back[exact].view(np.uint8), native[exact].view(np.uint8)):
        raise VerificationError("pixels stored exactly (ROI, masked, special) changed")
    if settings.mode == "quantized":
        x = native.astype(np.float64)
        bg = ~exact & np.isfinite(x)
        err = np.abs(back.astype(np.float64)[bg] - x[bg])
        bound = error_bound(chunk)[bg]
        if (err > bound * (1 + 1e-6)).any():
            raise VerificationError(f"{int((err > bound * (1 + 1e-6)).sum())} pixels exceed the stated bound")


# ---------------------------------------------------------------- tasks (run on workers)

def inspect_input(inp: Input) -> dict:
    """Task: frame count and on-disk identity of an input."""
    with open_frames(inp) as frames:
        n = len(frames)
        if n == 0:
            raise ValueError(f"{inp.label}: no frames")
        shape = frames.shape if frames.shape is not None else frames.read(0)[0].shape
    return {"frames": n, "frame_pixels": int(np.prod(shape)), "signature": inp.signature()}


def _encoded(inp: Input, start: int, stop: int, settings: CodecSettings, verify: bool, nthreads: int):
    """Yields (index, chunk, header, frame) for frames start..stop-1 of an input."""
    with open_frames(inp) as frames:
        for i in range(start, stop):
            frame, header = frames.read(i)
            chunk = encode(frame, nthreads=nthreads, _settings=settings)
            if verify:
                try:
                    verify_chunk(frame, chunk, settings)
                except VerificationError as e:
                    raise VerificationError(f"{inp.label} frame {i}: {e}") from None
            yield i, chunk, header, frame


def encode_part(inp: Input, start: int, stop: int, settings: CodecSettings, part_path: str, verify: bool = True,
                nthreads: int = 1) -> dict:
    """Task: encodes frames start..stop-1 into a part file (HDF5, redml chunks by direct
    chunk write, image headers beside them). Returns what write_output needs to check it."""
    t0, c0 = time.perf_counter(), time.thread_time()
    tmp = f"{part_path}.{uuid.uuid4().hex}.tmp"
    digests, raw, shape, dtype = [], 0, None, None
    try:
        with h5py.File(tmp, "w") as f:
            headers = []
            for i, chunk, header, frame in _encoded(inp, start, stop, settings, verify, nthreads):
                if shape is None:
                    shape, dtype = frame.shape, frame.dtype.newbyteorder("=")
                    d = f.create_dataset("data", shape=(stop - start, *shape), dtype=dtype, chunks=(1, *shape),
                                         **Redml(**_fields(settings)))
                d.id.write_direct_chunk((i - start, 0, 0), chunk)
                digests.append(_digest(chunk))
                raw += frame.nbytes
                if header is not None:
                    headers.append(header)
            if headers:
                f.create_dataset("headers", data=headers, dtype=h5py.string_dtype())
        os.replace(tmp, part_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"start": start, "stop": stop, "path": part_path, "shape": shape, "dtype": str(dtype), "digests": digests,
            "raw_bytes": raw, "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0}


def _from_parts(parts):
    expected = 0
    for part in sorted(parts, key=lambda p: p["start"]):
        if part["start"] != expected:
            raise RuntimeError(f"frame ranges do not tile the input: expected {expected}, got {part['start']}")
        with h5py.File(part["path"], "r") as f:
            d = f["data"]
            headers = f["headers"].asstr()[...] if "headers" in f else None
            for k in range(part["stop"] - part["start"]):
                chunk = bytes(d.id.read_direct_chunk((k, 0, 0))[1])
                if _digest(chunk) != part["digests"][k]:
                    raise VerificationError(f"{part['path']}: chunk {k} changed after it was verified")
                yield part["start"] + k, chunk, None if headers is None else str(headers[k]), None
        expected = part["stop"]


def write_output(inp: Input, n_frames: int, parts, settings: CodecSettings, out_path: str, tmp_dir: str, fmt: str,
                 verify: bool = True, nthreads: int = 1) -> dict:
    """Task: writes the output of an input under a temporary name, from its part files (or
    encoding the frames itself when parts is None), checks it and renames it into place."""
    t0, c0 = time.perf_counter(), time.thread_time()
    out_path = Path(out_path)
    tmp = Path(tmp_dir) / f"{out_path.name}.{uuid.uuid4().hex}.tmp"
    if parts is None:
        stream, raw = _encoded(inp, 0, n_frames, settings, verify, nthreads), 0
    else:
        stream, raw = _from_parts(parts), sum(p["raw_bytes"] for p in parts)
    writer, digests = None, []
    try:
        try:
            for i, chunk, header, frame in stream:
                if writer is None:
                    info = decode_header(chunk)
                    writer = open_writer(fmt, tmp, inp, n_frames, info["shape"], info["dtype"], settings)
                writer.write(i, chunk, header)
                digests.append(_digest(chunk))
                if frame is not None:
                    raw += frame.nbytes
            writer.finish()
        finally:
            if writer is not None:
                writer.close()
        if len(digests) != n_frames:
            raise VerificationError(f"{inp.label}: {len(digests)} frames written, {n_frames} expected")
        with output_chunks(tmp, fmt, writer.data_path) as (n, read):
            if n != n_frames:
                raise VerificationError(f"{tmp}: {n} frames, {n_frames} expected")
            for i in range(n):
                if _digest(read(i)) != digests[i]:
                    raise VerificationError(f"{out_path.name}: frame {i} is not the chunk that was verified")
        if out_path.is_dir():
            shutil.rmtree(out_path)
        os.replace(tmp, out_path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    for p in parts or ():
        if os.path.exists(p["path"]):
            os.remove(p["path"])
    seconds = time.perf_counter() - t0 + sum(p["seconds"] for p in parts or ())
    cpu = time.thread_time() - c0 + sum(p["cpu_seconds"] for p in parts or ())
    return {"frames": n_frames, "raw_bytes": raw, "bytes_out": path_size(out_path), "seconds": seconds,
            "cpu_seconds": cpu, "output": str(out_path)}


def decode_header(chunk) -> dict:
    from .codec import inspect

    info = inspect(chunk)
    return {"shape": tuple(info["shape"]), "dtype": np.dtype(info["dtype"])}


def _fields(settings: CodecSettings) -> dict:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}


# ---------------------------------------------------------------- manifest and report

class Manifest:
    """Finished outputs of earlier runs: one JSON line per output, appended (and synced)
    as each finishes, so a run stopped at any point keeps what it completed."""

    def __init__(self, path):
        self.path = Path(path)
        self.entries = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["name"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a stop mid-write

    def finished(self, name, signature, config, fmt) -> dict | None:
        e = self.entries.get(name)
        if not e or e.get("signature") != signature or e.get("settings") != config or e.get("format") != fmt:
            return None
        out = Path(e.get("output", ""))
        if not out.exists() or path_size(out) != e.get("bytes_out"):
            return None
        return e

    def record(self, entry: dict) -> None:
        self.entries[entry["name"]] = entry
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class Report:
    """Per input: name, input, output, status (done, skipped: finished by an earlier run,
    error), frames, raw_bytes (frames as arrays), bytes_in (input files), bytes_out, ratio
    (raw_bytes / bytes_out), seconds (wall time of its tasks), cpu_seconds (CPU time of its
    tasks' threads), error."""

    rows: list = field(default_factory=list)
    wall_seconds: float = 0.0
    workers: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def errors(self) -> list:
        return [r for r in self.rows if r["status"] == "error"]

    def totals(self) -> dict:
        done = [r for r in self.rows if r["status"] == "done"]
        raw = sum(r["raw_bytes"] for r in done)
        out = sum(r["bytes_out"] for r in done)
        wall = self.wall_seconds or float("nan")
        return {"inputs": len(self.rows), "done": len(done), "skipped": sum(r["status"] == "skipped" for r in self.rows),
                "errors": len(self.errors), "frames": sum(r["frames"] for r in done), "raw_bytes": raw,
                "bytes_in": sum(r["bytes_in"] for r in done), "bytes_out": out,
                "ratio": raw / out if out else None, "wall_seconds": self.wall_seconds,
                "cpu_seconds": sum(r["cpu_seconds"] for r in done),
                "mbps": raw / 1e6 / wall if done else 0.0, "files_per_s": len(done) / wall if done else 0.0}

    def to_json(self) -> dict:
        return {"rows": self.rows, "totals": self.totals(), "workers": self.workers, "settings": self.settings}

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))

    def table(self) -> str:
        head = f"{'input':<28} {'status':<8} {'frames':>6} {'MB in':>9} {'MB out':>9} {'ratio':>7} {'s':>7}  error"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
            lines.append(f"{r['name'][:28]:<28} {r['status']:<8} {r['frames']:>6} {r['bytes_in'] / 1e6:>9.2f} "
                         f"{r['bytes_out'] / 1e6:>9.2f} {ratio:>7} {r['seconds']:>7.2f}  {r.get('error') or ''}")
        t = self.totals()
        ratio = f"{t['ratio']:.2f}" if t["ratio"] else "-"
        lines.append("-" * len(head))
        lines.append(f"{t['done']} done, {t['skipped']} skipped, {t['errors']} errors; {t['frames']} frames, "
                     f"{t['raw_bytes'] / 1e6:.1f} MB of frames -> {t['bytes_out'] / 1e6:.1f} MB (ratio {ratio}) in "
                     f"{t['wall_seconds']:.1f} s: {t['mbps']:.1f} MB/s, {t['files_per_s']:.2f} files/s, "
                     f"{self.workers or 'serial, 0'} workers, {t['cpu_seconds']:.1f} s CPU in tasks")
        return "\n".join(lines)


def _row(inp: Input, status: str, **values) -> dict:
    row = {"name": inp.name, "input": inp.label, "status": status, "frames": 0, "raw_bytes": 0, "bytes_in": 0,
           "bytes_out": 0, "ratio": None, "seconds": 0.0, "cpu_seconds": 0.0, "output": None, "error": None}
    row.update(values)
    if row["bytes_out"] and row["raw_bytes"]:
        row["ratio"] = row["raw_bytes"] / row["bytes_out"]
    return row


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

    def progress_bar(self, futures):
        """distributed's text progress bar over the tasks, drawn by a background thread."""
        import threading

        from distributed import progress

        bar = threading.Thread(target=progress, args=(list(futures),), kwargs={"notebook": False, "multi": False},
                               daemon=True)
        bar.start()
        return bar

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
               progress: bool = False, on_result=None, **settings) -> Report:
    """Recompresses every input named by `sources` (files and folders) into `out_dir`.

    q and settings: redml CodecSettings. workers: LocalCluster worker processes (0: serial,
    in this process); scheduler: address of a running dask scheduler; client: a
    distributed.Client to use (left open). output: "nxmx" or "zarr". dataset: image dataset
    of HDF5 inputs when not entry/data/data. frames_per_task: frames per encoding task
    (default: inputs split so that there are about two tasks per worker). resume: skip
    inputs the manifest records as finished. verify: decode every chunk and check it.
    nthreads: encoder threads per task. report_path: where the JSON report goes (default
    out_dir/recompress-report.json). progress: distributed's progress bar over the tasks
    (stdout), or a line per finished input (stderr) on the serial path.
    on_result(row): called as each input finishes (an exception from it stops the run).
    """
    t_start = time.perf_counter()
    codec_settings = CodecSettings(q=q, **settings)
    config = settings_to_config(codec_settings)
    if output not in OUTPUT_SUFFIX:
        raise ValueError(f"output must be one of {sorted(OUTPUT_SUFFIX)}, not {output!r}")
    inputs = find_inputs(sources, dataset)
    out_dir = Path(out_dir)
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
    try:
        inspected = {}
        futures = [ex.submit(inspect_input, inp) for inp in inputs]
        live = list(futures)
        for inp, fut in zip(inputs, futures):
            try:
                inspected[inp.name] = fut.result()
            except Exception as e:
                rows[inp.name] = _row(inp, "error", error=_message(e))
        todo = []
        for inp in inputs:
            if inp.name in rows:
                continue
            info = inspected[inp.name]
            out = output_path(out_dir, inp, output)
            entry = manifest.finished(inp.name, info["signature"], config, output) if resume else None
            if entry is not None:
                rows[inp.name] = _row(inp, "skipped", **{k: entry.get(k, 0) for k in (
                    "frames", "raw_bytes", "bytes_in", "bytes_out", "seconds", "cpu_seconds", "output")})
            else:
                todo.append((inp, info, out))
        jobs, live = {}, []
        total_work = sum(info["frames"] * info["frame_pixels"] for _, info, _ in todo)
        for inp, info, out in todo:
            n = info["frames"]
            ranges = _split(n, n * info["frame_pixels"], total_work, frames_per_task, ex.workers)
            parts = None
            if len(ranges) > 1:
                parts = [ex.submit(encode_part, inp, a, b, codec_settings,
                                   str(tmp_dir / f"{inp.name}.{a:06d}-{b:06d}.part.h5"), verify, nthreads)
                         for a, b in ranges]
                live += parts
            fut = ex.submit(write_output, inp, n, parts, codec_settings, str(out), str(tmp_dir), output, verify,
                            nthreads)
            jobs[fut] = (inp, info)
            live.append(fut)
        bar = ex.progress_bar(live) if progress and isinstance(ex, _Dask) and live else None
        for k, fut in enumerate(ex.as_completed(list(jobs)), 1):
            inp, info = jobs[fut]
            bytes_in = sum(size for _, size, _ in info["signature"])
            try:
                res = fut.result()
                row = _row(inp, "done", bytes_in=bytes_in, **res)
                manifest.record({"name": inp.name, "signature": info["signature"], "settings": config,
                                 "format": output, "bytes_in": bytes_in, **res})
            except Exception as e:
                row = _row(inp, "error", bytes_in=bytes_in, error=_message(e))
            rows[inp.name] = row
            if progress and bar is None:
                ratio = f", ratio {row['ratio']:.2f}" if row["ratio"] else ""
                print(f"[{k}/{len(jobs)}] {row['status']} {inp.name}: {row['frames']} frames{ratio}"
                      f"{', ' + row['error'] if row['error'] else ''}", file=sys.stderr, flush=True)
            if on_result is not None:
                on_result(row)
        if bar is not None:
            bar.join(timeout=5)
            print(file=sys.stdout, flush=True)
    except BaseException:
        ex.cancel(live)
        raise
    finally:
        ex.close()
    shutil.rmtree(tmp_dir, ignore_errors=True)
    report.rows = [rows[inp.name] for inp in inputs]
    report.wall_seconds = time.perf_counter() - t_start
    report.save(report_path or out_dir / REPORT_NAME)
    return report


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
