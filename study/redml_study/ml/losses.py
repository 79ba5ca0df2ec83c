"""Per-pixel losses with weights: 0 ignores a pixel, > 1 weighs it up (planted artefacts).

wbce   binary cross-entropy, positives weighted by pos_weight (they are ~0.3% of pixels)
focal  focal loss (Lin et al. 2017): (1 - p_t)^gamma down-weights easy pixels; alpha on positives
dice   soft Dice loss over the weighted pixels of the batch (overlap, not calibrated probabilities)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "loss_fn"]


def wbce(logits, target, weight, pos_weight: float = 10.0):
    w = weight * torch.where(target > 0, pos_weight, 1.0)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / w.sum().clamp(min=1)


def focal(logits, target, weight, gamma: float = 2.0, alpha: float = 0.75):
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0, p, 1 - p)
    a = torch.where(target > 0, alpha, 1 - alpha)
    return (a * (1 - p_t) ** gamma * ce * weight).sum() / (weight > 0).sum().clamp(min=1) * 20


def dice(logits, target, weight, eps: float = 1.0):
    p = torch.sigmoid(logits) * (weight > 0)
    t = target * (weight > 0)
    wp = weight * p
    return 1 - (2 * (wp * t).sum() + eps) / ((wp).sum() + (weight * t).sum() + eps)


LOSSES = {"wbce": wbce, "focal": focal, "dice": dice}


def loss_fn(name: str):
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {name!r}")
    return LOSSES[name]
