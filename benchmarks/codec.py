"""Codec benchmark: redml against bitshuffle/zstd/SZ3 on the same frames, in one run.

    .venv/bin/python benchmarks/codec.py --quick --json /tmp/codec_quick.json   # < 1 min on 2 cores
    .venv/bin/python benchmarks/codec.py --json /tmp/codec_full.json            # all frames, 3 repeats
    .venv/bin/python benchmarks/codec.py --data DIR                             # other thaumatin folder

Frame sets: the real Pilatus 6M thaumatin stills (int32) and synthetic JUNGFRAU 4M frames
(Poisson background of 0.05, 1, 20 photons/px plus Gaussian spots; uint16 and int32).
Per frame set and codec: compression ratio, bits per pixel against an entropy bound
(Poisson entropy of the quantized source for synthetic frames; empirical order-0 entropy of
the pixel values, a reference only, for real frames), encode/decode GB/s on one core (and on
all cores for redml's own API), max |error| and bias. Lossless codecs must decode byte-exact:
any mismatch is reported and makes the script exit with status 1.

Peers run through h5py (one chunk per frame, in-memory file); redml runs through its API
(rr.encode/rr.decode) and, for q=0 and q=1, through h5py too (the "-h5" rows).
GB/s = raw bytes / best-of-repeats seconds / 1e9.
"""
from __future__ import annotations

import os

# Per-core figures: these must be set before hdf5plugin (bitshuffle's OpenMP threads) and
# before redml's filter runs (REDML_NUM_THREADS is read on every call with nthreads=0).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["REDML_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Mapping, Optional  # noqa: E402

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402
import numpy as np  # noqa: E402

import redml_reduce as rr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, FrameSet, best_of, load_thaumatin, synthetic_set  # noqa: E402

NCORES = len(os.sched_getaffinity(0))  # "all cores" for redml (nthreads=0 would read REDML_NUM_THREADS=1)
QUICK_THAUMATIN = (1, 10, 17)  # a strong hit, a weaker one, a blank


@dataclass(frozen=True)
class Codec:
    """One row of the benchmark: redml through its API (`redml`) or any filter through h5py (`h5`)."""

    name: str
    redml: Optional[dict] = None  # rr.encode keyword arguments
    h5: Optional[Callable[[], Mapping]] = None  # create_dataset filter keyword arguments
    q: object = None  # redml's q (None for peers)
    abs_bound: Optional[float] = None  # SZ3's absolute error bound

    @property
    def lossless(self) -> bool:
        return self.q == 0 or (self.q is None and self.abs_bound is None)


def _redml(name, q, **kw):
    return Codec(name, redml=dict(q=q, **kw), q=q)


CODECS = [
    _redml("redml-q0", 0), _redml("redml-q0.5", 0.5), _redml("redml-q1", 1), _redml("redml-q2", 2),
    _redml("redml-q4", 4), _redml("redml-sparse", "sparse"),
    _redml("redml-q0-lz4", 0, codec="lz4"), _redml("redml-q1-lz4", 1, codec="lz4"),
    Codec("redml-q0-h5", h5=lambda: rr.Redml(q=0), q=0),
    Codec("redml-q1-h5", h5=lambda: rr.Redml(q=1), q=1),
    Codec("bslz4", h5=lambda: hdf5plugin.Bitshuffle(cname="lz4")),
    Codec("bszstd", h5=lambda: hdf5plugin.Bitshuffle(cname="zstd")),
    Codec("zstd", h5=lambda: hdf5plugin.Zstd()),
    Codec("sz3-abs1", h5=lambda: hdf5plugin.SZ3(absolute=1), abs_bound=1),
    Codec("sz3-abs2", h5=lambda: hdf5plugin.SZ3(absolute=2), abs_bound=2),
]


# ----------------------------------------------------------------------------- frame sets

def frame_sets(args) -> list[FrameSet]:
    """The real thaumatin stills first (the headline), then the synthetic sets."""
    sets = [load_thaumatin(args.data, QUICK_THAUMATIN if args.quick else None)]
    if args.quick:
        return sets + [synthetic_set(20, np.uint16, shape=(1024, 1024))]
    return sets + [synthetic_set(bg, dt, n_frames=2) for dt in (np.uint16, np.int32) for bg in (0.05, 1, 20)]


# ----------------------------------------------------------------------------- measuring

