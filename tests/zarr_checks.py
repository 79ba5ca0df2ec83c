"""Checks for the numcodecs and zarr codecs, in numcodecs' style (round trip, config, repr)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from helpers import check_decoded


def check_round_trip(codec, frame, q):
    """Encodes `frame` (any chunk shape (1.., H, W)) with a numcodecs codec, decodes it and
    checks it (helpers.check_decoded); lossy settings must change something, or the data does
    not test the bound. Returns the chunk."""
    chunk = codec.encode(frame)
    assert isinstance(chunk, bytes)
    err = check_decoded(frame, codec.decode(chunk), chunk, q)
    if q not in (0, "sparse"):
        assert np.abs(err).max() > 0, "lossy settings changed nothing: the data does not test the bound"
    return chunk


def check_config(codec):
    """get_config is JSON-safe and from_config(JSON round trip) gives an equal codec."""
    import numcodecs

    config = codec.get_config()
    text = json.dumps(config)
    again = numcodecs.get_codec(json.loads(text))
    assert again == codec and type(again) is type(codec)
    assert again.get_config() == config


def check_repr(codec):
    """repr evaluates back to an equal codec."""
    from redml_reduce.formats.numcodecs_codec import RedmlCodec

    assert eval(repr(codec), {"RedmlCodec": RedmlCodec}) == codec


def run_fresh(code: str, cwd=None) -> str:
    """Runs Python code in a fresh interpreter (no modules imported beforehand); returns stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout
