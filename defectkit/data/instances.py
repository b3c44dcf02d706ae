"""Instance targets (Mask R-CNN): one binary mask per object, with its class and box.

- LabelMe / polygon sources: ONE INSTANCE PER SHAPE (shapes sharing a LabelMe ``group_id``
  and label: one instance, as labelme2coco), each polygon rasterised on its own
  with the same rule as the semantic mask (``PIL.ImageDraw.polygon``, fill and outline,
  LabelMe's ``shape_to_mask``); overlapping shapes stay separate instances.
- Class-index mask PNGs: the CONNECTED COMPONENTS of each class (``scipy.ndimage.label``,
  8-connectivity: pixels touching by a corner are one instance), classes in increasing
  order, components in scan order (top-left first).

Boxes are DERIVED FROM THE MASKS, in pixel-edge XYXY: ``x1 = min col``, ``x2 = max col + 1``
(the convention of pycocotools' ``toBbox``: a one-pixel instance is a 1x1 box). A shape
that rasterises to no pixel (only possible for a polygon entirely outside the image) is
dropped. The dataset keeps masks, boxes and labels aligned in the sample as
``instance_masks`` (``tv_tensors.Mask`` (N, H, W) uint8), ``boxes``, ``labels``
(``BaseDataset.load_instances``), so resizes / flips / pads move them together and
``SanitizeBoundingBoxes`` drops an instance's mask with its box.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def polygon_instances(polygons: list, height: int, width: int,
                      groups: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[(label, [(x, y), ...]), ...]`` -> (masks (N, H, W) uint8 0/1, labels (N,) int64),
    one instance per polygon, except that polygons sharing a label and a ``groups`` entry
    (aligned with ``polygons``; None = ungrouped; LabelMe's ``group_id``) are one instance
    (the union of their pixels, in the place of the first); empty instances dropped."""
    masks, labels, where = [], [], {}
    for (label, pts), group in zip(polygons, groups or [None] * len(polygons)):
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in pts], fill=1, outline=1)
        m = np.asarray(canvas, dtype=np.uint8)
        key = None if group is None else (int(label), group)
        if key in where:
            masks[where[key]] = masks[where[key]] | m
            continue
        if key is not None:
            where[key] = len(masks)
        masks.append(m)
        labels.append(int(label))
    keep = [k for k, m in enumerate(masks) if m.any()]
    return _stack([masks[k] for k in keep], [labels[k] for k in keep], height, width)


def mask_instances(class_mask: np.ndarray, num_classes: int | None = None,
                   ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Class-index mask (H, W) (0 background, ``k + 1`` = class ``k``) -> (masks (N, H, W)
    uint8, labels (N,) int64 0-based): the 8-connected components of every class value
    (``ignore_index`` and 0 are not instances; ``num_classes``: values above it are ignored)."""
    from scipy import ndimage

    class_mask = np.asarray(class_mask)
    h, w = class_mask.shape[-2:]
    masks, labels = [], []
    values = [int(v) for v in np.unique(class_mask) if v > 0 and v != ignore_index
              and (num_classes is None or v <= num_classes)]
    for v in values:
        comp, n = ndimage.label(class_mask == v, structure=np.ones((3, 3), dtype=bool))
        for k in range(1, n + 1):
            masks.append((comp == k).astype(np.uint8))
            labels.append(v - 1)
    return _stack(masks, labels, h, w)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) binary -> (N, 4) float32 XYXY pixel-edge boxes (``x2 = max col + 1``)."""
    masks = np.asarray(masks)
    out = np.zeros((masks.shape[0], 4), np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if xs.size:
            out[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def _stack(masks: list, labels: list, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if not masks:
        return np.zeros((0, h, w), np.uint8), np.zeros((0,), np.int64)
    return np.stack(masks).astype(np.uint8), np.asarray(labels, dtype=np.int64)
