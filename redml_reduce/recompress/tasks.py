"""The tasks of a recompression (redml_reduce.recompress.run), run on Dask workers or in order.

Each opens its files itself and returns plain data (paths, digests, sizes): no h5py
object leaves the process. See redml_reduce.recompress.run for how they are chained.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

import h5py
import numpy as np

from ..codec import CodecSettings, decode, error_bound, exact_mask
from ..formats.h5filter import Redml
from ..formats.sources import Input, open_frames
from ..pipeline import FRAME_KINDS, encode, encode_by_policy
from .outputs import open_writer, output_chunks, path_digest, path_size

__all__ = ["VerificationError", "verify_chunk", "inspect_input", "encode_part", "write_output", "check_output"]


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


def inspect_input(inp: Input) -> dict:
    """Task: frame count and on-disk identity of an input."""
    with open_frames(inp) as frames:
        n = len(frames)
        if n == 0:
            raise ValueError(f"{inp.label}: no frames")
        shape = frames.shape if frames.shape is not None else frames.read(0)[0].shape
    return {"frames": n, "frame_pixels": int(np.prod(shape)), "signature": inp.signature()}


def _encoded(inp: Input, start: int, stop: int, settings: CodecSettings, verify: bool, nthreads: int,
             roi="classical", policy=None, kinds=None):
    """Yields (index, chunk, header, frame) for frames start..stop-1 of an input; roi: the
    exact region's source (redml_reduce.pipeline). policy: None, or the per-frame policy
    (redml_reduce.pipeline.encode_by_policy) as {"crystals": [crystals of frame start, ...],
    "lattice": LatticeSettings, "min_peaks": int}; kinds: a dict counting the frames of each
    kind it gave."""
    with open_frames(inp) as frames:
        for i in range(start, stop):
            frame, header = frames.read(i)
            if policy is None:
                chunk = encode(frame, roi=roi, nthreads=nthreads, settings=settings)
            else:
                chunk, kind = encode_by_policy(frame, settings, policy["crystals"][i - start],
                                               lattice=policy["lattice"], min_peaks=policy["min_peaks"],
                                               nthreads=nthreads)
                if kinds is not None:
                    kinds[kind] = kinds.get(kind, 0) + 1
            if verify:
                try:
                    verify_chunk(frame, chunk, settings)
                except VerificationError as e:
                    raise VerificationError(f"{inp.label} frame {i}: {e}") from None
            yield i, chunk, header, frame


def policy_slice(policy, start: int, stop: int):
    """The per-frame policy of frames start..stop-1 (None stays None)."""
    return None if policy is None else {**policy, "crystals": policy["crystals"][start:stop]}


def _kinds_result(kinds: dict, policy) -> dict:
    """The frames per kind of a policy run, for the report ({} without a policy)."""
    return {} if policy is None else {"frames_by_kind": {k: kinds.get(k, 0) for k in FRAME_KINDS}}


def encode_part(inp: Input, start: int, stop: int, settings: CodecSettings, part_path: str, verify: bool = True,
                nthreads: int = 1, policy=None) -> dict:
    """Task: encodes frames start..stop-1 into a part file (HDF5, redml chunks by direct
    chunk write, image headers beside them). Returns what write_output needs to check it.
    policy: the per-frame policy of these frames (see _encoded), or None."""
    t0, c0 = time.perf_counter(), time.thread_time()
    tmp = f"{part_path}.{uuid.uuid4().hex}.tmp"
    digests, raw, shape, dtype, kinds = [], 0, None, None, {}
    try:
        with h5py.File(tmp, "w") as f:
            headers = []
            for i, chunk, header, frame in _encoded(inp, start, stop, settings, verify, nthreads, policy=policy,
                                                    kinds=kinds):
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
            "raw_bytes": raw, "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0,
            **_kinds_result(kinds, policy)}


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
                 verify: bool = True, nthreads: int = 1, roi="classical", on_frame=None, policy=None) -> dict:
    """Task: writes the output of an input under a temporary name, from its part files (or
    encoding the frames itself, with the exact region from `roi` or the per-frame `policy`
    (see _encoded), when parts is None), checks it and renames it into place. on_frame():
    called after each frame is stored."""
    t0, c0 = time.perf_counter(), time.thread_time()
    out_path = Path(out_path)
    tmp = Path(tmp_dir) / f"{out_path.name}.{uuid.uuid4().hex}.tmp"
    kinds = {}
    if parts is None:
        stream, raw = _encoded(inp, 0, n_frames, settings, verify, nthreads, roi, policy, kinds), 0
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
                if on_frame is not None:
                    on_frame()
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
        digest = path_digest(tmp)  # of the checked bytes; a resumed run compares it (check_output)
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
    for p in parts or ():
        for k, v in p.get("frames_by_kind", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    return {"frames": n_frames, "raw_bytes": raw, "bytes_out": path_size(out_path), "digest": digest,
            "seconds": seconds, "cpu_seconds": cpu, "output": str(out_path), **_kinds_result(kinds, policy)}


def check_output(out_path: str, entry: dict) -> str | None:
    """Task: None when the output at out_path is still what its manifest entry says was
    written and checked (same size and digest), else why not."""
    out = Path(out_path)
    if not out.exists():
        return "its output is missing"
    if not entry.get("digest"):
        return "its manifest entry has no digest (written by an older version)"
    try:
        if path_size(out) != entry.get("bytes_out"):
            return "its output changed size"
        if path_digest(out) != entry["digest"]:
            return "its output changed (digest differs)"
    except OSError as e:
        return f"its output cannot be read ({e})"
    return None


def decode_header(chunk) -> dict:
    from ..codec import inspect

    info = inspect(chunk)
    return {"shape": tuple(info["shape"]), "dtype": np.dtype(info["dtype"])}


def _fields(settings: CodecSettings) -> dict:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}
