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
from torchvision import tv_tensors

# picture-like values: zero-padded to the batch's largest height/width when sizes differ
_SPATIAL = (tv_tensors.Image, tv_tensors.Mask, tv_tensors.Video)
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
    """Batch sample dicts key by key, whatever the keys are (no family-specific list):

    - tensors of equal shape are stacked into one ``(B, ...)`` tensor (plain
      ``torch.Tensor``; e.g. ``image``, ``mask``, a per-image target);
    - pictures of different sizes (``tv_tensors.Image`` / ``Mask`` / ``Video``, and the
      sample's ``image`` whatever its type) are zero-padded bottom/right to the largest
      height and width, then stacked; ``image_sizes`` keeps each ``image``'s (h, w)
      before padding;
    - Python ints/bools become one int64 tensor ``(B,)`` (``is_defective``, ``label``,
      ``grade``, ...), Python floats one float32 tensor ``(B,)``;
    - anything else stays a list with one entry per image (boxes and labels of different
      counts, ``meta`` dicts, strings).

    Keys missing from some samples are left out. Skipped-sample markers are left out and
    listed under ``batch["skipped"]`` (only when there are some). Raises ValueError for
    an empty list."""
    if not samples:
        raise ValueError("collate: empty batch")
    skipped = [s[SKIPPED] for s in samples if is_skipped(s)]
    samples = [s for s in samples if not is_skipped(s)]
    batch: dict[str, Any] = {}
    for key in (samples[0] if samples else ()):
        if not all(key in s for s in samples):
            continue
        values = [s[key] for s in samples]
        batch[key] = _collate_values(key, values)
        if key == "image" and isinstance(batch[key], torch.Tensor):
            batch["image_sizes"] = [tuple(v.shape[-2:]) for v in values]
    if skipped:
        batch[SKIPPED] = skipped
    return batch


def _collate_values(key: str, values: list) -> Any:
    """One key's batched value (the rules of :func:`collate`)."""
    if all(isinstance(v, torch.Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1:
            return torch.stack([v.as_subclass(torch.Tensor) for v in values])
        spatial = key == "image" or all(isinstance(v, _SPATIAL) for v in values)
        if spatial and len({(v.ndim, tuple(v.shape[:-2])) for v in values}) == 1 and values[0].ndim >= 2:
            return _pad_stack(values)
        return values
    if all(isinstance(v, (bool, int)) for v in values):
        return torch.as_tensor([int(v) for v in values], dtype=torch.long)
    if all(isinstance(v, (bool, int, float)) for v in values):
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    return values


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = []
    for t in tensors:
        t = t.as_subclass(torch.Tensor)   # drop tv_tensor subclasses for plain batching
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
