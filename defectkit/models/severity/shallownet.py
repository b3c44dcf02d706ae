"""``shallownet``: the InceptionV3 stem + the first Inception block (``mixed0``), cut there.

Research note §1 "The custom shallow backbone": the original's detector backbone is not
published; its deleted classifier ``classification/train/model/customizenet.py`` (commit
1fcbf9b) names this network ``'shallownet'``. Layers (Keras InceptionV3, ``conv2d_bn`` =
conv without bias -> BN -> ReLU; torchvision's ``BasicConv2d``, BN eps 0.001):

    stem    conv3x3/2 32 -> conv3x3 32 -> conv3x3 64 -> maxpool 3/2          stride 4
    layer1  conv1x1 80 -> conv3x3 192                                          stride 4
    layer2  maxpool 3/2 -> mixed0: 1x1 64 | 1x1 48 -> 5x5 64 |
            1x1 64 -> 3x3 96 -> 3x3 96 | avgpool 3 -> 1x1 32   = 256 channels   stride 8
    layer3, layer4: identity (the network ends at mixed0; ``Backbone``'s five-stage layout)

``padding='same'`` (default) pads every 3x3 conv and pool by 1, so an H x W input gives
ceil(H/8) x ceil(W/8) cells whose centres sit on the stride-8 anchor grid; ``'valid'`` is the
Keras original (valid stem convs and pools: 299 -> 35, cells shifted by ~30 px from
torchvision's anchor grid, which assumes ``image_size // feature_size``). ``width_mult``
scales every conv's channels (tiny CPU configs; 256 x width_mult out). Registered with
``register_backbone('shallownet', ...)``: ``build_backbone('shallownet', out_indices=(2,))``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torchvision.models.inception import BasicConv2d

from ..backbones import BACKBONES, Backbone, register_backbone


def _ch(n: int, mult: float) -> int:
    return max(4, int(round(n * mult)))


class Mixed0(nn.Module):
    """InceptionV3's first Inception-A block (Keras ``mixed0`` / torchvision ``Mixed_5b``):
    four branches concatenated, 64 + 64 + 96 + 32 = 256 channels at ``width_mult`` 1.
    The pool branch averages without the padded zeros (Keras ``AveragePooling2D(padding='same')``)."""

    def __init__(self, cin: int, width_mult: float = 1.0):
        super().__init__()
        c = lambda n: _ch(n, width_mult)  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.branch_pool = BasicConv2d(cin, c(32), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(self.pool(x))], 1)


class ShallowNet(Backbone):
    """See the module docstring. Args: ``width_mult`` (channels x this), ``in_channels``,
    ``padding`` ('same' | 'valid'), and ``Backbone``'s ``out_indices`` (default (2,):
    mixed0), ``frozen_stages``, ``norm_eval``."""

    stem_modules = ("stem",)
    stage_strides = (4, 4, 8, 8, 8)

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3, padding: str = "same",
                 out_indices: Sequence[int | str] = (2,), frozen_stages: int = -1, norm_eval: bool = False):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"shallownet: padding must be 'same' or 'valid', got {padding!r}")
        if not 0 < width_mult <= 4:
            raise ValueError(f"shallownet: width_mult must be in (0, 4], got {width_mult!r}")
        self.name = "shallownet"
        p = 1 if padding == "same" else 0
        c = lambda n: _ch(n, width_mult)  # noqa: E731
        self.stem = nn.Sequential(
            BasicConv2d(in_channels, c(32), kernel_size=3, stride=2, padding=p),
            BasicConv2d(c(32), c(32), kernel_size=3, padding=p),
            BasicConv2d(c(32), c(64), kernel_size=3, padding=1),
            nn.MaxPool2d(3, stride=2, padding=p))
        self.layer1 = nn.Sequential(BasicConv2d(c(64), c(80), kernel_size=1),
                                    BasicConv2d(c(80), c(192), kernel_size=3, padding=p))
        mixed0 = Mixed0(c(192), width_mult)
        self.layer2 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=p), mixed0)
        self.layer3 = nn.Identity()
        self.layer4 = nn.Identity()
        out = mixed0.out_channels
        self.stage_channels = (c(64), c(192), out, out, out)
        self._setup(out_indices, frozen_stages, norm_eval)


if "shallownet" not in BACKBONES:      # idempotent under module reloads
    register_backbone("shallownet", lambda **kw: ShallowNet(**kw))
