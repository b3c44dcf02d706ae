"""Shared parts of the two-stage detectors (Faster / Cascade R-CNN) on torchvision ops.

``TwoStageDetector`` holds what every two-stage model here has: backbone (C2..C5) ->
FPN (P2..P6, ``LastLevelMaxPool``) -> RPN, the optional DefectNet gate on C5
(``defectnet.py``), the train step that drops normal images from the detection branch
(or, with ``normal_negatives: true``, keeps them as RPN / RoI negatives),
batched gated inference and the rescaling of boxes to original pixels. Subclasses
(``cascade_rcnn.py``, ``faster_rcnn.py``) add the RoI heads, built from ``RoIStage``.

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
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...structures import DetectionResult
from ..backbones import build_backbone
from ..base import BaseModel, Progress
from .defectnet import GateConfig, GateHead, gate_weight

FEATURE_NAMES = ("0", "1", "2", "3")   # P2..P5 keys of the FPN output ("pool" = P6)


# ------------------------------------------------------------------------- RoI stage
class RoIStage(nn.Module):
    """One box head: sampling + targets, TwoMLPHead -> (cls, box) predictor, loss, decoding.

    ``iou``: positive/negative IoU threshold of the assigner (pos = neg = min_pos, as mmdet);
    ``class_agnostic``: one box per RoI (cascade) or one per class (Faster R-CNN).
    """

    def __init__(self, in_channels: int, num_classes: int, iou: float = 0.5,
                 weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 class_agnostic: bool = False, fc_dim: int = 1024, roi_size: int = 7,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25):
        super().__init__()
        self.num_classes = num_classes          # defect classes, background excluded
        self.class_agnostic = class_agnostic
        self.box_coder = det_utils.BoxCoder(tuple(float(w) for w in weights))
        self.matcher = det_utils.Matcher(iou, iou, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.head = TwoMLPHead(in_channels * roi_size * roi_size, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 if class_agnostic else 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    # -- training targets
    def sample(self, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor],
               gt_labels: list[torch.Tensor]):
        """Add the gt boxes to the proposals, assign and sample. Returns per image
        (rois, labels (0 = background), regression targets, is_gt mask)."""
        out_rois, out_labels, out_targets, out_is_gt = [], [], [], []
        for props, boxes, labels in zip(proposals, gt_boxes, gt_labels):
            props = props.detach()
            rois = torch.cat([props, boxes.to(props.dtype)])
            is_gt = torch.zeros(rois.shape[0], dtype=torch.bool, device=rois.device)
            is_gt[props.shape[0]:] = True
            if boxes.numel() == 0:   # a normal image used as negatives
                idx = torch.full((rois.shape[0],), -1, dtype=torch.long, device=rois.device)
                roi_labels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
                matched = torch.zeros_like(rois)
            else:
                idx = self.matcher(box_iou(boxes, rois))
                clamped = idx.clamp(min=0)
                roi_labels = (labels[clamped] + 1).to(torch.long)
                roi_labels[idx == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
                roi_labels[idx == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
                matched = boxes[clamped]
            pos, neg = self.sampler([roi_labels])
            keep = torch.where(pos[0] | neg[0])[0]
            out_rois.append(rois[keep])
            out_labels.append(roi_labels[keep])
            out_targets.append(self.box_coder.encode_single(matched[keep], rois[keep]))
            out_is_gt.append(is_gt[keep])
        return out_rois, out_labels, out_targets, out_is_gt

    # -- network
    def forward(self, roi_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.head(roi_feats)
        return self.cls_score(x), self.bbox_pred(x)

    def loss(self, class_logits: torch.Tensor, box_regression: torch.Tensor,
             labels: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss_cls, loss_bbox, acc): CE mean, smooth L1 (beta 1) over positives / num sampled."""
        labels_t = torch.cat(labels)
        targets_t = torch.cat(targets)
        loss_cls = F.cross_entropy(class_logits.float(), labels_t)
        pos = torch.where(labels_t > 0)[0]
        reg = self._select(box_regression, labels_t)
        loss_bbox = F.smooth_l1_loss(reg[pos].float(), targets_t[pos].float(), beta=1.0,
                                     reduction="sum") / max(labels_t.numel(), 1)
        acc = (class_logits.detach().argmax(1) == labels_t).float().mean() * 100
        return loss_cls, loss_bbox, acc

    def _select(self, box_regression: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_agnostic:
            return box_regression
        reg = box_regression.reshape(box_regression.shape[0], -1, 4)
        return reg[torch.arange(reg.shape[0], device=reg.device), labels.clamp(min=0)]

    def decode(self, box_regression: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        """(N, 4) for class-agnostic heads, (N, num_classes + 1, 4) otherwise."""
        boxes = self.box_coder.decode(box_regression.detach(), rois)
        return boxes.squeeze(1) if self.class_agnostic else boxes


def roi_stage_losses(stage: RoIStage, roi_pool: MultiScaleRoIAlign, features: dict,
                     proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                     gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]):
    """Sample, run and score one stage. Returns (loss_cls, loss_bbox, acc, refined rois):
    the refined rois (decoded boxes of the sampled non-gt rois, detached) feed the next
    cascade stage, as mmdet's ``refine_bboxes``."""
    rois, labels, targets, is_gt = stage.sample(proposals, gt_boxes, gt_labels)
    class_logits, box_regression = stage(roi_pool(features, rois, image_sizes))
    loss_cls, loss_bbox, acc = stage.loss(class_logits, box_regression, labels, targets)
    refined = []
    if stage.class_agnostic:
        decoded = stage.decode(box_regression, rois).split([r.shape[0] for r in rois])
        for boxes, gt_mask, size in zip(decoded, is_gt, image_sizes):
            refined.append(clip_boxes_to_image(boxes[~gt_mask], size))
    return loss_cls, loss_bbox, acc, refined


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int],
                score_thr: float, nms_iou: float, max_per_img: int):
    """Per-class detections of one image: boxes (N, 4) or (N, C+1, 4), scores (N, C+1)
    softmax with background at 0 -> (boxes, scores, labels 0-based), NMS per class."""
    num_cls = scores.shape[1] - 1
    if boxes.dim() == 2:
        boxes = boxes[:, None, :].expand(-1, num_cls + 1, 4)
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_size).reshape(-1, num_cls + 1, 4)
    boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
    labels = torch.arange(num_cls, device=scores.device).repeat(boxes.shape[0] // max(num_cls, 1))
    keep = torch.where(scores > score_thr)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]


