"""The two-stage detector every R-CNN here is: parts in, losses and gated predictions out.

``TwoStageDetector(backbone, fpn, rpn, roi_heads, classes, ...)`` takes the built parts
(torchvision's ``FasterRCNN(backbone, rpn, roi_heads)`` style) and owns what every two-stage model here has: the optional
DefectNet gate on C5 (``defectnet.py``), the train step that drops normal images from the
detection branch (or, with ``normal_negatives: true``, keeps them as RPN / RoI negatives),
batched gated inference and the rescaling of boxes to original pixels. The detectors
(``faster_rcnn.py``, ``cascade_rcnn.py``, one file each) build the parts from their flat
config keys, RoI heads included (``FasterRoIHead``, ``CascadeRoIHeads``).

Conventions: dataset labels are 0-based over the defect classes; inside the heads
0 is background and class ``c`` is ``c + 1`` (torchvision's layout). Images arrive
normalised and padded by ``collate`` with ``image_sizes``; there is no
GeneralizedRCNNTransform.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from ...structures import DetectionResult
from ..backbones import Backbone
from ..base import BaseModel, Progress
from .defectnet import GateConfig, GateHead, gate_weight
from .rcnn_parts import FEATURE_NAMES, empty_result, rescale_boxes


def build_gate_head(backbone: Backbone, gate_cfg: GateConfig | None) -> GateHead | None:
    """The DefectNet gate on C5 for parsed gate options (None: no gate)."""
    return GateHead(backbone.out_channels[-1], gate_cfg.pool) if gate_cfg is not None else None


class TwoStageDetector(BaseModel):
    """Backbone + FPN + RPN (+ DefectNet gate) + RoI heads, all built parts.

    Args:
        backbone / fpn / rpn: the built parts (``rcnn_parts.build_backbone_fpn_rpn``);
            ``backbone(images)`` returns C2..C5 (``layer1``..``layer4``).
        roi_heads: the built RoI head(s): a module with ``losses`` / ``predict`` /
            ``loss_keys`` / ``acc_keys`` and a class attribute ``attr``, the attribute it is
            kept under (``roi_head``, ``stages``: the state-dict keys of the checkpoints).
        classes: the defect class names (``rcnn_parts.detector_classes``).
        score_thr, nms_iou, max_per_img: test-time filtering of ``roi_predict``.
        gate: DefectNet gate options (``GateConfig`` or its dict; parsed here, once), or
            None for the plain detector.
        normal_negatives: see ``CascadeRCNN``.
        gate_head: a built ``GateHead`` (the detectors build it before the RoI heads, so a
            seeded build gives the same weights as before); None: built here from ``gate``.
    """

    def __init__(self, backbone: Backbone, fpn: FeaturePyramidNetwork, rpn: RegionProposalNetwork,
                 roi_heads: nn.Module, classes: list[str], score_thr: float = 0.05, nms_iou: float = 0.5,
                 max_per_img: int = 100, gate: GateConfig | dict | None = None, normal_negatives: bool = False,
                 gate_head: GateHead | None = None):
        super().__init__()
        self.num_classes = len(classes)
        self.classes = list(classes)
        self.score_thr, self.nms_iou, self.max_per_img = float(score_thr), float(nms_iou), int(max_per_img)
        self.gate_cfg = GateConfig.parse(gate)          # the one place the gate options are parsed
        # normal images (no defect box) also train the RPN and RoI heads, as negatives only
        # (mmdet filter_empty_gt=False, torchvision empty targets); ``gate.normal_negatives``
        # is the older spelling of the same switch
        self.normal_negatives = bool(normal_negatives) or bool(self.gate_cfg is not None
                                                               and self.gate_cfg.normal_negatives)
        self.backbone, self.fpn, self.rpn = backbone, fpn, rpn
        self.roi_pool = MultiScaleRoIAlign(list(FEATURE_NAMES), 7, 2)
        self.gate = (gate_head if gate_head is not None else build_gate_head(backbone, self.gate_cfg)) \
            if self.gate_cfg is not None else None
        self._roi_attr = roi_heads.attr
        setattr(self, self._roi_attr, roi_heads)      # registered after the gate: key order as before
        self.epoch, self.iteration = 0, 0
        self.reset_gate_stats()

    # ------------------------------------------------------------------ progress / stats
    def train_step_begin(self, progress: Progress) -> None:
        """The engine's call before every training step: the gate-loss schedule's position
        (``progress.epoch``, 0-based, and ``progress.iter``, optimizer steps done)."""
        self.epoch, self.iteration = int(progress.epoch), int(progress.iter)

    def gate_loss_weight(self) -> float:
        if self.gate_cfg is None:
            return 0.0
        return gate_weight(self.gate_cfg, self.iteration if self.gate_cfg.by == "iter" else self.epoch)

    def reset_gate_stats(self) -> None:
        self._seen, self._passed = 0, 0

    def gate_stats(self) -> dict:
        """Images seen by ``predict`` and images that went through the detection heads."""
        return {"images": self._seen, "passed": self._passed,
                "pass_rate": self._passed / self._seen if self._seen else float("nan")}

    # ------------------------------------------------------------------ building blocks
    def _pyramid(self, feats: "OrderedDict[str, torch.Tensor]", idx: torch.Tensor | None = None) -> "OrderedDict[str, torch.Tensor]":
        """FPN on backbone features (optionally only the images ``idx``)."""
        c = OrderedDict((name, f if idx is None else f[idx]) for name, f in zip(FEATURE_NAMES, feats.values()))
        return self.fpn(c)

    @property
    def roi_heads(self) -> nn.Module:
        """The RoI head(s) passed in (kept as ``self.<roi_heads.attr>``)."""
        return getattr(self, self._roi_attr)

    def roi_losses(self, features, proposals, image_sizes, gt_boxes, gt_labels, **targets) -> dict:
        """The RoI heads' losses; ``targets``: the extra per-image targets of
        :meth:`roi_targets` (none for box-only heads), passed on as keywords."""
        return self.roi_heads.losses(self.roi_pool, features, proposals, image_sizes, gt_boxes, gt_labels,
                                     **targets)

    def roi_targets(self, batch: dict, keep: list[int], device: torch.device) -> dict:
        """Extra per-image training targets of the RoI heads beyond boxes and labels, for the
        images ``keep`` of ``batch`` (e.g. Mask R-CNN's ``gt_masks``); none here."""
        return {}

    def make_result(self, det: tuple | None, gate_score: float | None, meta: dict | None):
        """The result of one image from its ``roi_predict`` entry (boxes, scores, labels in
        input pixels), or the empty gated result when ``det`` is None; boxes are rescaled to
        original pixels."""
        if det is None:
            return empty_result(gate_score, gated=True)
        boxes, det_scores, labels = det
        return DetectionResult(boxes=rescale_boxes(boxes, meta).float().cpu(),
                               scores=det_scores.float().cpu(), labels=labels.long().cpu(),
                               gate_score=gate_score, gated=False)

    def roi_predict(self, features, proposals, image_sizes) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.roi_heads.predict(self.roi_pool, features, proposals, image_sizes,
                                      self.score_thr, self.nms_iou, self.max_per_img)

    def _zero_losses(self, ref: torch.Tensor) -> dict:
        """All detection-loss keys, zero but attached to every detection parameter (DDP/backward)."""
        params = [p for n, p in self.named_parameters()
                  if p.requires_grad and not n.startswith(("backbone.", "gate."))]
        zero = sum((p.sum() * 0.0 for p in params), ref.new_zeros(()))
        out = {k: zero for k in self.loss_keys()}
        out.update({k: ref.new_tensor(100.0).detach() for k in self.acc_keys()})   # as mmdet: acc 1
        return out

    def loss_keys(self) -> list[str]:
        """Every detection-loss key (the same in every step, as DDP logging needs)."""
        return ["loss_rpn_cls", "loss_rpn_bbox"] + self.roi_heads.loss_keys()

    def acc_keys(self) -> list[str]:
        return self.roi_heads.acc_keys()

    # -------------------------------------------------------------------- the contract
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        images: torch.Tensor = batch["image"]
        sizes = [tuple(int(v) for v in s) for s in batch.get("image_sizes", [images.shape[-2:]] * images.shape[0])]
        gt_boxes = [torch.as_tensor(b, dtype=torch.float32, device=images.device).reshape(-1, 4) for b in batch["boxes"]]
        gt_labels = [torch.as_tensor(l, dtype=torch.long, device=images.device).reshape(-1) for l in batch["labels"]]
        has_boxes = torch.tensor([b.shape[0] > 0 for b in gt_boxes], device=images.device)
        det_idx = (torch.arange(len(gt_boxes), device=images.device) if self.normal_negatives
                   else torch.where(has_boxes)[0])
        losses: dict[str, torch.Tensor] = {}

        if self.gate is not None:
            feats = self.backbone(images)           # every image trains the gate
            y = batch.get("is_defective")
            y = has_boxes.long() if y is None else torch.as_tensor(y, device=images.device).long()
            c5 = feats["layer4"].detach() if self.gate_cfg.detach else feats["layer4"]
            logits = self.gate(c5)
            losses["loss_gate"] = F.cross_entropy(logits.float(), y) * self.gate_loss_weight()
            losses["acc_gate"] = (logits.detach().argmax(1) == y).float().mean() * 100
            if det_idx.numel() == 0:
                losses.update(self._zero_losses(losses["loss_gate"]))
                return losses
            pyramid = self._pyramid(feats, det_idx if det_idx.numel() < images.shape[0] else None)
        else:               # one-model: normal images are dropped up front unless normal_negatives
            if det_idx.numel() == 0:
                ref = sum((p.sum() * 0.0 for p in self.backbone.parameters() if p.requires_grad), images.new_zeros(()))
                return {k: (v + ref if k.startswith("loss") else v) for k, v in self._zero_losses(images).items()}
            sub = images if det_idx.numel() == images.shape[0] else images[det_idx]
            pyramid = self._pyramid(self.backbone(sub))

        keep = det_idx.tolist()
        sub_sizes = [sizes[i] for i in keep]
        boxes = [gt_boxes[i] for i in keep]
        labels = [gt_labels[i] for i in keep]
        image_list = ImageList(images[det_idx] if len(keep) < images.shape[0] else images, sub_sizes)
        proposals, rpn_losses = self.rpn(image_list, pyramid, [{"boxes": b} for b in boxes])
        losses["loss_rpn_cls"] = rpn_losses["loss_objectness"]
        losses["loss_rpn_bbox"] = rpn_losses["loss_rpn_box_reg"]
        losses.update(self.roi_losses(pyramid, proposals, sub_sizes, boxes, labels,
                                      **self.roi_targets(batch, keep, images.device)))
        return losses

    @torch.no_grad()
    def predict(self, batch: dict) -> list[DetectionResult]:
        """One result per image (:meth:`make_result`: a DetectionResult here), boxes in
        original pixels. Gated images skip FPN, RPN and the RoI heads and come back empty
        with ``gated=True``."""
        images: torch.Tensor = batch["image"]
        n = images.shape[0]
        sizes = [tuple(int(v) for v in s) for s in batch.get("image_sizes", [images.shape[-2:]] * n)]
        metas = batch.get("meta") or [None] * n
        feats = self.backbone(images)
        scores = [None] * n
        passed = list(range(n))
        if self.gate is not None:
            p = self.gate(feats["layer4"]).float().softmax(1)[:, 1]
            scores = p.cpu().tolist()
            if self.gate_cfg.enabled:
                passed = torch.where(p > self.gate_cfg.threshold)[0].tolist()
        self._seen += n
        self._passed += len(passed)
        results = [self.make_result(None, scores[i], metas[i]) for i in range(n)]
        if not passed:
            return results
        idx = None if len(passed) == n else torch.tensor(passed, device=images.device)
        pyramid = self._pyramid(feats, idx)
        sub_sizes = [sizes[i] for i in passed]
        image_list = ImageList(images if idx is None else images[idx], sub_sizes)
        proposals, _ = self.rpn(image_list, pyramid)
        dets = self.roi_predict(pyramid, proposals, sub_sizes)
        for i, det in zip(passed, dets):
            results[i] = self.make_result(det, scores[i], metas[i])
        return results
