"""Writer of a generated (image, mask) dataset: the Defect-Gen output layout plus the
project's own annotation formats, all made from the class-index mask of each sample.

    <out>/images/NNNNN.png               RGB, 8 bit
    <out>/masks/NNNNN.png                colour mask (RGB, the caller's palette: Defect-Gen's 11 colours)
    <out>/masks_converted_dir/NNNNN.png  class index, uint8 (0 background, k = classes[k-1])
    <out>/labelme/NNNNN.json             LabelMe 4.x: one polygon per connected component
    <out>/coco.json                      COCO instances: one annotation per connected component
    <out>/generation.json                how the set was made (the caller's record, via finish; a stub
                                         with ``complete: false`` until then marks the folder as ours)

``images/``, ``masks/`` and ``masks_converted_dir/`` are exactly the original's
``--sample_dir`` output (research note §2, ``scripts/inference.py``; the HF ``synthetic_*``
folders). ``masks_converted_dir/`` is also the class-index mask folder of the project:
``MaskFolderDataset(img_dir=<out>/images, mask_dir=<out>/masks_converted_dir, classes=...)``
(:func:`dataset_config`). ``NNNNN`` is the index of the written sample, zero-padded to
at least 5 digits; every format holds every image (an image whose mask is all background
is a normal image: no COCO annotation, a LabelMe file with no shape).

Instances: each 8-connected component of each class ``k`` (``scipy.ndimage.label``, the
connectivity of ``evaluation/anomaly.py``) is one instance, category id ``k`` (1..K,
named ``classes[k-1]``).

- COCO ``bbox`` ``[x, y, w, h]`` on pixel edges (the component's pixels are columns
  ``x .. x+w-1``, rows ``y .. y+h-1``), as the synthetic writer's boxes; ``area`` = its
  pixel count; ``segmentation`` = one polygon along the pixel edges of its outer boundary,
  which pycocotools rasterises back to exactly the component with its holes filled.
- LabelMe ``points`` = the centres of its outer boundary pixels (Moore tracing), which the
  LabelMe rule (``PIL.ImageDraw.polygon(points, fill, outline)``, what ``LabelMeDataset``
  draws) rasterises back to exactly the component with its holes filled. A straight
  1-pixel line (or a single pixel) is written as a rectangle polygon reaching half a
  pixel past its last pixel centres, so that its box is not empty; PIL draws it on the
  same pixels.
- Holes inside a component are filled in both polygon formats (one outer polygon per
  instance); ``masks_converted_dir/`` is exact. LabelMe shapes are listed largest first
  (by filled area), so that the reader, which draws later shapes over earlier ones, puts a
  component lying in another one's hole back on top; a background hole stays filled.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..synth import writers as W

LAYOUT_DIRS = ("images", "masks", "masks_converted_dir", "labelme")
LAYOUT_FILES = ("coco.json", "generation.json")
WRITER = "defectkit.data.formats.generated"   # generation.json["writer"]: marks a folder as ours
MIN_DIGITS = 5

# directions of the pixel-edge walk, y down: +x, +y, -x, -y
_STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))
# the 8 neighbours clockwise on screen (y down), starting west
_NEIGHBOURS = ((-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1))


class GeneratedOutputError(ValueError):
    """The output folder cannot take a generated dataset (the message says why)."""


# ---------------------------------------------------------------------------- tracing
def _start(comp: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first pixel of ``comp`` in raster order (top row, leftmost)."""
    ys, xs = np.nonzero(comp)
    if ys.size == 0:
        raise ValueError("empty component")
    y0 = int(ys.min())
    return int(xs[ys == y0].min()), y0


