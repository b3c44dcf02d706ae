"""MVTec AD layout, and a generic normal/abnormal folder layout.

MVTec AD (one category)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png   (0 / 255)

``train`` is ``train/good`` only; ``test`` is ``test/good`` (normal) plus every
``test/<defect_type>`` with its ground-truth mask. Masks are binary (non-zero -> 1),
decoded when a sample is loaded by ``images.decode_mask`` (any of its modes, by real
values); a mask whose size is not its image's is an error naming both files.
Normal images get an all-zero mask. ``meta['defect_type']`` is ``good`` or the type.

Folder layout (``read_anomaly_folders``): ``normal_dir`` (normal images),
``abnormal_dir`` (defective images, directly or in ``<defect_type>/`` subfolders)
and optionally ``mask_dir`` with ``<stem><mask_suffix>.<ext>`` binary masks for the
abnormal images (searched in ``mask_dir`` and ``mask_dir/<defect_type>``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .common import (DataFormatError, Problems, Record, check_nonempty, find_by_stem,
                     list_images, require_path)

ANOMALY_CLASSES = ["defect"]


def mvtec_category_dir(root: str | os.PathLike, category: str | None) -> Path:
    base = require_path(root, "root", kind="dir")
    if category:
        cat = base / category
        if not cat.is_dir():
            found = sorted(p.name for p in base.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
            raise DataFormatError(f"category: {cat} not found (categories in {base}: {found})")
        return cat
    if (base / "train").is_dir() or (base / "test").is_dir():
        return base
    found = sorted(p.name for p in base.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
    raise DataFormatError(f"root: {base} has no train/ or test/ folder; set category "
                          f"(categories found: {found})")


def read_mvtec(root: str | os.PathLike, category: str | None = None, split: str = "train",
               skip_invalid: bool = False) -> tuple[list[Record], list[str], list[str]]:
    """Records, classes (``["defect"]``) and the sorted defect types of the split."""
    if split not in ("train", "test"):
        raise DataFormatError(f"split: must be 'train' or 'test', got {split!r}")
    cat = mvtec_category_dir(root, category)
    split_dir = cat / split
    if not split_dir.is_dir():
        raise DataFormatError(f"{split_dir}: split folder not found (split={split!r})")
    problems = Problems(skip_invalid, str(split_dir))
    records: list[Record] = []
    good = split_dir / "good"
    if split == "train":
        if not good.is_dir():
            raise DataFormatError(f"{good}: train/good folder not found")
        types = []
    else:
        types = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name != "good")
    for p in list_images(good) if good.is_dir() else []:
        records.append(Record(img_path=str(p), id=f"good/{p.stem}", mask_kind="binary",
                              is_defective=0, meta={"defect_type": "good"}))
    for t in types:
        gt_dir = cat / "ground_truth" / t
        for p in list_images(split_dir / t):
            mask = find_by_stem(gt_dir, p.stem, "_mask") if gt_dir.is_dir() else None
            if mask is None:
                problems(DataFormatError(f"{p}: ground-truth mask not found "
                                         f"({gt_dir / (p.stem + '_mask.png')})"))
                continue
            records.append(Record(img_path=str(p), id=f"{t}/{p.stem}", mask_path=str(mask),
                                  mask_kind="binary", is_defective=1,
                                  meta={"defect_type": t}))
    problems.report()
    check_nonempty(records, str(split_dir))
    return records, list(ANOMALY_CLASSES), types


def read_anomaly_folders(normal_dir: str | os.PathLike | None,
                         abnormal_dir: str | os.PathLike | None = None,
                         mask_dir: str | os.PathLike | None = None, mask_suffix: str = "_mask",
                         skip_invalid: bool = False) -> tuple[list[Record], list[str], list[str]]:
    if normal_dir is None and abnormal_dir is None:
        raise DataFormatError("normal_dir / abnormal_dir: at least one is required")
    records: list[Record] = []
    with_mask = mask_dir is not None
    mroot = require_path(mask_dir, "mask_dir", kind="dir") if with_mask else None
    if normal_dir is not None:
        nroot = require_path(normal_dir, "normal_dir", kind="dir")
        for p in list_images(nroot, recursive=True):
            records.append(Record(img_path=str(p), id=f"good/{p.relative_to(nroot).with_suffix('')}",
                                  mask_kind="binary", is_defective=0, meta={"defect_type": "good"}))
    types: set[str] = set()
    if abnormal_dir is not None:
        aroot = require_path(abnormal_dir, "abnormal_dir", kind="dir")
        problems = Problems(skip_invalid, str(aroot))
        for p in list_images(aroot, recursive=True):
            rel = p.relative_to(aroot)
            t = rel.parts[0] if len(rel.parts) > 1 else "defect"
            mask = None
            if with_mask:
                mask = find_by_stem(mroot, p.stem, mask_suffix)
                if mask is None and (mroot / t).is_dir():
                    mask = find_by_stem(mroot / t, p.stem, mask_suffix)
                if mask is None:
                    problems(DataFormatError(f"{p}: mask not found in mask_dir {mroot} "
                                             f"(expected {p.stem}{mask_suffix}.png)"))
                    continue
            types.add(t)
            records.append(Record(img_path=str(p), id=f"{t}/{rel.with_suffix('')}",
                                  mask_path=str(mask) if mask else None, mask_kind="binary",
                                  is_defective=1, meta={"defect_type": t}))
        problems.report()
    check_nonempty(records, f"normal_dir={normal_dir}, abnormal_dir={abnormal_dir}")
    return records, list(ANOMALY_CLASSES), sorted(types)
