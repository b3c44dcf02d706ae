"""Backbones: torchvision ResNets (and a tiny CNN for tests) as multi-stage feature extractors.

    bb = build_backbone("resnet50", pretrained="torchvision://resnet50",
                        frozen_stages=1, norm_eval=True, out_indices=(1, 2, 3, 4))
    feats = bb(images)            # OrderedDict {"layer1": C2, ..., "layer4": C5}
    bb.out_channels               # [256, 512, 1024, 2048], one per returned stage
    bb.strides                    # [4, 8, 16, 32]

Stages are numbered the same way for ``out_indices`` and ``frozen_stages``:
0 = stem (conv1, bn1, relu, maxpool), 1..4 = ``layer1``..``layer4`` (C2..C5).
``out_indices`` also accepts the names ("stem", "layer1", ...).
Typical uses: detection C2..C5 = ``(1, 2, 3, 4)``; PaDiM ``(1, 2, 3)``; classifier ``(4,)``.

The ResNet modules keep torchvision's attribute names (``conv1``, ``bn1``, ``layer1``...;
``fc`` and ``avgpool`` are dropped), so torchvision state dicts load without renaming.

``pretrained``:
* ``torchvision://resnet50``: torchvision's ``IMAGENET1K_V1`` weights (what the old
  ``resnet50(pretrained=True)`` and mmdet's ``torchvision://resnet50`` gave);
  ``torchvision://resnet50.IMAGENET1K_V2`` (or ``.DEFAULT``) picks another entry.
  Downloaded once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``).
* a local path: a state dict, ``{"state_dict": ...}`` or ``{"model": ...}``; ``module.`` /
  ``backbone.`` prefixes are stripped and ``fc.*`` is skipped.
* ``None``: random init.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torchvision

from ..registry import MODELS

logger = logging.getLogger(__name__)

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
TORCHVISION_PREFIX = "torchvision://"


class PretrainedWeightsError(RuntimeError):
    """Weights could not be found or downloaded; the message says what to do."""


# ------------------------------------------------------------------------ base class
class Backbone(nn.Module):
    """A stem plus four stages; subclasses create ``self.<stage>`` modules.

    Subclasses set ``stage_channels`` / ``stage_strides`` (one per entry of STAGE_NAMES)
    and a ``stem_modules`` tuple naming the attributes that form the stem.
    """

    stage_channels: tuple[int, ...] = ()
    stage_strides: tuple[int, ...] = (4, 4, 8, 16, 32)
    stem_modules: tuple[str, ...] = ("stem",)

    def _setup(self, out_indices: Sequence[int | str], frozen_stages: int, norm_eval: bool) -> None:
        self.out_indices = _parse_out_indices(out_indices)
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4 (0 = stem, 4 = layer4), got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_names = [STAGE_NAMES[i] for i in self.out_indices]
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self.strides = [self.stage_strides[i] for i in self.out_indices]
        self._last = max(self.out_indices)
        self._freeze()

    def stage_modules(self, i: int) -> list[nn.Module]:
        names = self.stem_modules if i == 0 else (STAGE_NAMES[i],)
        return [getattr(self, n) for n in names]

    def _freeze(self) -> None:
        for i in range(self.frozen_stages + 1):
            for m in self.stage_modules(i):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._freeze()   # frozen stages stay in eval (BN statistics untouched)
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i in range(self._last + 1):
            for m in self.stage_modules(i):
                x = m(x)
            if i in self.out_indices:
                out[STAGE_NAMES[i]] = x
        return out


def _parse_out_indices(out_indices: Sequence[int | str]) -> tuple[int, ...]:
    if isinstance(out_indices, (int, str)):
        out_indices = [out_indices]
    idx = []
    for o in out_indices:
        if isinstance(o, str):
            if o not in STAGE_NAMES:
                raise ValueError(f"out_indices: unknown stage '{o}' (stages: {', '.join(STAGE_NAMES)})")
            o = STAGE_NAMES.index(o)
        if not 0 <= int(o) <= 4:
            raise ValueError(f"out_indices: {o} is not a stage (0 = stem, 1..4 = layer1..layer4)")
        idx.append(int(o))
    if not idx:
        raise ValueError("out_indices: at least one stage is needed")
    return tuple(sorted(set(idx)))


# -------------------------------------------------------------------- torchvision ResNet
_RESNETS = {
    # name: (stage channels stem..layer4)
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
    "wide_resnet50_2": (64, 256, 512, 1024, 2048),
}


class ResNetBackbone(Backbone):
    """torchvision ResNet / Wide ResNet body (stem + layer1..4), no avgpool/fc."""

    stem_modules = ("conv1", "bn1", "relu", "maxpool")

    def __init__(self, name: str = "resnet50", out_indices: Sequence[int | str] = (1, 2, 3, 4),
                 frozen_stages: int = -1, norm_eval: bool = False):
        super().__init__()
        if name not in _RESNETS:
            raise ValueError(f"unknown ResNet '{name}' (available: {', '.join(_RESNETS)})")
        self.name = name
        self.stage_channels = _RESNETS[name]
        net = getattr(torchvision.models, name)(weights=None)
        for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, n, getattr(net, n))
        self._setup(out_indices, frozen_stages, norm_eval)


# ---------------------------------------------------------------------- tiny test CNN
def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@MODELS.register()
class SmallCNN(Backbone):
    """A few-thousand-parameter CNN with ResNet's stage layout and strides (4..32).

    For tests and CPU demos; channels (stem, layer1..4) = (w, w, 2w, 4w, 8w).
    """

    def __init__(self, width: int = 16, out_indices: Sequence[int | str] = (1, 2, 3, 4),
                 frozen_stages: int = -1, norm_eval: bool = False):
        super().__init__()
        self.name = "small_cnn"
        w = width
        self.stage_channels = (w, w, 2 * w, 4 * w, 8 * w)
        self.stem = nn.Sequential(_conv_bn_relu(3, w, 2), nn.MaxPool2d(3, 2, 1))
        self.layer1 = _conv_bn_relu(w, w, 1)
        self.layer2 = _conv_bn_relu(w, 2 * w, 2)
        self.layer3 = _conv_bn_relu(2 * w, 4 * w, 2)
        self.layer4 = _conv_bn_relu(4 * w, 8 * w, 2)
        self._setup(out_indices, frozen_stages, norm_eval)


# name -> constructor(out_indices, frozen_stages, norm_eval)
BACKBONES: dict[str, Callable[..., Backbone]] = {
    **{n: (lambda n: lambda **kw: ResNetBackbone(n, **kw))(n) for n in _RESNETS},
    "small_cnn": lambda **kw: SmallCNN(**kw),
}


def register_backbone(name: str, factory: Callable[..., Backbone]) -> None:
    """Make ``build_backbone(name)`` work for a custom ``Backbone`` subclass;
    ``factory(out_indices=..., frozen_stages=..., norm_eval=...)`` builds it."""
    if name in BACKBONES:
        raise KeyError(f"backbone '{name}' is already registered")
    BACKBONES[name] = factory


def build_backbone(name: str = "resnet50", pretrained: str | None = None, frozen_stages: int = -1,
                   norm_eval: bool = False,
                   out_indices: Sequence[int | str] = (1, 2, 3, 4)) -> Backbone:
    """Build a backbone by name (``resnet18/34/50/101``, ``wide_resnet50_2``, ``small_cnn``).

    Weights are loaded before freezing takes effect on training; see the module docstring
    for the forms of ``pretrained``.
    """
    if name not in BACKBONES:
        import difflib

        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown backbone '{name}'{hint} (available: {', '.join(BACKBONES)})")
    bb = BACKBONES[name](out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)
    if pretrained:
        load_pretrained(bb, pretrained, arch=name)
    return bb


# ---------------------------------------------------------------------- weight loading
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
