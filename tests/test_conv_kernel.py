"""The C++ 3x3 convolution + leaky ReLU (_core.conv3x3_leaky) against torch, its reference."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from redml_reduce import _core  # noqa: E402

CHANNELS = (1, 2, 4, 8)
# Frames smaller than the dilated kernel, one pixel wide or tall, odd sizes, and sizes
# with full vector blocks, ragged ends and rows split between threads.
SHAPES = [(1, 1), (1, 9), (7, 1), (2, 3), (5, 5), (6, 17), (13, 31), (70, 45)]


def reference(x, weight, bias, dilation, slope):
    y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), torch.from_numpy(bias), padding=dilation,
                 dilation=dilation)
    return F.leaky_relu(y, slope)[0].numpy()


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("cout", CHANNELS)
@pytest.mark.parametrize("cin", CHANNELS)
def test_equals_torch(cin, cout, dilation):
    rng = np.random.default_rng(cin * 100 + cout * 10 + dilation)
    for h, w in SHAPES:
        x = (rng.standard_normal((cin, h, w)) * 5).astype(np.float32)
        weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        for slope in (0.05, 0.3):
            ref = reference(x, weight, bias, dilation, slope)
            for nthreads in (1, 2):
                out = _core.conv3x3_leaky(x, weight, bias, dilation, slope, nthreads)
                assert out.shape == (cout, h, w) and out.dtype == np.float32
                # float sums in another order: equal to ~1e-6 of the values' magnitude
                np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()),
                                           err_msg=f"{(h, w)} slope {slope} nthreads {nthreads}")


def test_default_threads_equal_one_thread():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 300, 200)).astype(np.float32)
    weight = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    np.testing.assert_array_equal(_core.conv3x3_leaky(x, weight, bias, 2, 0.05),
                                  _core.conv3x3_leaky(x, weight, bias, 2, 0.05, 1))


def test_rejects_bad_input():
    x = np.zeros((2, 8, 8), np.float32)
    weight = np.zeros((4, 2, 3, 3), np.float32)
    bias = np.zeros(4, np.float32)
    bad = [
        (x.astype(np.float64), weight, bias, 1, 0),  # dtypes
        (x, weight.astype(np.float16), bias, 1, 0),
        (x, weight, bias.astype(np.int32), 1, 0),
        (np.zeros((2, 8, 16), np.float32)[:, :, ::2], weight, bias, 1, 0),  # not C-contiguous
        (x[0], weight, bias, 1, 0),  # shapes
        (np.zeros((3, 8, 8), np.float32), weight, bias, 1, 0),
        (x, np.zeros((4, 2, 5, 5), np.float32), bias, 1, 0),
        (x, np.zeros((4, 2, 9), np.float32), bias, 1, 0),
        (x, weight, np.zeros(3, np.float32), 1, 0),
        (x, weight, np.zeros((4, 1), np.float32), 1, 0),
        (x, weight, bias, 0, 0),  # dilation
        (x, weight, bias, 1, -1),  # nthreads
    ]
    for xx, ww, bb, d, nt in bad:
        with pytest.raises(ValueError):
            _core.conv3x3_leaky(xx, ww, bb, d, 0.05, nt)


def test_cnn_map_with_the_kernel_equals_torch(monkeypatch):
    """The shipped CNN's probability map on a simulated frame: the CPU inference path (the
    kernel) against the model's torch layers."""
    from redml_reduce.ml import models
    from redml_study.ml.data import make_set
    from redml_reduce.ml.infer import load

    s = make_set("weak", 1, 303)[0]
    model = load("cnn", device="cpu")
    calls = []
    kernel = _core.conv3x3_leaky
    monkeypatch.setattr(models._core, "conv3x3_leaky", lambda *a: calls.append(1) or kernel(*a))
    prob, _ = model.probability(s.frame, s.mask, s.geometry)
    assert calls  # the kernel ran
    (net,) = model.members
    with torch.no_grad():
        x = model._input(s.frame, s.mask, s.geometry)[None]
        ref = torch.sigmoid(net.net(net.transform(x)))[0, 0].numpy()  # torch's convolutions
    np.testing.assert_allclose(prob, ref, rtol=0, atol=1e-5)
    assert ref.max() > 0.5  # a frame with spots
