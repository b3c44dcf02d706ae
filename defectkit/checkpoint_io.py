"""Reading checkpoint files (bottom layer: models, evaluation and the engine all read them).

``load_checkpoint`` (``torch.load`` with one-line ``CheckpointError`` s naming the file),
``extract_state_dict`` (the model weights of a defectkit / torchvision / detectron2
checkpoint or a bare state dict) and ``select_weights`` (the EMA entry written by
``train.ema`` or the raw weights). ``defectkit.models.weights`` re-exports them next to
the loading side (``load_state_dict``, ``load_weights``, pretrained backbones), and
``defectkit.engine.checkpoint`` next to the writing side.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


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


def select_weights(ckpt: dict, source: str = "checkpoint", use_ema: bool = True) -> tuple[dict, str]:
    """``(state_dict, "ema" | "raw")``: the checkpoint's EMA weights
    (``ckpt["ema"]["state_dict"]``, written by ``train.ema``) when ``use_ema`` and present,
    else its model weights (:func:`extract_state_dict`; ``CheckpointError`` naming ``source``
    when it has none)."""
    ema = ckpt.get("ema") if isinstance(ckpt, dict) else None
    if use_ema and isinstance(ema, dict) and isinstance(ema.get("state_dict"), dict):
        return ema["state_dict"], "ema"
    return extract_state_dict(ckpt, source), "raw"


def has_ema(ckpt: Any) -> bool:
    """Whether the checkpoint dict holds an EMA entry (``train.ema``)."""
    return isinstance(ckpt, dict) and isinstance(ckpt.get("ema"), dict) \
        and isinstance(ckpt["ema"].get("state_dict"), dict)


def checkpoint_model_type(ckpt: dict) -> str | None:
    """The model ``type`` in the config stored in a defectkit checkpoint's meta (None for
    other files, e.g. a torchvision state dict)."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    config = meta.get("config") if isinstance(meta, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    model_type = model.get("type") if isinstance(model, dict) else None
    return model_type if isinstance(model_type, str) else None


def check_model_type(ckpt: dict, model_type: str | None, source: str, use: str) -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` was saved from another model type than
    ``model_type`` (the config's ``model.type``); ``use`` names what it was given to."""
    stored = checkpoint_model_type(ckpt)
    if stored is not None and model_type is not None and stored != model_type:
        raise CheckpointError(f"{source}: a checkpoint of model type '{stored}', but the config's "
                              f"model.type is '{model_type}': {use} needs a checkpoint of the "
                              f"same model type (give the config it was trained with)")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or the model)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


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
