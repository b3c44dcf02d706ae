"""What ZNet and UNet share: the train/predict contract, the losses, the optional image head.

A segmenter subclass defines ``encode(images) -> (skips, bottleneck)`` and
``decode(skips, bottleneck) -> logits`` (B, num_classes, H, W); this base class

- pads the images to a multiple of ``size_divisor`` (bottom/right, zeros) and crops the
  logits back, so any input size works;
- ``forward(batch)`` (train mode): ``loss_ce`` / ``loss_dice`` on ``batch['mask']``
  (class-index: 0 background, k+1 = ``classes[k]``; 255 ignored) and, with an image head,
  ``loss_aux`` (cross-entropy on ``batch['is_defective']``, times ``aux_head.weight``);
- ``predict(batch)``: one :class:`~defectkit.structures.SegmentationResult` per image,
  mask in ORIGINAL pixels (logits cropped to the un-padded image, bilinearly resized to
  ``meta['orig_size']``, then arg-max).

The image head follows segmentation_models.pytorch's ``aux_params``: global pooling of the
bottleneck -> dropout -> linear to 2 logits (normal, defective). With ``gate_thr`` set,
``predict`` gates like DefectNet: images with P(defective) <= gate_thr get an all-background
mask and the decoder runs only on the others.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import parse_options
from ...structures import SegmentationResult
from ..base import BaseModel
from ..class_weights import register_class_weights
from .losses import LOSS_TYPES, segmentation_losses


@dataclass
class AuxHeadConfig:
    """``model.aux_head`` of ZNet/UNet (null: no image head)."""
    pooling: str = "avg"            # avg | max (global pooling of the bottleneck)
    dropout: float = 0.0
    weight: float = 0.4             # loss_aux = weight * CE(image logits, is_defective)
    gate_thr: float | None = None   # predict: P(defective) <= gate_thr -> empty mask, decoder skipped

    def __post_init__(self):
        if self.pooling not in ("avg", "max"):
            raise ValueError(f"model.aux_head.pooling: must be 'avg' or 'max', got {self.pooling!r}")

    @classmethod
    def parse(cls, value: "AuxHeadConfig | dict | None") -> "AuxHeadConfig | None":
        """``model.aux_head`` (a dict, an ``AuxHeadConfig`` or None) as an ``AuxHeadConfig``;
        called once, by ``SegmentorBase``. Errors name ``model.aux_head``."""
        return parse_options(cls, value, "model.aux_head")


class AuxHead(nn.Module):
    """Global pooling -> dropout -> Linear(channels, 2): normal/defective logits."""

    def __init__(self, channels: int, cfg: AuxHeadConfig):
        super().__init__()
        self.pooling = cfg.pooling
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.adaptive_avg_pool2d if self.pooling == "avg" else F.adaptive_max_pool2d
        return self.fc(self.dropout(torch.flatten(pool(x, 1), 1)))


def resolve_num_classes(name: str, num_classes: int | None, classes: list[str] | None) -> int:
    """Outputs = background + one per defect class (``classes`` from the dataset)."""
    if num_classes is None:
        num_classes = 1 + len(classes) if classes is not None else 2
    if num_classes < 2:
        raise ValueError(f"{name}: num_classes must be >= 2 (background + defect classes), got {num_classes}")
    if classes is not None and num_classes != 1 + len(classes):
        raise ValueError(f"{name}: num_classes {num_classes} does not match the {len(classes)} "
                         f"dataset classes {list(classes)} (+ background)")
    return num_classes


class SegmentorBase(BaseModel):
    size_divisor: int = 16

    def _init_common(self, name: str, num_classes: int, loss: str, class_weights, ignore_index: int,
                     dice_weight: float, aux_head, bottleneck_channels: int, keep_probs: bool) -> None:
        if loss not in LOSS_TYPES:
            raise ValueError(f"{name}: model.loss must be one of {LOSS_TYPES}, got {loss!r}")
        self.num_classes = num_classes
        self.loss = loss
        self.ignore_index = int(ignore_index)
        self.dice_weight = float(dice_weight)
        self.keep_probs = bool(keep_probs)
        register_class_weights(self, class_weights, num_classes, f"{name}: model.class_weights (background first)")
        self.aux_cfg = AuxHeadConfig.parse(aux_head)
        self.aux_head = AuxHead(bottleneck_channels, self.aux_cfg) if self.aux_cfg else None

    # --------------------------------------------------------------- to override
    def encode(self, images: torch.Tensor):
        raise NotImplementedError

    def decode(self, skips, bottleneck: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------- helpers
    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        return F.pad(images, (0, pw, 0, ph)) if ph or pw else images

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> pixel logits (B, num_classes, H, W) and image logits (B, 2) or None."""
        h, w = images.shape[-2:]
        skips, bottleneck = self.encode(self._pad(images))
        aux = self.aux_head(bottleneck) if self.aux_head is not None else None
        return self.decode(skips, bottleneck)[..., :h, :w], aux

    def _target(self, batch: dict, device: torch.device) -> torch.Tensor:
        if "mask" not in batch:
            raise KeyError(f"{type(self).__name__}: the batch has no 'mask' (a segmentation dataset "
                           f"such as LabelMeDataset or MaskFolderDataset is needed for training)")
        y = torch.as_tensor(batch["mask"]).to(device=device, dtype=torch.long)
        valid = y[y != self.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.num_classes):
            raise ValueError(f"{type(self).__name__}: mask value {int(valid.max())} is outside "
                             f"0..{self.num_classes - 1}; check model.num_classes / the dataset classes")
        return y

    # -------------------------------------------------------------- the contract
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["image"]
        target = self._target(batch, images.device)
        logits, aux = self.logits(images)
        out = segmentation_losses(logits, target, self.loss, self.class_weights, self.ignore_index,
                                  self.dice_weight)
        if aux is not None:
            if "is_defective" not in batch:
                raise KeyError(f"{type(self).__name__}: model.aux_head needs batch['is_defective']")
            y = torch.as_tensor(batch["is_defective"]).to(images.device, torch.long)
            out["loss_aux"] = self.aux_cfg.weight * F.cross_entropy(aux.float(), y)
        with torch.no_grad():
            pred = logits.argmax(1)
            valid = target != self.ignore_index
            out["pix_acc"] = ((pred == target) & valid).sum().float() / valid.sum().clamp(min=1)
        return out

    @torch.no_grad()
    def predict(self, batch: dict) -> list[SegmentationResult]:
        images = batch["image"]
        n, (h, w) = images.shape[0], images.shape[-2:]
        skips, bottleneck = self.encode(self._pad(images))
        scores = self.aux_head(bottleneck).float().softmax(1) if self.aux_head is not None else None
        keep = torch.ones(n, dtype=torch.bool, device=images.device)
        if scores is not None and self.aux_cfg.gate_thr is not None:
            keep = scores[:, 1] > self.aux_cfg.gate_thr
        logits = None
        if bool(keep.any()):
            if bool(keep.all()):
                logits = self.decode(skips, bottleneck)
            else:
                idx = keep.nonzero().flatten()
                logits = self.decode([s[idx] for s in skips], bottleneck[idx])
            logits = logits[..., :h, :w].float()
        sizes = batch.get("image_sizes") or [(h, w)] * n
        metas = batch.get("meta") or [{}] * n
        results, j = [], 0
        for i in range(n):
            oh, ow = metas[i].get("orig_size") or sizes[i]
            s = scores[i].cpu() if scores is not None else None
            if not keep[i]:
                results.append(SegmentationResult(mask=torch.zeros(int(oh), int(ow), dtype=torch.int64),
                                                  image_scores=s, gated=True))
                continue
            ih, iw = sizes[i]
            lg = logits[j:j + 1, :, :ih, :iw]
            j += 1
            if (ih, iw) != (oh, ow):
                lg = F.interpolate(lg, size=(int(oh), int(ow)), mode="bilinear", align_corners=False)
            probs = lg[0].softmax(0)
            results.append(SegmentationResult(mask=probs.argmax(0).cpu(),
                                              probs=probs.cpu() if self.keep_probs else None,
                                              image_scores=s))
        return results
