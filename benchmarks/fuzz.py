"""Fuzzing benchmark: runs the libFuzzer targets of csrc/fuzz/ and reports, per target,
executions, executions per second, crashes and sanitizer reports.

    make fuzz FUZZ_SECONDS=300                    # builds (clang, ASan + UBSan), then this
    .venv/bin/python benchmarks/fuzz.py --seconds 60 [--runs N] [--jobs J] [--json out.json]

Targets (docs/reliability.md): fuzz_decode (the C API's decoding calls on arbitrary
bytes), fuzz_filter (the HDF5 filter callback in decode direction) and fuzz_roundtrip
(arbitrary pixels and settings encoded and decoded through the filter, the codec's
promises checked). They start from seeds of every mode x dtype x codec
(csrc/fuzz/make_corpus.py) and the inputs of every crash found so far
(tests/fuzz_regressions/); the corpus grows in build/fuzz/run/corpus across runs.
Each target runs `--jobs` processes at once (sharing its corpus), all targets in parallel.
Exit status 1 if any crash, leak, timeout or sanitizer report occurred.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "build" / "fuzz"
TARGETS = ("decode", "filter", "roundtrip")
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
MAX_LEN = 8192
# A sanitizer report, whatever the sanitizer (UBSan prints "runtime error", ASan/LSan an
# ERROR line, libFuzzer its own for deadly signals, timeouts and memory limits).
REPORT = re.compile(r"runtime error:|ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)")
ARTIFACT = re.compile(r"^(crash|leak|timeout|oom|slow-unit)-")
ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:allocator_may_return_null=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "REDML_NUM_THREADS": "1",
}


def clang() -> str | None:
    for c in ("clang++", "clang++-16", "clang++-15", "clang++-14"):
        if shutil.which(c):
            return c
    return None


def binary(target: str) -> Path:
    return FUZZ_DIR / f"fuzz_{target}"


def build() -> None:
    """Builds the targets (make fuzz-build: incremental, the plugin's sources from csrc/sources.mk)."""
    subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "fuzz-build"], cwd=ROOT, check=True)


def write_seeds(out: Path) -> dict:
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "csrc" / "fuzz" / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_corpus(out)


@dataclass
class FuzzResult:
    target: str
    jobs: int
    seconds: float
    executions: int = 0
    crashes: list = field(default_factory=list)  # artifact files written by libFuzzer
    sanitizer_reports: int = 0
    exit_codes: list = field(default_factory=list)
    corpus_size: int = 0
    logs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.crashes and self.sanitizer_reports == 0 and all(c == 0 for c in self.exit_codes)

    @property
    def exec_per_s(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0


def _executions(log: str) -> int:
    m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if m:
        return int(m[-1])
    m = re.findall(r"^#(\d+)\s", log, re.M)  # killed before the final stats
    return int(m[-1]) if m else 0


def run(targets=TARGETS, seconds: float = 30, runs: int | None = None, jobs: int = 1,
        workdir: Path | str = FUZZ_DIR / "run", extra_args=()) -> list[FuzzResult]:
    """Fuzzes every target for `seconds` (or `runs` executions per process), `jobs`
    processes per target, all at once. Returns one FuzzResult per target."""
    workdir = Path(workdir).resolve()
    seeds = workdir / "seeds"
    write_seeds(seeds)
    procs = []
    start = time.monotonic()
    for t in targets:
        corpus, art = workdir / "corpus" / t, workdir / "artifacts" / t
        corpus.mkdir(parents=True, exist_ok=True)
        art.mkdir(parents=True, exist_ok=True)
        inputs = [str(corpus), str(seeds / t)]
        if (REGRESSIONS / t).is_dir():
            inputs.append(str(REGRESSIONS / t))
        for j in range(jobs):
            log = workdir / f"{t}.{j}.log"
            args = [str(binary(t)), *inputs, f"-max_total_time={int(seconds)}", "-print_final_stats=1",
                    f"-max_len={MAX_LEN}", "-malloc_limit_mb=512", "-rss_limit_mb=2048", "-timeout=20",
                    f"-artifact_prefix={art}/", f"-seed={1 + j}", *extra_args]
            if runs:
                args.append(f"-runs={int(runs)}")
            fh = open(log, "w")
            p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, cwd=workdir)
            procs.append((t, p, log, fh))
    results = {t: FuzzResult(t, jobs, 0.0) for t in targets}
    for t, p, log, fh in procs:
        try:
            p.wait(timeout=seconds + 300)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        fh.close()
        text = log.read_text(errors="replace")
        r = results[t]
        r.executions += _executions(text)
        r.sanitizer_reports += len(REPORT.findall(text))
        r.exit_codes.append(p.returncode)
        r.logs.append(str(log))
    elapsed = time.monotonic() - start
    for t, r in results.items():
        r.seconds = round(elapsed, 1)
        r.crashes = sorted(str(p) for p in (workdir / "artifacts" / t).iterdir() if ARTIFACT.match(p.name))
        r.corpus_size = sum(1 for _ in (workdir / "corpus" / t).iterdir())
    return list(results.values())


def run_inputs(target: str, files) -> tuple[int, str]:
    """Runs a target once on each file (regression inputs); returns (exit code, output)."""
    files = [str(f) for f in files]
    if not files:
        return 0, ""
    p = subprocess.run([str(binary(target)), *files], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **ENV})
    return p.returncode, p.stdout + p.stderr


def report(results: list[FuzzResult]) -> str:
    lines = [f"{'target':<14}{'jobs':>5}{'seconds':>9}{'executions':>13}{'exec/s':>9}{'corpus':>8}{'crashes':>9}"
             f"{'reports':>9}"]
    for r in results:
        lines.append(f"{'fuzz_' + r.target:<14}{r.jobs:>5}{r.seconds:>9.0f}{r.executions:>13,}{r.exec_per_s:>9,.0f}"
                     f"{r.corpus_size:>8}{len(r.crashes):>9}{r.sanitizer_reports:>9}")
    for r in results:
        for c in r.crashes:
            lines.append(f"  crash input: {c}")
        if r.sanitizer_reports or r.crashes or any(r.exit_codes):
            lines.append(f"  logs: {' '.join(r.logs)} (exit codes {r.exit_codes})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 300)))
    ap.add_argument("--runs", type=int, default=None, help="stop each process after this many executions")
    ap.add_argument("--jobs", type=int, default=None,
                    help="processes per target (default: the cores shared among the targets)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    ap.add_argument("--workdir", default=str(FUZZ_DIR / "run"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.jobs is None:
        a.jobs = max(1, (os.cpu_count() or 2) // len(a.targets))
    if not a.no_build:
        build()
    print(f"fuzzing {', '.join('fuzz_' + t for t in a.targets)} for {a.seconds:.0f} s, {a.jobs} job(s) each "
          f"({os.cpu_count()} cores)", flush=True)
    results = run(a.targets, a.seconds, a.runs, a.jobs, a.workdir)
    print(report(results))
    total = sum(r.executions for r in results)
    bad = sum(len(r.crashes) + r.sanitizer_reports for r in results)
    failed = [r.target for r in results if any(r.exit_codes)]
    print(f"total: {total:,} executions, {bad} crashes/sanitizer reports"
          + (f"; non-zero exit: {', '.join(failed)}" if failed else ""))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps([{**asdict(r), "exec_per_s": r.exec_per_s} for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
