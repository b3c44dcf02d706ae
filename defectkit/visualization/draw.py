"""Draw boxes, masks, heat-maps and image-level labels on pictures.

Every function takes a PIL image, a (3, H, W) / (H, W, 3) tensor or array, and returns a
new RGB ``PIL.Image`` (the input is never modified). Tensors that went through
``Normalize`` are de-normalised when ``mean``/``std`` are given to ``to_pil`` (or to
``draw_sample``); values in 0..255 scale are recognised (any mean > 1).

    img = to_pil(sample["image"], mean=IMAGENET_MEAN, std=IMAGENET_STD)
    img = draw_boxes(img, boxes, labels, scores, class_names=classes)
    img = draw_banner(img, "defective 0.97", color=(200, 30, 30))
    img.save("x.png")
"""
from __future__ import annotations

import colorsys
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..structures import BINARY_CLASS_NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Color = tuple[int, int, int]
OK_COLOR: Color = (40, 160, 60)
BAD_COLOR: Color = (210, 40, 40)


# ------------------------------------------------------------------------- helpers
def palette(n: int) -> list[Color]:
    """``n`` well-separated colours (golden-ratio hues), the same for every call."""
    out = []
    for i in range(n):
        h = (0.07 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def color_for(index: int) -> Color:
    return palette(index + 1)[index]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    return np.asarray(x)


def to_pil(image: Any, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Image.Image:
    """PIL image, tensor (C, H, W) or array (H, W, C) / (H, W) -> RGB PIL image.

    Float input is taken as [0, 1] after undoing ``(x - mean) / std`` when mean/std are
    given (either in [0, 1] or in 0..255 scale); uint8 input is used as is.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    chw = isinstance(image, torch.Tensor)
    a = _as_numpy(image)
    if a.ndim == 3 and chw:
        a = a.transpose(1, 2, 0)
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if mean is not None and std is not None:
            m = np.asarray(mean, np.float32)
            s = np.asarray(std, np.float32)
            scale = 255.0 if m.max() > 1.0 else 1.0
            a = (a * s + m) / scale
        elif a.max() > 1.0 + 1e-3:
            a = a / 255.0
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(a[:, :, :3]), "RGB")


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    return r - l, b - t


def _label_text(label: int | None, score: float | None, class_names: Sequence[str] | None) -> str:
    parts = []
    if label is not None:
        parts.append(str(class_names[label]) if class_names is not None and 0 <= label < len(class_names)
                     else str(label))
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


# --------------------------------------------------------------------------- boxes
def draw_boxes(image: Any, boxes: Any, labels: Any = None, scores: Any = None,
               class_names: Sequence[str] | None = None, color: Color | None = None,
               width: int = 2, score_thr: float = 0.0, font_size: int = 12) -> Image.Image:
    """Boxes XYXY in pixels (N, 4); optional labels (N,) and scores (N,).

    Boxes with a score below ``score_thr`` are skipped. The colour follows the label
    (``palette``) unless ``color`` is given.
    """
    img = to_pil(image).copy()
    b = _as_numpy(boxes).reshape(-1, 4) if boxes is not None else np.zeros((0, 4))
    lab = _as_numpy(labels).reshape(-1).astype(int) if labels is not None else None
    sc = _as_numpy(scores).reshape(-1).astype(float) if scores is not None else None
    draw = ImageDraw.Draw(img)
    font = _font(font_size)
    n_colors = max(len(class_names) if class_names else 0, int(lab.max()) + 1 if lab is not None and len(lab) else 1)
    colors = palette(n_colors)
    for i, (x1, y1, x2, y2) in enumerate(b.tolist()):
        s = float(sc[i]) if sc is not None else None
        if s is not None and s < score_thr:
            continue
        li = int(lab[i]) if lab is not None else None
        c = color or colors[li if li is not None and li >= 0 else 0]
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        text = _label_text(li, s, class_names)
        if text:
            tw, th = _text_size(draw, text, font)
            ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
            draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=c)
            draw.text((x1 + 2, ty + 1), text, fill=(255, 255, 255), font=font)
    return img


# ---------------------------------------------------------------------------- masks
def draw_mask(image: Any, mask: Any, alpha: float = 0.5, colors: Sequence[Color] | None = None,
              class_names: Sequence[str] | None = None, legend: bool = False,
              font_size: int = 12) -> Image.Image:
    """Overlay a class-index mask (0 = background, k+1 = ``class_names[k]``; binary 0/1 too).

    The mask is resized (nearest) to the image when sizes differ. ``legend`` writes the
    names of the classes present in the top-left corner.
    """
    img = to_pil(image)
    m = _as_numpy(mask).astype(np.int64)
    if m.ndim == 3:
        m = m[0]
    if m.shape != (img.height, img.width):
        m = np.asarray(Image.fromarray(m.astype(np.int32)).resize(img.size, Image.NEAREST)).astype(np.int64)
    ids = [int(v) for v in np.unique(m) if v > 0]
    if not ids:
        return img.copy()
    n = max(max(ids), len(class_names) if class_names else 0)
    cols = list(colors) if colors is not None else palette(n)
    base = np.asarray(img, np.float32)
    over = base.copy()
    for v in ids:
        over[m == v] = cols[(v - 1) % len(cols)]
    sel = (m > 0)[:, :, None]
    out = np.where(sel, base * (1 - alpha) + over * alpha, base)
    res = Image.fromarray(out.round().astype(np.uint8), "RGB")
    if legend:
        draw = ImageDraw.Draw(res)
        font = _font(font_size)
        y = 2
        for v in ids:
            name = class_names[v - 1] if class_names and v - 1 < len(class_names) else str(v)
            tw, th = _text_size(draw, name, font)
            draw.rectangle([2, y, 8 + th + tw, y + th + 4], fill=(0, 0, 0))
            draw.rectangle([4, y + 2, 4 + th, y + 2 + th], fill=cols[(v - 1) % len(cols)])
            draw.text((6 + th, y + 1), name, fill=(255, 255, 255), font=font)
            y += th + 6
    return res


# ------------------------------------------------------------------------- heat-maps
def _map2d(x: Any) -> np.ndarray:
    """(H, W) float32 view of a map given as (H, W), (1, H, W) or (1, 1, H, W); a 1x1 map
    stays 2-D (``squeeze`` would make it a scalar, which matplotlib colours as a tuple)."""
    a = _as_numpy(x).astype(np.float32)
    if a.ndim < 2 or any(d != 1 for d in a.shape[:-2]):
        raise ValueError(f"expected a (H, W) map, got shape {tuple(a.shape)}")
    return a.reshape(a.shape[-2:])


def colorize(heatmap: Any, cmap: str = "jet", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 colours with a matplotlib colormap."""
    import matplotlib

    h = _map2d(heatmap)
    lo = float(np.nanmin(h)) if vmin is None else float(vmin)
    hi = float(np.nanmax(h)) if vmax is None else float(vmax)
    norm = np.clip((h - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(h)
    rgba = matplotlib.colormaps[cmap](np.nan_to_num(norm))
    return (rgba[:, :, :3] * 255 + 0.5).astype(np.uint8)


def draw_heatmap(image: Any, heatmap: Any, alpha: float = 0.5, cmap: str = "jet",
                 vmin: float | None = None, vmax: float | None = None) -> Image.Image:
    """Blend a (H, W) score map (e.g. an anomaly map) over the image, resized (bilinear)
    to the image size. ``vmin``/``vmax`` fix the colour range (default: the map's own)."""
    img = to_pil(image)
    h = _map2d(heatmap)
    if h.shape != (img.height, img.width):
        h = np.asarray(Image.fromarray(h, mode="F").resize(img.size, Image.BILINEAR))
    colored = Image.fromarray(colorize(h, cmap, vmin, vmax), "RGB")
    return Image.blend(img, colored, alpha)


# --------------------------------------------------------------------- image labels
def draw_banner(image: Any, text: str, color: Color = (30, 30, 30), position: str = "top",
                font_size: int = 14, text_color: Color = (255, 255, 255)) -> Image.Image:
    """Add a coloured strip with ``text`` above (``top``) or below (``bottom``) the image,
    or over its top edge (``inside``); the picture itself is not covered except for ``inside``."""
    img = to_pil(image)
    font = _font(font_size)
    tw, th = _text_size(ImageDraw.Draw(img), text, font)
    bh = th + 8
    if position == "inside":
        out = img.copy()
        draw = ImageDraw.Draw(out)
        draw.rectangle([0, 0, min(img.width, tw + 8), bh], fill=color)
        draw.text((4, 3), text, fill=text_color, font=font)
        return out
    if position not in ("top", "bottom"):
        raise ValueError(f"draw_banner: position must be top, bottom or inside, got {position!r}")
    out = Image.new("RGB", (max(img.width, tw + 8), img.height + bh), color)
    out.paste(img, (0, bh if position == "top" else 0))
    ImageDraw.Draw(out).text((4, 3 if position == "top" else img.height + 3), text,
                             fill=text_color, font=font)
    return out


def draw_classification(image: Any, result: Any, class_names: Sequence[str] | None = None,
                        gt: int | None = None, position: str = "top") -> Image.Image:
    """Banner "defective 0.97" (+ "| gt normal"): green when it matches ``gt``, red when not,
    neutral without ``gt``. ``result`` is a ClassificationResult (``label``, ``scores``)."""
    names = class_names if class_names is not None else (
        BINARY_CLASS_NAMES if len(result.scores) == 2 else None)
    text = _label_text(int(result.label), float(result.scores[result.label]), names)
    color: Color = (30, 30, 30)
    if gt is not None:
        text += " | gt " + _label_text(int(gt), None, names)
        color = OK_COLOR if int(gt) == int(result.label) else BAD_COLOR
    return draw_banner(image, text, color=color, position=position)


def draw_sample(sample: dict, classes: Sequence[str] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                alpha: float = 0.45) -> Image.Image:
    """Everything a dataset sample carries: mask overlay, boxes with class names, and a
    banner with the id and the image-level label (``is_defective`` / ``label``)."""
    img = to_pil(sample["image"], mean, std)
    if sample.get("mask") is not None:
        img = draw_mask(img, sample["mask"], alpha=alpha, class_names=classes, legend=True)
    if sample.get("boxes") is not None and len(sample["boxes"]):
        img = draw_boxes(img, sample["boxes"], sample.get("labels"), class_names=classes)
    meta = sample.get("meta") or {}
    parts = [str(meta["id"])] if "id" in meta else []
    color: Color = (30, 30, 30)
    if "is_defective" in sample:
        d = int(sample["is_defective"])
        parts.append(BINARY_CLASS_NAMES[d])
        color = BAD_COLOR if d else OK_COLOR
    if "label" in sample:
        parts.append(f"label {int(sample['label'])}")
    if meta.get("defect_type"):
        parts.append(str(meta["defect_type"]))
    return draw_banner(img, "  ".join(parts), color=color) if parts else img


def make_grid(images: Sequence[Image.Image], ncols: int = 4, pad: int = 4,
              background: Color = (255, 255, 255)) -> Image.Image:
    """Tile PIL images (any sizes) row by row."""
    if not images:
        raise ValueError("make_grid: no images")
    ncols = max(1, min(ncols, len(images)))
    nrows = (len(images) + ncols - 1) // ncols
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    grid = Image.new("RGB", (ncols * cw + (ncols + 1) * pad, nrows * ch + (nrows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return grid


def line_scale(image: Image.Image) -> int:
    """Line/text scale for a picture: 1 up to ~640 px on the long side, then grows with it,
    so boxes and labels stay readable on a 4000x3000 image."""
    return max(1, round(max(image.size) / 640))


def draw_detection(image: Any, result: Any, class_names: Sequence[str] | None = None,
                   gt: Any = None, score_thr: float = 0.0, position: str = "top") -> Image.Image:
    """Boxes with class names and scores ("scratch 0.87"), plus a banner: "gated (normal)
    p=0.12" when the gate skipped the heads, else "gate p=0.93 | 3 detections".

    ``image`` is the ORIGINAL picture: ``DetectionResult`` boxes are in its pixels.
    ``gt``: optional ``{"boxes": (M, 4) XYXY in the same pixels, "labels": (M,)}``, drawn
    first in green as "GT <name>" (the banner then also gives the GT box count).
    Line width and font grow with the picture (:func:`line_scale`).
    """
    img = to_pil(image)
    k = line_scale(img)
    if isinstance(gt, dict) and gt.get("boxes") is not None:
        gt_names = ["GT " + str(c) for c in class_names] if class_names is not None else None
        labels = gt.get("labels")
        img = draw_boxes(img, gt["boxes"], labels if labels is not None and gt_names else None,
                         class_names=gt_names, color=OK_COLOR, width=2 * k, font_size=12 * k)
    img = draw_boxes(img, result.boxes, result.labels, result.scores, class_names=class_names,
                     score_thr=score_thr, width=2 * k, font_size=12 * k)
    n = int((result.scores >= score_thr).sum()) if len(result) else 0
    if result.gated:
        text = "gated (normal)" + (f" p={result.gate_score:.2f}" if result.gate_score is not None else "")
        color: Color = OK_COLOR
    else:
        text = (f"gate p={result.gate_score:.2f} | " if result.gate_score is not None else "") + \
            f"{n} detection{'s' if n != 1 else ''}"
        color = (30, 30, 30)
    if isinstance(gt, dict) and gt.get("boxes") is not None:
        m = len(_as_numpy(gt["boxes"]).reshape(-1, 4))
        text += f" | GT {m} box{'es' if m != 1 else ''} (green)"
    return draw_banner(img, text, color=color, position=position, font_size=14 * k)


# result type -> (drawing function(image, result, class_names, gt), maps in model-input pixels)
_DRAWERS: dict = {}


def register_drawer(result_type: type, fn, input_pixels: bool = False) -> None:
    """Teach :func:`draw_result` to draw ``result_type`` (and its subclasses) with
    ``fn(image, result, class_names, gt) -> PIL.Image``. A family registers its result's
    drawer next to the result class, at import (e.g. ``visualization/segmentation.py``).

    ``input_pixels=True`` declares that the result's maps are in the model's input pixels
    (after the pipeline's resize/crop, e.g. ``AnomalyResult``): ``fn`` then receives the
    part of the original picture that the model saw (``frame`` of :func:`draw_result`)."""
    _DRAWERS[result_type] = (fn, bool(input_pixels))


def drawer_for(result: Any) -> tuple[Any, bool]:
    """``(fn, input_pixels)`` registered for the type of ``result`` or its nearest base
    class (method resolution order); raises TypeError when no type in it has a drawer."""
    for cls in type(result).__mro__:
        if cls in _DRAWERS:
            return _DRAWERS[cls]
    raise TypeError(f"no drawing for results of type {type(result).__name__}: "
                    f"register one with defectkit.visualization.register_drawer")


def draw_result(image: Any, result: Any, class_names: Sequence[str] | None = None,
                gt: Any = None, pipeline: Any = None) -> Image.Image:
    """Draw any per-image result of ``model.predict`` with the drawer registered for its
    type (:func:`register_drawer`): THE entry point of ``tools/infer.py`` and ``tools/test.py``.

    ``image``: the ORIGINAL picture (PIL, or a [0, 1] / uint8 tensor or array as decoded by
    ``load_image``), never the pipeline-resized one: results in original pixels (detection
    boxes, segmentation masks) land on target, maps of other sizes are resized to it
    (masks nearest, heat-maps bilinear). ``class_names``: names of the result's class
    indices. ``gt``: the sample's ground truth for the result's ``gt_key`` (image label,
    mask in original pixels, or ``{"boxes", "labels"}`` in original pixels), or None.
    ``pipeline``: the test pipeline that made the model's input from ``image``; for results
    registered with ``input_pixels=True`` (maps in model-input pixels) the drawer gets the
    region of ``image`` that input covered (:func:`~defectkit.visualization.input_frame`,
    e.g. the centre after ``Resize`` + ``CenterCrop``); None: the whole image.
    Returns a new RGB ``PIL.Image``; raises TypeError for a result type nobody registered.
    """
    fn, input_pixels = drawer_for(result)
    img = to_pil(image)
    if input_pixels and pipeline is not None:
        from .frame import input_frame

        x0, y0, x1, y1 = (int(round(v)) for v in input_frame(pipeline, img.height, img.width))
        if (x0, y0, x1, y1) != (0, 0, img.width, img.height) and x1 > x0 and y1 > y0:
            img = img.crop((x0, y0, x1, y1))
            if isinstance(gt, (torch.Tensor, np.ndarray)) and gt.ndim >= 2:   # a GT mask
                gt = gt[..., max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    return fn(img, result, class_names, gt)


def _register_builtin() -> None:
    from ..structures import ClassificationResult, DetectionResult

    register_drawer(ClassificationResult, lambda image, r, names, gt: draw_classification(image, r, names, gt=gt))
    register_drawer(DetectionResult, lambda image, r, names, gt: draw_detection(image, r, names, gt=gt))


_register_builtin()
