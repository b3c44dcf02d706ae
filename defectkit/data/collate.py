"""Batching of sample dicts, moving batches between devices, and the evaluation view.

Unreadable samples at evaluation time: with ``skip_invalid: true`` a dataset read
through :class:`EvalSamples` (what ``build_eval_loader`` gives the DataLoader) returns a
small marker ``{"skipped": {"index", "path", "error"}}`` for a sample it cannot load
instead of replacing it by the next one (replacing is for training only: it would
evaluate an image twice). :func:`collate` drops the markers and lists them under
``batch["skipped"]``; ``run_inference`` records them (gathered across ranks) so that
every metric counts the readable images only. This works with ``num_workers > 0``
(markers are plain dicts) and any batch size; a batch whose samples were all skipped
is ``{"skipped": [...]}`` alone.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# keys whose per-sample values are stacked into one tensor when shapes agree
_STACK = ("image", "mask")
# keys that are always one scalar per sample
_SCALAR = ("is_defective", "label", "grade")
# the key of a skipped-sample marker and of the batch's list of skipped samples
SKIPPED = "skipped"


def skipped_sample(index: int, path: str | None, error: str) -> dict:
    """The marker a dataset returns for an unreadable sample at evaluation time."""
    return {SKIPPED: {"index": int(index), "path": None if path is None else str(path), "error": str(error)}}


def is_skipped(sample: Any) -> bool:
    return isinstance(sample, dict) and SKIPPED in sample and len(sample) == 1


def is_empty_batch(batch: Any) -> bool:
    """True for a batch whose every sample was skipped (only ``batch['skipped']`` is left)."""
    return isinstance(batch, dict) and all(k == SKIPPED for k in batch)


class EvalSamples(Dataset):
    """The evaluation view of ``dataset``: item ``i`` is ``dataset.get_sample(i,
    replace_invalid=False)`` (an unreadable sample becomes a :func:`skipped_sample` marker
    when the dataset has ``skip_invalid``, else it raises), or ``dataset[i]`` for a dataset
    without ``get_sample``. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        get = getattr(self.dataset, "get_sample", None)
        return get(index, replace_invalid=False) if callable(get) else self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":            # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate(samples: list[dict]) -> dict[str, Any]:
    """Images of different sizes are zero-padded (bottom/right) to the largest;
    ``image_sizes`` keeps each image's (h, w) before padding. Boxes, labels and
    other per-instance fields stay lists, one entry per image. Skipped-sample markers
    are left out and listed under ``batch["skipped"]`` (only when there are some)."""
    if not samples:
        raise ValueError("collate: empty batch")
    skipped = [s[SKIPPED] for s in samples if is_skipped(s)]
    samples = [s for s in samples if not is_skipped(s)]
    batch: dict[str, Any] = {}
    for key in (samples[0] if samples else ()):
        values = [s[key] for s in samples]
        if key in _STACK:
            batch[key] = _pad_stack(values)
            if key == "image":
                batch["image_sizes"] = [tuple(v.shape[-2:]) for v in values]
        elif key in _SCALAR:
            batch[key] = torch.as_tensor([int(v) for v in values], dtype=torch.long)
        else:
            batch[key] = values
    if skipped:
        batch[SKIPPED] = skipped
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
