"""``DashNet``: the original's severity classifier for thin vertical column-line crops.

Source: ``classification/train/model/dashnet.py`` (research note §2 "Network"): the
InceptionV3 stem with tall 15x3 kernels, then ``mixed0``, global pooling and one linear
layer. ``conv2d_bn`` = conv (no bias) -> BN -> ReLU (torchvision's ``BasicConv2d``; the
original's BN has ``scale=False``, here it has both affine terms: +864 parameters).
Shapes at the deployed 1080 x 18 x 1 input::

    conv 15x3 /(3,1) valid 32        356 x 16 x 32
    conv 15x3 same 32; 15x3 same 64  356 x 16 x 64
    maxpool (15,3) /(5,1)             69 x 14 x 64
    conv 1x1 80; conv 15x3 same 192   69 x 14 x 192
    maxpool (15,3) /(5,2)             11 x  6 x 192
    mixed0 (64 + 64 + 96 + 32)        11 x  6 x 256
    global average pool -> linear N

1.09 M parameters at N = 6 (1,094,246 here). The smallest input that reaches ``mixed0`` is
267 x 7 px (:data:`MIN_HW`). Same contract as ``ImageClassifier``: ``forward`` -> losses on
the batch's ``label`` (``target``), ``predict`` -> ``ClassificationResult``,
``logits(images)``; so it also trains alone on ImageFolder crops (a 3-channel image is
averaged to one channel when ``in_channels`` is 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.inception import BasicConv2d

from ...registry import MODELS
from ...structures import ClassificationResult, class_names_for
from ..base import BaseModel
from ..class_weights import register_class_weights
from .shallownet import Mixed0, _ch

MIN_HW = (267, 7)     # (h, w): the first maxpool must leave >= 15 rows and the second >= 1 column


@MODELS.register()
class DashNet(BaseModel):
    """Args:
        num_classes: grades (outputs); default ``len(classes)``.
        in_channels: 1 (grayscale strips, the original) or 3.
        classes: the grade names (filled in by the trainer from an ImageFolder dataset).
        target: batch key of the label (``label``).
        pool: ``avg`` (the original) or ``max`` global pooling.
        width_mult: channels x this (1 = the original).
        dropout, class_weights, label_smoothing: as ``ImageClassifier``.
    """

    def __init__(self, num_classes: int | None = None, in_channels: int = 1, classes: list[str] | None = None,
                 target: str = "label", pool: str = "avg", width_mult: float = 1.0, dropout: float = 0.0,
                 class_weights: list[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if num_classes is None:
            if classes is None:
                raise ValueError("DashNet: set model.num_classes (or model.classes, the grade names)")
            num_classes = len(classes)
        if num_classes < 2:
            raise ValueError(f"DashNet: num_classes must be >= 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ValueError(f"DashNet: in_channels must be 1 or 3, got {in_channels}")
        if pool not in ("avg", "max"):
            raise ValueError(f"DashNet: pool must be 'avg' or 'max', got {pool!r}")
        self.num_classes, self.in_channels, self.target, self.pool = int(num_classes), in_channels, target, pool
        self.label_smoothing = float(label_smoothing)
        self.class_names = class_names_for(target, self.num_classes, classes)
        c = lambda n: _ch(n, width_mult)  # noqa: E731
        self.features = nn.Sequential(
            BasicConv2d(in_channels, c(32), kernel_size=(15, 3), stride=(3, 1)),
            BasicConv2d(c(32), c(32), kernel_size=(15, 3), padding=(7, 1)),
            BasicConv2d(c(32), c(64), kernel_size=(15, 3), padding=(7, 1)),
            nn.MaxPool2d((15, 3), stride=(5, 1)),
            BasicConv2d(c(64), c(80), kernel_size=1),
            BasicConv2d(c(80), c(192), kernel_size=(15, 3), padding=(7, 1)),
            nn.MaxPool2d((15, 3), stride=(5, 2)))
        self.mixed0 = Mixed0(c(192), width_mult)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.mixed0.out_channels, self.num_classes)
        register_class_weights(self, class_weights, self.num_classes, "model.class_weights")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_channels or 3, H, W) -> (B, num_classes) logits; H x W >= :data:`MIN_HW`."""
        if images.shape[1] != self.in_channels:
            if self.in_channels == 1 and images.shape[1] == 3:
                images = images.mean(1, keepdim=True)
            elif self.in_channels == 3 and images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"DashNet: input has {images.shape[1]} channels, the model takes {self.in_channels}")
        h, w = images.shape[-2:]
        if h < MIN_HW[0] or w < MIN_HW[1]:
            raise ValueError(f"DashNet: input {h}x{w} (h x w) is smaller than the minimum "
                             f"{MIN_HW[0]}x{MIN_HW[1]} its 15x3 kernels and pools need (the original uses 1080x18)")
        x = self.mixed0(self.features(images))
        pool = F.adaptive_avg_pool2d if self.pool == "avg" else F.adaptive_max_pool2d
        return self.fc(self.dropout(torch.flatten(pool(x, 1), 1)))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy ``loss_cls`` on ``batch[target]`` and the batch accuracy ``acc`` (0..1)."""
        if self.target not in batch:
            raise KeyError(f"DashNet(target='{self.target}'): the batch has no '{self.target}' key")
        y = torch.as_tensor(batch[self.target]).to(device=batch["image"].device, dtype=torch.long)
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"DashNet: '{self.target}' labels {y.unique().tolist()} outside 0..{self.num_classes - 1}")
        logits = self.logits(batch["image"])
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return {"loss_cls": loss, "acc": (logits.detach().argmax(1) == y).float().mean()}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[ClassificationResult]:
        scores = self.logits(batch["image"]).float().softmax(1).cpu()
        return [ClassificationResult(label=int(s.argmax()), scores=s) for s in scores]