def empty_result(gate_score: float | None = None, gated: bool = False) -> DetectionResult:
    return DetectionResult(boxes=torch.zeros((0, 4)), scores=torch.zeros(0),
                           labels=torch.zeros(0, dtype=torch.long), gate_score=gate_score, gated=gated)


def rescale_boxes(boxes: torch.Tensor, meta: dict | None) -> torch.Tensor:
    """Undo the pipeline's resize: divide by ``meta['scale_factor']`` = (sx, sy) = new / original."""
    sx, sy = (meta or {}).get("scale_factor", (1.0, 1.0))
    return boxes / boxes.new_tensor([sx, sy, sx, sy])


# ---------------------------------------------------------------------- the detector
class TwoStageDetector(BaseModel):
    """Backbone + FPN + RPN (+ DefectNet gate); subclasses implement ``roi_losses`` and
    ``roi_predict`` and call ``super().__init__`` first. See the subclass docstrings for
    the arguments."""

    def __init__(self, backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, classes: list[str] | None = None, num_classes: int | None = None,
                 fpn_channels: int = 256, rpn_train_topn: int = 2000, rpn_test_topn: int = 1000,
                 rpn_nms_iou: float = 0.7, anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                 score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 gate: GateConfig | dict | None = None, normal_negatives: bool = False):
        super().__init__()
        if num_classes is None:
            if classes is None:
                raise ValueError(f"{type(self).__name__}: set model.num_classes or model.classes "
                                 f"(the trainer fills in the dataset's classes)")
            num_classes = len(classes)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{type(self).__name__}: {len(classes)} classes but num_classes={num_classes}")
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes: one size per FPN level P2..P6 (5), got {list(anchor_sizes)}")
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.score_thr, self.nms_iou, self.max_per_img = float(score_thr), float(nms_iou), int(max_per_img)
        self.gate_cfg = GateConfig.parse(gate)
        # normal images (no defect box) also train the RPN and RoI heads, as negatives only
        # (mmdet filter_empty_gt=False, torchvision empty targets); ``gate.normal_negatives``
        # is the older spelling of the same switch
        self.normal_negatives = bool(normal_negatives) or bool(self.gate_cfg is not None
                                                               and self.gate_cfg.normal_negatives)

        self.backbone = build_backbone(backbone, pretrained=pretrained, frozen_stages=frozen_stages,
                                       norm_eval=norm_eval, out_indices=(1, 2, 3, 4))
        self.fpn = FeaturePyramidNetwork(list(self.backbone.out_channels), fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": rpn_train_topn, "testing": rpn_test_topn},
            post_nms_top_n={"training": rpn_train_topn, "testing": rpn_test_topn},
            nms_thresh=rpn_nms_iou)
        self.roi_pool = MultiScaleRoIAlign(list(FEATURE_NAMES), 7, 2)
        self.fpn_channels = fpn_channels
        self.gate = GateHead(self.backbone.out_channels[-1], self.gate_cfg.pool) if self.gate_cfg is not None else None
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

    def roi_losses(self, features, proposals, image_sizes, gt_boxes, gt_labels) -> dict:
        raise NotImplementedError

    def roi_predict(self, features, proposals, image_sizes) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

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
        raise NotImplementedError

    def acc_keys(self) -> list[str]:
        return []

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
        losses.update(self.roi_losses(pyramid, proposals, sub_sizes, boxes, labels))
        return losses

    @torch.no_grad()
    def predict(self, batch: dict) -> list[DetectionResult]:
        """One DetectionResult per image, boxes in original pixels. Gated images skip
        FPN, RPN and the RoI heads and come back empty with ``gated=True``."""
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
        results = [empty_result(scores[i], gated=True) for i in range(n)]
        if not passed:
            return results
        idx = None if len(passed) == n else torch.tensor(passed, device=images.device)
        pyramid = self._pyramid(feats, idx)
        sub_sizes = [sizes[i] for i in passed]
        image_list = ImageList(images if idx is None else images[idx], sub_sizes)
        proposals, _ = self.rpn(image_list, pyramid)
        dets = self.roi_predict(pyramid, proposals, sub_sizes)
        for i, (boxes, det_scores, labels) in zip(passed, dets):
            results[i] = DetectionResult(boxes=rescale_boxes(boxes, metas[i]).float().cpu(),
                                         scores=det_scores.float().cpu(), labels=labels.long().cpu(),
                                         gate_score=scores[i], gated=False)
        return results
