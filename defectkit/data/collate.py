"""Batching of sample dicts and moving batches between devices."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# keys whose per-sample values are stacked into one tensor when shapes agree
_STACK = ("image", "mask")
# keys that are always one scalar per sample
_SCALAR = ("is_defective", "label", "grade")


def collate(samples: list[dict]) -> dict[str, Any]:
    """Images of different sizes are zero-padded (bottom/right) to the largest;
    ``image_sizes`` keeps each image's (h, w) before padding. Boxes, labels and
    other per-instance fields stay lists, one entry per image."""
    if not samples:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in _STACK:
            batch[key] = _pad_stack(values)
            if key == "image":
                batch["image_sizes"] = [tuple(v.shape[-2:]) for v in values]
        elif key in _SCALAR:
            batch[key] = torch.as_tensor([int(v) for v in values], dtype=torch.long)
        else:
            batch[key] = values
    return batch


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = []
    for t in tensors:
        t = torch.as_tensor(t)   # drop tv_tensor subclasses for plain batching
        if t.shape[-2:] != (h, w):
            t = F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))
        out.append(t)
    return torch.stack(out)


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], (torch.Tensor, dict, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj
