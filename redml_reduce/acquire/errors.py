"""The one exception of the detector stream: anything malformed on the wire raises it."""
from __future__ import annotations

__all__ = ["StreamError"]


class StreamError(ValueError):
    """A message that is not valid Stream V2 (or not what this receiver can use)."""
