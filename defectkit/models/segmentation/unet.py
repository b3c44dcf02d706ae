"""UNet (Ronneberger et al. 2015), the baseline ZNet is compared with.

    encoder   DoubleConv(3 -> w) then ``depth`` x [MaxPool 2 -> DoubleConv(c -> 2c)]
    decoder   ``depth`` x [up 2 (ConvTranspose 2x2 stride 2, or bilinear + 1x1 conv)
                           -> cat[up, skip] -> DoubleConv(2c -> c)]
    head      Conv1x1(w -> num_classes)

DoubleConv = 2 x (Conv 3x3 no bias -> BatchNorm -> ReLU) with 'same' padding (as in most
PyTorch UNets, so the output has the input's size). ``base_channels: 64, depth: 4`` is the
paper's 31 M-parameter network; widths double per level up to ``max_channels``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from .base import AuxHeadConfig, SegmentorBase, resolve_num_classes


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, bilinear: bool):
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cskip, 1))
        else:
            self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = double_conv(2 * cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], 1))


@MODELS.register()
class UNet(SegmentorBase):
    """Args:
        num_classes / classes: outputs incl. background (default: 1 + dataset classes, else 2).
        base_channels: width of the first level (64 in the paper).
        depth: number of down-samplings (4 in the paper); inputs are padded to 2**depth.
        max_channels: cap of the doubling widths.
        bilinear: bilinear up-sampling + 1x1 conv instead of transposed convolutions.
        loss, class_weights, dice_weight, ignore_index, aux_head, keep_probs: as ZNet.
    """

    def __init__(self, num_classes: int | None = None, classes: list[str] | None = None,
                 base_channels: int = 64, depth: int = 4, max_channels: int = 1024,
                 bilinear: bool = False, loss: str = "ce", class_weights: list[float] | None = None,
                 dice_weight: float = 1.0, ignore_index: int = 255,
                 aux_head: AuxHeadConfig | dict | None = None, keep_probs: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet: model.depth must be >= 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"UNet: model.base_channels must be >= 1, got {base_channels}")
        num_classes = resolve_num_classes("UNet", num_classes, classes)
        self.size_divisor = 2 ** depth
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(depth + 1)]
        self.inc = double_conv(3, widths[0])
        self.downs = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], bilinear)
                                 for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self._init_common("UNet", num_classes, loss, class_weights, ignore_index, dice_weight,
                          aux_head, widths[-1], keep_probs)

    def encode(self, img: torch.Tensor):
        x = self.inc(img)
        skips = [x]
        for down in self.downs:
            x = down(F.max_pool2d(x, 2))
            skips.append(x)
        return skips[:-1], skips[-1]

    def decode(self, skips, x: torch.Tensor) -> torch.Tensor:
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)
