"""The encoder and decoder called from many threads at once give the serial results, and
they release the GIL while they work."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import redml_reduce as rr
from helpers import ALL_DTYPES, poisson_frame


@pytest.fixture(scope="module")
def cases():
    """Frames of every dtype and mode, some taller than one 64-row band (so that
    nthreads=2 really splits them), with special values, roi and mask maps."""
    rng = np.random.default_rng(11)
    out = []
    for i, dtype in enumerate(ALL_DTYPES * 2):
        for j, q in enumerate((0, 1.0, 3.0, "sparse")):
            shape = ((40, 50), (150, 70), (129, 33))[(i + j) % 3]
            frame = poisson_frame(rng, (0.5, 20.0, 300.0)[(i + j) % 3], shape, dtype, spots=3)
            if np.dtype(dtype).kind == "f":
                frame[0, :3] = (np.nan, np.inf, -1.0)
            elif np.dtype(dtype).kind == "i":
                frame[1, :] = -1
            kw = dict(codec=("rans", "zstd", "lz4")[(i + j) % 3], tile=(16, 32, 7)[i % 3], block_elems=4096)
            if (i + j) % 4 == 1:
                kw["mask"] = rng.random(shape) < 0.02
                kw["roi"] = rng.random(shape) < 0.05
            if q == "sparse" and i % 2:
                kw["sparse_noise"] = True
            out.append((frame, q, kw))
    return out


def encode_case(case, nthreads):
    frame, q, kw = case
    return rr.encode(frame, q, nthreads=nthreads, **kw)


@pytest.fixture(scope="module")
def serial(cases):
    chunks = [encode_case(c, 1) for c in cases]
    return chunks, [rr.decode(ch, nthreads=1) for ch in chunks]


@pytest.mark.parametrize("nthreads", [1, 2])
def test_thread_pool_matches_serial(cases, serial, nthreads):
    chunks, frames = serial
    order = np.random.default_rng(nthreads).permutation(np.repeat(np.arange(len(cases)), 3))
    with ThreadPoolExecutor(max_workers=8) as ex:
        enc = [ex.submit(encode_case, cases[k], nthreads) for k in order]
        dec = [ex.submit(rr.decode, chunks[k], nthreads=nthreads) for k in order]  # at the same time
        for k, fe, fd in zip(order, enc, dec):
            assert fe.result() == chunks[k], f"case {k}: chunk differs from the serial one"
            out = fd.result()
            assert out.dtype == frames[k].dtype and out.tobytes() == frames[k].tobytes(), f"case {k}"


def test_errors_are_per_thread(cases, serial):
    """Corrupt and valid chunks decoded concurrently: each call gets its own outcome and
    message (the core keeps the last error per thread)."""
    chunks, frames = serial
    bad = []
    for ch in chunks:
        b = bytearray(ch)
        b[len(b) // 2] ^= 0x40
        bad.append(bytes(b))

    def one(k):
        if k % 2:
            with pytest.raises(rr.RedmlError, match="checksum|corrupt"):
                rr.decode(bad[k // 2 % len(bad)])
            return None
        return rr.decode(chunks[k // 2 % len(chunks)]).tobytes()

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(one, range(4 * len(chunks))))
    for k, r in enumerate(results):
        if k % 2 == 0:
            assert r == frames[k // 2 % len(frames)].tobytes()


def _other_thread_runs_during(call):
    """Runs call() on this thread while another Python thread keeps stamping the time.
    Returns (stamps within the middle half of the call, call duration)."""
    stamps = [time.perf_counter()]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            now = time.perf_counter()
            if now - stamps[-1] > 0.0005:
                stamps.append(now)

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    call()
    t1 = time.perf_counter()
    stop.set()
    t.join()
    quarter = (t1 - t0) / 4
    return sum(1 for s in stamps if t0 + quarter < s < t1 - quarter), t1 - t0


@pytest.mark.parametrize("what", ["encode", "decode"])
def test_gil_released_in_long_calls(what):
    """Another Python thread keeps running while a long encode/decode is inside C++. With
    the GIL held it could run at most at the edges of the call (the switch interval is
    5 ms); the frame grows until the call lasts well over 40 ms."""
    rng = np.random.default_rng(5)
    for side in (1000, 1600, 2500, 4000):
        frame = poisson_frame(rng, 30.0, (side, side), "uint16", spots=20)
        chunk = rr.encode(frame, 1.0, nthreads=1)
        call = (lambda: rr.encode(frame, 1.0, nthreads=1)) if what == "encode" else (
            lambda: rr.decode(chunk, nthreads=1))
        inside, duration = _other_thread_runs_during(call)
        if duration > 0.06:
            break
    assert duration > 0.04, f"call too short to tell ({duration:.3f} s)"
    assert inside > 0, f"no other Python thread ran during a {duration:.3f} s {what}: the GIL was held"


def test_gil_check_sees_a_held_gil():
    """The check above is meaningful: a C call that keeps the GIL (ctypes.PyDLL does) lets
    no other thread run in its middle."""
    import ctypes

    libc = ctypes.PyDLL(None)
    inside, duration = _other_thread_runs_during(lambda: libc.usleep(200_000))
    assert duration >= 0.19 and inside == 0
