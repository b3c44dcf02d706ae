"""Defect Spectrum layouts and MVTec AD as class-index segmentation data (research note
``defectgen.md`` §3 "Data loader" and §5 "Defect Spectrum dataset").

``base`` is ``<root>/<category>`` (or ``<root>`` when no category is given)::

    ds_mvtec   base/image/<defect>/NNN.png   + base/mask/<defect>/NNN_mask.png       (DS-MVTec, DS-VISION)
    ds_flat    base/image/<name>.jpg          + base/mask/<name>_mask.png            (DS-Cotton-Fabric, DS-DAGM)
    synthetic  base/images/<name>.png         + base/masks_converted_dir/<name>.png  (synthetic_*, tools/generate.py)
    original   base/test/<defect>/<name>.png  + base/converted_ground_truth/<defect>/<name>.png
                                                               (the original Defect-Gen loader)
    mvtec_ad   base/test/<defect>/NNN.png     + base/ground_truth/<defect>/NNN_mask.png   (0/255 masks)

The colour folders (``rbg_mask/``, ``rgb_mask/``, the synthetic ``masks/``) are never read:
their colours are a visualisation (issue #13). ``good`` folders are skipped (no defect; DS's
``pill/good`` even holds metal_nut images, issue #15), and so are the folders named in
``skip_folders``.

**Masks.** Every layout but ``mvtec_ad`` stores single-channel class-index masks: 0 is
background, ``k + 1`` is ``classes[k]``; a value above ``len(classes)`` is an error naming the
file and the value. MVTec AD masks are 0/255 per defect folder: a non-zero pixel becomes the
class id of its FOLDER, ``classes.index(folder) + 1`` (a folder not in ``classes`` is an error
naming it). Every mask is decoded once while reading (``images.decode_mask``) to check its
values and its size against its image's header, and to set ``is_defective``.

**Pairing** is by file stem, never by sort order (the original loader paired sorted lists by
index, note §3): a mask's key is its stem without a trailing ``_mask``; an image is paired
with the mask whose key is its stem (or its stem without a trailing ``_image``). An image
without a mask, a mask without an image and two files with the same key are errors naming
the file(s).

**Split** (the paper's protocol, issue #7; the original ``num_image_train``): ``split: train``
keeps the first ``num_train_per_class`` images (sorted by stem) of each defect class,
``val`` the rest, ``all`` everything. The class of an image is its defect folder when the
layout has folders; in the flat layouts (``ds_flat``, ``synthetic``) it is the class with
the most pixels in its mask (ties: the lower class id; an all-zero mask forms its own group).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .common import (IMG_EXTENSIONS, DataFormatError, Problems, Record, check_nonempty,
                     image_size, require_path, resolve_classes)
from .images import decode_mask, exif_hint
from .mask_folder import MASK_EXTENSIONS

# layout -> (image folder, mask folder, has defect sub-folders, mask encoding)
LAYOUTS: dict[str, tuple[str, str, bool, str]] = {
    "ds_mvtec": ("image", "mask", True, "index"),
    "ds_flat": ("image", "mask", False, "index"),
    "synthetic": ("images", "masks_converted_dir", False, "index"),
    "original": ("test", "converted_ground_truth", True, "index"),
    "mvtec_ad": ("test", "ground_truth", True, "folder"),
}
LAYOUT_CHOICES = ("auto",) + tuple(LAYOUTS)
SPLITS = ("train", "val", "all")
SKIPPED_FOLDERS = ("good",)
NO_DEFECT_GROUP = "(no defect)"   # the split group of an all-zero mask in a flat layout


def mask_key(stem: str) -> str:
    """The pairing key of a mask file stem: ``000_mask`` -> ``000``, ``a`` -> ``a``."""
    return stem[:-len("_mask")] if stem.endswith("_mask") and len(stem) > len("_mask") else stem


def image_keys(stem: str) -> list[str]:
    """The keys an image file stem may pair with: the stem, then the stem without ``_image``."""
    keys = [stem]
    if stem.endswith("_image") and len(stem) > len("_image"):
        keys.append(stem[:-len("_image")])
    return keys


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def detect_layout(base: Path) -> str:
    """The layout of ``base`` from its sub-folders (see the module docstring); ``test/`` with
    both ``converted_ground_truth/`` and ``ground_truth/`` is ``original`` (class-index
    masks win). DataFormatError listing what was looked for when none matches."""
    has = lambda *names: all((base / n).is_dir() for n in names)  # noqa: E731
    if has("image", "mask"):
        return "ds_mvtec" if _subdirs(base / "image") else "ds_flat"
    if has("images", "masks_converted_dir"):
        return "synthetic"
    if has("test", "converted_ground_truth"):
        return "original"
    if has("test", "ground_truth"):
        return "mvtec_ad"
    raise DataFormatError(
        f"{base}: layout auto: no known layout (looked for image/ + mask/, images/ + "
        f"masks_converted_dir/, test/ + converted_ground_truth/, test/ + ground_truth/; "
        f"sub-folders found: {_subdirs(base)}); check root and category")


def resolve_base(root: str | os.PathLike, category: str | None) -> Path:
    base = require_path(root, "root", kind="dir")
    if category is None or str(category) == "":
        return base
    cat = base / str(category)
    if not cat.is_dir():
        raise DataFormatError(f"category: {cat} not found (categories in {base}: {_subdirs(base)})")
    return cat


def pair_by_stem(images: list[Path], masks: list[Path], img_dir: Path, mask_dir: Path,
                 problems: Problems) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by key (``mask_key`` / ``image_keys``), in image order.
    Unpaired files and duplicate keys go to ``problems`` (an error naming the file)."""
    by_key: dict[str, Path] = {}
    for m in masks:
        k = mask_key(m.stem)
        if k in by_key:
            problems(DataFormatError(f"{m}: two masks pair with the same image key {k!r} "
                                     f"(the other is {by_key[k]})"), "mask")
            continue
        by_key[k] = m
    used: dict[Path, Path] = {}
    pairs = []
    seen_img: dict[str, Path] = {}
    for img in images:
        if img.stem in seen_img:
            problems(DataFormatError(f"{img}: two images with the stem {img.stem!r} (the other is "
                                     f"{seen_img[img.stem]}); a mask cannot tell them apart"))
            continue
        seen_img[img.stem] = img
        mask = next((by_key[k] for k in image_keys(img.stem) if k in by_key), None)
        if mask is None:
            problems(DataFormatError(f"{img}: no mask for this image in {mask_dir} (expected "
                                     f"{img.stem}_mask.png or {img.stem}.png)"))
            continue
        if mask in used:
            problems(DataFormatError(f"{img}: its mask {mask} is also the mask of {used[mask]}"))
            continue
        used[mask] = img
        pairs.append((img, mask))
    for m in masks:
        if m not in used and by_key.get(mask_key(m.stem)) == m:
            problems(DataFormatError(f"{m}: mask without an image in {img_dir} (expected an image "
                                     f"named {mask_key(m.stem)}.<ext>)"), "mask")
    return pairs


