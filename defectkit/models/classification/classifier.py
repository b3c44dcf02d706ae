"""Image-level classifier: backbone -> global pooling (average, or max) -> (dropout) -> linear.

With ``backbone: resnet50, pretrained: torchvision://resnet50, num_classes: 2`` this is the
DefectNet "two-model" first stage (torchvision ResNet-50 with ``fc -> Linear(2048, 2)``,
0 = normal, 1 = defective); see docs/classifier.md.

The label comes from the batch key named by ``target``: ``is_defective`` (normal vs
defective, any detection/segmentation/anomaly dataset) or ``label`` (ImageFolder-style
classes, severity grades). ``batch["image"]`` is already normalised by the pipeline.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ...structures import ClassificationResult, class_names_for
from ..backbones import build_backbone
from ..base import BaseModel
from ..class_weights import register_class_weights


@MODELS.register()
class ImageClassifier(BaseModel):
    """Args:
        backbone: a name for ``build_backbone`` (resnet18/34/50/101, wide_resnet50_2, small_cnn).
        pretrained: ``torchvision://resnet50``, a local .pth, or null (random init).
        num_classes: outputs; default 2 for ``target: is_defective``, else the number of
            ``classes`` (the dataset's class names, filled in by the trainer).
        target: batch key with the image label (``is_defective`` or ``label``).
        frozen_stages: backbone stages kept frozen (-1 none, 0 stem, 1 stem+layer1, ...).
        norm_eval: keep every BatchNorm in eval mode while training (small batches).
        dropout: dropout before the final linear layer.
        class_weights: per-class weights of the cross-entropy (``num_classes`` floats).
        label_smoothing: cross-entropy label smoothing.
        classes: optional class names (for ``target: label``; ignored for ``is_defective``).
        pool: ``avg`` (global average pooling, as torchvision's ResNet and the DefectNet
            classifier) or ``max`` (global max pooling: one small defect anywhere in a large
            image is not averaged away; a better choice when training from scratch).
    """

    def __init__(self, backbone: str = "resnet18", pretrained: str | None = None,
                 num_classes: int | None = None, target: str = "is_defective",
                 frozen_stages: int = -1, norm_eval: bool = False, dropout: float = 0.0,
                 class_weights: list[float] | None = None, label_smoothing: float = 0.0,
                 classes: list[str] | None = None, pool: str = "avg"):
        super().__init__()
        if num_classes is None:
            if target != "is_defective" and classes is None:
                raise ValueError(f"ImageClassifier(target='{target}'): set model.num_classes "
                                 f"(no dataset classes to count)")
            num_classes = 2 if target == "is_defective" else len(classes)
        if target == "is_defective" and num_classes != 2:
            raise ValueError(f"ImageClassifier: target 'is_defective' is 0/1, so num_classes must "
                             f"be 2, got {num_classes}")
        if pool not in ("avg", "max"):
            raise ValueError(f"ImageClassifier: pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        if num_classes < 2:
            raise ValueError(f"ImageClassifier: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.target = target
        self.label_smoothing = float(label_smoothing)
        self.class_names = class_names_for(target, num_classes, classes)
        self.backbone = build_backbone(backbone, pretrained=pretrained, frozen_stages=frozen_stages,
                                       norm_eval=norm_eval, out_indices=(4,))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.backbone.out_channels[-1], num_classes)
        register_class_weights(self, class_weights, num_classes, "model.class_weights")

    # ------------------------------------------------------------------ building blocks
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes) logits."""
        feat = self.backbone(images)["layer4"]
        pool = F.adaptive_avg_pool2d if self.pool == "avg" else F.adaptive_max_pool2d
        feat = torch.flatten(pool(feat, 1), 1)
        return self.fc(self.dropout(feat))

    def _labels(self, batch: dict, device: torch.device) -> torch.Tensor:
        if self.target not in batch:
            keys = ", ".join(k for k in batch if k in ("is_defective", "label", "grade")) or "none"
            raise KeyError(f"ImageClassifier(target='{self.target}'): the batch has no "
                           f"'{self.target}' key (image-label keys present: {keys}); "
                           f"set model.target accordingly")
        y = torch.as_tensor(batch[self.target]).to(device=device, dtype=torch.long)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"ImageClassifier: '{self.target}' label {hi if hi >= self.num_classes else lo} "
                             f"is outside 0..{self.num_classes - 1}; check model.num_classes")
        return y

    # -------------------------------------------------------------------- the contract
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy loss ``loss_cls`` plus the batch accuracy ``acc`` (logged only)."""
        y = self._labels(batch, batch["image"].device)
        logits = self.logits(batch["image"])
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss_cls": loss, "acc": acc}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[ClassificationResult]:
        """One ClassificationResult per image (softmax scores on CPU). The caller sets eval()."""
        scores = self.logits(batch["image"]).float().softmax(1).cpu()
        labels = scores.argmax(1).tolist()
        return [ClassificationResult(label=int(l), scores=s) for l, s in zip(labels, scores)]