@dataclass
class Run:
    """What one codec did to one frame set."""

    stored: int  # compressed bytes
    t_enc: float  # best seconds, one core
    t_dec: float
    decoded: np.ndarray
    chunks: Optional[list] = None  # redml chunks (for exact_mask)
    t_enc_all: Optional[float] = None  # best seconds, all cores (redml API only)
    t_dec_all: Optional[float] = None


def run_redml(fs: FrameSet, kw: dict, repeats: int) -> Run:
    """rr.encode / rr.decode frame by frame, on one core and on all cores."""
    encode = lambda n: [rr.encode(f, nthreads=n, **kw) for f in fs.frames]  # noqa: E731
    t_enc, chunks = best_of(lambda: encode(1), repeats)
    t_dec, decoded = best_of(lambda: [rr.decode(c, nthreads=1) for c in chunks], repeats)
    t_enc_all, _ = best_of(lambda: encode(NCORES), repeats)
    t_dec_all, _ = best_of(lambda: [rr.decode(c, nthreads=NCORES) for c in chunks], repeats)
    return Run(sum(map(len, chunks)), t_enc, t_dec, np.stack(decoded), chunks, t_enc_all, t_dec_all)


def run_h5(fs: FrameSet, filt: Mapping, repeats: int, want_chunks: bool = False) -> Run:
    """Writes and reads the set as one dataset, one chunk per frame, in an in-memory HDF5 file.

    The chunk cache is off (HDF5 2.0 caches 8 MiB by default): a cached chunk would be filtered
    only when the file closes, outside the timing, and read back unfiltered.
    """
    n, h, w = fs.frames.shape
    with h5py.File(f"{fs.name}-{id(filt)}.h5", "w", driver="core", backing_store=False, rdcc_nbytes=0) as f:
        def write():
            if "d" in f:
                del f["d"]
            ds = f.create_dataset("d", shape=fs.frames.shape, dtype=fs.frames.dtype, chunks=(1, h, w), **filt)
            ds.write_direct(fs.frames)
            return ds

        t_enc, ds = best_of(write, repeats)
        decoded = np.empty_like(fs.frames)
        t_dec, _ = best_of(lambda: ds.read_direct(decoded), repeats)
        chunks = [ds.id.read_direct_chunk((i, 0, 0))[1] for i in range(n)] if want_chunks else None
        return Run(ds.id.get_storage_size(), t_enc, t_dec, decoded, chunks)


# ----------------------------------------------------------------------------- errors

def check_lossless(fs: FrameSet, name: str, decoded: np.ndarray) -> Optional[str]:
    """None if byte-exact, else a precise description of the first mismatch."""
    if decoded.dtype == fs.frames.dtype and decoded.shape == fs.frames.shape and np.array_equal(decoded, fs.frames):
        return None
    if decoded.dtype != fs.frames.dtype or decoded.shape != fs.frames.shape:
        got, want = f"{decoded.dtype}{decoded.shape}", f"{fs.frames.dtype}{fs.frames.shape}"
        return f"{fs.name}/{name}: decoded {got} != original {want}"
    bad = np.argwhere(decoded != fs.frames)
    i, y, x = bad[0]
    return (f"{fs.name}/{name}: LOSSLESS MISMATCH in {len(bad)} pixels; first frame {i} (y={y}, x={x}): "
            f"decoded {decoded[i, y, x]} != original {fs.frames[i, y, x]}")


def error_stats(fs: FrameSet, codec: Codec, run: Run) -> dict:
    """max |err|, bias, pixels stored exactly but changed, and (synthetic) max |err| / bound."""
    max_abs, err_sum, exact_bad, worst = 0.0, 0.0, 0, 0.0
    for i, (orig, dec) in enumerate(zip(fs.frames, run.decoded)):
        err = dec.astype(np.float64) - orig
        max_abs, err_sum = max(max_abs, float(np.abs(err).max())), err_sum + float(err.sum())
        exact = rr.exact_mask(run.chunks[i]) if run.chunks else np.zeros(orig.shape, bool)
        exact_bad += int(np.count_nonzero(err[exact]))
        if codec.abs_bound is not None:
            worst = max(worst, float(np.abs(err).max()) / codec.abs_bound)
        elif fs.mu is not None and isinstance(codec.q, (int, float)) and codec.q > 0:
            bound = codec.q * np.sqrt(np.maximum(fs.mu[i], 1.0)) / 2
            worst = max(worst, float((np.abs(err)[~exact] / bound[~exact]).max(initial=0.0)))
    out = dict(max_abs_err=max_abs, bias=err_sum / fs.npix, exact_pixels_changed=exact_bad)
    if codec.abs_bound is not None or (fs.mu is not None and codec.q not in (None, 0, "sparse")):
        out["max_err_over_bound"] = worst
    return out


