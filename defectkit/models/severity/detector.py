"""``SeverityFasterRCNN``: single-feature-map Faster R-CNN with the original's settings.

Research note §1 "Anchors, heads and training" (``faster_rcnn_resnet50_v1.config`` of the
original, TF Object Detection API) mapped to torchvision parts, assembled by
``detection.two_stage.TwoStageDetector`` (the same train step, inference and box rescaling
as every R-CNN here):

- backbone: ``resnet50`` C4 (``layer3``, stride 16, the OD API's Faster R-CNN ResNet
  feature map) or ``shallownet`` (``mixed0``, stride 8), or any registered backbone with
  ``feature_stage``;
- neck: :class:`SingleLevelNeck`, identity when the feature already has ``neck_channels``,
  else a 1x1 conv (ResNet-50 C4: 1024 -> 256), returning ``{'0': feature}``;
- RPN: ``AnchorGenerator(sizes=(anchor_sizes,), aspect_ratios=(anchor_ratios,))`` on that
  one level (default 64/128/256/512 x 0.5/1/2 = 12 anchors per cell), IoU 0.7 / 0.3, 256
  anchors per image with 50% positives (OD API proto defaults), ``rpn_pre_nms_topn`` boxes
  before NMS (IoU ``rpn_nms_iou`` 0.7), ``rpn_topn`` 300 after (train and test);
- RoI head: ``MultiScaleRoIAlign(['0'], 7, 2)`` (the OD API crops 14x14 then max-pools 2x2),
  ``FasterRoIHead`` (TwoMLPHead ``fc_dim``), ``rois_per_img`` 64 with 25% positives, IoU 0.5,
  box-coder weights (10, 10, 5, 5); test: ``score_thr`` 0.0, per-class NMS ``nms_iou`` 0.6,
  ``max_per_img`` 100.

Not reproduced: the OD API's loss weights (RPN loc 2.0, box loc 2.0: its normalisations
differ from torchvision's anyway), its conv5 box head for ResNet (here the TwoMLPHead of
every detector in this project) and its keep-aspect resizer (the pipeline's ``Resize``).
Losses: ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``acc``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ...registry import MODELS
from ..backbones import BACKBONES, Backbone, build_backbone, load_pretrained
from ..detection.faster_rcnn import FasterRoIHead
from ..detection.rcnn_parts import detector_classes
from ..detection.two_stage import TwoStageDetector
from . import shallownet  # noqa: F401  (registers the 'shallownet' backbone)

DEFAULT_STAGE = {"shallownet": "layer2"}      # others: layer3 (C4 of a ResNet)


class SingleLevelNeck(nn.Module):
    """``{'0': C}`` -> ``{'0': proj(C)}``: identity, or a 1x1 conv + ReLU to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.proj = (nn.Identity() if in_channels == out_channels else
                     nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)))

    def forward(self, feats: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        (x,) = list(feats.values())[:1]
        return OrderedDict([("0", self.proj(x))])


def build_single_level_body(backbone: str, pretrained: str | None, frozen_stages: int, norm_eval: bool,
                            feature_stage: str | None, backbone_options: dict | None) -> Backbone:
    """The backbone returning one stage (``feature_stage``; default ``layer2`` for
    shallownet, ``layer3`` = C4 otherwise). ``backbone_options``: extra constructor
    arguments (e.g. shallownet's ``width_mult``)."""
    stage = feature_stage or DEFAULT_STAGE.get(backbone, "layer3")
    if not backbone_options:
        return build_backbone(backbone, pretrained=pretrained, frozen_stages=frozen_stages,
                              norm_eval=norm_eval, out_indices=(stage,))
    if backbone not in BACKBONES:
        build_backbone(backbone)          # raises the registry's "unknown backbone" error
    try:
        body = BACKBONES[backbone](out_indices=(stage,), frozen_stages=frozen_stages, norm_eval=norm_eval,
                                   **dict(backbone_options))
    except TypeError as e:
        raise ValueError(f"backbone_options: {e}") from e
    if pretrained:
        load_pretrained(body, pretrained, arch=backbone)
    return body


@MODELS.register()
class SeverityFasterRCNN(TwoStageDetector):
    """Args (module docstring for the defaults' sources):
        backbone: ``resnet50`` (C4, stride 16) | ``shallownet`` (stride 8) | any registered name.
        pretrained / frozen_stages / norm_eval: as ``build_backbone`` (the original trains
            from scratch: ``fine_tune_checkpoint: ""``).
        backbone_options: extra backbone arguments, e.g. ``{width_mult: 0.5}`` for shallownet.
        feature_stage: the backbone stage used (default: see ``build_single_level_body``).
        classes / num_classes: the defect types.
        neck_channels: channels of the RPN / RoI feature map.
        anchor_sizes / anchor_ratios: the one level's anchors (px, h/w ratios).
        rpn_nms_iou, rpn_pre_nms_topn, rpn_topn: RPN NMS and proposals kept before / after it.
        fc_dim, rois_per_img, roi_pos_fraction, roi_iou: the RoI head.
        score_thr, nms_iou, max_per_img: test-time filtering.
        normal_negatives: normal images also train the RPN / RoI head as negatives.
    """

    def __init__(self, backbone: str = "resnet50", pretrained: str | None = None, frozen_stages: int = -1,
                 norm_eval: bool = False, backbone_options: dict | None = None, feature_stage: str | None = None,
                 classes: list[str] | None = None, num_classes: int | None = None, neck_channels: int = 256,
                 anchor_sizes: Sequence[int] = (64, 128, 256, 512), anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_nms_iou: float = 0.7, rpn_pre_nms_topn: int = 2000, rpn_topn: int = 300,
                 fc_dim: int = 1024, rois_per_img: int = 64, roi_pos_fraction: float = 0.25, roi_iou: float = 0.5,
                 score_thr: float = 0.0, nms_iou: float = 0.6, max_per_img: int = 100,
                 normal_negatives: bool = False):
        classes = detector_classes(type(self).__name__, classes, num_classes)
        if not anchor_sizes or not all(float(s) > 0 for s in anchor_sizes):
            raise ValueError(f"anchor_sizes: a non-empty list of positive sizes (px), got {list(anchor_sizes)}")
        if not anchor_ratios or not all(float(r) > 0 for r in anchor_ratios):
            raise ValueError(f"anchor_ratios: a non-empty list of positive h/w ratios, got {list(anchor_ratios)}")
        body = build_single_level_body(backbone, pretrained, frozen_stages, norm_eval, feature_stage,
                                       backbone_options)
        neck = SingleLevelNeck(body.out_channels[-1], int(neck_channels))
        anchors = AnchorGenerator((tuple(int(s) for s in anchor_sizes),), (tuple(float(r) for r in anchor_ratios),))
        rpn = RegionProposalNetwork(
            anchors, RPNHead(int(neck_channels), anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": int(rpn_pre_nms_topn), "testing": int(rpn_pre_nms_topn)},
            post_nms_top_n={"training": int(rpn_topn), "testing": int(rpn_topn)},
            nms_thresh=float(rpn_nms_iou))
        roi_head = FasterRoIHead(int(neck_channels), len(classes), iou=float(roi_iou),
                                 weights=(10.0, 10.0, 5.0, 5.0), class_agnostic=False, fc_dim=int(fc_dim),
                                 batch_size_per_image=int(rois_per_img), positive_fraction=float(roi_pos_fraction))
        super().__init__(body, neck, rpn, roi_head, classes=classes, score_thr=score_thr, nms_iou=nms_iou,
                         max_per_img=max_per_img, gate=None, normal_negatives=normal_negatives)
        self.stride = int(body.strides[-1])
