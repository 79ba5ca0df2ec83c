"""Fuzzing: the libFuzzer targets of csrc/fuzz/ (ASan + UBSan + LeakSanitizer) run for a
short while, every input that ever crashed them is replayed, and those inputs are also
checked through Python.

REDML_FUZZ_SECONDS sets the run time per target (default 30 s; all targets run at once).
The long run is `make fuzz` (benchmarks/fuzz.py); figures in docs/reliability.md.
"""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import redml_reduce as rr
from chunkforge import repair_checksums

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
SECONDS = float(os.environ.get("REDML_FUZZ_SECONDS", "30"))

_spec = importlib.util.spec_from_file_location("redml_fuzz_bench", ROOT / "benchmarks" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up
_spec.loader.exec_module(fuzz)

needs_clang = pytest.mark.skipif(fuzz.clang() is None, reason="clang not installed (make test installs it)")


def regression_files(target):
    d = REGRESSIONS / target
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.fixture(scope="module")
def built():
    fuzz.build()
    return True


@needs_clang
@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_regression_inputs_under_sanitizers(built, target):
    """Every input that once crashed a target runs clean now."""
    rc, out = fuzz.run_inputs(target, regression_files(target))
    assert rc == 0 and not fuzz.REPORT.search(out), out[-3000:]


@needs_clang
def test_fuzz_targets_short_run(built, tmp_path):
    results = fuzz.run(seconds=SECONDS, workdir=tmp_path)
    print("\n" + fuzz.report(results))
    for r in results:
        assert r.executions > 0, r
        assert not r.crashes and r.sanitizer_reports == 0 and r.ok, fuzz.report(results)


# ---- the same regressions through the Python binding (release build) ----

@pytest.mark.parametrize("path", regression_files("decode"), ids=lambda p: p.name)
def test_decode_regressions_in_python(path):
    for chunk in (path.read_bytes(), repair_checksums(path.read_bytes())):
        try:
            out = rr.decode(chunk)
        except rr.RedmlError:
            continue
        assert out.shape == rr.inspect(chunk)["shape"]


@pytest.mark.parametrize("q", [0, 1.0, "sparse"])
@pytest.mark.parametrize("value", [1e11, 3e38, -3e38, 1.5e10])
def test_float_frames_far_beyond_1e10(q, value):
    """Found by fuzz_roundtrip: float frames with a tile mean >= 1e10 encoded into chunks
    the decoder refused ("invalid model mean"), lossless ones included."""
    frame = np.full((9, 13), value, np.float32)
    frame[::3, ::2] = 2.0
    frame[4, 4] = np.nan
    back = rr.decode(rr.encode(frame, q, tile=4))
    if q == 0:
        assert back.tobytes() == frame.tobytes()
    exact = rr.exact_mask(rr.encode(frame, q, tile=4))
    assert back[exact].tobytes() == frame[exact].tobytes()
    assert np.isnan(back[4, 4]) and np.isfinite(back[np.isfinite(frame)]).all()


@pytest.mark.parametrize("gain", [1.0, 1e-30])
def test_sparse_noise_with_huge_means(gain):
    """Found by fuzz_roundtrip: sparse chunks with Poisson reconstruction of a huge mean
    (float frames, or a tiny gain) converted an out-of-range double to int64 (UB)."""
    frame = np.full((16, 16), 3e38, np.float32)
    back = rr.decode(rr.encode(frame, "sparse", sparse_noise=True, gain=gain, tile=8))
    assert np.isfinite(back).all() and (back >= 0).all()
    ints = np.full((16, 16), 60000, np.uint16)
    back = rr.decode(rr.encode(ints, "sparse", sparse_noise=True, gain=gain, tile=8))
    assert (back >= 0).all()


def test_tiny_float_step_stays_exact():
    """Found by fuzz_decode: a float tile whose step is tiny against its mean put the
    dither offset beyond int64 (UB); such tiles now store every pixel exactly."""
    frame = np.full((8, 8), 1e30, np.float32)
    frame[0, :4] = 1.0000001e30
    chunk = rr.encode(frame, 1e-6, mu_min=0.0, tile=8)
    assert rr.background_model(chunk)["mean"][0, 0] / rr.background_model(chunk)["step"][0, 0] > 4e18
    assert rr.decode(chunk).tobytes() == frame.tobytes()