# ----------------------------------------------------------------------------- entropy bounds

def poisson_pmf(mu: float) -> np.ndarray:
    """P(X = k), k = 0..n, for X ~ Poisson(mu), covering all but a negligible tail."""
    n = int(mu + 12 * math.sqrt(mu) + 40)
    logfact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    return np.exp(np.arange(n + 1) * math.log(mu) - mu - logfact)


def redml_step(mu: float, q: float) -> int:
    """Odd integer step for a background of mean mu, as redml_step_int in csrc/quantize.h
    (gain 1, mu_min 1): half-width h = floor(q*sigma/2), at most floor(mu/2)."""
    if not q > 0:
        return 1
    half = min(math.floor(q * math.sqrt(max(mu, 1.0)) / 2), math.floor(mu / 2))
    return 2 * max(half, 0) + 1


@lru_cache(maxsize=None)
def quantized_entropy(mu: float, q: float) -> float:
    """Bits of redml's symbol for X ~ Poisson(mu), given the dither u (uniform on 0..s-1):
    X itself when X < h (low counts are exact), else the bin floor((X + u) / s)."""
    p, s = poisson_pmf(mu), redml_step(mu, q)
    h, n = (s - 1) // 2, len(p)
    cdf = np.concatenate([[0.0], np.cumsum(p)])  # cdf[j] = P(X < j)
    edges = np.arange(0, n + 2 * s, s)[None, :] - np.arange(s)[:, None]  # bin k: [k*s - u, (k+1)*s - u)
    bins = np.diff(cdf[np.clip(edges, h, n)], axis=1)  # bins hold only x >= h
    m = np.concatenate([p[:h], bins.ravel() / s])  # symbol masses, each bin weighted by P(u) = 1/s
    m = m[m > 0]
    return float(-(m * np.log2(m)).sum() - math.log2(s) * (bins.sum() / s))


def entropy_map(mu: np.ndarray, q: float) -> np.ndarray:
    """quantized_entropy per pixel: exact at the background, interpolated (log mu) over spots."""
    lo, hi = float(mu.min()), float(mu.max())
    grid = np.unique(np.concatenate([[lo, hi], np.geomspace(lo, hi, 256)]))
    h = np.array([quantized_entropy(float(m), q) for m in grid])
    return np.interp(np.log(mu), np.log(grid), h)


def poisson_bound_bpp(fs: FrameSet, q, chunks: list) -> float:
    """Entropy bound in bits/pixel of redml's quantized source: pixels the chunk stores exactly
    cost their lossless Poisson entropy, the others that of the quantized value (0 in sparse mode)."""
    total = 0.0
    for mu, chunk in zip(fs.mu, chunks):
        exact = rr.exact_mask(chunk)
        h_exact = entropy_map(mu, 0.0)
        h_quant = np.zeros_like(mu) if q == "sparse" else entropy_map(mu, float(q))
        total += float(np.where(exact, h_exact, h_quant).sum())
    return total / fs.npix


def order0_entropy_bpp(frames: np.ndarray) -> float:
    """Empirical order-0 entropy of the pixel values (a reference, not a bound)."""
    v = frames.ravel().astype(np.int64)
    counts = np.bincount(v - v.min())
    p = counts[counts > 0] / v.size
    return float(-(p * np.log2(p)).sum())


# ----------------------------------------------------------------------------- one row

