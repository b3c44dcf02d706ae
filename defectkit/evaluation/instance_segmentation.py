"""Instance-segmentation metrics (Mask R-CNN), comparable with the semantic segmenters.

Two sets of numbers from the same predictions (:class:`InstanceSegmentationResult`):

- **COCO** (pycocotools, RLE): ``segm_mAP`` (= segm AP@[.50:.95], area all, maxDets
  100), ``segm_AP50``, ``segm_AP75``, ``segm_APs/m/l`` and the same for boxes (``bbox_*``),
  over ALL evaluated images (an instance on a normal image is a false positive), category
  id = label + 1. Ground truth: the evaluated dataset's instances at NATIVE resolution
  (``dataset.load_instances``: one per LabelMe shape, or the connected components of a
  class-index mask; gt boxes = the masks' boxes, pycocotools ``toBbox``), whatever
  ``resolution`` says; predictions are in original pixels.
- **Semantic** (the EXISTING :class:`SegmentationEvaluator`, both protocols, with its
  ``resolution``): the instances with ``score >= score_thr`` are pasted into a class-index
  map (``InstanceSegmentationResult.semantic_map``: the higher score wins an overlapped
  pixel) and scored exactly as ZNet's / UNet's masks: ``mIoU``, ``defect_IoU``, Dice,
  ``znet_defect_IoU`` (the ZNet repository's per-image +1-smoothed IoU), per-class IoU.

The main metric and the comparison-table columns are the segmentation ones (``mIoU``, or
``znet_defect_IoU`` with ``protocol: znet_repo``; ``mIoU | defect IoU | ms/img | params``),
so ``tools/compare.py`` puts ZNet, UNet and Mask R-CNN in ONE table.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..registry import EVALUATORS
from ..structures import SegmentationResult
from .base import BaseEvaluator, batch_meta, format_table
from .detection import COCO_STAT_NAMES, _nan_if_missing, run_cocoeval
from .segmentation import SegmentationEvaluator


def encode_masks(masks: Any) -> list[dict]:
    """(N, H, W) binary masks -> COCO RLEs (``counts`` as str, picklable / JSON)."""
    from pycocotools import mask as mask_utils

    m = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks).astype(np.uint8)
    if m.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii") if isinstance(r["counts"], bytes) else r["counts"]
    return rles


def coco_stats(gt: dict, dets: list[dict], iou_type: str) -> tuple[dict[str, float], str]:
    """COCOeval stats (``COCO_STAT_NAMES``, -1 -> nan) of ``dets`` against the COCO dict
    ``gt`` for ``iou_type`` ('segm' or 'bbox'), and pycocotools' printed summary."""
    E, log = run_cocoeval(gt, dets, iou_type)
    return {k: _nan_if_missing(v) for k, v in zip(COCO_STAT_NAMES, E.stats)}, log


