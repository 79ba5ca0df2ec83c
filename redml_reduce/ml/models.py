"""The models (PyTorch): input transforms, local patch models, the global U-Net.

Every model takes a (N, 3, H, W) tensor: channel 0 the frame minus its background,
channel 1 the background, channel 2 the inverse resolution 1/d (1/Angstrom; zeros when the
geometry is unknown; only the U-Net uses it), and returns per-pixel logits (N, 1, H, W)
of "this pixel belongs to a lattice reflection".

Transforms (the first layer, no weights):
  raw    the excess counts / 10
  sqrt   2 (sqrt(x + 3/8) - sqrt(b + 3/8)): Anscombe difference, ~ per-pixel SNR
  log    log(1 + x) - log(1 + b)
  gfr    Gaussian-filter ratio: (G * excess) / sqrt(G^2 * b), G a unit Gaussian (sigma 1 px,
         7 x 7): the matched-filter SNR of a spot centred on the pixel
  gfr+sqrt  both, as two channels (the filtered SNR finds faint spots, the per-pixel one
         shows their shape: a hot pixel or zinger is one pixel wide, a reflection is not)
Local models see a patch x patch window (9 or 21): LocalLogistic is one patch-sized
convolution (logistic regression on the transformed patch); LocalCNN stacks dilated 3x3
convolutions whose receptive field is exactly the patch. Both are fully convolutional:
one pass over a whole frame gives the probability map, and `halo` pixels of context make
tiles identical to the whole frame.
"""
from __future__ import annotations


import torch
from torch import nn
import torch.nn.functional as F

from .. import _core
from ..background import ICE_RINGS_A

__all__ = ["Transform", "LocalLogistic", "LocalCNN", "UNet", "TRANSFORMS", "build"]

TRANSFORMS = ("raw", "sqrt", "log", "gfr", "gfr+sqrt")

_CLAMP = 50.0


def _gaussian(sigma: float = 1.0, radius: int = 3) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