def bench(fs: FrameSet, codec: Codec, repeats: int, h0: Optional[float], problems: list) -> dict:
    """All figures of one codec on one frame set; a codec that refuses the data gives nulls."""
    try:
        if codec.redml is not None:
            run = run_redml(fs, codec.redml, repeats)
        else:
            run = run_h5(fs, codec.h5(), repeats, want_chunks=codec.q is not None)
    except Exception as e:  # noqa: BLE001 - e.g. SZ3 refusing a dtype
        if codec.q is not None:
            problems.append(f"{fs.name}/{codec.name}: redml failed: {e!r}")
        return dict(error=f"{type(e).__name__}: {e}")
    gbps = lambda t: fs.nbytes / t / 1e9 if t else None  # noqa: E731
    rec = dict(ratio=fs.nbytes / run.stored, bpp=8 * run.stored / fs.npix,
               encode_gbps=gbps(run.t_enc), decode_gbps=gbps(run.t_dec),
               encode_gbps_allcores=gbps(run.t_enc_all), decode_gbps_allcores=gbps(run.t_dec_all))
    if codec.lossless:
        msg = check_lossless(fs, codec.name, run.decoded)
        rec["lossless_ok"] = msg is None
        if msg:
            problems.append(msg)
    rec.update(error_stats(fs, codec, run))
    if rec["exact_pixels_changed"]:
        problems.append(f"{fs.name}/{codec.name}: {rec['exact_pixels_changed']} pixels in exact_mask changed")
    if rec.get("max_err_over_bound", 0) > 1 and codec.abs_bound is not None:
        problems.append(f"{fs.name}/{codec.name}: max |err| {rec['max_abs_err']} > bound {codec.abs_bound}")
    if codec.q is not None and run.chunks:
        if fs.mu is not None:
            rec["bound_bpp"], rec["bound_kind"] = poisson_bound_bpp(fs, codec.q, run.chunks), "poisson"
        else:
            rec["bound_bpp"], rec["bound_kind"] = h0, "order0-empirical"
        rec["bpp_over_bound"] = rec["bpp"] / rec["bound_bpp"] if rec["bound_bpp"] else None
        rec["exact_fraction"] = sum(int(rr.inspect(c)["n_exact"]) for c in run.chunks) / fs.npix
    if codec.h5 is not None and codec.q is not None:  # the filter must store what rr.encode produces
        rec["h5_chunk_equals_encode"] = run.chunks[0] == rr.encode(fs.frames[0], q=codec.q, nthreads=1)
    return rec


# ----------------------------------------------------------------------------- printing

COLS = ("set", "codec", "ratio", "bpp", "bound", "bpp/bnd", "enc/core", "dec/core", "enc all", "dec all",
        "max err", "bias")
WIDTHS = (28, 13, 7, 7, 8, 7, 8, 8, 8, 8, 8, 9)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_header():
    print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(COLS, WIDTHS))))
    print("-" * (sum(WIDTHS) + 2 * (len(WIDTHS) - 1)))


def print_row(set_name: str, codec: str, r: dict):
    if "error" in r:
        print(f"{set_name:<28}  {codec:<13}  skipped: {r['error'][:90]}", flush=True)
        return
    bound = r.get("bound_bpp")
    mark = "*" if r.get("bound_kind") == "order0-empirical" else " "
    cells = (set_name, codec, _fmt(r["ratio"], ".2f"), _fmt(r["bpp"], ".3f"),
             (_fmt(bound, ".3f") + mark) if bound is not None else "-", _fmt(r.get("bpp_over_bound"), ".3f"),
             _fmt(r["encode_gbps"], ".3f"), _fmt(r["decode_gbps"], ".3f"), _fmt(r["encode_gbps_allcores"], ".3f"),
             _fmt(r["decode_gbps_allcores"], ".3f"), _fmt(r["max_abs_err"], "g"), _fmt(r["bias"], ".2e"))
    print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, WIDTHS))), flush=True)


