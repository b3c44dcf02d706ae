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
