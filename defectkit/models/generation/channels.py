"""The Defect-Gen sample layout: RGB and a one-hot defect mask stacked as ``3 + K + 1`` channels.

Research note §2 (original ``train.py: Trainer.on_train_epoch_start`` and
``scripts/inference.py: log_images``)::

    x0 = cat([rgb in [-1, 1], one_hot(mask, K + 1) in {0, 1}])     # (B, 3 + K + 1, H, W)

``K = num_defect`` = number of defect classes; mask channel 0 (x channel 3) is background,
mask channel k (x channel 3 + k) is defect class k (``classes[k - 1]``). The one-hot channels
are NOT rescaled to [-1, 1] (as the original). Read-out: ``image = (x[:, :3] + 1) / 2``
clamped to [0, 1]; ``mask = argmax(x[:, 3:], 1)`` (no threshold; the original's softmax
before the argmax changes nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def num_channels(num_defect: int) -> int:
    """Channels of a sample with ``num_defect`` defect classes: 3 (RGB) + background + K."""
    return 3 + int(num_defect) + 1


def check_channels(in_channels: int, num_defect: int, key: str = "model.denoiser.in_channels") -> None:
    """ValueError naming ``key`` unless ``in_channels == 3 + num_defect + 1``.

    The original's README says a 7-class object needs 10 channels; its code needs 11
    (``ch = num_defect + 4``); the code is followed (note §2)."""
    if int(num_defect) < 1:
        raise ValueError(f"num_defect: must be >= 1 (the number of defect classes), got {num_defect}")
    want = num_channels(num_defect)
    if int(in_channels) != want:
        raise ValueError(f"{key}: {in_channels} channels, but num_defect {num_defect} needs "
                         f"3 + {num_defect} + 1 = {want} (RGB + background + one per defect class)")


def check_mask(mask: torch.Tensor, num_defect: int, where: str = "batch['mask']") -> None:
    """ValueError naming ``where`` (e.g. the image file) and the bad value when a class index
    of ``mask`` is < 0 or > ``num_defect`` (e.g. a 0/255 MVTec mask not converted to class
    indices, or the ignore index 255 from a resize pipeline)."""
    if mask.numel() == 0:
        return
    lo, hi = int(mask.min()), int(mask.max())
    if hi > num_defect:
        raise ValueError(f"{where}: mask value {hi} > num_defect {num_defect} (class-index masks "
                         f"0..{num_defect} expected; convert 0/255 masks to class indices)")
    if lo < 0:
        raise ValueError(f"{where}: mask value {lo} < 0 (class-index masks 0..{num_defect} expected)")


def to_x0(image01: torch.Tensor, mask: torch.Tensor, num_defect: int, where: str = "batch['mask']") -> torch.Tensor:
    """``image01`` float (B, 3, H, W) in [0, 1] and ``mask`` int (B, H, W) class index
    0..K -> x0 float32 (B, 3 + K + 1, H, W): RGB in [-1, 1], one-hot mask in {0, 1}.
    The mask is validated with :func:`check_mask` (error names ``where``)."""
    if image01.ndim != 4 or image01.shape[1] != 3:
        raise ValueError(f"to_x0: image must be (B, 3, H, W), got {tuple(image01.shape)}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.shape != (image01.shape[0], *image01.shape[2:]):
        raise ValueError(f"{where}: mask shape {tuple(mask.shape)} does not match the image "
                         f"{tuple(image01.shape)} (B, H, W expected)")
    check_mask(mask, num_defect, where)
    onehot = F.one_hot(mask.long(), num_defect + 1).permute(0, 3, 1, 2).to(torch.float32)
    return torch.cat([image01.float() * 2 - 1, onehot], 1)


def split_x0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 3 + K + 1, H, W) -> (image float32 (B, 3, H, W) in [0, 1], mask int64 (B, H, W)
    = argmax of the mask channels, 0 = background)."""
    image = ((x[:, :3].float() + 1) / 2).clamp(0, 1)
    return image, x[:, 3:].argmax(1)