class Transform(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        if name not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, not {name!r}")
        self.name = name
        g = _gaussian()
        self.register_buffer("g", g, persistent=False)
        pair = torch.stack([g, g * g]).view(2, 1, 1, -1)  # the same taps as depthwise kernels (inference)
        self.register_buffer("taps_x", pair, persistent=False)
        self.register_buffer("taps_y", pair.transpose(2, 3).contiguous(), persistent=False)
        self.halo = len(g) // 2 if name.startswith("gfr") else 0
        self.channels = 2 if name == "gfr+sqrt" else 1

    @staticmethod
    def _sep(x, g):
        """Separable filtering with zero padding, as shifted sums (training: the arithmetic
        the shipped weights were trained with, so the recipe reproduces them bit for bit)."""
        k, r = len(g), len(g) // 2
        h, w = x.shape[-2:]
        p = F.pad(x, (r, r, 0, 0))
        x = sum(g[i] * p[..., :, i:i + w] for i in range(k))
        p = F.pad(x, (0, 0, r, r))
        return sum(g[i] * p[..., i:i + h, :] for i in range(k))

    def _filtered_pair(self, e, b):
        """(G * e, G^2 * max(b, 0.1)) as two channels of one channels-last depthwise
        convolution: the same sums as _sep, ~2x faster on the CPU (inference only, so
        training keeps the arithmetic the shipped weights were trained with)."""
        r = self.halo
        eb = torch.stack([e[:, 0], torch.clamp(b[:, 0], min=0.1)], -1).permute(0, 3, 1, 2)  # channels-last
        eb = F.conv2d(eb, self.taps_x, padding=(0, r), groups=2)
        return F.conv2d(eb, self.taps_y, padding=(r, 0), groups=2)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        e, b = inp[:, 0:1], inp[:, 1:2]
        if not self.training and self.name.startswith("gfr"):
            # The filters run channels-last; the division writes a planar (N, C, H, W)
            # output, the layout of LocalCNN's convolution kernel, with no copy of its own.
            f = self._filtered_pair(e, b)
            out = e.new_empty((e.shape[0], self.channels) + e.shape[2:])
            torch.div(f[:, 0:1], f[:, 1:2].sqrt_(), out=out[:, 0:1])
            if self.name == "gfr+sqrt":
                out[:, 1:2] = self._anscombe(e, b)
            return out.clamp_(-_CLAMP, _CLAMP)
        if self.name == "raw":
            t = e / 10
        elif self.name == "sqrt":
            t = self._anscombe(e, b)
        elif self.name == "log":
            t = torch.log1p(torch.clamp(e + b, min=0)) - torch.log1p(b)
        elif self.name == "gfr":
            t = self._gfr(e, b)
        else:
            t = torch.cat([self._gfr(e, b), self._anscombe(e, b)], 1)
        return t.clamp_(-_CLAMP, _CLAMP)

    @staticmethod
    def _anscombe(e, b):
        # in place on fresh temporaries: the inputs are data (no gradient flows into them)
        return torch.clamp(e + b, min=0).add_(0.375).sqrt_().sub_((b + 0.375).sqrt_()).mul_(2)

    def _gfr(self, e, b):
        return self._sep(e, self.g).div_(self._sep(torch.clamp(b, min=0.1), self.g * self.g).sqrt_())


class LocalLogistic(nn.Module):
    """Logistic regression on a patch x patch window of the transformed frame."""

    def __init__(self, transform: str = "gfr", patch: int = 9):
        super().__init__()
        self.transform = Transform(transform)
        self.conv = nn.Conv2d(self.transform.channels, 1, patch, padding=patch // 2)
        self.halo = self.transform.halo + patch // 2

    def forward(self, inp):
        t = self.transform(inp)
        if self.training:
            return self.conv(t)
        # The same sum as shifted multiply-adds: a one-output patch-sized conv2d takes the
        # im2col path on CPU (~100x slower on a 4M frame).
        k = self.conv.kernel_size[0]
        r = k // 2
        h, w = t.shape[-2:]
        p = F.pad(t, (r, r, r, r))
        wt = self.conv.weight[0]
        out = self.conv.bias.view(1, 1, 1, 1).expand(t.shape[0], 1, h, w).clone()
        for c in range(t.shape[1]):
            for i in range(k):
                for j in range(k):
                    out += wt[c, i, j] * p[:, c:c + 1, i:i + h, j:j + w]
        return out


class LocalCNN(nn.Module):
    """Dilated 3x3 convolutions (receptive field = patch; leaky ReLUs, so no unit dies in
    training) and a 1x1 read-out."""

    DILATIONS = {9: (1, 1, 2), 21: (1, 2, 3, 4)}

    def __init__(self, transform: str = "gfr", patch: int = 9, width: int = 4):
        super().__init__()
        if patch not in self.DILATIONS:
            raise ValueError(f"patch must be one of {sorted(self.DILATIONS)}")
        self.transform = Transform(transform)
        layers, c = [], self.transform.channels
        for d in self.DILATIONS[patch]:
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.LeakyReLU(0.05)]
            c = width
        layers.append(nn.Conv2d(c, 1, 1))
        self.net = nn.Sequential(*layers)
        self.halo = self.transform.halo + sum(self.DILATIONS[patch])

    def forward(self, inp):
        x = self.transform(inp)
        if self.training or torch.is_grad_enabled() or not self._fits_kernel(x):
            return self.net(x)  # torch, the reference: training, gradients, CUDA, other dtypes, wide layers
        # CPU inference, the same arithmetic faster: each 3 x 3 convolution and its leaky ReLU
        # in one pass of the C++ kernel (conv3x3_leaky, csrc/conv.h; oneDNN is slow with a
        # few channels), on planar (C, H, W) arrays, one image at a time; the 1 x 1
        # read-out as a matrix product over the channels.
        *hidden, readout = self.net
        nthreads = torch.get_num_threads()
        out = x.new_empty((x.shape[0], 1) + x.shape[2:])
        for t, o in zip(x, out):
            t = t.contiguous().numpy()
            for conv, act in zip(hidden[0::2], hidden[1::2]):
                t = _core.conv3x3_leaky(t, conv.weight.detach().numpy(), conv.bias.detach().numpy(), conv.dilation[0],
                                        act.negative_slope, nthreads)
            c = t.shape[0]
            torch.addmm(readout.bias.view(1, 1), readout.weight.view(1, c), torch.from_numpy(t).view(c, -1),
                        out=o.view(1, -1))
        return out

    def _fits_kernel(self, x) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32 and all(
            c.in_channels <= 8 and c.out_channels <= 8 for c in self.net[:-1:2])


def _block(cin, cout, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.LeakyReLU(0.05))


class UNet(nn.Module):
    """A small U-Net over the whole frame (three 2x poolings, a dilated bottleneck at 1/8
    resolution): per-pixel lattice logits at full resolution, and a frame-level hit logit
    from the bottleneck (global mean and max pooling). Sees the transformed frame and
    the inverse resolution, so it can learn where powder rings sit."""

    def __init__(self, transform: str = "gfr", width: int = 4):
        super().__init__()
        w = width
        self.transform = Transform(transform)
        self.stem = _block(self.transform.channels + 2, w)
        self.down1 = _block(w, 2 * w)
        self.down2 = _block(2 * w, 4 * w)
        self.bottom = nn.Sequential(_block(4 * w, 4 * w), _block(4 * w, 4 * w, 2), _block(4 * w, 4 * w, 4))
        self.up2 = _block(8 * w, 2 * w)
        self.up1 = _block(4 * w, w)
        self.up0 = _block(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)
        self.hit = nn.Linear(8 * w, 1)

    def forward(self, inp, with_hit: bool = False):
        h, w = inp.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        inv_d = inp[:, 2:3]
        ice = sum(torch.exp(-0.5 * ((inv_d - 1 / d) / 0.002) ** 2) for d in ICE_RINGS_A) * (inv_d > 0)
        x = torch.cat([self.transform(inp), inv_d * 4, ice], dim=1)
        x = F.pad(x, (0, pw, 0, ph))
        s0 = self.stem(x)
        s1 = self.down1(F.max_pool2d(s0, 2))
        s2 = self.down2(F.max_pool2d(s1, 2))
        b = self.bottom(F.max_pool2d(s2, 2))
        u = self.up2(torch.cat([F.interpolate(b, scale_factor=2.0), s2], 1))
        u = self.up1(torch.cat([F.interpolate(u, scale_factor=2.0), s1], 1))
        u = self.up0(torch.cat([F.interpolate(u, scale_factor=2.0), s0], 1))
        logits = self.out(u)[..., :h, :w]
        if not with_hit:
            return logits
        pooled = torch.cat([b.mean(dim=(2, 3)), b.amax(dim=(2, 3))], 1)
        return logits, self.hit(pooled)[:, 0]


def build(spec: dict) -> nn.Module:
    """A model from its spec (as stored with the weights): {"arch": "logistic" | "cnn" |
    "unet", "transform": ..., "patch": ..., "width": ...}."""
    arch = spec["arch"]
    if arch == "logistic":
        return LocalLogistic(spec["transform"], spec["patch"])
    if arch == "cnn":
        return LocalCNN(spec["transform"], spec["patch"], spec.get("width", 4))
    if arch == "unet":
        return UNet(spec["transform"], spec.get("width", 4))
    raise ValueError(f"unknown architecture {arch!r}")


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


