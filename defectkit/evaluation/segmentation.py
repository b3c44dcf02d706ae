"""Semantic-segmentation metrics (ZNet, UNet).

Every image adds a C x C confusion matrix (rows: ground truth, columns: prediction;
pixels equal to ``ignore_index`` dropped). From the matrices summed over the dataset
(mmsegmentation's ``IoUMetric``):

    I_c = sum of diagonal c,  P_c = predicted c,  L_c = labelled c,  U_c = P_c + L_c - I_c
    IoU_c = I_c / U_c     Dice_c = 2 I_c / (P_c + L_c)     Acc_c = I_c / L_c
    mIoU  = nanmean over ALL classes, background included (a class with U_c = 0 is NaN, skipped)
    defect_IoU / defect_Dice = nanmean over the defect classes (1..C-1): IoU of the one
            defect class for BSData ("Pitting")
    aAcc  = sum_c I_c / sum_c L_c (pixel accuracy)

The summed matrix itself is ``confusion_matrix`` (pixel counts, int; rows ground truth,
columns prediction): where a class's missed pixels went, background or another class.

``protocol: znet_repo`` (ZNet's ``Evaluator.acc_fn``) is computed as well: per image and
class, IoU = (I + 1) / (P + L - I + 1) (Laplace +1 smoothing), averaged over images:
``znet_defect_IoU`` (the repository's ``acc_miou_p``, which its README reports as
"mIoU 46.45%"), ``znet_bg_IoU`` and ``znet_mIoU`` (their mean over classes, ``acc_mIou``).
The protocol only selects the main metric (``mIoU`` or ``znet_defect_IoU``) and the headline.
All values are fractions in [0, 1].

``resolution``: ``original`` (default) compares the prediction (in original pixels) with
the ground truth re-read at native resolution from the evaluated dataset (polygons are
rasterised again); ``input`` compares at the pipeline's output size with the batch's mask
(the prediction is resized with nearest neighbour): ZNet's own protocol at 256x512.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import EVALUATORS
from .base import BaseEvaluator, batch_meta, format_table

PROTOCOLS = ("mmseg", "znet_repo")
RESOLUTIONS = ("original", "input")


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; ignored pixels dropped."""
    pred, gt = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(gt).reshape(-1).long()
    if pred.shape != gt.shape:
        raise ValueError(f"confusion_matrix: prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    bad = (gt < 0) | (gt >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bool(bad.any()):
        v = int(torch.cat([gt[(gt < 0) | (gt >= num_classes)], pred[(pred < 0) | (pred >= num_classes)]])[0])
        raise ValueError(f"confusion_matrix: class index {v} outside 0..{num_classes - 1}")
    return torch.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).numpy().astype(np.int64)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def dataset_metrics(cm: np.ndarray) -> dict[str, Any]:
    """mmseg-style metrics from a confusion matrix summed over the dataset."""
    cm = np.asarray(cm, dtype=np.float64)
    inter, pred, label = np.diag(cm), cm.sum(0), cm.sum(1)
    union = pred + label - inter
    iou, dice, acc = _div(inter, union), _div(2 * inter, pred + label), _div(inter, label)
    return {"mIoU": _nanmean(iou), "defect_IoU": _nanmean(iou[1:]), "mDice": _nanmean(dice),
            "defect_Dice": _nanmean(dice[1:]), "aAcc": float(inter.sum() / max(label.sum(), 1)),
            "mAcc": _nanmean(acc), "iou": iou, "dice": dice, "acc": acc}