def edge_polygon(comp: np.ndarray) -> list[tuple[int, int]]:
    """Outer boundary of ONE 8-connected component ``comp`` (bool (H, W)) along pixel
    edges: vertices ``(x, y)`` at pixel corners (pixel ``(x, y)`` covers
    ``[x, x+1] x [y, y+1]``), clockwise on screen, only where the direction changes.

    Crack following: every edge with the component on its right is walked once; at a
    corner where two diagonal pixels touch, the walk turns left, which keeps 8-connected
    pixels in one loop."""
    comp = np.asarray(comp, dtype=bool)
    p = np.pad(comp, 1)

    def outgoing(vx: int, vy: int) -> list[int]:
        a, b = p[vy, vx], p[vy, vx + 1]          # pixels (vx-1, vy-1), (vx, vy-1)
        c, d = p[vy + 1, vx], p[vy + 1, vx + 1]  # pixels (vx-1, vy), (vx, vy)
        out = []
        if d and not b:
            out.append(0)      # top edge of d
        if c and not d:
            out.append(1)      # right edge of c
        if a and not c:
            out.append(2)      # bottom edge of a
        if b and not a:
            out.append(3)      # left edge of b
        return out

    start = _start(comp)
    pts = [start]
    v, d = (start[0] + 1, start[1]), 0           # the top edge of the start pixel, going +x
    limit = 4 * comp.size + 8
    for _ in range(limit):
        out = outgoing(*v)
        nd = out[0] if len(out) == 1 else ((d + 3) % 4 if (d + 3) % 4 in out else out[0])
        if v == start and nd == 0:
            return pts
        if nd != d:
            pts.append(v)
        d = nd
        v = (v[0] + _STEP[d][0], v[1] + _STEP[d][1])
    raise RuntimeError("edge_polygon: the boundary walk did not close")   # a bug, never data


def centre_polygon(comp: np.ndarray) -> list[tuple[int, int]]:
    """Outer boundary of ONE 8-connected component ``comp`` (bool (H, W)) through the
    centres of its boundary pixels (Moore-neighbour tracing, Jacob's stopping rule:
    stop when the first move repeats), clockwise on screen, only where the direction
    changes. A single pixel gives one point."""
    comp = np.asarray(comp, dtype=bool)
    p = np.pad(comp, 1)
    start = _start(comp)
    cur, back = start, 0                        # the west neighbour of the start is background
    pts = [start]
    first = None
    for _ in range(8 * comp.size + 8):
        for i in range(1, 9):
            k = (back + i) % 8
            nx, ny = cur[0] + _NEIGHBOURS[k][0], cur[1] + _NEIGHBOURS[k][1]
            if p[ny + 1, nx + 1]:
                break
        else:
            return pts                         # an isolated pixel
        prev = (back + i - 1) % 8               # the last background neighbour checked
        bx, by = cur[0] + _NEIGHBOURS[prev][0], cur[1] + _NEIGHBOURS[prev][1]
        move = (cur, (nx, ny))
        if first is None:
            first = move
        elif move == first:
            break
        cur = (nx, ny)
        back = _NEIGHBOURS.index((bx - nx, by - ny))
        pts.append(cur)
    else:
        raise RuntimeError("centre_polygon: the boundary walk did not close")
    pts.pop()                                   # the start, reached again
    return _corners(pts)


