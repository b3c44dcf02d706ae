"""Cascade R-CNN R50-FPN (Cai & Vasconcelos 2018), as mmdetection v1 / DefectNet use it.

Three RoI stages with IoU thresholds 0.5 / 0.6 / 0.7 and box-coder weights
(10,10,5,5) / (20,20,10,10) / (30,30,15,15) (mmdet's target stds 0.1/0.05/0.033...),
class-agnostic regression, TwoMLPHead of 1024 per stage, 512 RoIs per image with 25%
positives, gt boxes added to each stage's proposals, stage loss weights 1 / 0.5 / 0.25.
Each stage trains on the previous stage's refined boxes. Test: the class score is the
mean of the three stages' softmax scores (each stage scoring the boxes refined by the
stage before), boxes come from the last stage; score_thr 0.05, NMS 0.5 per class, 100
per image.

The config keys are mapped to parts here (``rcnn_parts.build_backbone_fpn_rpn``, the
``CascadeRoIHeads``, a built part passed in); backbone/FPN/RPN, the DefectNet gate (``gate:``) and training on
defective images only run in ``two_stage.TwoStageDetector``. Losses: ``loss_rpn_cls``, ``loss_rpn_bbox``,
``loss_cls_s{0,1,2}``, ``loss_bbox_s{0,1,2}`` (stage weight applied), ``acc_s{i}``
(logged), plus ``loss_gate`` / ``acc_gate`` with a gate.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import clip_boxes_to_image

from ...registry import MODELS
from .defectnet import GateConfig
from .rcnn_parts import RoIStage, build_backbone_fpn_rpn, detector_classes, postprocess, roi_stage_losses
from .two_stage import TwoStageDetector, build_gate_head

DEFAULT_STAGE_IOUS = (0.5, 0.6, 0.7)
DEFAULT_STAGE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
DEFAULT_STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)


class CascadeRoIHeads(nn.ModuleList):
    """The built RoI stages of Cascade R-CNN (a list of ``RoIStage`` and their loss
    weights), passed to ``TwoStageDetector`` as ``roi_heads`` and kept there as ``stages``
    (the checkpoints' state-dict keys: ``stages.<i>.*``)."""
    attr = "stages"

    def __init__(self, stages, stage_loss_weights):
        super().__init__(stages)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]

    def loss_keys(self) -> list[str]:
        return [f"loss_{t}_s{i}" for i in range(len(self)) for t in ("cls", "bbox")]

    def acc_keys(self) -> list[str]:
        return [f"acc_s{i}" for i in range(len(self))]

    def losses(self, roi_pool, features, proposals, image_sizes, gt_boxes, gt_labels) -> dict:
        losses = {}
        rois = proposals
        for i, (stage, w) in enumerate(zip(self, self.stage_loss_weights)):
            loss_cls, loss_bbox, acc, rois = roi_stage_losses(stage, roi_pool, features, rois,
                                                              image_sizes, gt_boxes, gt_labels)
            losses[f"loss_cls_s{i}"] = loss_cls * w
            losses[f"loss_bbox_s{i}"] = loss_bbox * w
            losses[f"acc_s{i}"] = acc
        return losses

    def predict(self, roi_pool, features, proposals, image_sizes, score_thr, nms_iou, max_per_img):
        counts = [p.shape[0] for p in proposals]
        rois = proposals
        scores = []
        boxes = None
        for stage in self:
            cls, reg = stage(roi_pool(features, rois, image_sizes))
            scores.append(cls.float().softmax(1))
            boxes = stage.decode(reg, rois).split(counts)
            rois = [clip_boxes_to_image(b, s) for b, s in zip(boxes, image_sizes)]
        mean_scores = torch.stack(scores).mean(0).split(counts)
        return [postprocess(b, s, size, score_thr, nms_iou, max_per_img)
                for b, s, size in zip(rois, mean_scores, image_sizes)]


@MODELS.register()
class CascadeRCNN(TwoStageDetector):
    """The flat config keys are mapped to built parts here (backbone, FPN, RPN, the gate
    head, ``CascadeRoIHeads``, built in that order) and passed to ``TwoStageDetector``.

    Args:
        backbone, pretrained, frozen_stages, norm_eval: see ``build_backbone``
            (mmdet defaults: frozen stem + layer1, BatchNorm in eval mode).
        classes / num_classes: the dataset's defect classes (filled in by the trainer).
        fpn_channels: FPN width (256; smaller for tiny CPU configs).
        rpn_train_topn / rpn_test_topn: RPN pre- and post-NMS proposals (2000 / 1000).
        rpn_nms_iou: RPN NMS IoU (0.7). anchor_sizes: one per level P2..P6 (scale 8 x stride).
        fc_dim: width of each stage's TwoMLPHead. rois_per_img: sampled RoIs per image.
        roi_pos_fraction: at most this share of them positive (mmdet ``pos_fraction``, 0.25).
        stage_ious / stage_loss_weights: per stage.
        score_thr, nms_iou, max_per_img: test-time filtering.
        gate: DefectNet gate options (``GateConfig``), null for the plain detector.
        normal_negatives: False (the original DefectNet and its one-model baseline): images
            without a defect box give no detection loss. True: they go through FPN, RPN and
            the RoI heads as all-background targets, so they add RPN objectness and RoI
            classification negatives (mmdet ``filter_empty_gt=False``, torchvision's empty
            targets); their box-regression losses stay 0. Same as ``gate.normal_negatives``.
    """

    def __init__(self, backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = 1,
                 norm_eval: bool = True, classes: list[str] | None = None, num_classes: int | None = None,
                 fpn_channels: int = 256, rpn_train_topn: int = 2000, rpn_test_topn: int = 1000,
                 rpn_nms_iou: float = 0.7, anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                 fc_dim: int = 1024, rois_per_img: int = 512, roi_pos_fraction: float = 0.25,
                 stage_ious: tuple[float, ...] = DEFAULT_STAGE_IOUS,
                 stage_loss_weights: tuple[float, ...] = DEFAULT_STAGE_LOSS_WEIGHTS,
                 score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 gate: GateConfig | dict | None = None, normal_negatives: bool = False):
        classes = detector_classes(type(self).__name__, classes, num_classes)
        gate = GateConfig.parse(gate)
        if len(stage_ious) != len(stage_loss_weights):
            raise ValueError(f"CascadeRCNN: {len(stage_ious)} stage_ious but "
                             f"{len(stage_loss_weights)} stage_loss_weights")
        if len(stage_ious) > len(DEFAULT_STAGE_WEIGHTS):
            raise ValueError(f"CascadeRCNN: at most {len(DEFAULT_STAGE_WEIGHTS)} stages")
        bb, fpn, rpn = build_backbone_fpn_rpn(backbone, pretrained, frozen_stages, norm_eval, fpn_channels,
                                              rpn_train_topn, rpn_test_topn, rpn_nms_iou, anchor_sizes)
        gate_head = build_gate_head(bb, gate)
        stages = CascadeRoIHeads(
            [RoIStage(fpn_channels, len(classes), iou=float(iou), weights=DEFAULT_STAGE_WEIGHTS[s],
                      class_agnostic=True, fc_dim=fc_dim, batch_size_per_image=rois_per_img,
                      positive_fraction=roi_pos_fraction)
             for s, iou in enumerate(stage_ious)], stage_loss_weights)
        super().__init__(bb, fpn, rpn, stages, classes=classes, score_thr=score_thr, nms_iou=nms_iou,
                         max_per_img=max_per_img, gate=gate, normal_negatives=normal_negatives,
                         gate_head=gate_head)
