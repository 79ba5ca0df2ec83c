"""Inference with the shipped (or any saved) weights: probability maps, spots, ROI, frame outputs.

    from redml_reduce.ml.infer import load
    model = load("cnn")                      # "logistic", "cnn", "ensemble", "unet"; no network
    mean, spread = model.probability(frame, mask, geometry)       # per-pixel, float32
    xy = model.spots(frame, mask, geometry)                       # (n, 2) x, y (centres at +0.5)
    roi = model.roi(frame, mask, geometry, margin=2)              # what the encoder keeps exactly
    model.frame_outputs(frame, mask, geometry)   # unet: hit probability, resolution limit (A)

Runs on CUDA when torch sees a GPU, else on the CPU. A weights file (torch.save of plain
tensors and numbers, loaded with weights_only=True) holds the model specs, their state
dicts, the spot threshold and the ROI threshold chosen in training, and the recipe (data
seeds, steps, loss) that trained.py reproduces.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .features import prepare
from .models import build

__all__ = ["load", "Predictor", "WEIGHTS_DIR", "MODEL_FILES", "DEFAULT_MODEL", "inputs_for", "peaks_from_map", "maps_of"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_FILES = {"logistic": "logistic-v1.pt", "cnn": "cnn-v2.pt", "ensemble": "ensemble-v1.pt", "unet": "unet-v1.pt"}
DEFAULT_MODEL = "cnn"
UPPER_K = 2.0  # ensemble ROI: a pixel is kept when mean + UPPER_K * spread crosses the ROI threshold
# Local models on the CPU run in tiles of this edge per architecture (with their halo of
# context; the same map, tested). Measured on a 4M frame, one thread, against one pass
# (whose 70 MB buffers are fresh pages every time): the logistic model's 81 shifted
# multiply-adds want a tile in cache (512: ~2.7x faster than one pass, 1088 ~1.8x); the
# CNN's streaming convolution kernel wants fewer, larger tiles (1088, 2 x 2 on a 4M frame:
# ~1.6x faster than one pass, ~1.1-1.2x than 512 or 1024).
CPU_TILE = {"logistic": 512, "cnn": 1088}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=4)
def _inverse_resolution(geometry, shape) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return (1.0 / geometry.resolution_map(shape)).astype(np.float32)


def inputs_for(frame, mask=None, geometry=None, resolution: bool = True, nthreads: int = 0) -> np.ndarray:
    """The (3, H, W) float32 model input of one frame (see redml_reduce.ml.models);
    resolution=False gives only channels 0 and 1 (2, H, W): the local models never read
    channel 2 (1/d; the U-Net's). nthreads: the background profile's (0: all cores)."""
    frame = np.asarray(frame)
    out = np.empty((3 if resolution else 2,) + frame.shape, np.float32)
    prepare(frame, mask, geometry, nthreads, out=out)
    if resolution:
        out[2] = _inverse_resolution(geometry, frame.shape) if geometry is not None else 0
    return out


def _neighbours(t: torch.Tensor, iy, ix, radius: int):
    """Values of t (H, W) around the pixels (iy, ix): (n, (2 radius + 1)^2) values and
    whether each neighbour lies inside the frame."""
    h, w = t.shape
    d = torch.arange(-radius, radius + 1, device=t.device)
    yy = (iy[:, None, None] + d[None, :, None]).expand(-1, len(d), len(d)).reshape(len(iy), -1)
    xx = (ix[:, None, None] + d[None, None, :]).expand(-1, len(d), len(d)).reshape(len(iy), -1)
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    return t[yy.clamp(0, h - 1), xx.clamp(0, w - 1)], inside


def peaks_from_map(prob: torch.Tensor, threshold: float, score: torch.Tensor | None = None,
                   size: int = 5) -> np.ndarray:
    """Spots of a (H, W) probability map: pixels at or above threshold that are the maximum
    of `score` (default: prob; the logits avoid ties where sigmoid saturates) over size x size
    and above the mean of their 3 x 3 neighbourhood (no peaks on flat plateaus). Returns
    (n, 2) x, y of the 3x3 probability-weighted centroid around each (pixel centres at +0.5).
    Only the pixels above threshold are examined (a few thousand of a 4M frame's pixels).
    prob=None: one model's logits as score, the probability their sigmoid."""
    s = prob if score is None else score
    if prob is None:  # one model: prob = sigmoid(score), computed only where it is read
        cut = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else (-math.inf if threshold <= 0 else math.inf)
        iy, ix = torch.nonzero(s >= cut, as_tuple=True)
    else:
        iy, ix = torch.nonzero(prob >= threshold, as_tuple=True)
    if len(iy) == 0:
        return np.zeros((0, 2))
    centre = s[iy, ix]
    vals, inside = _neighbours(s, iy, ix, size // 2)
    keep = (torch.where(inside, vals, torch.full_like(vals, -torch.inf)).amax(1) == centre)
    near, inside = _neighbours(s, iy, ix, 1)
    mean3 = torch.where(inside, near, torch.zeros_like(near)).sum(1) / inside.sum(1)
    keep &= centre > mean3 + 1e-6
    iy, ix, near, inside = iy[keep], ix[keep], near[keep], inside[keep]
    win = torch.sigmoid(near) if prob is None else _neighbours(prob, iy, ix, 1)[0]
    win = torch.where(inside, win, torch.zeros_like(win)).view(-1, 3, 3)
    offs = torch.tensor([-1, 0, 1], device=s.device, dtype=win.dtype)
    tot = win.sum(dim=(1, 2)).clamp(min=1e-12)
    cy = (win.sum(dim=2) * offs).sum(1) / tot
    cx = (win.sum(dim=1) * offs).sum(1) / tot
    xy = torch.stack([ix + 0.5 + cx, iy + 0.5 + cy], 1)
    return xy.cpu().numpy().astype(np.float64).reshape(-1, 2)


def maps_of(logits: torch.Tensor):
    """(mean probability, spread, mean logit) of (members, H, W) logits."""
    p = torch.sigmoid(logits)
    if len(p) == 1:  # no spread: zeros without memory
        return p[0], torch.zeros((), device=p.device, dtype=p.dtype).expand_as(p[0]), logits[0]
    # The spread (unbiased, as p.std(0)) summed member by member: torch's std over the
    # leading dimension takes ~1 s on a 4M frame on one CPU thread, this ~0.1 s.
    mean = p.mean(0)
    var, d = torch.zeros_like(mean), torch.empty_like(mean)
    for q in p:
        var.addcmul_(torch.sub(q, mean, out=d), d)
    return mean, var.div_(len(p) - 1).sqrt_(), logits.mean(0)


class Predictor:
    def __init__(self, blob: dict, device=None):
        self.name = blob["name"]
        self.blob = blob
        self.device = torch.device(device) if device is not None else default_device()
        self.members = []
        for spec, state in zip(blob["specs"], blob["states"]):
            m = build(spec)
            m.load_state_dict(state)
            self.members.append(m.to(self.device).eval())
        self.threshold = float(blob["threshold"])
        self.roi_threshold = float(blob["roi_threshold"])
        self.is_unet = blob["specs"][0]["arch"] == "unet"
        self.cpu_tile = None if self.is_unet else min(CPU_TILE[s["arch"]] for s in blob["specs"])
        self.halo = max(getattr(m, "halo", 0) for m in self.members)

    @classmethod
    def from_file(cls, path, device=None) -> "Predictor":
        return cls(torch.load(path, map_location="cpu", weights_only=True), device)

    @torch.inference_mode()
    def _logits(self, x: torch.Tensor, tile="auto") -> torch.Tensor:
        """(members, H, W) logits of a (C, H, W) input; tile: edge of square tiles (None: the
        whole frame in one pass; "auto": CPU_TILE for local models on the CPU, else whole)."""
        if tile == "auto":
            tile = self.cpu_tile if x.device.type == "cpu" else None
        if tile is None:
            return torch.cat([m(x[None])[0] for m in self.members])
        if self.is_unet:
            raise ValueError("the U-Net is global: it runs on the whole frame (tile=None)")
        h, w = x.shape[-2:]
        out = torch.empty((len(self.members), h, w), device=x.device)
        a = self.halo
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ya, xa = max(y0 - a, 0), max(x0 - a, 0)
                part = x[:, ya:min(y1 + a, h), xa:min(x1 + a, w)]
                res = torch.cat([m(part[None])[0] for m in self.members])
                out[:, y0:y1, x0:x1] = res[:, y0 - ya:y0 - ya + (y1 - y0), x0 - xa:x0 - xa + (x1 - x0)]
        return out

    def _input(self, frame, mask, geometry) -> torch.Tensor:
        # the background profile uses as many threads as torch (torch.set_num_threads)
        x = inputs_for(frame, mask, geometry, resolution=self.is_unet, nthreads=torch.get_num_threads())
        return torch.from_numpy(x).to(self.device)

    def maps(self, frame, mask=None, geometry=None, tile="auto"):
        """(mean probability, spread, mean logit) torch maps on the model's device; the
        spread (standard deviation over the members) is 0 for one model."""
        logits = self._logits(self._input(frame, mask, geometry), tile)
        return maps_of(logits)

    def probability_t(self, frame, mask=None, geometry=None, tile="auto"):
        return self.maps(frame, mask, geometry, tile)[:2]

    def probability(self, frame, mask=None, geometry=None, tile="auto"):
        mean, spread = self.probability_t(frame, mask, geometry, tile)
        return mean.cpu().numpy(), spread.cpu().numpy()

    def spots(self, frame, mask=None, geometry=None, threshold=None, maps=None) -> np.ndarray:
        threshold = self.threshold if threshold is None else threshold
        if maps is None and len(self.members) == 1:  # no probability map needed: peaks on the logits
            return peaks_from_map(None, threshold, self._logits(self._input(frame, mask, geometry))[0])
        mean, _, logit = maps if maps is not None else self.maps(frame, mask, geometry)
        return peaks_from_map(mean, threshold, logit)

    def roi(self, frame, mask=None, geometry=None, margin: int = 2, maps=None) -> np.ndarray:
        """Pixels whose upper bound (mean + 2 spread; the mean for one model) reaches the
        ROI threshold, dilated by margin (the encoder's ROI map)."""
        from ..spots import roi_mask

        mean, spread = (maps if maps is not None else self.maps(frame, mask, geometry))[:2]
        upper = mean if len(self.members) == 1 else mean + UPPER_K * spread
        keep = (upper >= self.roi_threshold).cpu().numpy()
        return roi_mask(keep, margin)

    @torch.inference_mode()
    def frame_outputs(self, frame, mask=None, geometry=None, min_spots: int = 10) -> dict:
        """U-Net only: hit probability, the lattice spots found and the resolution limit
        (Angstrom; the 95th percentile of 1/d over the spots, nan below 5 spots or
        without a geometry). hit_probability = sigmoid((spots - min_spots) / 2): the usual
        hit rule on the global model's lattice spots (artefacts left out). hit_head: the
        U-Net's own hit head (trained on 128 px crops; over-confident on whole artefact-only
        frames, see docs/ml.md)."""
        if not self.is_unet:
            raise ValueError("frame outputs come from the global model (load('unet'))")
        x = self._input(frame, mask, geometry)
        logits, hit = self.members[0](x[None], with_hit=True)
        xy = peaks_from_map(torch.sigmoid(logits[0, 0]), self.threshold, logits[0, 0])
        res = float("nan")
        if geometry is not None and len(xy) >= 5:
            d = geometry.resolution_at(xy[:, 0], xy[:, 1])
            res = float(1.0 / np.percentile(1.0 / d, 95))
        hit_probability = 1.0 / (1.0 + np.exp(-(len(xy) - min_spots) / 2.0))
        return {"hit_probability": float(hit_probability), "hit_head": float(torch.sigmoid(hit[0])), "spots": len(xy),
                "resolution_a": res}


@lru_cache(maxsize=8)
def _load_cached(path: str, device) -> Predictor:
    return Predictor.from_file(path, device)


def load(name: str = DEFAULT_MODEL, device=None) -> Predictor:
    """A shipped model by name, or a weights file by path (cached per process)."""
    path = Path(name) if name not in MODEL_FILES else WEIGHTS_DIR / MODEL_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path} (train them: python -m redml_study.ml.train)")
    return _load_cached(str(path), None if device is None else str(device))
