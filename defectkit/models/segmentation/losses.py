"""Pixel losses of the segmenters: cross-entropy, soft Dice, or their sum (``loss: ce+dice``).

Both take logits (B, C, H, W) and a class-index target (B, H, W); pixels equal to
``ignore_index`` count in neither. ``class_weights`` (C floats) weight the cross-entropy
per class (``F.cross_entropy(weight=...)``) and the per-class Dice terms (weighted mean).

ZNet's original loss, ``BCELoss`` on the softmax of both channels against the one-hot
target, equals unweighted 2-class cross-entropy (p1 = 1 - p0, y1 = 1 - y0), so ``ce`` is
the faithful choice (see docs/znet.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("ce", "dice", "ce+dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """1 - mean_c Dice_c with Dice_c = (2 sum p_c y_c + eps) / (sum p_c + sum y_c + eps),
    sums over every valid pixel of the batch (softmax probabilities p, one-hot y)."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index)
    probs = logits.float().softmax(1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None]
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if weight is None:
        return 1.0 - dice.mean()
    w = weight.to(dice)
    return 1.0 - (dice * w).sum() / w.sum()


def segmentation_losses(logits: torch.Tensor, target: torch.Tensor, loss: str = "ce",
                        class_weights: torch.Tensor | None = None, ignore_index: int = 255,
                        dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{'loss_ce': ..., 'loss_dice': ...}`` as selected by ``loss``."""
    if loss not in LOSS_TYPES:
        raise ValueError(f"model.loss: must be one of {LOSS_TYPES}, got {loss!r}")
    out = {}
    if "ce" in loss.split("+"):
        out["loss_ce"] = F.cross_entropy(logits.float(), target, weight=class_weights,
                                         ignore_index=ignore_index)
    if "dice" in loss.split("+"):
        out["loss_dice"] = dice_weight * soft_dice_loss(logits, target, class_weights, ignore_index)
    return out