@EVALUATORS.register()
class InstanceSegmentationEvaluator(BaseEvaluator):
    """COCO segm + box AP and the semantic metrics of the pasted instances.

    Args:
        classes: defect class names (runtime default: the dataset's); class 0 of the
            semantic map is background.
        score_thr: instances with ``score >= score_thr`` are pasted into the semantic map
            (0.5); COCO AP uses every instance.
        protocol / resolution / ignore_index: as :class:`SegmentationEvaluator` (the
            semantic part; ``protocol`` picks the main metric).
        dataset: the evaluated dataset (runtime default): gt instances at native
            resolution (``load_instances``) and, for ``resolution: original``, the gt mask.
    """

    table_columns = SegmentationEvaluator.table_columns
    greater_is_better = True

    def __init__(self, classes: list[str] | None = None, score_thr: float = 0.5, protocol: str = "mmseg",
                 resolution: str = "original", ignore_index: int = 255, dataset: Any = None):
        super().__init__()
        self.semantic = SegmentationEvaluator(classes=classes, protocol=protocol, resolution=resolution,
                                              ignore_index=ignore_index, dataset=dataset)
        if not 0.0 <= float(score_thr) <= 1.0:
            raise ValueError(f"InstanceSegmentationEvaluator: evaluation.score_thr must be in [0, 1], "
                             f"got {score_thr!r}")
        self.classes = list(classes) if classes is not None else None
        self.score_thr = float(score_thr)
        self.dataset = dataset
        self.main_metric = self.semantic.main_metric
        self.coco_log = ""
        self._by_path: dict[str, int] | None = None

    # ------------------------------------------------------------------------ records
    def process(self, batch: dict, results: list) -> None:
        self.semantic.records = []
        for r in results:        # what tools/test.py then writes / draws counts as the metrics do
            r.score_thr = self.score_thr
        self.semantic.process(batch, [SegmentationResult(mask=r.semantic_map(self.score_thr)) for r in results])
        for i, (r, sem) in enumerate(zip(results, self.semantic.records)):
            meta = batch_meta(batch, i)
            self.records.append({
                "id": meta.get("id", len(self.records)), "path": meta.get("path"), "cm": sem["cm"],
                "size": list(r.image_size), "rles": encode_masks(r.masks),
                "boxes": [[float(v) for v in b] for b in r.boxes.tolist()],
                "scores": [float(s) for s in r.scores.tolist()],
                "labels": [int(l) for l in r.labels.tolist()],
                "gated": bool(getattr(r, "gated", False))})
        self.semantic.records = []

    # ------------------------------------------------------------------------ ground truth
    def _gt_instances(self, path: str, size: tuple[int, int]) -> tuple[list[dict], list[int]]:
        ds = self.dataset
        if ds is None or not hasattr(ds, "load_instances"):
            raise RuntimeError("InstanceSegmentationEvaluator needs the evaluated dataset (gt instances "
                               "at native resolution): build it with build_evaluator(..., dataset=...)")
        if self._by_path is None:
            self._by_path = {str(r.img_path): k for k, r in enumerate(ds.records)}
        k = self._by_path.get(str(path))
        if k is None:
            raise KeyError(f"InstanceSegmentationEvaluator: image {path} is not in the evaluated dataset")
        masks, labels = ds.load_instances(ds.records[k], int(size[0]), int(size[1]))
        return encode_masks(masks), [int(l) for l in labels]

    def coco_gt(self) -> dict:
        """The COCO ground-truth dict of the evaluated images (image id = record index + 1)."""
        from pycocotools import mask as mask_utils

        names = self.semantic.class_names[1:] or ["0"]
        images, anns = [], []
        for k, r in enumerate(self.records):
            h, w = r["size"]
            images.append({"id": k + 1, "height": int(h), "width": int(w)})
            rles, labels = self._gt_instances(r["path"], (h, w))
            for rle, lab in zip(rles, labels):
                anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": lab + 1,
                             "segmentation": rle, "area": float(mask_utils.area(rle)),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        return {"images": images, "annotations": anns,
                "categories": [{"id": k + 1, "name": str(n)} for k, n in enumerate(names)]}

    # ------------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        if not self.records:
            raise RuntimeError("InstanceSegmentationEvaluator.compute: no records (empty evaluation set)")
        self.semantic.records = [{"id": r["id"], "path": r["path"], "cm": r["cm"]} for r in self.records]
        m = self.semantic.compute()
        self.semantic.records = []
        from pycocotools import mask as mask_utils

        gt = self.coco_gt()
        segm, bbox = [], []
        for k, r in enumerate(self.records):
            for rle, box, s, l in zip(r["rles"], r["boxes"], r["scores"], r["labels"]):
                x1, y1, x2, y2 = box
                common = {"image_id": k + 1, "category_id": l + 1, "score": s, "iscrowd": 0}
                segm.append({"id": len(segm) + 1, "segmentation": rle, "area": float(mask_utils.area(rle)),
                             **common})
                bbox.append({"id": len(bbox) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "area": (x2 - x1) * (y2 - y1), **common})
        logs = []
        for iou_type, dets in (("segm", segm), ("bbox", bbox)):
            stats, log = coco_stats(gt, dets, iou_type)
            logs.append(f"{iou_type}:\n{log}")
            m.update({f"{iou_type}_{k}": v for k, v in stats.items()})
        self.coco_log = "\n".join(logs)
        m["score_thr"] = self.score_thr
        m["num_gt_instances"] = len(gt["annotations"])
        m["num_pred_instances"] = len(segm)
        if any(r["gated"] for r in self.records):
            m["num_gated"] = int(sum(r["gated"] for r in self.records))
        return m

    def export_fields(self, result: Any) -> dict[str, Any]:
        """``label_names``: each instance's class name; ``score_thr``: this evaluator's, also
        set on ``result`` (tools/infer.py calls this before it writes the mask PNG and the
        drawing, so they show the instances the metrics count)."""
        result.score_thr = self.score_thr
        names = self.semantic.class_names[1:]
        out = {"score_thr": self.score_thr}
        if names:
            out["label_names"] = [names[int(l)] if 0 <= int(l) < len(names) else str(int(l))
                                  for l in result.labels.tolist()]
        return out

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """The pixel confusion matrix of the pasted map (:class:`SegmentationEvaluator`)."""
        return self.semantic.save_artifacts(metrics, out_dir)

    def summary(self, metrics: dict[str, Any]) -> str:
        out = [self.semantic.summary(metrics)]
        rows = [[t, metrics.get(f"{t}_mAP", math.nan), metrics.get(f"{t}_AP50", math.nan),
                 metrics.get(f"{t}_AP75", math.nan)] for t in ("segm", "bbox")]
        out.append(format_table(["COCO", "AP", "AP50", "AP75"], rows, digits=3))
        out.append(f"(semantic metrics: instances with score >= {metrics.get('score_thr', self.score_thr)} "
                   f"pasted, the higher score winning overlaps; COCO AP over every instance, "
                   f"{metrics.get('num_gt_instances', 0)} gt / {metrics.get('num_pred_instances', 0)} predicted)")
        return "\n".join(out)
