"""Drawing a :class:`~defectkit.structures.SegmentationResult` (ZNet, UNet).

``draw_segmentation(image, result, class_names, gt)`` puts panels side by side:
``image | GT | prediction`` when ``gt`` is a class-index mask (tools/test.py passes the
sample's ``mask``), ``image | prediction`` otherwise (tools/infer.py). Masks are resized
(nearest) to the image. A banner gives the defect-pixel share and, with an image head,
P(defective) (and "gated" when the head skipped the decoder).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..structures import SegmentationResult
from .draw import BAD_COLOR, OK_COLOR, draw_banner, draw_mask, register_drawer, to_pil


def _panel(img: Image.Image, title: str) -> Image.Image:
    return draw_banner(img, title, color=(30, 30, 30), font_size=11)


def hconcat(panels: Sequence[Image.Image], pad: int = 4, background=(255, 255, 255)) -> Image.Image:
    h = max(p.height for p in panels)
    out = Image.new("RGB", (sum(p.width for p in panels) + pad * (len(panels) - 1), h), background)
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + pad
    return out


def draw_segmentation(image: Any, result: SegmentationResult, class_names: Sequence[str] | None = None,
                      gt: Any = None, alpha: float = 0.55) -> Image.Image:
    img = to_pil(image)
    pred = result.mask
    panels = [_panel(img, "image")]
    if isinstance(gt, (torch.Tensor, np.ndarray)) and np.ndim(gt) >= 2:
        g = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt).astype(np.int64)
        g = np.where(g == 255, 0, g)
        panels.append(_panel(draw_mask(img, g, alpha=alpha, class_names=class_names), "ground truth"))
    panels.append(_panel(draw_mask(img, pred, alpha=alpha, class_names=class_names), "prediction"))
    frac = float((pred > 0).float().mean()) if pred.numel() else 0.0
    text = f"defect pixels {100 * frac:.2f}%"
    color = BAD_COLOR if frac > 0 else OK_COLOR
    if result.image_scores is not None:
        text += f" | P(defective) {float(result.image_scores[1]):.2f}"
    if result.gated:
        text += " | gated (decoder skipped)"
    return draw_banner(hconcat(panels), text, color=color)


register_drawer(SegmentationResult, draw_segmentation)
