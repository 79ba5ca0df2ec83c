"""Progress bars of the long commands: tqdm on stderr when it is a terminal, silent otherwise."""
from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total=None, desc: str | None = None, unit: str = "frame", enabled: bool | None = None):
    """A tqdm bar (a context manager with update(n)); enabled=None: only if stderr is a terminal."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