def _check_mask(mask: Path, img: Path, num_classes: int, classes: list[str], kind: str,
                exif_orientation: bool) -> np.ndarray:
    """Per-class pixel counts (K + 1,) of ``mask`` (for ``folder`` masks: [zeros, non-zero]).
    DataFormatError for a value outside 0..K (index masks) or a size other than the image's."""
    arr = decode_mask(mask, exif_orientation)
    if kind == "folder":
        counts = np.array([int((arr == 0).sum()), int((arr != 0).sum())], np.int64)
    else:
        if arr.size and (arr.min() < 0 or arr.max() > num_classes):
            bad = int(arr.max()) if arr.max() > num_classes else int(arr.min())
            raise DataFormatError(f"{mask}: mask value {bad} is outside 0..{num_classes} "
                                  f"(classes: {classes})")
        counts = np.bincount(arr.ravel(), minlength=num_classes + 1)
    iw, ih = image_size(img, exif_orientation)
    if (arr.shape[1], arr.shape[0]) != (iw, ih):
        raise DataFormatError(f"{mask}: mask is {arr.shape[1]}x{arr.shape[0]} but its image {img} "
                              f"is {iw}x{ih}" + exif_hint(img, exif_orientation))
    return counts


def read_defect_spectrum(root: str | os.PathLike, classes: list[str], category: str | None = None,
                         layout: str = "auto", split: str = "all", num_train_per_class: int = 5,
                         skip_folders: list[str] | None = None, skip_invalid: bool = False,
                         exif_orientation: bool = True) -> tuple[list[Record], list[str], str, list[str]]:
    """Records, classes, the layout read and the sorted defect folders (empty for flat
    layouts). Records are sorted by (defect folder, stem). Record ``meta``: ``defect_type``
    (the folder, None in flat layouts), ``group`` (the split class), ``mask_path``, ``split``
    (``train``/``val``: the side of the paper's split the image is on) and, for ``mvtec_ad``,
    ``folder_class_id`` (the value a non-zero mask pixel becomes)."""
    if layout not in LAYOUT_CHOICES:
        raise DataFormatError(f"layout: {layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
    if split not in SPLITS:
        raise DataFormatError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    if isinstance(num_train_per_class, bool) or not isinstance(num_train_per_class, int) \
            or num_train_per_class < 1:
        raise DataFormatError(f"num_train_per_class: must be an integer >= 1, got {num_train_per_class!r}")
    if not classes:
        raise DataFormatError("classes: required (the name of each mask value 1..K, in order; "
                              "see configs/_base_/datasets/defect_spectrum_classes.yaml)")
    base = resolve_base(root, category)
    classes = resolve_classes(classes, [], str(base))
    if layout == "auto":
        layout = detect_layout(base)
    img_name, mask_name, foldered, kind = LAYOUTS[layout]
    img_root, mask_root = base / img_name, base / mask_name
    for p, what in ((img_root, "image"), (mask_root, "mask")):
        if not p.is_dir():
            raise DataFormatError(f"{p}: {what} folder of layout {layout} not found "
                                  f"(sub-folders of {base}: {_subdirs(base)})")
    skip = set(SKIPPED_FOLDERS) | {str(s) for s in (skip_folders or [])}
    problems = Problems(skip_invalid, str(base))

    # (defect folder or None, image dir, mask dir)
    units: list[tuple[str | None, Path, Path]] = []
    if foldered:
        loose = _files(img_root, IMG_EXTENSIONS)
        if loose:
            raise DataFormatError(f"{loose[0]}: an image directly in {img_root}; layout {layout} "
                                  f"keeps images in <defect>/ sub-folders")
        folders = [d for d in _subdirs(img_root) if d not in skip]
        if not folders:
            raise DataFormatError(f"{img_root}: no defect folders (layout {layout}; "
                                  f"skipped: {sorted(skip)})")
        for d in _subdirs(mask_root):
            if d not in skip and d not in folders:
                problems(DataFormatError(f"{mask_root / d}: mask folder without an image folder "
                                         f"{img_root / d}"), "mask folder")
        for d in folders:
            if kind == "folder" and d not in classes:
                raise DataFormatError(f"{img_root / d}: defect folder {d!r} is not in classes {classes} "
                                      f"(MVTec AD masks take the class id of their folder; add it "
                                      f"to classes or to skip_folders)")
            if not (mask_root / d).is_dir():
                problems(DataFormatError(f"{img_root / d}: no mask folder {mask_root / d} for this "
                                         f"defect folder"), "image folder")
                continue
            units.append((d, img_root / d, mask_root / d))
    else:
        units.append((None, img_root, mask_root))

    num = len(classes)
    rows = []   # (defect, stem, image, mask, counts)
    for defect, idir, mdir in units:
        pairs = pair_by_stem(_files(idir, IMG_EXTENSIONS), _files(mdir, MASK_EXTENSIONS),
                             idir, mdir, problems)
        for img, mask in pairs:
            try:
                counts = _check_mask(mask, img, num, classes, kind, exif_orientation)
            except DataFormatError as e:
                problems(e)
                continue
            rows.append((defect, img.stem, img, mask, counts))

    # the paper's split: first N per class, sorted by stem
    def group_of(defect, counts) -> str:
        if defect is not None:
            return defect
        if counts[1:].sum() == 0:
            return NO_DEFECT_GROUP
        return classes[int(np.argmax(counts[1:]))]

    rows.sort(key=lambda r: (r[0] or "", r[1]))
    taken: dict[str, int] = {}
    records = []
    for defect, stem, img, mask, counts in rows:
        group = group_of(defect, counts)
        side = "train" if taken.get(group, 0) < num_train_per_class else "val"
        taken[group] = taken.get(group, 0) + 1
        if split != "all" and side != split:
            continue
        meta = {"defect_type": defect, "group": group, "mask_path": str(mask), "split": side}
        if kind == "folder":
            meta["folder_class_id"] = classes.index(defect) + 1
        records.append(Record(img_path=str(img), id=f"{defect}/{stem}" if defect else stem,
                              mask_path=str(mask), mask_kind="binary" if kind == "folder" else "index",
                              is_defective=int(counts[1:].sum() > 0), meta=meta))
    problems.report()
    check_nonempty(records, f"{base} (layout {layout}, split {split})")
    return records, classes, layout, [u[0] for u in units if u[0] is not None]
