"""Batched crops of defect regions for the severity heads, with ``torchvision.ops.roi_align``.

The same function cuts the crops at training (ground-truth boxes) and at test (detections),
which removes the original's train/inference mismatch (research note §5.5: training crops were
hand-cut from full-resolution images and resized nearest-neighbour, inference crops were cut
from the 1280x720 resized frame and upsampled linearly).

Two kinds of region (``CropSpec.kind``):

- ``box``: the box grown by ``padding`` x its width/height on each side, clipped to the image;
- ``column_strip`` (the original's ``dash_col`` crop, ``predict_cls_img``): the full-height
  strip ``[c - width//2, c - width//2 + width)`` with ``c = int((xmin + xmax) / 2)``, shifted
  inside the image at the borders by :func:`adjust_boundary` (the original's function of the
  same name); an image narrower than ``width`` gives the whole width.

- ``window``: a fixed ``out_size`` window (px of the image cropped from) centred on
  ``int`` of the box centre, shifted inside the image by :func:`adjust_boundary` on both axes:
  the README's hand-cut "fixed-size defect patches". Unlike ``box`` it is not resized, so
  the defect's size stays visible to the head (a resized box crop shows every blob equally
  large, and the synthetic grades depend on area).

Each region is resampled to ``out_size = (h, w)`` (torch order: the strip's default is
(1080, 18), tall) by ``roi_align(aligned=True, sampling_ratio=-1)``: bilinear at bin centres
when enlarging (one sample per bin), the mean of ``ceil(region / out)`` samples per axis when
shrinking. A region of exactly ``out_size`` pixels at integer coordinates returns the pixels
themselves (``image[:, y0:y1, x0:x1]``). ``gray``: the channel mean (one channel), on
whatever the image holds (the pipeline's normalised values): the same at training and test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torchvision.ops import roi_align

CROP_KINDS = ("box", "column_strip", "window")
_CROP_KEYS = ("kind", "out_size", "padding", "width", "gray", "jitter", "train_copies", "flip")


def adjust_boundary(lo: torch.Tensor, hi: torch.Tensor, limit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift windows ``[lo, hi)`` inside ``[0, limit)`` keeping their length (the original's
    ``adjust_boundary``: a window left of 0 moves right, one past ``limit`` moves left); a
    window longer than ``limit`` becomes ``[0, limit)``. Element-wise on float tensors."""
    shift_right = (-lo).clamp(min=0)
    lo, hi = lo + shift_right, hi + shift_right
    shift_left = (hi - limit).clamp(min=0)
    lo, hi = lo - shift_left, hi - shift_left
    return lo.clamp(min=0), torch.minimum(hi, limit)


def column_strip_regions(boxes: torch.Tensor, image_hw: torch.Tensor, width: int) -> torch.Tensor:
    """Full-height strips (K, 4) XYXY of ``width`` px centred on ``int((xmin + xmax) / 2)``.

    boxes: (K, 4) XYXY px; image_hw: (K, 2) (h, w) of each box's image (float or int)."""
    boxes = boxes.float()
    hw = image_hw.to(boxes)
    centre = torch.floor((boxes[:, 0] + boxes[:, 2]) / 2)
    lo = centre - (width // 2)
    lo, hi = adjust_boundary(lo, lo + width, hw[:, 1])
    zeros = torch.zeros_like(lo)
    return torch.stack([lo, zeros, hi, hw[:, 0]], dim=1)


def window_regions(boxes: torch.Tensor, image_hw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Fixed ``size = (h, w)`` windows (K, 4) XYXY centred on ``int`` of each box centre,
    shifted inside the image (``adjust_boundary`` per axis; the whole axis when too small)."""
    boxes = boxes.float()
    hw = image_hw.to(boxes)
    h, w = int(size[0]), int(size[1])
    cx = torch.floor((boxes[:, 0] + boxes[:, 2]) / 2)
    cy = torch.floor((boxes[:, 1] + boxes[:, 3]) / 2)
    x0, x1 = adjust_boundary(cx - w // 2, cx - w // 2 + w, hw[:, 1])
    y0, y1 = adjust_boundary(cy - h // 2, cy - h // 2 + h, hw[:, 0])
    return torch.stack([x0, y0, x1, y1], dim=1)


def box_regions(boxes: torch.Tensor, image_hw: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
    """Boxes (K, 4) grown by ``padding`` x (w, h) on each side, clipped to the image (K, 4)."""
    boxes = boxes.float()
    hw = image_hw.to(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    grown = boxes + torch.stack([-w, -h, w, h], dim=1) * float(padding)
    x = grown[:, 0::2].clamp(min=0)
    y = grown[:, 1::2].clamp(min=0)
    x = torch.minimum(x, hw[:, 1:2])
    y = torch.minimum(y, hw[:, 0:1])
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def crop_regions(images: torch.Tensor, regions: torch.Tensor, batch_idx: torch.Tensor,
                 out_size: Sequence[int], gray: bool = False) -> torch.Tensor:
    """Crops (K, C or 1, h, w) of ``images`` (B, C, H, W) at ``regions`` (K, 4) XYXY px of the
    images ``batch_idx`` (K,) int64, resampled to ``out_size = (h, w)`` (module docstring)."""
    h, w = int(out_size[0]), int(out_size[1])
    if regions.numel() == 0:
        return images.new_zeros((0, 1 if gray else images.shape[1], h, w))
    if gray and images.shape[1] > 1:
        images = images.mean(1, keepdim=True)
    rois = torch.cat([batch_idx.to(images.dtype)[:, None], regions.to(images.dtype)], dim=1)
    return roi_align(images, rois, (h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def jitter_boxes(boxes: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: every box edge moved by U(-f, f) x the box's width / height
    (the detections the heads see at test time are not the exact ground-truth boxes)."""
    if fraction <= 0 or boxes.numel() == 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    scale = torch.stack([w, h, w, h], dim=1)
    noise = (torch.rand(boxes.shape, generator=generator, device=boxes.device) * 2 - 1) * fraction
    out = boxes + noise.to(boxes) * scale
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


@dataclass(frozen=True)
class CropSpec:
    """How one defect type's region is cut (``model.severity_heads.<type>.crop``).

    kind: ``box`` | ``column_strip`` | ``window``; out_size: (h, w) of the crop in px (for
    ``window`` also its size in the image); padding: ``box``
    margin as a fraction of the box size per side; width: ``column_strip`` width in px of the
    image the crop is cut from; gray: one channel (channel mean); jitter: training-only random
    move of the ground-truth box edges, as a fraction of its size (0: none); train_copies:
    crops cut per ground-truth box at training (each with its own jitter / flips: more head
    updates per detector step, the heads cost a few % of it); flip: training-only random
    horizontal and vertical flips of the crops (the original classifier's flips)."""
    kind: str = "box"
    out_size: tuple[int, int] = (64, 64)
    padding: float = 0.0
    width: int = 18
    gray: bool = False
    jitter: float = 0.0
    train_copies: int = 1
    flip: bool = False

    @classmethod
    def parse(cls, cfg: Any, where: str) -> "CropSpec":
        """From the config dict; ValueError naming ``where.<key>``."""
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: expected a dict with keys {list(_CROP_KEYS)}, got {cfg!r}")
        unknown = sorted(set(cfg) - set(_CROP_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (a crop takes {list(_CROP_KEYS)})")
        kind = cfg.get("kind", "box")
        if kind not in CROP_KINDS:
            raise ValueError(f"{where}.kind: {kind!r} is not one of {list(CROP_KINDS)}")
        default = (1080, 18) if kind == "column_strip" else (64, 64)
        size = cfg.get("out_size", default)
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise ValueError(f"{where}.out_size: expected (h, w) positive ints, got {size!r}")
        padding = cfg.get("padding", 0.0)
        if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0 <= padding < 10:
            raise ValueError(f"{where}.padding: expected a number in [0, 10), got {padding!r}")
        width = cfg.get("width", 18)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{where}.width: expected an int >= 1 (px), got {width!r}")
        gray = cfg.get("gray", False)
        if not isinstance(gray, bool):
            raise ValueError(f"{where}.gray: expected true or false, got {gray!r}")
        jitter = cfg.get("jitter", 0.0)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(f"{where}.jitter: expected a number in [0, 1), got {jitter!r}")
        copies = cfg.get("train_copies", 1)
        if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= 64:
            raise ValueError(f"{where}.train_copies: expected an int in 1..64, got {copies!r}")
        flip = cfg.get("flip", False)
        if not isinstance(flip, bool):
            raise ValueError(f"{where}.flip: expected true or false, got {flip!r}")
        return cls(kind=kind, out_size=(int(size[0]), int(size[1])), padding=float(padding),
                   width=int(width), gray=gray, jitter=float(jitter), train_copies=int(copies), flip=flip)

    def regions(self, boxes: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
        """The regions (K, 4) XYXY px to crop for ``boxes`` (K, 4) of images of size
        ``image_hw`` (K, 2) (h, w)."""
        if self.kind == "column_strip":
            return column_strip_regions(boxes, image_hw, self.width)
        if self.kind == "window":
            return window_regions(boxes, image_hw, self.out_size)
        return box_regions(boxes, image_hw, self.padding)

    def crop(self, images: torch.Tensor, boxes: torch.Tensor, batch_idx: torch.Tensor,
             image_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops (K, C|1, h, w), regions (K, 4)) for ``boxes`` of ``images[batch_idx]``."""
        regions = self.regions(boxes, image_hw) if boxes.numel() else boxes.new_zeros((0, 4))
        return crop_regions(images, regions, batch_idx, self.out_size, self.gray), regions


def match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Crops (K, C, h, w) to ``channels``: 1 -> 3 repeats, 3 -> 1 averages, None: as is."""
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"crops have {x.shape[1]} channels but the classifier takes {channels}")


def random_flips(crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each crop (K, C, h, w) flipped left-right and, independently, up-down with p = 0.5."""
    if crops.shape[0] == 0:
        return crops
    k = crops.shape[0]
    lr = torch.rand(k, generator=generator) < 0.5
    ud = torch.rand(k, generator=generator) < 0.5
    out = crops.clone()
    out[lr.to(crops.device)] = out[lr.to(crops.device)].flip(-1)
    out[ud.to(crops.device)] = out[ud.to(crops.device)].flip(-2)
    return out