def znet_repo_image_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class (I + 1) / (P + L - I + 1) of one image (ZNet's ``acc_fn``)."""
    cm = np.asarray(cm, dtype=np.float64)
    inter, pred, label = np.diag(cm), cm.sum(0), cm.sum(1)
    return (inter + 1) / (pred + label - inter + 1)


@EVALUATORS.register()
class SegmentationEvaluator(BaseEvaluator):
    """Args:
        classes: defect class names (runtime default: the dataset's); class 0 is background.
        protocol: ``mmseg`` (main metric ``mIoU``) or ``znet_repo`` (``znet_defect_IoU``).
        resolution: ``original`` or ``input`` (see the module docstring).
        ignore_index: ground-truth value left out (255).
        dataset: the evaluated dataset (given by the trainer / tools; ``resolution: original``).
    """

    table_columns = (("mIoU", "mIoU", 3), ("defect IoU", "defect_IoU", 3), ("ms/img", "att_ms", 2),
                     ("params", "params", None))
    greater_is_better = True

    def __init__(self, classes: list[str] | None = None, protocol: str = "mmseg",
                 resolution: str = "original", ignore_index: int = 255, dataset: Any = None):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"SegmentationEvaluator: evaluation.protocol must be one of {PROTOCOLS}, "
                             f"got {protocol!r}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"SegmentationEvaluator: evaluation.resolution must be one of "
                             f"{RESOLUTIONS}, got {resolution!r}")
        self.classes = list(classes) if classes is not None else None
        self.protocol, self.resolution = protocol, resolution
        self.ignore_index = int(ignore_index)
        self.dataset = dataset
        self.main_metric = "mIoU" if protocol == "mmseg" else "znet_defect_IoU"
        self._by_path: dict[str, int] | None = None

    @property
    def class_names(self) -> list[str]:
        return ["background"] + list(self.classes or [])

    # ------------------------------------------------------------------ ground truth
    def _native_gt(self, meta: dict, size: tuple[int, int]) -> torch.Tensor:
        ds = self.dataset
        if ds is None or not hasattr(ds, "load_mask") or not hasattr(ds, "records"):
            raise RuntimeError("SegmentationEvaluator(resolution='original') needs the evaluated "
                               "dataset; set evaluation.resolution: input to use the batch masks")
        if self._by_path is None:
            self._by_path = {str(r.img_path): i for i, r in enumerate(ds.records)}
        idx = self._by_path.get(str(meta.get("path")))
        if idx is None:
            raise KeyError(f"SegmentationEvaluator: image {meta.get('path')} is not in the evaluated dataset")
        return torch.from_numpy(ds.load_mask(ds.records[idx], int(size[0]), int(size[1])))

    def process(self, batch: dict, results: list) -> None:
        n_cls = 1 + len(self.classes) if self.classes is not None else 2
        for i, r in enumerate(results):
            meta = batch_meta(batch, i)
            pred = torch.as_tensor(r.mask)
            if self.resolution == "original":
                gt = self._native_gt(meta, tuple(meta.get("orig_size") or pred.shape[-2:]))
            else:
                if "mask" not in batch:
                    raise KeyError("SegmentationEvaluator: the batch has no 'mask' (ground truth)")
                h, w = (batch.get("image_sizes") or [batch["mask"].shape[-2:]] * len(results))[i]
                gt = torch.as_tensor(batch["mask"][i])[:h, :w]
            if pred.shape != gt.shape:
                pred = F.interpolate(pred[None, None].float(), size=tuple(gt.shape), mode="nearest")[0, 0].long()
            self.records.append({"id": meta.get("id", len(self.records)), "path": meta.get("path"),
                                 "cm": confusion_matrix(pred, gt, n_cls, self.ignore_index).tolist()})

    # ------------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        if not self.records:
            raise RuntimeError("SegmentationEvaluator.compute: no records (empty evaluation set)")
        sizes = {len(r["cm"]) for r in self.records}
        if len(sizes) != 1:
            raise ValueError(f"SegmentationEvaluator: records have different class counts {sizes}")
        cms = np.array([r["cm"] for r in self.records], dtype=np.int64)
        d = dataset_metrics(cms.sum(0))
        per_img = np.stack([znet_repo_image_iou(cm) for cm in cms])        # (N, C)
        names = self.class_names if len(self.class_names) == cms.shape[1] else \
            ["background"] + [str(k) for k in range(1, cms.shape[1])]
        m: dict[str, Any] = {k: d[k] for k in ("mIoU", "defect_IoU", "mDice", "defect_Dice", "aAcc", "mAcc")}
        m["znet_defect_IoU"] = float(per_img[:, 1:].mean(1).mean())
        m["znet_bg_IoU"] = float(per_img[:, 0].mean())
        m["znet_mIoU"] = float(per_img.mean(1).mean())
        for k, name in enumerate(names):
            m[f"IoU.{name}"] = float(d["iou"][k])
        m["confusion_matrix"] = cms.sum(0).tolist()
        m["num_images"] = int(len(cms))
        m["protocol"] = self.protocol
        m["classes"] = names
        m["per_class"] = {name: {"IoU": float(d["iou"][k]), "Dice": float(d["dice"][k]),
                                 "Acc": float(d["acc"][k]), "pixels": int(cms.sum(0)[k].sum())}
                          for k, name in enumerate(names)}
        return m

    def export_fields(self, result: Any) -> dict[str, Any]:
        """``class_pixels_by_name``: predicted pixels per class name (class index k is the
        source's mask value k for index masks; ``background`` is 0)."""
        names = self.class_names
        counts = torch.bincount(torch.as_tensor(result.mask).reshape(-1).long().clamp(min=0))
        return {"class_pixels_by_name": {(names[k] if k < len(names) else str(k)): int(n)
                                         for k, n in enumerate(counts.tolist()) if n}}

    def summary(self, metrics: dict[str, Any]) -> str:
        names = metrics.get("classes") or []
        per = metrics.get("per_class") or {}
        rows = [[c, 100 * per[c]["IoU"], 100 * per[c]["Dice"], 100 * per[c]["Acc"], per[c]["pixels"]]
                for c in names if c in per]
        out = [format_table(["class", "IoU", "Dice", "Acc", "gt pixels"], rows, digits=2)]
        pct = lambda k: f"{100 * metrics[k]:.2f}"  # noqa: E731
        out.append(f"mIoU {pct('mIoU')}  defect IoU {pct('defect_IoU')}  mDice {pct('mDice')}  "
                   f"aAcc {pct('aAcc')}   (mmseg: dataset-summed, background included, %)")
        out.append(f"znet_repo protocol (per-image +1-smoothed IoU, mean over images): defect "
                   f"{pct('znet_defect_IoU')}  background {pct('znet_bg_IoU')}  mean {pct('znet_mIoU')}")
        cm = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.float64)
        if 2 < len(cm) <= 12 and len(cm) == len(names):     # with two classes IoU says it all
            rate = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
            out.append("pixels of each ground-truth class by predicted class (% of the row):")
            out.append(format_table(["gt \\ pred"] + list(names), [[c] + list(r) for c, r in zip(names, rate)],
                                    digits=1))
        return "\n".join(out)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """``confusion_matrix.png``: the dataset's pixel confusion matrix, rows normalised."""
        from ..visualization.plots import plot_confusion_matrix

        if not metrics.get("confusion_matrix"):
            return []
        os.makedirs(out_dir, exist_ok=True)
        return [plot_confusion_matrix(metrics["confusion_matrix"], metrics.get("classes"),
                                      os.path.join(out_dir, "confusion_matrix.png"),
                                      title="pixel confusion matrix")]
