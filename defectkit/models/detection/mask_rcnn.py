"""Mask R-CNN (He et al. 2017) on the project's two-stage parts: Faster R-CNN + a mask head.

The box part is ``faster_rcnn.py``'s: ``rcnn_parts.build_backbone_fpn_rpn`` (backbone
C2..C5 -> FPN P2..P6 -> RPN) and one ``RoIStage`` (IoU 0.5, TwoMLPHead, class-specific
regression, 512 RoIs / image with 25% positives, gt boxes added to the proposals), run by
``two_stage.TwoStageDetector`` (which also owns the optional DefectNet gate: a gated image
skips FPN, RPN, the box head AND the mask head). The mask branch is torchvision's:

- ``MultiScaleRoIAlign(['0'..'3'], 14, 2)`` on P2..P5 (level from the box size, as FPN);
- ``MaskRCNNHeads(fpn_channels, [mask_dim] * 4, 1)``: four 3x3 conv + ReLU;
- ``MaskRCNNPredictor(mask_dim, mask_dim, C + 1)``: 2x deconv -> one 28x28 logit map per
  class (background channel unused, torchvision's layout);
- training: ``roi_heads.maskrcnn_loss`` on the POSITIVE sampled RoIs (gt boxes included):
  per-pixel BCE of the gt class's map against the gt instance mask RoI-aligned into the
  RoI (``project_masks_on_boxes``); each positive RoI's gt instance is the one of highest
  IoU with it (the assigner's own choice, recomputed here);
- test: the box head's detections (score_thr, per-class NMS, max_per_img) go through the
  mask head, the predicted class's 28x28 probability is pasted into the ORIGINAL image
  (``paste_masks_in_image``, boxes rescaled by ``meta['scale_factor']`` first, as
  torchvision's transform.postprocess) and thresholded at ``mask_thr`` (0.5).

Targets: ``batch['instance_masks']`` (per image (N, H, W), aligned with ``boxes`` /
``labels``): a dataset with ``with_instances: true`` (``data/instances.py``).
``predict`` returns :class:`~defectkit.structures.InstanceSegmentationResult` (masks
(N, H, W) bool in original pixels; ``semantic_map(score_thr)`` for mIoU). Losses:
``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``loss_mask``, ``acc``
(+ ``loss_gate`` / ``acc_gate``).

Memory note: a result holds N bool masks of the original size (N <= ``max_per_img``), as
torchvision does; lower ``max_per_img`` for very large images.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss, paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, box_iou

from ...registry import MODELS
from ...structures import InstanceSegmentationResult
from .defectnet import GateConfig
from .faster_rcnn import FasterRoIHead
from .rcnn_parts import FEATURE_NAMES, build_backbone_fpn_rpn, detector_classes, rescale_boxes
from .two_stage import TwoStageDetector, build_gate_head

PASTE_CHUNK = 16      # masks pasted into the original image per call (bounds the float buffer)


class MaskRoIHead(FasterRoIHead):
    """Faster R-CNN's RoI head (the box ``RoIStage``) plus torchvision's mask branch.

    Kept by ``TwoStageDetector`` as ``roi_head`` (box weights under ``roi_head.head`` /
    ``cls_score`` / ``bbox_pred`` as in ``FasterRCNN``; the mask branch under
    ``roi_head.mask_head`` / ``roi_head.mask_predictor``)."""

    def __init__(self, in_channels: int, num_classes: int, mask_dim: int = 256, mask_roi_size: int = 14,
                 **box_kwargs):
        super().__init__(in_channels, num_classes, **box_kwargs)
        self.mask_pool = MultiScaleRoIAlign(list(FEATURE_NAMES), mask_roi_size, 2)
        self.mask_head = MaskRCNNHeads(in_channels, [mask_dim] * 4, 1)
        self.mask_predictor = MaskRCNNPredictor(mask_dim, mask_dim, num_classes + 1)

    def loss_keys(self) -> list[str]:
        return ["loss_cls", "loss_bbox", "loss_mask"]

    def mask_logits(self, features, boxes: list[torch.Tensor], image_sizes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_pool(features, boxes, image_sizes)))

    def losses(self, roi_pool, features, proposals, image_sizes, gt_boxes, gt_labels, gt_masks=None) -> dict:
        if gt_masks is None:
            raise KeyError("MaskRCNN: the batch has no 'instance_masks' (build the dataset with "
                           "with_instances: true)")
        rois, labels, targets, _ = self.sample(proposals, gt_boxes, gt_labels)
        class_logits, box_regression = self(roi_pool(features, rois, image_sizes))
        loss_cls, loss_bbox, acc = self.loss(class_logits, box_regression, labels, targets)
        pos_rois, matched, pos_labels = [], [], []
        for r, lab, boxes in zip(rois, labels, gt_boxes):
            pos = torch.where(lab > 0)[0]
            pos_rois.append(r[pos])
            pos_labels.append(lab[pos])
            matched.append(box_iou(boxes, r[pos]).argmax(0) if pos.numel() and boxes.numel()
                           else torch.zeros(0, dtype=torch.long, device=r.device))
        if sum(p.shape[0] for p in pos_rois) == 0:      # nothing positive: zero, attached
            loss_mask = sum(p.sum() * 0.0 for p in list(self.mask_head.parameters())
                            + list(self.mask_predictor.parameters()))
        else:
            logits = self.mask_logits(features, pos_rois, image_sizes)
            # maskrcnn_loss picks channel gt_labels[matched]: the assigned class (+1 layout)
            loss_mask = maskrcnn_loss(logits, pos_rois, [m.to(logits.dtype) for m in gt_masks],
                                      [(l + 1).long() for l in gt_labels], matched)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_mask": loss_mask, "acc": acc}

    def predict(self, roi_pool, features, proposals, image_sizes, score_thr, nms_iou, max_per_img):
        """Per image (boxes, scores, labels, mask probabilities (M, 1, 28, 28)), boxes in
        input pixels."""
        dets = super().predict(roi_pool, features, proposals, image_sizes, score_thr, nms_iou, max_per_img)
        boxes = [d[0] for d in dets]
        if sum(b.shape[0] for b in boxes) == 0:
            side = 2 * self.mask_pool.output_size[0]
            ref = features[FEATURE_NAMES[0]]
            return [(*d, ref.new_zeros((0, 1, side, side))) for d in dets]
        probs = maskrcnn_inference(self.mask_logits(features, boxes, image_sizes), [d[2] + 1 for d in dets])
        return [(*d, p) for d, p in zip(dets, probs)]


@MODELS.register()
class MaskRCNN(TwoStageDetector):
    """Mask R-CNN: ``FasterRCNN``'s arguments (backbone / FPN / RPN / box head / gate, same
    meaning and defaults: R50-FPN as mmdetection) plus the mask branch:

    Args:
        rpn_iou: (positive, negative) IoU of the RPN's anchor assignment, (0.7, 0.3) as
            mmdetection; lower the positive one for objects a few pixels wide, which no
            anchor of a stride-4 grid overlaps by 0.7 (the tiny ball-screw config: 0.5).
        mask_dim: channels of the four mask-head convs and of the deconv (256; smaller for
            tiny configs).
        mask_roi_size: RoIAlign output of the mask branch (14 -> 28x28 masks).
        mask_thr: probability threshold of a pasted mask pixel (0.5).
    """

    def __init__(self, backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, classes: list[str] | None = None, num_classes: int | None = None,
                 fpn_channels: int = 256, rpn_train_topn: int = 2000, rpn_test_topn: int = 1000,
                 rpn_nms_iou: float = 0.7, anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                 rpn_iou: tuple[float, float] = (0.7, 0.3), fc_dim: int = 1024, rois_per_img: int = 512,
                 roi_pos_fraction: float = 0.25, roi_iou: float = 0.5,
                 mask_dim: int = 256, mask_roi_size: int = 14, mask_thr: float = 0.5,
                 score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 gate: GateConfig | dict | None = None, normal_negatives: bool = False):
        classes = detector_classes(type(self).__name__, classes, num_classes)
        gate = GateConfig.parse(gate)
        if not 0.0 <= float(mask_thr) <= 1.0:
            raise ValueError(f"MaskRCNN: mask_thr must be in [0, 1], got {mask_thr!r}")
        bb, fpn, rpn = build_backbone_fpn_rpn(backbone, pretrained, frozen_stages, norm_eval, fpn_channels,
                                              rpn_train_topn, rpn_test_topn, rpn_nms_iou, anchor_sizes,
                                              rpn_iou=tuple(rpn_iou))
        gate_head = build_gate_head(bb, gate)
        roi_head = MaskRoIHead(fpn_channels, len(classes), mask_dim=int(mask_dim),
                               mask_roi_size=int(mask_roi_size), iou=float(roi_iou),
                               weights=(10.0, 10.0, 5.0, 5.0), class_agnostic=False, fc_dim=fc_dim,
                               batch_size_per_image=rois_per_img, positive_fraction=roi_pos_fraction)
        super().__init__(bb, fpn, rpn, roi_head, classes=classes, score_thr=score_thr, nms_iou=nms_iou,
                         max_per_img=max_per_img, gate=gate, normal_negatives=normal_negatives,
                         gate_head=gate_head)
        self.mask_thr = float(mask_thr)

    def roi_targets(self, batch: dict, keep: list[int], device: torch.device) -> dict:
        """``gt_masks``: the kept images' ``instance_masks`` (N, H, W), cropped to the
        padded batch size when a sample's masks are smaller."""
        masks = batch.get("instance_masks")
        if masks is None:
            return {}
        h, w = batch["image"].shape[-2:]
        out = []
        for i in keep:
            m = torch.as_tensor(masks[i], device=device)
            if m.shape[-2:] != (h, w):          # pad bottom/right to the batch's padded size
                m = nn.functional.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]))
            out.append(m)
        return {"gt_masks": out}

    def make_result(self, det: tuple | None, gate_score: float | None, meta: dict | None):
        """Boxes rescaled to original pixels and the masks pasted into the original image
        (``meta['orig_size']``; without it the input size divided by ``scale_factor``)."""
        size = _original_size(meta)
        if det is None or det[0].shape[0] == 0:
            return InstanceSegmentationResult(
                boxes=torch.zeros((0, 4)), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long),
                masks=torch.zeros((0, *size), dtype=torch.bool), gate_score=gate_score, gated=det is None)
        boxes, scores, labels, probs = det
        boxes = rescale_boxes(boxes, meta).float()
        # pasted in chunks: M float maps of a large original image would not fit at once
        masks = torch.cat([paste_masks_in_image(probs[k:k + PASTE_CHUNK].float(), boxes[k:k + PASTE_CHUNK],
                                                size, padding=1)[:, 0] >= self.mask_thr
                           for k in range(0, boxes.shape[0], PASTE_CHUNK)])
        return InstanceSegmentationResult(boxes=boxes.cpu(), scores=scores.float().cpu(),
                                          labels=labels.long().cpu(), masks=masks.cpu(),
                                          gate_score=gate_score, gated=False)


def _original_size(meta: dict | None) -> tuple[int, int]:
    meta = meta or {}
    if meta.get("orig_size") is not None:
        h, w = meta["orig_size"]
        return int(h), int(w)
    if meta.get("img_shape") is not None:
        sx, sy = meta.get("scale_factor", (1.0, 1.0))
        h, w = meta["img_shape"]
        return int(round(h / sy)), int(round(w / sx))
    raise KeyError("MaskRCNN.predict: the batch meta has no 'orig_size' (the original image size "
                   "the masks are pasted into)")
