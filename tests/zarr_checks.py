"""Checks for the numcodecs and zarr codecs, in numcodecs' style (round trip, config, repr)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import redml_reduce as rr
from redml_reduce.codec import error_bound


def check_round_trip(codec, frame, q):
    """Encodes `frame` (any chunk shape (1.., H, W)) with a numcodecs codec, decodes it and
    checks: same dtype, lossless byte for byte, lossy exact pixels exact and every other
    finite pixel within error_bound(chunk). Returns the chunk."""
    chunk = codec.encode(frame)
    assert isinstance(chunk, bytes)
    back = codec.decode(chunk)
    flat = np.asarray(frame).reshape(back.shape)
    assert back.dtype == flat.dtype
    if q == 0:
        assert back.tobytes() == flat.tobytes()
        return chunk
    exact = rr.exact_mask(chunk)
    assert np.array_equal(back[exact].view(np.uint8), flat[exact].view(np.uint8))
    if q != "sparse":
        x = flat.astype(np.float64)
        bg = ~exact & np.isfinite(x)
        err = np.abs(back.astype(np.float64) - x)[bg]
        assert err.max() > 0, "lossy settings changed nothing: the data does not test the bound"
        assert (err <= error_bound(chunk)[bg] * (1 + 1e-6)).all()
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
    from redml_reduce.numcodecs_codec import RedmlCodec

    assert eval(repr(codec), {"RedmlCodec": RedmlCodec}) == codec


def run_fresh(code: str, cwd=None) -> str:
    """Runs Python code in a fresh interpreter (no modules imported beforehand); returns stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout
