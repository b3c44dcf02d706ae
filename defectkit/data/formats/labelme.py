"""LabelMe 4.x/5.x JSON (one file per image; BSData uses it).

Keys read: ``imagePath`` (relative to the JSON's folder, Windows separators
accepted), ``imageWidth``/``imageHeight`` and ``shapes[i].{label, points, shape_type}``.
``shape_type`` ``polygon`` (>= 3 points), ``rectangle`` (2 corner points) and
``circle`` (centre, point on the circle) are supported; other types are an error. A
polygon whose points lie on one column or row is that one-pixel line (box ``x2 = x1 + 1``;
all points equal: still a degenerate-box error). A
circle may cross the image border (LabelMe keeps only its two clicks in the image): its
clicks are checked, the circle is clipped.
The embedded ``imageData`` is ignored (images are read from disk).

Each shape becomes an instance: a box (the extent of its points) with its label,
and a polygon that the dataset rasterises into the class-index mask with
``PIL.ImageDraw.polygon(points, fill=k+1, outline=k+1)`` (LabelMe's own
``shape_to_mask`` rule: float vertices, boundary pixels included); later shapes
are drawn over earlier ones. Instance masks (``with_instances``): shapes with the same
``label`` and ``group_id`` (not null) are ONE instance, labelme2coco's rule
(``Record.polygon_groups``); ``group_id`` must be an integer or null.

Classes: the config's ``classes`` (an unknown label is an error) or the sorted
label names found. ``skip_invalid``: an invalid shape (bad points, unsupported type,
outside the image, unknown label) is dropped and its image kept with the valid
shapes (its pixels then count as background); an image is dropped when its JSON is
invalid or when every shape in it was. Two JSONs whose ``imagePath`` lead to one image are
an error naming both (``skip_invalid``: the later one, in sorted order, is dropped). Without ``imageWidth``/``imageHeight`` the
size comes from the image header, EXIF-turned unless ``exif_orientation=False``. Images in ``img_dir`` without a JSON: ``unlabeled='skip'``
(default; BSData's unannotated images are unlabelled, not clean negatives) or
``'normal'`` (kept as normal images with an empty mask).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .common import (BOX_TOLERANCE, DataFormatError, Problems, Record, as_boxes, as_labels,
                     check_box, check_nonempty, image_size, list_images, read_split_file,
                     keep_known, require_path, resolve_classes)

SHAPE_TYPES = ("polygon", "rectangle", "circle")
SPLIT_MODES = ("official", "wear_dev", "random")


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: broken JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: top level must be a LabelMe object")
    return data


def _shape_polygon(shape: dict, where: str) -> list[tuple[float, float]]:
    st = shape.get("shape_type") or "polygon"
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pts):
        raise DataFormatError(f"{where}.points: expected a list of [x, y], got {pts!r}"[:300])
    pts = [(float(x), float(y)) for x, y in pts]
    if st == "polygon":
        if len(pts) < 3:
            raise DataFormatError(f"{where}.points: a polygon needs >= 3 points, got {len(pts)}")
        return pts
    if st == "rectangle":
        if len(pts) != 2:
            raise DataFormatError(f"{where}.points: a rectangle needs 2 points, got {len(pts)}")
        (xa, ya), (xb, yb) = pts
        x1, x2, y1, y2 = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if st == "circle":
        if len(pts) != 2:
            raise DataFormatError(f"{where}.points: a circle needs 2 points, got {len(pts)}")
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        n = max(16, int(2 * math.pi * r / 2))
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
                for k in range(n)]
    raise DataFormatError(f"{where}.shape_type: {st!r} is not supported "
                          f"(supported: {', '.join(SHAPE_TYPES)})")


def _shape(s, where: str, w: int, h: int):
    """``(label, polygon clipped to the image, box, group_id)`` of one LabelMe shape."""
    if not isinstance(s, dict) or not isinstance(s.get("label"), str):
        raise DataFormatError(f"{where}.label: missing or not a string")
    group = s.get("group_id")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (int, str))):
        raise DataFormatError(f"{where}.group_id: expected an integer or null, got {group!r}"[:300])
    try:
        poly = _shape_polygon(s, where)
    except (TypeError, ValueError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{where}.points: {e}") from None
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    if (s.get("shape_type") or "polygon") == "circle":
        # LabelMe keeps the two clicks (centre, rim point) in the image, not the circle:
        # the clicks are checked, the circle is clipped by the rasteriser (its vertices are
        # NOT clamped: that would add a straight wall along the border) and its box here
        for x, y in s["points"]:
            x, y = float(x), float(y)
            if not (-BOX_TOLERANCE <= x <= w + BOX_TOLERANCE and -BOX_TOLERANCE <= y <= h + BOX_TOLERANCE):
                raise DataFormatError(f"{where}.points: circle point [{x:g}, {y:g}] is outside the "
                                      f"{w}x{h} image (tolerance {BOX_TOLERANCE:g} px)")
        box = check_box(max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs), w), min(max(ys), h),
                        w, h, f"{where}.points")
        return s["label"], poly, box, group
    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    # a polygon with all its points on one column / row (a one-pixel line, as make_synth's
    # sensor preset writes a dead column) is drawn as that line: its box is the line's
    # pixel edges (x2 = x1 + 1), not a degenerate-box error
    if (x2 == x1) != (y2 == y1):          # every point the same: still a degenerate box
        x2, y2 = (x1 + 1 if x2 == x1 else x2), (y1 + 1 if y2 == y1 else y2)
    box = check_box(x1, y1, x2, y2, w, h, f"{where}.points")
    return s["label"], [(min(max(x, 0.0), w), min(max(y, 0.0), h)) for x, y in poly], box, group


def _find_image(js: Path, image_path: str | None, img_root: Path | None) -> Path:
    rel = (image_path or "").replace("\\", "/")
    candidates = []
    if img_root is not None:
        if rel:
            candidates.append(img_root / Path(rel).name)
        for ext in (".jpg", ".png", ".jpeg", ".bmp", ".tif", ".tiff"):
            candidates.append(img_root / (js.stem + ext))
    if rel:
        candidates.append(js.parent / rel)
    for c in candidates:
        if c.is_file():
            return c
    shown = candidates[0] if candidates else js.with_suffix(".jpg")
    raise DataFormatError(f"{js}: imagePath: image file not found: {shown}")


def read_labelme(ann_dir: str | os.PathLike, img_dir: str | os.PathLike | None = None,
                 classes: list[str] | None = None, unlabeled: str = "skip",
                 split_file: str | os.PathLike | None = None, split: str | None = None,
                 skip_invalid: bool = False, split_mode: str = "official",
                 test_fraction: float = 0.2, split_seed: int = 7,
                 exif_orientation: bool = True) -> tuple[list[Record], list[str]]:
    """``split_file``: a text file of image stems, or BSData's ``image_data.json``
    (``images[].filename`` / ``train_test_split``, selected by ``split``).

    ``split_mode`` (``split`` is then ``train`` or ``test``):
    ``official`` the lists above; ``wear_dev`` (BSData json) a split by wear-development
    sequence (see ``_wear_dev_split``); ``random`` a seeded split of the sorted stems
    (no split_file needed): ``int(test_fraction * N)`` test images (ZNet: N // 5, seed 7),
    annotated and unannotated images drawn separately."""
    if split_mode not in SPLIT_MODES:
        raise DataFormatError(f"split_mode: must be one of {SPLIT_MODES}, got {split_mode!r}")
    if split_mode != "official" and split not in ("train", "test"):
        raise DataFormatError(f"split: must be 'train' or 'test' with split_mode {split_mode!r}, got {split!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataFormatError(f"test_fraction: must be in (0, 1), got {test_fraction!r}")
    if unlabeled not in ("skip", "normal"):
        raise DataFormatError(f"unlabeled: must be 'skip' or 'normal', got {unlabeled!r}")
    aroot = require_path(ann_dir, "ann_dir", kind="dir")
    img_root = require_path(img_dir, "img_dir", kind="dir") if img_dir is not None else None
    if unlabeled == "normal" and img_root is None:
        raise DataFormatError("unlabeled: 'normal' needs img_dir (the folder listing every image)")
    if split_mode == "random":
        keep = random_split(sorted(js.stem for js in aroot.glob("*.json")), test_fraction, split_seed)[split]
        if unlabeled == "normal":
            annotated = {js.stem for js in aroot.glob("*.json")}
            keep |= random_split([p.stem for p in list_images(img_root) if p.stem not in annotated],
                                 test_fraction, split_seed)[split]
    else:
        keep = _split_stems(split_file, split, split_mode, test_fraction, split_seed)
    problems = Problems(skip_invalid, str(aroot))

    parsed = []   # (json, image, w, h, [(shape index, label, polygon, box, group)], invalid shapes)
    owner: dict[Path, Path] = {}    # image -> the JSON that annotates it
    for js in sorted(aroot.glob("*.json")):
        if keep is not None and js.stem not in keep:
            continue
        try:
            data = _load_json(js)
            if not isinstance(data.get("shapes", []), list):
                raise DataFormatError(f"{js}: shapes: must be a list")
            img = _find_image(js, data.get("imagePath"), img_root)
            first = owner.setdefault(img.resolve(), js)
            if first != js:       # e.g. a JSON copied for another image, imagePath not updated
                raise DataFormatError(f"{js}: imagePath: {img} is also annotated by {first} "
                                      f"(one LabelMe file per image)")
            w, h = data.get("imageWidth"), data.get("imageHeight")
            if w is None or h is None:
                w, h = image_size(img, exif_orientation)   # as the image is decoded
            w, h = int(w), int(h)
        except (DataFormatError, TypeError, ValueError) as e:
            problems(e if isinstance(e, DataFormatError) else
                     DataFormatError(f"{js}: imageWidth/imageHeight: {e}"))
            continue
        shapes, bad = [], 0
        for i, s in enumerate(data.get("shapes", [])):
            try:
                shapes.append((i, *_shape(s, f"{js}: shapes[{i}]", w, h)))
            except DataFormatError as e:
                problems(e, "shape")   # skip_invalid: only this shape is dropped
                bad += 1
        parsed.append((js, img, w, h, shapes, bad))

    classes = resolve_classes(classes, [sh[1] for *_, shapes, _ in parsed for sh in shapes],
                              str(aroot))
    index = {c: i for i, c in enumerate(classes)}
    records: list[Record] = []
    seen_images = set()
    for js, img, w, h, shapes, bad in parsed:
        kept, unknown = keep_known(shapes, index, problems, js, "shapes[{i}].label", "shape")
        bad += unknown
        if bad and not kept:
            problems.dropped("image")   # every shape invalid: not known to be normal
            continue
        seen_images.add(img.resolve())
        records.append(Record(
            img_path=str(img), id=js.stem,
            boxes=as_boxes([b for _, _, b, _ in kept]),
            labels=as_labels([index[lab] for lab, _, _, _ in kept]),
            polygons=[(index[lab], poly) for lab, poly, _, _ in kept],
            polygon_groups=[group for *_, group in kept],
            is_defective=int(len(kept) > 0), width=w, height=h,
            meta={"ann_file": str(js)}))
    if unlabeled == "normal":
        for p in list_images(img_root):
            if p.resolve() in seen_images or (keep is not None and p.stem not in keep):
                continue
            records.append(Record(img_path=str(p), id=p.stem, polygons=[], is_defective=0,
                                  meta={"ann_file": None}))
    problems.report()
    check_nonempty(records, str(aroot), "annotated images (LabelMe *.json)")
    return records, classes


def random_split(stems: list[str], test_fraction: float, seed: int) -> dict[str, set[str]]:
    """``{'train': ..., 'test': ...}``: a ``numpy.random.default_rng(seed)`` permutation of the
    SORTED stems; the first ``int(test_fraction * N)`` are test (same on every machine)."""
    stems = sorted(stems)
    order = np.random.default_rng(int(seed)).permutation(len(stems))
    n_test = int(test_fraction * len(stems))
    test = {stems[i] for i in order[:n_test]}
    return {"train": set(stems) - test, "test": test}


def _wear_dev_split(p: Path, images: list, split: str, test_fraction: float, seed: int) -> set[str]:
    """BSData split by wear-development sequence (no sequence on both sides): the sorted
    sequence ids are permuted with ``default_rng(seed)`` and the first
    ``max(1, round(test_fraction * K))`` become test sequences. An image is test when all its
    ``wear_dev`` sequences are test ones, train when none is; an image in a train AND a test
    sequence is left out of both; an image without a sequence keeps its ``train_test_split``."""
    seqs = sorted({str(w) for im in images if isinstance(im, dict) for w in (im.get("wear_dev") or [])})
    if not seqs:
        raise DataFormatError(f"{p}: split_mode 'wear_dev': no image has a wear_dev sequence")
    order = np.random.default_rng(int(seed)).permutation(len(seqs))
    test_seqs = {seqs[i] for i in order[:max(1, round(test_fraction * len(seqs)))]}
    out = set()
    for im in images:
        if not isinstance(im, dict):
            continue
        ws = {str(w) for w in (im.get("wear_dev") or [])}
        side = im.get("train_test_split") if not ws else (
            "test" if ws <= test_seqs else "train" if not ws & test_seqs else None)
        if side == split:
            out.add(Path(str(im.get("filename", ""))).stem)
    return out


def _split_stems(split_file, split, split_mode: str = "official", test_fraction: float = 0.2,
                 split_seed: int = 7) -> set[str] | None:
    if split_file is None:
        if split_mode == "wear_dev":
            raise DataFormatError("split_mode 'wear_dev' needs split_file: BSData's image_data.json")
        return None
    p = Path(split_file)
    if p.suffix.lower() != ".json":
        if split_mode == "wear_dev":
            raise DataFormatError(f"{p}: split_mode 'wear_dev' needs BSData's image_data.json")
        return set(read_split_file(p))
    data = _load_json(require_path(p, "split_file"))
    images = data.get("images")
    if not isinstance(images, list):
        raise DataFormatError(f"{p}: split_file: expected BSData's {{'images': [...]}}")
    if split is None:
        raise DataFormatError(f"{p}: split: required with a json split_file (e.g. 'train')")
    if split_mode == "wear_dev":
        stems = _wear_dev_split(p, images, split, test_fraction, split_seed)
        if not stems:
            raise DataFormatError(f"{p}: split_mode 'wear_dev' gives no {split!r} image (empty split)")
        return stems
    stems = {Path(str(im.get("filename", ""))).stem for im in images
             if isinstance(im, dict) and im.get("train_test_split") == split}
    if not stems:
        raise DataFormatError(f"{p}: no image has train_test_split == {split!r} (empty split)")
    return stems

