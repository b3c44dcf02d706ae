"""Weight files: read a checkpoint, pick its model weights, load them into a module.

The model layer's weight I/O (DESIGN §5/§6: layers point down): composite models
(``TwoModelDetector``) load their parts' trained weights with these functions, and the
engine (``engine/checkpoint.py``, which writes checkpoints) re-exports them, so a model
never imports the engine. Backbone ``pretrained:`` weights live next door in
``backbones.py``.

Errors are :class:`CheckpointError` (a ``RuntimeError``) naming the file.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or the model)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be found, read or applied; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass



def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu",
                    weights_only: bool = True) -> dict:
    """``torch.load`` of a checkpoint dict; every failure is a :class:`CheckpointError`
    naming the file (missing: :class:`CheckpointNotFoundError`; text, truncated or corrupt
    file; objects ``weights_only`` refuses; a file that holds something other than a dict).

    ``weights_only=True`` (the default) is enough for every checkpoint defectkit writes;
    pass ``False`` only for a trusted file that holds other pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if weights_only and "Unsupported global" in msg:
            detail = msg[msg.index("Unsupported global"):].split(" was not")[0]
            raise CheckpointError(
                f"{path}: holds objects that torch.load(weights_only=True) refuses to unpickle "
                f"({detail}); if you trust this file, load it with weights_only=False") from e
        detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else ""
        raise CheckpointError(f"{path}: corrupt, truncated or not a PyTorch checkpoint "
                              f"(UnpicklingError: {detail})") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. KeyError from a text file, any torch.load failure
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: corrupt, truncated or not a PyTorch checkpoint "
                              f"({type(e).__name__}: {first})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint: holds a {type(obj).__name__}, expected a dict "
                              f"(a defectkit checkpoint or a state dict)")
    return obj



def extract_state_dict(ckpt: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Model weights from a defectkit checkpoint (``state_dict``), a torchvision/detectron2
    one (``model``) or a bare state dict."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    raise CheckpointError(f"{source}: no model weights found (expected a 'state_dict' or "
                          f"'model' entry, or a plain state dict)")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "name: ckpt shape vs model shape"
    matched: int = 0        # model tensors loaded from the file
    total: int = 0          # model tensors (parameters and buffers)

    @property
    def share(self) -> float:
        """matched / total (1.0 for a model without tensors)."""
        return self.matched / self.total if self.total else 1.0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.clean:
            return "all keys matched"
        parts = []
        for label, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("shape mismatches (skipped)", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Remove ``prefix`` when every key has it (weights saved from a DDP-wrapped model)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict(model: torch.nn.Module, state_dict: dict, strict: bool = True,
                    source: str = "checkpoint") -> LoadReport:
    """Load weights into ``model`` (DDP unwrapped, ``module.`` stripped).

    ``strict=True`` raises :class:`CheckpointError` listing every difference;
    ``strict=False`` skips shape-mismatched tensors and returns what did not match.
    """
    model = unwrap_model(model)
    state_dict = strip_prefix(dict(state_dict))
    own = model.state_dict()
    report = LoadReport()
    skipped = set()
    for k, v in list(state_dict.items()):
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape:
            report.mismatched.append(f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}")
            skipped.add(k)
            del state_dict[k]
    report.missing = [k for k in own if k not in state_dict and k not in skipped]
    report.unexpected = [k for k in state_dict if k not in own]
    report.total = len(own)
    report.matched = sum(1 for k in own if k in state_dict)
    if strict and not report.clean:
        raise CheckpointError(f"{source}: weights do not match the model: {report}")
    model.load_state_dict(state_dict, strict=False)
    return report


def load_weights(module: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load the model weights of the checkpoint file ``path`` (a defectkit checkpoint, a
    torchvision/detectron2 one or a bare state dict) into ``module``; every failure is a
    :class:`CheckpointError` naming the file (see :func:`load_state_dict` for ``strict``)."""
    return load_state_dict(module, extract_state_dict(load_checkpoint(path), str(path)), strict=strict,
                           source=str(path))
