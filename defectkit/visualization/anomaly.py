"""Drawing anomaly results: heat-map panels, overlays, ROC / PRO curves.

Importing this module registers :func:`draw_anomaly` for ``AnomalyResult`` with
:func:`defectkit.visualization.draw_result` (``defectkit.models.anomaly`` imports it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..structures import AnomalyResult
from .draw import _as_numpy, draw_banner, draw_heatmap, draw_mask, make_grid, register_drawer, to_pil
from .plots import plot_curves as _plot_xy


def _map_range(result: AnomalyResult) -> tuple[float | None, float | None]:
    # normalised maps have a fixed scale (0.5 = threshold); raw maps use their own range
    return (0.0, 1.0) if result.pred_label is not None else (None, None)


def anomaly_panels(image: Any, anomaly_map: Any, gt_mask: Any = None, pred_mask: Any = None,
                   vmin: float | None = None, vmax: float | None = None,
                   title: str | None = None) -> Image.Image:
    """image | GT mask | heat-map | predicted mask, side by side (panels omitted when None)."""
    img = to_pil(image)
    panels = [draw_banner(img, "image")]
    if gt_mask is not None:
        panels.append(draw_banner(draw_mask(img, np.asarray(gt_mask).astype(np.int64), alpha=0.5), "GT"))
    panels.append(draw_banner(draw_heatmap(img, anomaly_map, alpha=0.5, vmin=vmin, vmax=vmax), "heat-map"))
    if pred_mask is not None:
        panels.append(draw_banner(draw_mask(img, np.asarray(pred_mask).astype(np.int64), alpha=0.5),
                                  "predicted mask"))
    grid = make_grid(panels, ncols=len(panels))
    return draw_banner(grid, title) if title else grid


def draw_anomaly(image: Any, result: AnomalyResult, class_names: Sequence[str] | None = None,
                 gt: Any = None, max_side: int = 1024) -> Image.Image:
    """image | [GT] | heat-map | [predicted mask] with a title "score 0.734 ANOMALOUS".

    ``image``: the (original) picture the model saw; the map and mask (model-input pixels)
    are resized to it (bilinear / nearest). A picture longer than ``max_side`` px is
    shown at ``max_side`` (the map holds no finer detail; four 4000 px panels would take
    seconds). ``gt``: a GT mask (H, W) (drawn as a panel) or an image label 0/1 (named in
    the title), or None."""
    image = to_pil(image)
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    vmin, vmax = _map_range(result)
    label = {None: "", 0: " normal", 1: " ANOMALOUS"}[result.pred_label]
    gt_mask = gt if np.ndim(gt) >= 2 else None
    gt_txt = "" if gt is None or gt_mask is not None else f"  (GT {'defective' if int(gt) else 'normal'})"
    if gt_mask is not None:
        gt_mask = (_as_numpy(gt_mask) > 0).astype(np.int64)
        gt_mask = gt_mask.reshape(gt_mask.shape[-2:])
        gt_txt = f"  (GT {'defective' if gt_mask.any() else 'normal'})"
    return anomaly_panels(image, result.anomaly_map, gt_mask, result.pred_mask, vmin, vmax,
                          title=f"score {result.score:.3f}{label}{gt_txt}")


register_drawer(AnomalyResult, draw_anomaly, input_pixels=True)


def save_overlays(records: list[dict], out_dir: Path) -> list[str]:
    """One PNG per evaluator record with a thumbnail: image | GT | heat-map | predicted mask."""
    if not records:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records):
        normalised = r["pred_label"] is not None
        panel = anomaly_panels(r["thumb"], r["norm_map"], r["mask"], r["pred_mask"],
                               *((0.0, 1.0) if normalised else (None, None)),
                               title=f"{r['defect_type']}  raw score {r['score']:.3f}"
                                     + ("" if r["pred_label"] is None else f"  pred {r['pred_label']}"))
        stem = Path(str(r.get("path") or f"{i}")).stem
        panel.save(out_dir / f"{i:03d}_{r['defect_type']}_{stem}.png")
    return [str(out_dir)]


def plot_curves(curves: dict, metrics: dict, out_dir: Path, fpr_limit: float = 0.3) -> list[str]:
    """roc.png (image and pixel ROC) and pro.png (PRO vs FPR up to ``fpr_limit``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    roc = {}
    if "image_roc" in curves:
        roc[f"image (AUROC {metrics.get('image_auroc', float('nan')):.3f})"] = curves["image_roc"]
    if "pixel_roc" in curves:
        roc[f"pixel (AUROC {metrics.get('pixel_auroc', float('nan')):.3f})"] = curves["pixel_roc"]
    if roc:
        paths.append(_plot_xy(roc, out_dir / "roc.png", "false positive rate", "true positive rate", "ROC"))
    if "pro" in curves:
        fpr, pro = curves["pro"]
        keep = fpr <= max(fpr_limit * 1.5, 1e-9)
        paths.append(_plot_xy({f"PRO (AUPRO@{fpr_limit} {metrics.get('aupro', float('nan')):.3f})":
                               (fpr[keep], pro[keep])},
                              out_dir / "pro.png", "false positive rate (background pixels)",
                              "per-region overlap", "PRO curve"))
    return paths
