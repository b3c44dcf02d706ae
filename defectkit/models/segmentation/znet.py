"""ZNet: the BSData surface-defect segmenter of looog-e/surface-defect-detection (class
``SegNet`` in its code), re-implemented from ../shared/research/znet.md.

    stem      a = CBG(3->6, 3x3)(img)
    Scope     f = ONE 3x3 conv (6->6) + BN + ReLU applied four times: [a, f(a), f2(a), f3(a), f4(a)]  30 ch
              (receptive fields 3, 5, 7, 9, 11 px; ``share_weights: false`` gives four blocks)
    gate 1    w = MLP(GAP(CBG(3->30, 1x1)(img))) (30 -> 5 -> 30), computed from the INPUT IMAGE;
              x0 = x * w
    encoder   x1 = pool(CBG(30->32, 5x5)(x0))         1/2
              x2 = pool(Res(32->64)(x1))              1/4
              x3 = pool(Res(64->128)(x2))             1/8
              x4 = CBG(256->256, 5x5)(pool(Res(128->256)(x3)))   1/16 (bottleneck)
    decoder   d1 = CBG(256->256, 5x5)(cat[DBG(256->128)(x4), x3])
              d2 = CBG(128->128, 5x5)(cat[DBG(256->64)(d1), x2])
              d3 = CBG(64->64, 5x5)(cat[DBG(128->32)(d2), x1])
              d4 = CBG(32->8, 3x3)(CBG(46->32, 3x3)(cat[DBG(64->16)(d3), x0]))
    gate 2    d4 = d4 * gate(GAP(x4))  (256 -> 8)
    head      CBG(8->8, 3x3) -> conv(8->num_classes, 3x3)

CBG = Conv(bias) -> BatchNorm -> ReLU; DBG = ConvTranspose(3x3, stride 2) -> BN -> ReLU;
Res(i->o) = cat[x, CBG(h->o-i, 1x1)(CBG(h->h, 3x3)(CBG(i->h, 1x1)(x)))], h = i/2 (a
DenseNet-style concat, not an addition). About 4.40 M parameters (2 classes).

``compat`` selects how the original's defects are treated:

- ``fixed`` (default): both gates end in a sigmoid (gate 1: Linear-ReLU-Linear-sigmoid,
  an SE block; gate 2: Linear-sigmoid), no BatchNorm1d in the gates (so batch size 1
  trains), the last conv gives plain logits, and the shared Scope conv has one BatchNorm
  per application (its statistics differ per recursion depth).
- ``original``: the code as published: gates are Linear-BN1d-ReLU stacks (weights >= 0,
  unbounded; BN1d needs batch >= 2 in training), the last block is Conv-BN-ReLU, so
  the "logits" fed to the softmax are >= 0, and the Scope block shares its BatchNorm too.

Both use adaptive pooling (the original's ``AvgPool2d(256x512)`` only worked at that
size) and output channel 0 = background, 1.. = defect classes (the original's channel 0
was the defect; its BCE-on-softmax loss equals cross-entropy, see losses.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from .base import AuxHeadConfig, SegmentorBase, resolve_num_classes

COMPAT = ("fixed", "original")


def cbg(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv(k x k, stride 1, 'same' padding, bias) -> BatchNorm2d -> ReLU (the original CBG_layer)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def dbg(cin: int, cout: int) -> nn.Sequential:
    """ConvTranspose(3x3, stride 2) -> BN -> ReLU: exactly doubles H and W (DBG_layer)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def lbg(cin: int, cout: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU (LBG_layer; only in ``compat: original``)."""
    return nn.Sequential(nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True))


class ScopeConv(nn.Module):
    """Stem + the recursive Scope block: ``[a, f(a), f(f(a)), ...]``.

    ``share_weights`` (the original): ``f`` is ONE 3x3 conv (one set of weights) applied
    ``n`` times. ``share_bn``: the original also shares the BatchNorm of that block, so one
    set of running statistics serves four recursion depths with different feature
    distributions; in eval mode that mixture normalises every depth wrongly (measured:
    defect IoU 11 % with running statistics vs 51 % with batch statistics, docs/znet.md).
    ``share_bn: false`` keeps the conv shared and gives each application its own BatchNorm
    (per-step statistics, as recurrent batch normalisation does).
    """

    def __init__(self, width: int = 6, n: int = 4, share_weights: bool = True, share_bn: bool = True):
        super().__init__()
        self.stem = cbg(3, width, 3)
        self.n = n
        self.share_weights = share_weights
        if share_weights:
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(1 if share_bn else n))
        else:
            self.blocks = nn.ModuleList(cbg(width, width, 3) for _ in range(n))
        self.out_channels = width * (n + 1)

    def step(self, a: torch.Tensor, i: int) -> torch.Tensor:
        """The i-th application of f (0-based)."""
        if not self.share_weights:
            return self.blocks[i](a)
        return F.relu(self.norms[i % len(self.norms)](self.conv(a)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        outs = [a]
        for i in range(self.n):
            a = self.step(a, i)
            outs.append(a)
        return torch.cat(outs, 1)


class ResConv(nn.Module):
    """Concat block: ``cat[x, 1x1 -> 3x3 -> 1x1 (x)]`` from ``cin`` to ``cout`` channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout <= cin:
            raise ValueError(f"ResConv: cout ({cout}) must exceed cin ({cin}) (the block concatenates)")
        h = max(cin // 2, 1)
        self.body = nn.Sequential(cbg(cin, h, 1), cbg(h, h, 3), cbg(h, cout - cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class ImageGate(nn.Module):
    """Channel attention #1: weights for the Scope features computed from the input image."""

    def __init__(self, channels: int, reduction: int, compat: str):
        super().__init__()
        self.proj = cbg(3, channels, 1)
        hidden = max(channels // reduction, 1)
        if compat == "original":
            self.mlp = nn.Sequential(lbg(channels, hidden), lbg(hidden, channels))
        else:
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        g = torch.flatten(F.adaptive_avg_pool2d(self.proj(img), 1), 1)
        return self.mlp(g)[:, :, None, None]


class BottleneckGate(nn.Module):
    """Channel attention #2: decoder-channel weights from the pooled bottleneck."""

    def __init__(self, cin: int, cout: int, compat: str):
        super().__init__()
        self.mlp = lbg(cin, cout) if compat == "original" else nn.Sequential(nn.Linear(cin, cout), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))[:, :, None, None]


@MODELS.register()
class ZNet(SegmentorBase):
    """Args:
        num_classes: outputs incl. background (default: 1 + the dataset's classes, else 2).
        classes: the dataset's defect class names (filled in by the trainer).
        compat: ``fixed`` (default) or ``original`` (see the module docstring).
        share_weights: one Scope block applied four times (the original) or four blocks.
        scope_width: channels of the stem / Scope block (6; the Scope output is 5x that).
        widths: encoder widths after the first conv and each Res block (32, 64, 128, 256).
        reduction: gate-1 reduction ratio (30 -> 5 -> 30 is 6).
        head_channels: decoder output channels gated by attention #2 (8).
        loss: ``ce`` (the original's loss), ``dice`` or ``ce+dice``.
        class_weights: per-class weights (background first) of CE and Dice.
        dice_weight: factor of ``loss_dice``.
        ignore_index: mask value left out of losses (255).
        aux_head: optional image-level head on the bottleneck (:class:`AuxHeadConfig`).
        keep_probs: keep the (C, H, W) softmax in each result (memory!).
    """

    def __init__(self, num_classes: int | None = None, classes: list[str] | None = None,
                 compat: str = "fixed", share_weights: bool = True, scope_width: int = 6,
                 widths: list[int] = (32, 64, 128, 256), reduction: int = 6, head_channels: int = 8,
                 loss: str = "ce", class_weights: list[float] | None = None, dice_weight: float = 1.0,
                 ignore_index: int = 255, aux_head: AuxHeadConfig | dict | None = None,
                 keep_probs: bool = False):
        super().__init__()
        if compat not in COMPAT:
            raise ValueError(f"ZNet: model.compat must be one of {COMPAT}, got {compat!r}")
        if len(widths) != 4:
            raise ValueError(f"ZNet: model.widths needs 4 values (encoder stages), got {list(widths)}")
        num_classes = resolve_num_classes("ZNet", num_classes, classes)
        self.compat = compat
        c1, c2, c3, c4 = (int(c) for c in widths)
        self.scope = ScopeConv(scope_width, 4, share_weights, share_bn=compat == "original")
        c0 = self.scope.out_channels                                    # 30
        self.gate1 = ImageGate(c0, reduction, compat)
        self.enc1 = cbg(c0, c1, 5)
        self.enc2 = ResConv(c1, c2)
        self.enc3 = ResConv(c2, c3)
        self.enc4 = ResConv(c3, c4)
        self.bottleneck = cbg(c4, c4, 5)
        self.up1, self.dec1 = dbg(c4, c3), cbg(2 * c3, c4, 5)           # 256->128, cat 256 -> 256
        self.up2, self.dec2 = dbg(c4, c2), cbg(2 * c2, 2 * c2, 5)       # 256->64, cat 128 -> 128
        self.up3, self.dec3 = dbg(2 * c2, c1), cbg(2 * c1, 2 * c1, 5)   # 128->32, cat 64 -> 64
        up4 = c1 // 2                                                   # 16
        self.up4 = dbg(2 * c1, up4)
        self.dec4 = nn.Sequential(cbg(up4 + c0, c1, 3), cbg(c1, head_channels, 3))  # 46 -> 32 -> 8
        self.gate2 = BottleneckGate(c4, head_channels, compat)
        last = (cbg(head_channels, num_classes, 3) if compat == "original"
                else nn.Conv2d(head_channels, num_classes, 3, padding=1))
        self.head = nn.Sequential(cbg(head_channels, head_channels, 3), last)
        self._init_common("ZNet", num_classes, loss, class_weights, ignore_index, dice_weight,
                          aux_head, c4, keep_probs)

    def encode(self, img: torch.Tensor):
        x0 = self.scope(img) * self.gate1(img)
        x1 = F.max_pool2d(self.enc1(x0), 2)
        x2 = F.max_pool2d(self.enc2(x1), 2)
        x3 = F.max_pool2d(self.enc3(x2), 2)
        x4 = self.bottleneck(F.max_pool2d(self.enc4(x3), 2))
        return [x0, x1, x2, x3], x4

    def decode(self, skips, x4: torch.Tensor) -> torch.Tensor:
        x0, x1, x2, x3 = skips
        d = self.dec1(torch.cat([self.up1(x4), x3], 1))
        d = self.dec2(torch.cat([self.up2(d), x2], 1))
        d = self.dec3(torch.cat([self.up3(d), x1], 1))
        d = self.dec4(torch.cat([self.up4(d), x0], 1))
        return self.head(d * self.gate2(x4))
