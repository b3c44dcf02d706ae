"""COCO detection json (``images``, ``annotations``, ``categories``).

* Classes come from ``categories`` sorted by id; labels are contiguous 0-based.
* A normal image is an image with no defect box. ``normal_category`` names a
  category used as a normal marker (DefectNet's id 0 "背景"): its boxes are
  dropped and it is not a class.
* Boxes ``[x, y, w, h]`` become XYXY; a box may stick out of the image by up to
  ``BOX_TOLERANCE`` px (it is clipped), more is an error, as is ``w <= 0``/``h <= 0``.
* ``iscrowd: 1`` annotations are ignored (``meta['num_crowd']`` counts them).
* ``filter_empty`` drops normal images (e.g. a detector trained on defects only).
* ``skip_invalid``: an invalid annotation is dropped and its image kept with its
  valid boxes (mmdetection); an image is dropped when the image entry is invalid or
  when every defect annotation it had was invalid (it is not known to be normal).
* Missing ``width``/``height`` are read from the image header, as the image is
  decoded: EXIF-turned unless ``exif_orientation=False``.
* Severity grade of an annotation (``Record.grade_values``, used by
  ``CocoDataset(with_grades=True)``): its ``"severity"`` key (what ``tools/make_synth.py``
  writes) or ``"attributes": {"severity": ...}`` (CVAT's COCO export); a string or a number
  (``3`` and ``3.0`` are grade ``"3"``), null = no grade; both present and different, or a
  list/dict value, is an error of that annotation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .common import (DataFormatError, Problems, Record, as_boxes, as_labels, check_box,
                     check_nonempty, grade_text, image_size, logger, require_path)

GRADE_KEY = "severity"


def _grade(a: dict, where: str) -> str | None:
    """The severity grade name of annotation ``a`` (see the module docstring) or None."""
    attrs = a.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        raise DataFormatError(f"{where}: 'attributes' must be an object, got {attrs!r}")
    try:
        direct = grade_text(a.get(GRADE_KEY))
        attr = grade_text((attrs or {}).get(GRADE_KEY))
    except TypeError as e:
        raise DataFormatError(f"{where}: {GRADE_KEY}: {e}") from None
    if direct is not None and attr is not None and direct != attr:
        raise DataFormatError(f"{where}: '{GRADE_KEY}' {direct!r} and attributes.{GRADE_KEY} "
                              f"{attr!r} differ")
    return direct if direct is not None else attr

_NORMAL_NAMES = {"背景", "background", "normal", "bg", "good", "ok"}


def read_coco(ann_file: str | os.PathLike, img_dir: str | os.PathLike,
              normal_category: int | None = None, filter_empty: bool = False,
              skip_invalid: bool = False, check_images: bool = True,
              return_category_ids: bool = False,
              exif_orientation: bool = True) -> tuple[list[Record], list[str]]:
    """``(records, classes)``; with ``return_category_ids`` also the file's own category id of
    each class (``classes[k]`` is category ``ids[k]``), what exports map labels back to."""
    ann_path = require_path(ann_file, "ann_file")
    img_root = require_path(img_dir, "img_dir", kind="dir")
    try:
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{ann_path}: broken JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{ann_path}: not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise DataFormatError(f"{ann_path}: top level must be an object with 'images', "
                              f"'annotations' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(f"{ann_path}: field '{key}' is missing or not a list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DataFormatError(f"{ann_path}: field 'annotations' is not a list")

    # ---- categories
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise DataFormatError(f"{ann_path}: categories[{i}] has no 'id'")
        cid = int(c["id"])
        if cid in cats:
            raise DataFormatError(f"{ann_path}: categories[{i}].id {cid} is duplicated")
        cats[cid] = str(c.get("name", cid))
    if normal_category is not None:
        normal_category = int(normal_category)
        if normal_category not in cats:
            raise DataFormatError(f"{ann_path}: normal_category {normal_category} is not a "
                                  f"category id of the file (categories: {sorted(cats)})")
    else:
        for cid, name in cats.items():
            if name.strip().lower() in _NORMAL_NAMES:
                logger.warning("%s: category %d %r looks like a normal-image marker; set "
                               "normal_category: %d if it is one (it is a defect class now)",
                               ann_path, cid, name, cid)
    defect_ids = sorted(c for c in cats if c != normal_category)
    classes = [cats[c] for c in defect_ids]
    cat2label = {c: i for i, c in enumerate(defect_ids)}

    problems = Problems(skip_invalid, str(ann_path))

    # ---- images
    images: dict = {}
    order = []
    bad_images: set = set()
    for i, im in enumerate(data["images"]):
        where = f"{ann_path}: images[{i}]"
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            problems(DataFormatError(f"{where}: needs 'id' and 'file_name'"))
            continue
        iid = im["id"]
        where = f"{ann_path}: images[{i}] (id {iid}, {im['file_name']})"
        if iid in images or iid in bad_images:
            raise DataFormatError(f"{where}: id {iid} is duplicated")
        path = img_root / str(im["file_name"]).replace("\\", "/")
        try:
            if check_images and not path.is_file():
                raise DataFormatError(f"{where}: file_name: image file not found: {path}")
            w, h = im.get("width"), im.get("height")
            if w is None or h is None:
                w, h = image_size(path, exif_orientation)   # as the image is decoded
            w, h = int(w), int(h)
            if w <= 0 or h <= 0:
                raise DataFormatError(f"{where}: width/height must be > 0, got {w}x{h}")
        except DataFormatError as e:
            bad_images.add(iid)
            problems(e)
            continue
        images[iid] = dict(path=path, width=w, height=h, file_name=im["file_name"],
                           boxes=[], labels=[], grades=[], crowd=0, normal_marks=0, dropped=0)
        order.append(iid)

    # ---- annotations
    for j, a in enumerate(anns):
        aid = a.get("id", j) if isinstance(a, dict) else j
        where = f"{ann_path}: annotations[{j}] (id {aid})"
        if not isinstance(a, dict):
            problems(DataFormatError(f"{where}: not an object"), "annotation")
            continue
        iid = a.get("image_id")
        if iid in bad_images:
            continue
        if iid not in images:
            problems(DataFormatError(f"{where}: image_id {iid!r} is not in 'images'"), "annotation")
            continue
        im = images[iid]
        try:
            cid = a.get("category_id")
            if cid is None or int(cid) not in cats:
                raise DataFormatError(f"{where}: category_id {cid!r} is not a known category "
                                      f"(categories: {sorted(cats)})")
            cid = int(cid)
            if cid == normal_category:
                im["normal_marks"] += 1
                continue
            if a.get("iscrowd", 0):
                im["crowd"] += 1
                continue
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DataFormatError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            x, y, bw, bh = (float(v) for v in bbox)
            box = check_box(x, y, x + bw, y + bh, im["width"], im["height"],
                            f"{where}: bbox {list(bbox)} of {im['file_name']}")
            grade = _grade(a, where)
        except (DataFormatError, TypeError, ValueError) as e:
            if not isinstance(e, DataFormatError):
                e = DataFormatError(f"{where}: {e}")
            problems(e, "annotation")   # skip_invalid: only this annotation is dropped
            im["dropped"] += 1
            continue
        im["boxes"].append(box)
        im["labels"].append(cat2label[cid])
        im["grades"].append((where, grade))

    records = []
    for iid in order:
        if iid not in images:
            continue
        im = images[iid]
        if im["dropped"] and not im["boxes"]:
            problems.dropped("image")   # every defect annotation invalid: not a normal image
            continue
        defective = int(len(im["boxes"]) > 0)
        if filter_empty and not defective:
            continue
        records.append(Record(
            img_path=str(im["path"]), id=iid, boxes=as_boxes(im["boxes"]),
            labels=as_labels(im["labels"]), is_defective=defective,
            width=im["width"], height=im["height"],
            meta={"file_name": im["file_name"], "num_crowd": im["crowd"]},
            grade_values=im["grades"]))
    problems.report()
    check_nonempty(records, str(ann_path),
                   "defective images (filter_empty=True)" if filter_empty else "images")
    return (records, classes, list(defect_ids)) if return_category_ids else (records, classes)


def coco_category_names(ann_file: str | os.PathLike) -> dict[int, str]:
    """``{id: name}`` of a COCO json (a helper for tools and evaluators)."""
    with open(Path(ann_file), encoding="utf-8") as f:
        return {int(c["id"]): str(c.get("name", c["id"])) for c in json.load(f)["categories"]}
