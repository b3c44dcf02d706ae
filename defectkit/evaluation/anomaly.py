"""Anomaly-detection metrics (anomalib / MVTec definitions) and the ``AnomalyEvaluator``.

All metrics are exact (no binning), computed in float64 with numpy:

* ``auroc(scores, labels)``: area under the ROC curve with ties counted half
  (Mann-Whitney U / (n_pos n_neg)), equal to ``sklearn.metrics.roc_auc_score``.
  Image AUROC uses the image scores (max of the map); pixel AUROC every pixel of every
  test image, normal images included.
* ``f1_max(scores, labels)``: the best F1 of ``score >= t`` over every distinct score t
  (the PR-curve maximum, anomalib ``F1Max``); returns ``(f1, t)``.
* ``f1_score(pred, labels)``: F1 of given binary predictions (the fitted thresholds).
* ``pro_curve(maps, masks)`` / ``aupro(...)``: per-region overlap. Connected components
  (8-connectivity) of each ground-truth mask are regions; at threshold t,
  PRO(t) = mean over regions of the fraction of the region with score >= t, and the FPR is
  the fraction of ALL background pixels (normal images included) with score >= t.
  AUPRO = area under PRO(FPR) up to ``fpr_limit`` (0.3, linear interpolation at the limit)
  divided by ``fpr_limit``, so a perfect detector scores 1.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics_core import check_scores as _check, f1_max, pr_counts as _pr_counts  # noqa: F401
from ..registry import EVALUATORS
from .base import BaseEvaluator, batch_meta, format_table, metric_notes, missing_class_note


# ---------------------------------------------------------------------------- metrics
def auroc(scores, labels) -> float:
    """ROC AUC (ties count 1/2); NaN when one class is missing."""
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank of each group of equal scores
    bounds = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [s.size]])
    avg = (starts + ends + 1) / 2.0                      # 1-based average rank of the group
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_score(pred, labels) -> float:
    """F1 of binary predictions; NaN when there is neither a positive nor a prediction."""
    p, y = _check(pred, labels)
    p = p.astype(bool)
    tp = int((p & y).sum())
    denom = int(p.sum()) + int(y.sum())
    return 2.0 * tp / denom if denom else math.nan


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of ``score >= t`` over the distinct scores, starting at (0, 0)."""
    s, y = _check(scores, labels)
    _, tp, fp = _pr_counts(s, y)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of a binary mask: (labels, count)."""
    from scipy import ndimage

    lab, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=int))
    return lab, int(n)


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) over every distinct score, starting at (0, 0); see the module docstring."""
    scores, background = [], []
    regions = 0
    sizes: list[np.ndarray] = []
    region_of = []
    for m, g in zip(maps, masks):
        m = np.asarray(m, dtype=np.float64).ravel()
        lab, n = label_regions(np.asarray(g).reshape(np.shape(g)))
        lab = lab.ravel()
        scores.append(m)
        region_of.append(np.where(lab > 0, lab + regions, 0))
        sizes.append(np.bincount(lab, minlength=n + 1)[1:])
        regions += n
        background.append(lab == 0)
    if regions == 0:
        return np.array([0.0]), np.array([0.0])
    s = np.concatenate(scores)
    reg = np.concatenate(region_of)
    bg = np.concatenate(background)
    size = np.concatenate([[0], np.concatenate(sizes)]).astype(np.float64)
    w_pro = np.where(bg, 0.0, 1.0 / np.maximum(size[reg], 1) / regions)
    w_fp = bg.astype(np.float64) / max(int(bg.sum()), 1)
    order = np.argsort(-s, kind="mergesort")
    s, w_pro, w_fp = s[order], w_pro[order], w_fp[order]
    pro = np.cumsum(w_pro)
    fpr = np.cumsum(w_fp)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under PRO(FPR) up to ``fpr_limit``, divided by ``fpr_limit``; NaN without regions."""
    fpr, pro = pro_curve(maps, masks)
    if fpr.size < 2 and pro.max(initial=0) == 0:
        return math.nan
    return clipped_auc(fpr, pro, fpr_limit) / fpr_limit


def clipped_auc(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area of y(x) for x in [0, limit], interpolating linearly at the limit."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < x.size:
        j = int(np.flatnonzero(~keep)[0])
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        yl = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, limit], np.r_[ys, yl]
    return float(np.trapezoid(ys, xs) if hasattr(np, "trapezoid") else np.trapz(ys, xs))


# ---------------------------------------------------------------------------- evaluator
@EVALUATORS.register()
class AnomalyEvaluator(BaseEvaluator):
    """Image AUROC, pixel AUROC, AUPRO@0.3, image/pixel F1-max, F1 at the model's fitted
    thresholds, per defect type. Uses ``AnomalyResult.raw_score`` / ``raw_map`` (the
    unclamped scores); the map is resized (bilinear) to the mask when their sizes differ.
    ``num_overlays``: heat-map overlays written by ``save_artifacts`` (defective first)."""

    main_metric = "image_auroc"
    table_columns = (("image AUROC", "image_auroc", 3), ("pixel AUROC", "pixel_auroc", 3),
                     ("AUPRO", "aupro", 3), ("ms/img", "att_ms", 2))
    greater_is_better = True

    def __init__(self, fpr_limit: float = 0.3, num_overlays: int = 8, category: str | None = None,
                 classes: list[str] | None = None):
        super().__init__()
        self.fpr_limit = float(fpr_limit)
        self.num_overlays = int(num_overlays)
        self.category = category
        self.classes = classes
        self._thumbs: dict[str, int] = {}

    def reset(self) -> None:
        super().reset()
        self._thumbs = {}

    def process(self, batch: dict, results: list) -> None:
        import torch.nn.functional as F

        masks = batch.get("mask")
        labels = batch.get("is_defective")
        for i, r in enumerate(results):
            raw_map = r.raw_map if r.raw_map is not None else r.anomaly_map
            mask = masks[i].cpu().numpy() > 0 if masks is not None else None
            if mask is not None and tuple(raw_map.shape) != mask.shape:
                raw_map = F.interpolate(raw_map[None, None].float(), size=mask.shape, mode="bilinear",
                                        align_corners=False)[0, 0]
            pred_mask = r.pred_mask
            if pred_mask is not None and mask is not None and tuple(pred_mask.shape) != mask.shape:
                pred_mask = F.interpolate(pred_mask[None, None].float(), size=mask.shape,
                                          mode="nearest")[0, 0] > 0.5
            meta = batch_meta(batch, i)
            rec = {"score": float(r.raw_score if r.raw_score is not None else r.score),
                   "label": int(labels[i]) if labels is not None else None,
                   "pred_label": r.pred_label,
                   "map": raw_map.float().cpu().numpy().astype(np.float32),
                   "mask": mask,
                   "pred_mask": None if pred_mask is None else pred_mask.cpu().numpy().astype(bool),
                   "defect_type": meta.get("defect_type", "defect" if labels is not None and int(labels[i])
                                           else "good"),
                   "path": meta.get("path"), "id": meta.get("id")}
            kind = "defective" if rec["label"] else "normal"
            quota = self.num_overlays - self.num_overlays // 4 if rec["label"] else self.num_overlays // 4
            if self._thumbs.get(kind, 0) < quota:
                self._thumbs[kind] = self._thumbs.get(kind, 0) + 1
                img = batch["image"][i].detach().float().cpu()
                rec["thumb"] = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                rec["norm_map"] = r.anomaly_map.float().cpu().numpy()
            self.records.append(rec)

    # ------------------------------------------------------------------ compute
    def compute(self) -> dict[str, Any]:
        recs = [r for r in self.records if r["label"] is not None]
        if not recs:
            raise ValueError("AnomalyEvaluator: the evaluated samples have no is_defective label")
        scores = np.array([r["score"] for r in recs])
        labels = np.array([r["label"] for r in recs])
        out: dict[str, Any] = {"image_auroc": auroc(scores, labels)}
        note = missing_class_note(labels, ("normal", "defective"), "images")
        if note:                           # AUROC needs both classes: it stays nan, and says why
            out["image_auroc_note"] = note
        out["image_f1_max"], out["image_f1_max_threshold"] = f1_max(scores, labels)
        if note and math.isnan(out["image_f1_max"]):      # F1 needs defective images
            out["image_f1_max_note"] = note
        if all(r["pred_label"] is not None for r in recs):
            out["image_f1"] = f1_score([r["pred_label"] for r in recs], labels)
        self._curves = {}
        with_mask = [r for r in recs if r["mask"] is not None]
        if with_mask:
            pix = np.concatenate([r["map"].ravel() for r in with_mask])
            gt = np.concatenate([r["mask"].ravel() for r in with_mask])
            out["pixel_auroc"] = auroc(pix, gt)
            note = missing_class_note(gt, ("normal", "defect"), "pixels")
            if note:
                out["pixel_auroc_note"] = out["aupro_note"] = f"the ground-truth masks have {note}"
            out["pixel_f1_max"], out["pixel_f1_max_threshold"] = f1_max(pix, gt)
            if note and math.isnan(out["pixel_f1_max"]):
                out["pixel_f1_max_note"] = f"the ground-truth masks have {note}"
            if all(r["pred_mask"] is not None for r in with_mask):
                out["pixel_f1"] = f1_score(np.concatenate([r["pred_mask"].ravel() for r in with_mask]), gt)
            if note:                       # PRO needs defect regions and an FPR needs background
                out["aupro"] = math.nan
            else:
                fpr, pro = pro_curve([r["map"] for r in with_mask], [r["mask"] for r in with_mask])
                out["aupro"] = clipped_auc(fpr, pro, self.fpr_limit) / self.fpr_limit
                self._curves["pro"] = (fpr, pro)
                self._curves["pixel_roc"] = roc_curve(pix[:: max(1, pix.size // 200_000)],
                                                      gt[:: max(1, gt.size // 200_000)])
        if "image_auroc_note" not in out:
            self._curves["image_roc"] = roc_curve(scores, labels)
        per_type = {}
        good = [r for r in recs if r["label"] == 0]
        for t in sorted({r["defect_type"] for r in recs if r["label"] == 1}):
            sub = good + [r for r in recs if r["label"] == 1 and r["defect_type"] == t]
            per_type[t] = {"num_images": len(sub) - len(good),
                           "image_auroc": auroc([r["score"] for r in sub], [r["label"] for r in sub])}
            if not good:
                per_type[t]["image_auroc_note"] = "no normal images to compare with"
        out["per_defect_type"] = per_type
        out["num_images"] = len(recs)
        out["num_defective"] = int(labels.sum())
        return out

    def summary(self, metrics: dict[str, Any]) -> str:
        keys = [("image_auroc", "img AUROC"), ("pixel_auroc", "pix AUROC"), ("aupro", "AUPRO@0.3"),
                ("image_f1_max", "img F1max"), ("pixel_f1_max", "pix F1max"), ("image_f1", "img F1@thr"),
                ("pixel_f1", "pix F1@thr")]
        keys = [(k, h) for k, h in keys if k in metrics]
        name = self.category or "all"
        rows = [[name] + [metrics[k] for k, _ in keys]]
        table = format_table(["category"] + [h for _, h in keys], rows)
        per = metrics.get("per_defect_type") or {}
        if per:
            table += "\n\n" + format_table(["defect type", "images", "img AUROC"],
                                           [[t, v["num_images"], v["image_auroc"]] for t, v in per.items()])
        notes = metric_notes(metrics)
        return "\n".join([table] + notes) if notes else table

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        from ..visualization.anomaly import plot_curves, save_overlays

        out = Path(out_dir)
        paths = plot_curves(getattr(self, "_curves", {}), metrics, out, self.fpr_limit)
        with_thumb = [r for r in self.records if "thumb" in r]
        with_thumb.sort(key=lambda r: -(r["label"] or 0))
        paths += save_overlays(with_thumb[: self.num_overlays], out / "overlays")
        return paths

    def write_predictions(self, results: list, metas: list, out_dir) -> Path:
        path = Path(out_dir) / "predictions.json"
        path.write_text(json.dumps([{"id": m.get("id"), "path": m.get("path"), **r.to_json()}
                                    for r, m in zip(results, metas)], indent=1, ensure_ascii=False))
        return path