def _corners(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``pts`` (a closed path) without the points inside a straight run."""
    if len(pts) < 3:
        return pts
    out = []
    n = len(pts)
    for i, q in enumerate(pts):
        a, b = pts[i - 1], pts[(i + 1) % n]
        if (q[0] - a[0], q[1] - a[1]) != (b[0] - q[0], b[1] - q[1]):
            out.append(q)
    return out or pts[:1]


def labelme_points(comp: np.ndarray) -> list[list[float]]:
    """LabelMe polygon points of one component (see the module docstring): the boundary
    pixel centres; a straight 1-pixel line / single pixel as a rectangle from its first
    pixel centre to half a pixel past its last one."""
    pts = centre_polygon(comp)
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    if min(xs) == max(xs) or min(ys) == max(ys):
        x0, y0, x1, y1 = min(xs), min(ys), max(xs) + 0.5, max(ys) + 0.5
        return [[float(x0), float(y0)], [x1, float(y0)], [x1, y1], [float(x0), y1]]
    while len(pts) < 3:                        # two diagonal pixels: a polygon needs 3 points
        pts = pts + pts[:1]
    return [[float(x), float(y)] for x, y in pts]


def mask_components(mask: np.ndarray, num_classes: int) -> list[dict]:
    """One dict per 8-connected component of each class ``k = 1..num_classes`` of the
    class-index ``mask`` ((H, W) int), in class order, then raster order of the
    component's first pixel: ``category_id`` (k), ``box`` (x0, y0, x1, y1) on pixel
    edges (x1, y1 exclusive), ``area`` (pixels), ``filled_area`` (pixels with its holes
    filled: the area of its polygons), ``edge_polygon`` / ``labelme_points``
    in image coordinates (see :func:`edge_polygon`, :func:`labelme_points`)."""
    from scipy import ndimage

    mask = np.asarray(mask)
    out = []
    for k in range(1, int(num_classes) + 1):
        lab, n = ndimage.label(mask == k, structure=np.ones((3, 3), dtype=int))
        if n == 0:
            continue
        for j, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == j
            oy, ox = sl[0].start, sl[1].start
            out.append({
                "category_id": k,
                "box": (ox, oy, sl[1].stop, sl[0].stop),
                "area": int(comp.sum()),
                "filled_area": int(ndimage.binary_fill_holes(comp).sum()),
                "edge_polygon": [(x + ox, y + oy) for x, y in edge_polygon(comp)],
                "labelme_points": [[x + ox, y + oy] for x, y in labelme_points(comp)],
            })
    return out


# ---------------------------------------------------------------------------- writer
def stem_digits(num: int) -> int:
    """Zero-padding of the file stems: at least 5 digits (the original's ``%05d``)."""
    return max(MIN_DIGITS, len(str(max(int(num) - 1, 0))))


def _written_by_us(out: Path) -> bool:
    """Whether ``out/generation.json`` is this writer's (complete or interrupted) record."""
    import json

    try:
        data = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("writer") == WRITER or data.get("tool") == "tools/generate.py")


def _has_files(path: Path) -> bool:
    return path.is_file() or any(p.is_file() or p.is_symlink() for p in path.rglob("*"))


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` with the layout's folders. A previous generated dataset in it (only
    layout entries, and a ``generation.json`` written by this writer, even one of an
    interrupted run) is replaced; any other content is refused
    (:class:`GeneratedOutputError`), so a wrong ``--out`` never deletes a user's files
    (e.g. a dataset of the user's own with ``images/`` and ``masks/`` folders)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GeneratedOutputError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        entries = sorted(os.listdir(out))
        foreign = [e for e in entries if e not in LAYOUT_DIRS + LAYOUT_FILES]
        if foreign:
            raise GeneratedOutputError(
                f"--out {out} is not empty and does not hold a generated dataset (found "
                f"{', '.join(foreign[:5])}); choose an empty or new directory")
        filled = [e for e in entries if _has_files(out / e)]
        if filled and not _written_by_us(out):
            raise GeneratedOutputError(
                f"--out {out} holds {', '.join(filled[:5])} but no generation.json of tools/generate.py, "
                f"so it is not a generated dataset (it may be your own data); choose an empty or new directory")
        for e in entries:                      # an earlier generated set: replace it entirely
            path = out / e
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for d in LAYOUT_DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    return out


class GeneratedDatasetWriter:
    """Writes samples one by one into the layout above; :meth:`finish` writes ``coco.json``
    and ``generation.json``.

    ``classes``: the K defect class names (mask value k = ``classes[k-1]``);
    ``colour_mask``: class-index (H, W) array -> RGB PIL image of ``masks/``
    (``tools/generate.py`` passes ``defectkit.models.generation.colour_mask``, the
    original's palette; the data layer does not import the models); ``num``: the number
    of samples planned, which sets the stem width (:func:`stem_digits`)."""

    def __init__(self, out_dir: str | os.PathLike, classes: Sequence[str],
                 colour_mask: Callable[[np.ndarray], Image.Image], num: int):
        if not classes:
            raise GeneratedOutputError("classes: at least one defect class name is needed")
        self.out = prepare_out_dir(out_dir)
        self.classes = [str(c) for c in classes]
        # marks the folder as ours from the start (an interrupted run can be replaced by the next)
        W.dump_json({"writer": WRITER, "complete": False, "classes": self.classes},
                    self.out / "generation.json", indent=2)
        self.colour_mask = colour_mask
        self.digits = stem_digits(num)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.samples: list[dict] = []

    def add(self, image: np.ndarray, mask: np.ndarray, info: dict | None = None) -> str:
        """Write one sample: ``image`` uint8 (H, W, 3) RGB, ``mask`` (H, W) integer class
        index in ``0..K``; ``info`` (e.g. its seed) goes to ``generation.json``'s
        ``samples`` entry. Returns the file name ``NNNNN.png``."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        mask = np.asarray(mask)
        h, w = mask.shape
        if image.shape != (h, w, 3):
            raise ValueError(f"image shape {image.shape} does not match mask shape {mask.shape} (H, W, 3 expected)")
        hi, lo = int(mask.max()) if mask.size else 0, int(mask.min()) if mask.size else 0
        if lo < 0 or hi > len(self.classes):
            raise ValueError(f"mask value {hi if hi > len(self.classes) else lo} outside 0..{len(self.classes)} "
                             f"(classes: {self.classes})")
        index = len(self.samples)
        stem = f"{index:0{self.digits}d}"
        name = f"{stem}.png"
        index_mask = mask.astype(np.uint8)
        W.save_png(self.out / "images" / name, image)
        W.save_png(self.out / "masks_converted_dir" / name, index_mask, level=6)
        self.colour_mask(index_mask).save(self.out / "masks" / name, "PNG", compress_level=6)

        comps = mask_components(index_mask, len(self.classes))
        image_id = index + 1
        self.images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for c in comps:
            x0, y0, x1, y1 = c["box"]
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": c["category_id"],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": c["area"], "iscrowd": 0,
                "segmentation": [[float(v) for xy in c["edge_polygon"] for v in xy]]})
        # LabelMe draws later shapes over earlier ones: larger (filled) first, so that a component
        # lying inside another one's outline (e.g. a stain within a hole) is drawn over it
        shapes = [{"name": self.classes[c["category_id"] - 1], "points": c["labelme_points"]}
                  for c in sorted(comps, key=lambda c: -c["filled_area"])]
        W.dump_json(W.labelme(name, w, h, shapes), self.out / "labelme" / f"{stem}.json", indent=2)
        counts = np.bincount(index_mask.ravel(), minlength=len(self.classes) + 1)
        self.samples.append({"file": name, **(info or {}), "instances": len(comps),
                             "class_pixels": {self.classes[k - 1]: int(counts[k])
                                              for k in range(1, len(self.classes) + 1) if counts[k]}})
        return name

    def coco(self) -> dict:
        """The COCO dict of what was written so far."""
        return {"info": {"description": "defectkit generated dataset (Defect-Gen)", "version": "1.0"},
                "licenses": [], "images": list(self.images), "annotations": list(self.annotations),
                "categories": [{"id": i + 1, "name": c, "supercategory": "defect"}
                               for i, c in enumerate(self.classes)]}

    def finish(self, info: dict) -> dict:
        """Write ``coco.json`` and ``generation.json`` (``info`` plus ``writer``, ``complete``
        (true; false in the stub written at the start), ``classes``, ``count`` written,
        ``layout`` and the per-sample ``samples`` entries); returns the latter."""
        W.dump_json(self.coco(), self.out / "coco.json")
        record = {**info, "writer": WRITER, "complete": True, "classes": list(self.classes),
                  "count": len(self.samples), "layout": layout_description(), "samples": self.samples}
        W.dump_json(_jsonable(record), self.out / "generation.json", indent=2)
        return record


def _jsonable(obj):
    """Plain JSON types (tuples as lists, numpy scalars as numbers, other objects as str)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def layout_description() -> dict:
    """What each entry of the output folder holds (stored in generation.json)."""
    return {"images": "RGB PNG", "masks": "colour mask PNG (palette)",
            "masks_converted_dir": "class-index PNG (uint8, 0 background, k = classes[k-1]); "
                                   "MaskFolderDataset mask_dir",
            "labelme": "LabelMe JSON, one polygon per 8-connected component of each class",
            "coco.json": "COCO instances, one annotation per 8-connected component of each class; "
                         "img_dir = images"}


def dataset_config(out_dir: str | os.PathLike, classes: Sequence[str] | None = None,
                   pipeline: list | None = None) -> dict:
    """The ``MaskFolderDataset`` config of a generated folder (classes from its
    ``generation.json`` unless given)."""
    out = Path(out_dir)
    if classes is None:
        classes = read_generation(out)["classes"]
    cfg = {"type": "MaskFolderDataset", "img_dir": str(out / "images"),
           "mask_dir": str(out / "masks_converted_dir"), "classes": list(classes)}
    if pipeline is not None:
        cfg["pipeline"] = pipeline
    return cfg


def read_generation(out_dir: str | os.PathLike) -> dict:
    """``generation.json`` of a generated folder; ``DataFormatError`` naming the file when
    the folder is not one."""
    import json

    from .common import DataFormatError

    path = Path(out_dir) / "generation.json"
    if not path.is_file():
        raise DataFormatError(f"{path}: not found: {out_dir} is not a folder written by tools/generate.py")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: broken JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise DataFormatError(f"{path}: field 'classes' is missing or empty")
    if data.get("complete") is False:
        raise DataFormatError(f"{path}: field 'complete' is false: the tools/generate.py run that writes "
                              f"{out_dir} did not finish (still running, or interrupted: run it again)")
    return data
