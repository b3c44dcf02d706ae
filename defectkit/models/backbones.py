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

The loading itself (``load_pretrained`` and friends) lives in ``weights.py``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torchvision

from ..registry import MODELS
# pretrained-weight loading lives in weights.py (re-exported here: the names backbones had)
from .weights import (TORCHVISION_PREFIX, PretrainedWeightsError, clean_state_dict,  # noqa: F401
                      load_pretrained, load_torchvision_weights, parse_torchvision_uri,
                      read_state_dict, torchvision_cache_path)


STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


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
