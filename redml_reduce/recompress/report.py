"""Manifest (what earlier runs finished) and report of a recompression."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..formats.sources import Input

__all__ = ["Manifest", "Report", "row"]


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
        """The entry of an earlier run of the same input files, settings and format, or None.
        Whether its output is still intact is for recompress_tasks.check_output to say."""
        e = self.entries.get(name)
        if not e or e.get("signature") != signature or e.get("settings") != config or e.get("format") != fmt:
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
    tasks' threads), error, note (why an input an earlier run finished was done again)."""

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
        head = (f"{'input':<28} {'status':<8} {'frames':>6} {'MB in':>9} {'MB out':>9} {'ratio':>7} {'s':>7}  "
                "error or note")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
            lines.append(f"{r['name'][:28]:<28} {r['status']:<8} {r['frames']:>6} {r['bytes_in'] / 1e6:>9.2f} "
                         f"{r['bytes_out'] / 1e6:>9.2f} {ratio:>7} {r['seconds']:>7.2f}  "
                         f"{r.get('error') or r.get('note') or ''}")
        t = self.totals()
        ratio = f"{t['ratio']:.2f}" if t["ratio"] else "-"
        lines.append("-" * len(head))
        lines.append(f"{t['done']} done, {t['skipped']} skipped, {t['errors']} errors; {t['frames']} frames, "
                     f"{t['raw_bytes'] / 1e6:.1f} MB of frames -> {t['bytes_out'] / 1e6:.1f} MB (ratio {ratio}) in "
                     f"{t['wall_seconds']:.1f} s: {t['mbps']:.1f} MB/s, {t['files_per_s']:.2f} files/s, "
                     f"{self.workers or 'serial, 0'} workers, {t['cpu_seconds']:.1f} s CPU in tasks")
        return "\n".join(lines)


def row(inp: Input, status: str, **values) -> dict:
    row = {"name": inp.name, "input": inp.label, "status": status, "frames": 0, "raw_bytes": 0, "bytes_in": 0,
           "bytes_out": 0, "ratio": None, "seconds": 0.0, "cpu_seconds": 0.0, "output": None, "error": None,
           "note": None}
    row.update(values)
    if row["bytes_out"] and row["raw_bytes"]:
        row["ratio"] = row["raw_bytes"] / row["bytes_out"]
    return row
