"""Drawing an :class:`~defectkit.structures.InstanceSegmentationResult` (Mask R-CNN).

``draw_instances(image, result, class_names, gt)`` on the ORIGINAL picture (the masks are
in its pixels): every instance with ``score >= score_thr`` (default ``result.score_thr``,
the semantic map's threshold: the evaluator's ``score_thr`` once it has seen the result) filled in its own colour, with its box and "class score" label;
``image | GT | prediction`` panels when ``gt`` is a class-index mask (tools/test.py passes
the sample's ``mask``), ``image | prediction`` otherwise (tools/infer.py). A banner gives
the instance count and P(defective) / "gated" when a DefectNet gate ran.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..structures import InstanceSegmentationResult
from .draw import BAD_COLOR, OK_COLOR, draw_banner, draw_boxes, draw_mask, line_scale, palette, register_drawer, to_pil
from .segmentation import _panel, hconcat


def overlay_instances(image: Any, result: InstanceSegmentationResult, class_names: Sequence[str] | None = None,
                      score_thr: float | None = None, alpha: float = 0.5) -> Image.Image:
    """The instances of ``result`` (score >= ``score_thr``, default ``result.score_thr``) on
    ``image``: each mask in its own colour, then its box and label (class name and score)
    in the class colour."""
    img = to_pil(image)
    score_thr = result.score_thr if score_thr is None else float(score_thr)
    keep = [k for k, s in enumerate(result.scores.tolist()) if s >= score_thr]
    if not keep:
        return img.copy()
    imap = result.instance_map(score_thr).numpy()
    if imap.shape != (img.height, img.width):
        imap = np.asarray(Image.fromarray(imap.astype(np.int32)).resize(img.size, Image.NEAREST)).astype(np.int64)
    out = draw_mask(img, imap, alpha=alpha, colors=palette(max(len(result), 1) + 3)[3:])
    idx = torch.tensor(keep)
    k = line_scale(img)
    return draw_boxes(out, result.boxes[idx], result.labels[idx], result.scores[idx], class_names=class_names,
                      width=k, font_size=11 * k)


def draw_instances(image: Any, result: InstanceSegmentationResult, class_names: Sequence[str] | None = None,
                   gt: Any = None, score_thr: float | None = None, alpha: float = 0.5) -> Image.Image:
    img = to_pil(image)
    score_thr = result.score_thr if score_thr is None else float(score_thr)
    panels = []
    if isinstance(gt, (torch.Tensor, np.ndarray)) and np.ndim(gt) >= 2:
        g = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt).astype(np.int64)
        g = np.where(g == 255, 0, g)
        panels = [_panel(img, "image"),
                  _panel(draw_mask(img, g, alpha=alpha, class_names=class_names), "ground truth")]
    pred = overlay_instances(img, result, class_names, score_thr, alpha)
    n = sum(1 for s in result.scores.tolist() if s >= score_thr)
    text = f"{n} instance{'s' if n != 1 else ''} (score >= {score_thr:g})"
    if result.gate_score is not None:
        text += f" | P(defective) {float(result.gate_score):.2f}"
    if result.gated:
        text += " | gated (heads skipped)"
    body = hconcat(panels + [_panel(pred, "prediction")]) if panels else pred
    return draw_banner(body, text, color=BAD_COLOR if n else OK_COLOR)


register_drawer(InstanceSegmentationResult, draw_instances)