def print_targets(details: dict):
    """The project's targets, each next to the measured figure."""
    get = lambda s, c, k="ratio": details.get(s, {}).get("codecs", {}).get(c, {}).get(k)  # noqa: E731
    ok = lambda cond: "PASS" if cond else "FAIL"  # noqa: E731
    print("\ntargets")
    q0, bsz, lz, bslz = (get("thaumatin", c) for c in ("redml-q0", "bszstd", "redml-q0-lz4", "bslz4"))
    if q0 and bsz:
        print(f"  lossless ratio, thaumatin: redml-q0 {q0:.2f} vs bszstd {bsz:.2f} (x{q0 / bsz:.3f}); "
              f"redml-q0-lz4 {lz:.2f} vs bslz4 {bslz:.2f} (x{lz / bslz:.3f})")
    for s in (s for s in details if s.startswith("syn-bg20-")):
        a, b = get(s, "redml-q1"), get(s, "bslz4")
        if a and b:
            print(f"  redml-q1 / bslz4 ratio, {s}: {a:.2f} / {b:.2f} = {a / b:.2f}  (target >= 2.0: {ok(a / b >= 2)})")
    for s in (s for s in details if s.startswith("syn-")):
        cells = []
        for c in ("redml-q0", "redml-q0.5", "redml-q1", "redml-q2", "redml-q4", "redml-sparse"):
            x = get(s, c, "bpp_over_bound")
            if x is not None:
                cells.append(f"{c[6:]} {x:.3f} {ok(x <= 1.10)}")
        print(f"  bpp / bound (target <= 1.10), {s}: " + ", ".join(cells))
    e, eh, b = get("thaumatin", "redml-q0", "encode_gbps"), get("thaumatin", "redml-q0-h5", "encode_gbps"), \
        get("thaumatin", "bslz4", "encode_gbps")
    if e and b:
        print(f"  encode GB/s per core, thaumatin: redml-q0 {e:.3f} (via h5py {eh or 0:.3f}) vs bslz4 via h5py "
              f"{b:.3f} (x{e / b:.2f})")


# ----------------------------------------------------------------------------- main

def build_id() -> str:
    """Git commit of the source tree (+dirty) and the build time of the loaded redml core."""
    import subprocess
    from redml_reduce import _core

    root = Path(__file__).resolve().parents[1]
    def git(*a):
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout.strip()

    dirty = "-dirty" if git("status", "--porcelain", "-uno") else ""
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.path.getmtime(_core.__file__)))
    return f"{git('rev-parse', '--short', 'HEAD') or '?'}{dirty}, core built {built} UTC"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 thaumatin frames, one small synthetic frame, 1 repeat")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--data", type=Path, default=DATA_DIR, help=f"thaumatin folder (default {DATA_DIR})")
    ap.add_argument("--repeats", type=int, help="timing repeats (default 3, 1 with --quick)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    t0, build = time.perf_counter(), build_id()
    sets = frame_sets(args)
    print(f"redml_reduce {rr.__version__} ({build}), hdf5plugin {hdf5plugin.version}, {NCORES} cores, "
          f"repeats {repeats}, frames loaded in {time.perf_counter() - t0:.1f} s")
    for fs in sets:
        print(f"  {fs.name}: {fs.frames.shape[0]} x {fs.frames.shape[1]}x{fs.frames.shape[2]} {fs.frames.dtype}, "
              f"{fs.nbytes / 1e6:.0f} MB")
    print("GB/s = raw bytes / s / 1e9; 'all' = redml API with nthreads=%d; bound: Poisson entropy of redml's "
          "quantized source (* = empirical order-0 entropy of the real pixel values, a reference only)\n" % NCORES)
    print_header()
    details, problems = {}, []
    for fs in sets:
        h0 = order0_entropy_bpp(fs.frames) if fs.mu is None else None
        meta = dict(n_frames=fs.frames.shape[0], shape=list(fs.frames.shape[1:]), dtype=str(fs.frames.dtype),
                    raw_bytes=fs.nbytes, order0_entropy_bpp=h0)
        details[fs.name] = dict(meta=meta, codecs={})
        for codec in CODECS:
            r = bench(fs, codec, repeats, h0, problems)
            details[fs.name]["codecs"][codec.name] = r
            print_row(fs.name, codec.name, r)
    print_targets(details)
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.1f} s")
    if args.json:
        write_json(args.json, details, dict(quick=args.quick, repeats=repeats, cores=NCORES, wall_s=wall, build=build,
                                            problems=problems))
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


def write_json(path: Path, details: dict, meta: dict):
    """Headline figures (real thaumatin frames, one core) at the top, everything under "details"."""
    head = details["thaumatin"]["codecs"]
    pick = lambda k: {c: r.get(k) for c, r in head.items()}  # noqa: E731
    out = dict(ratio=pick("ratio"), encode_gbps=pick("encode_gbps"), decode_gbps=pick("decode_gbps"),
               encode_gbps_allcores=pick("encode_gbps_allcores"), decode_gbps_allcores=pick("decode_gbps_allcores"),
               meta=meta, details=details)
    path.write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


if __name__ == "__main__":
    sys.exit(main())
