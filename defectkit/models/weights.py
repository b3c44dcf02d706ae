"""Weight files: the model layer's weight I/O (DESIGN §5/§6: layers point down).

* Pretrained backbone weights (``pretrained:`` of ``build_backbone``): ``load_pretrained``
  takes ``torchvision://resnet50[.ENTRY]`` (torchvision's download / torch hub cache;
  ``PretrainedWeightsError`` says which file to place where when offline) or a local file
  (a state dict, ``{"state_dict": ...}`` or ``{"model": ...}``; ``module.`` / ``backbone.``
  / ``body.`` prefixes stripped, ``fc.*`` skipped); non-strict, shape mismatches are errors.
* Trained weights (checkpoints): ``load_checkpoint`` / ``extract_state_dict`` /
  ``select_weights`` / ``load_state_dict`` (from ``defectkit/checkpoint_io.py``, the bottom
  layer, re-exported here) and ``load_weights``; every failure is a ``CheckpointError`` (a
  ``RuntimeError``) naming the file. Composite models (``TwoModelDetector``) load their
  parts' weights with ``load_weights``; ``engine/checkpoint.py`` (which writes checkpoints)
  re-exports these, so a model never imports the engine.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import torch.nn as nn

from ..checkpoint_io import (CheckpointError, CheckpointNotFoundError, LoadReport,  # noqa: F401
                             check_model_type, checkpoint_model_type, extract_state_dict, has_ema,
                             load_checkpoint, load_state_dict, select_weights, strip_prefix, unwrap_model)

logger = logging.getLogger(__name__)
TORCHVISION_PREFIX = "torchvision://"


class PretrainedWeightsError(RuntimeError):
    """Weights could not be found or downloaded; the message says what to do."""


def load_weights(module: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load the model weights of the checkpoint file ``path`` (a defectkit checkpoint, a
    torchvision/detectron2 one or a bare state dict) into ``module``; every failure is a
    :class:`CheckpointError` naming the file (see :func:`load_state_dict` for ``strict``)."""
    return load_state_dict(module, extract_state_dict(load_checkpoint(path), str(path)), strict=strict,
                           source=str(path))


# ------------------------------------------------------------ pretrained (backbones)
def parse_torchvision_uri(uri: str):
    """``torchvision://resnet50[.IMAGENET1K_V2|.DEFAULT]`` -> (model name, weights enum entry).

    Without a suffix the ``IMAGENET1K_V1`` entry is used (``resnet50(pretrained=True)``).
    ``torchvision://ResNet50_Weights.IMAGENET1K_V2`` is accepted too.
    """
    from torchvision.models import get_model_weights, list_models

    spec = uri[len(TORCHVISION_PREFIX):] if uri.startswith(TORCHVISION_PREFIX) else uri
    model_name, _, entry = spec.partition(".")
    if model_name.endswith("_Weights"):   # ResNet50_Weights.X: find the model it belongs to
        matches = [m for m in list_models() if get_model_weights(m).__name__ == model_name]
        if not matches:
            raise ValueError(f"{uri}: no torchvision model has weights '{model_name}'")
        model_name = matches[0]
    try:
        enum = get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ValueError(f"{uri}: '{model_name}' is not a torchvision model "
                         f"(e.g. torchvision://resnet50)") from None
    entry = entry or ("IMAGENET1K_V1" if "IMAGENET1K_V1" in enum.__members__ else "DEFAULT")
    try:
        weights = enum[entry]
    except KeyError:
        raise ValueError(f"{uri}: {enum.__name__} has no entry '{entry}' "
                         f"(available: {', '.join(enum.__members__)})") from None
    return model_name, weights


def torchvision_cache_path(weights) -> str:
    """Where torch.hub keeps (and looks for) the file of a torchvision weights entry."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def load_torchvision_weights(uri: str) -> tuple[str, dict]:
    """Download (or read from the hub cache) a torchvision state dict; clear error on failure."""
    model_name, weights = parse_torchvision_uri(uri)
    path = torchvision_cache_path(weights)
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001 - network, hash or disk errors all end here
        raise PretrainedWeightsError(
            f"could not get the weights for '{uri}' ({type(weights).__name__}.{weights.name}): "
            f"{type(e).__name__}: {e}\n"
            f"Without internet, download {weights.url} on another machine and place it at\n"
            f"    {path}\n"
            f"(the torch hub cache; set TORCH_HOME to move it), or set `pretrained:` to the "
            f"path of a local .pth file.") from e
    return model_name, state


def read_state_dict(path: str | os.PathLike, skip_prefixes: Sequence[str] = ("fc.",)) -> dict:
    """Load a checkpoint file and return a clean state dict.

    Accepts a raw state dict or one nested under ``state_dict`` / ``model``; strips
    ``module.`` (DataParallel) and ``backbone.`` prefixes; drops ``skip_prefixes`` keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {os.path.abspath(path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - e.g. a checkpoint with numpy objects in its meta
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (or a dict with 'state_dict'/'model'), "
                         f"got {type(obj).__name__}")
    return clean_state_dict(obj, skip_prefixes)


def clean_state_dict(state: dict, skip_prefixes: Sequence[str] = ("fc.",)) -> dict:
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "backbone.", "body."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        if any(k.startswith(p) for p in skip_prefixes):
            continue
        out[k] = v
    return out


def load_pretrained(module: nn.Module, pretrained: str, arch: str | None = None,
                    skip_prefixes: Sequence[str] = ("fc.",)) -> tuple[list[str], list[str]]:
    """Load ``pretrained`` (``torchvision://...`` or a local file) into ``module``.

    Non-strict: missing/unexpected keys are logged, shape mismatches are errors.
    Returns (missing, unexpected).
    """
    if str(pretrained).startswith(TORCHVISION_PREFIX):
        model_name, state = load_torchvision_weights(pretrained)
        if arch is not None and model_name != arch:
            raise ValueError(f"pretrained '{pretrained}' holds {model_name} weights but the "
                             f"backbone is {arch}")
        state = clean_state_dict(state, skip_prefixes)
        source = pretrained
    else:
        state = read_state_dict(pretrained, skip_prefixes)
        source = os.fspath(pretrained)
    own = module.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{source}: shapes do not match the model:\n  " + "\n  ".join(bad[:10]))
    if not any(k in own for k in state):
        raise ValueError(f"{source}: no tensor of the file matches the model (file keys: "
                         f"{', '.join(list(state)[:5])} ...; model keys: {', '.join(list(own)[:5])} ...)")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        logger.warning("%s: %d model keys not in the weights file: %s", source, len(missing),
                       ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if result.unexpected_keys:
        logger.warning("%s: %d keys of the weights file unused: %s", source,
                       len(result.unexpected_keys), ", ".join(result.unexpected_keys[:10])
                       + (" ..." if len(result.unexpected_keys) > 10 else ""))
    logger.info("loaded %d tensors from %s", len(state) - len(result.unexpected_keys), source)
    return missing, list(result.unexpected_keys)
