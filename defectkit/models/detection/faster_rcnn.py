"""Faster R-CNN R50-FPN (Ren et al. 2015), as mmdetection v1 / DefectNet use it.

One RoI stage (``rcnn_parts.RoIStage``): IoU 0.5, box-coder weights (10,10,5,5),
class-specific regression, TwoMLPHead 1024, 512 RoIs per image with 25% positives, gt
boxes added to the proposals; test score_thr 0.05, NMS 0.5 per class, 100 per image.
The config keys are mapped to parts here (``rcnn_parts.build_backbone_fpn_rpn``, one
``FasterRoIHead``, a built part passed in); backbone/FPN/RPN, the DefectNet gate (``gate:``) and training on defective
images only run in ``two_stage.TwoStageDetector``. Losses: ``loss_rpn_cls``,
``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``acc`` (logged), plus ``loss_gate`` /
``acc_gate``.
"""
from __future__ import annotations

from ...registry import MODELS
from .defectnet import GateConfig
from .rcnn_parts import RoIStage, build_backbone_fpn_rpn, detector_classes, postprocess, roi_stage_losses
from .two_stage import TwoStageDetector, build_gate_head


class FasterRoIHead(RoIStage):
    """The built RoI head of Faster R-CNN (one ``RoIStage``), passed to ``TwoStageDetector``
    as ``roi_heads`` and kept there as ``roi_head`` (the checkpoints' state-dict keys)."""
    attr = "roi_head"

    def loss_keys(self) -> list[str]:
        return ["loss_cls", "loss_bbox"]

    def acc_keys(self) -> list[str]:
        return ["acc"]

    def losses(self, roi_pool, features, proposals, image_sizes, gt_boxes, gt_labels) -> dict:
        loss_cls, loss_bbox, acc, _ = roi_stage_losses(self, roi_pool, features, proposals,
                                                       image_sizes, gt_boxes, gt_labels)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "acc": acc}

    def predict(self, roi_pool, features, proposals, image_sizes, score_thr, nms_iou, max_per_img):
        counts = [p.shape[0] for p in proposals]
        cls, reg = self(roi_pool(features, proposals, image_sizes))
        boxes = self.decode(reg, proposals).split(counts)
        scores = cls.float().softmax(1).split(counts)
        return [postprocess(b, s, size, score_thr, nms_iou, max_per_img)
                for b, s, size in zip(boxes, scores, image_sizes)]


@MODELS.register()
class FasterRCNN(TwoStageDetector):
    """Arguments as ``CascadeRCNN`` (one stage: ``roi_iou`` instead of ``stage_ious``).
    The flat config keys are mapped to built parts here (backbone, FPN, RPN, the gate
    head, ``FasterRoIHead``, built in that order) and passed to ``TwoStageDetector``."""

    def __init__(self, backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, classes: list[str] | None = None, num_classes: int | None = None,
                 fpn_channels: int = 256, rpn_train_topn: int = 2000, rpn_test_topn: int = 1000,
                 rpn_nms_iou: float = 0.7, anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                 fc_dim: int = 1024, rois_per_img: int = 512, roi_pos_fraction: float = 0.25, roi_iou: float = 0.5,
                 score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 gate: GateConfig | dict | None = None, normal_negatives: bool = False):
        classes = detector_classes(type(self).__name__, classes, num_classes)
        gate = GateConfig.parse(gate)
        bb, fpn, rpn = build_backbone_fpn_rpn(backbone, pretrained, frozen_stages, norm_eval, fpn_channels,
                                              rpn_train_topn, rpn_test_topn, rpn_nms_iou, anchor_sizes)
        gate_head = build_gate_head(bb, gate)
        roi_head = FasterRoIHead(fpn_channels, len(classes), iou=float(roi_iou),
                                 weights=(10.0, 10.0, 5.0, 5.0), class_agnostic=False, fc_dim=fc_dim,
                                 batch_size_per_image=rois_per_img, positive_fraction=roi_pos_fraction)
        super().__init__(bb, fpn, rpn, roi_head, classes=classes, score_thr=score_thr, nms_iou=nms_iou,
                         max_per_img=max_per_img, gate=gate, normal_negatives=normal_negatives,
                         gate_head=gate_head)
