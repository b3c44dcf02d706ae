"""Parts the two-stage detectors (Faster / Cascade R-CNN) are assembled from, on torchvision ops.

- ``build_backbone_fpn_rpn``: the backbone (C2..C5) -> FPN (P2..P6, ``LastLevelMaxPool``)
  -> RPN triple from the flat config keys every detector shares (written once here);
- ``detector_classes``: the class names from ``classes`` / ``num_classes``;
- ``RoIStage`` (one box head) with ``roi_stage_losses`` and ``postprocess`` (per-class NMS);
- ``empty_result`` / ``rescale_boxes``.

The detector that runs them is ``two_stage.TwoStageDetector`` (it takes the built parts,
as torchvision's ``GeneralizedRCNN(backbone, rpn, roi_heads, transform)``); each detector
file (``faster_rcnn.py``, ``cascade_rcnn.py``) maps its config keys to parts.

Conventions: dataset labels are 0-based over the defect classes; inside the heads
0 is background and class ``c`` is ``c + 1`` (torchvision's layout). Images arrive
normalised and padded by ``collate`` with ``image_sizes``; there is no
GeneralizedRCNNTransform.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...structures import DetectionResult
from ..backbones import Backbone, build_backbone

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


# ------------------------------------------------------------------ backbone/FPN/RPN
def detector_classes(name: str, classes: list[str] | None, num_classes: int | None) -> list[str]:
    """The defect class names (``classes``, or ``'0'..`` for ``num_classes``); ValueError
    naming ``model.num_classes`` / ``model.classes`` when neither is set or they disagree."""
    if num_classes is None:
        if classes is None:
            raise ValueError(f"{name}: set model.num_classes or model.classes "
                             f"(the trainer fills in the dataset's classes)")
        num_classes = len(classes)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"{name}: {len(classes)} classes but num_classes={num_classes}")
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    return list(classes) if classes is not None else [str(i) for i in range(num_classes)]


def build_backbone_fpn_rpn(backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = 1,
                           norm_eval: bool = True, fpn_channels: int = 256, rpn_train_topn: int = 2000,
                           rpn_test_topn: int = 1000, rpn_nms_iou: float = 0.7,
                           anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                           rpn_iou: tuple[float, float] = (0.7, 0.3),
                           ) -> tuple[Backbone, FeaturePyramidNetwork, RegionProposalNetwork]:
    """(backbone C2..C5, FPN P2..P6 of ``fpn_channels``, RPN) as mmdetection v1's R50-FPN:
    anchors one size per level (``anchor_sizes``, 5 values) x ratios 0.5/1/2, RPN IoU
    ``rpn_iou`` = (positive, negative) 0.7/0.3 (each gt's best anchor is positive too),
    256 anchors per image with 50% positives, ``rpn_train_topn`` / ``rpn_test_topn``
    proposals before and after NMS (IoU ``rpn_nms_iou``). See ``build_backbone`` for the
    backbone arguments. ValueError naming ``anchor_sizes`` or ``rpn_iou``."""
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes: one size per FPN level P2..P6 (5), got {list(anchor_sizes)}")
    pos_iou, neg_iou = (float(v) for v in rpn_iou)
    if not 0.0 <= neg_iou <= pos_iou <= 1.0:
        raise ValueError(f"rpn_iou: (positive, negative) with 0 <= negative <= positive <= 1, got {list(rpn_iou)}")
    body = build_backbone(backbone, pretrained=pretrained, frozen_stages=frozen_stages,
                          norm_eval=norm_eval, out_indices=(1, 2, 3, 4))
    fpn = FeaturePyramidNetwork(list(body.out_channels), fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    rpn = RegionProposalNetwork(
        anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=pos_iou, bg_iou_thresh=neg_iou, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": rpn_train_topn, "testing": rpn_test_topn},
        post_nms_top_n={"training": rpn_train_topn, "testing": rpn_test_topn},
        nms_thresh=rpn_nms_iou)
    return body, fpn, rpn
