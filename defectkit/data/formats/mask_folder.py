"""Images + class-index PNG masks matched by stem (Defect Spectrum style)::

    <img_dir>/<stem>.<ext>
    <mask_dir>/<stem><mask_suffix>.png     single channel: 0 background, k+1 = classes[k]

``classes`` (required) names the defect classes in mask order. Every mask is
decoded once while reading (``images.decode_mask``: modes 1, L, P, LA, I;16, I and
grey RGB/RGBA by their real values; masks only, the images' headers give their size)
to check that its values are within ``0..len(classes)``, that its size is its image's
(EXIF-turned when ``exif_orientation``), and to set ``is_defective`` (any non-zero
pixel). ``missing_mask``: ``'error'`` (default) or ``'normal'`` (an image without a
mask is a normal image with an all-zero mask).
``split_file`` optionally lists the image stems to use, one a line (e.g. the
VOC ``ImageSets/Main/train.txt`` of the synthetic sets).
"""
from __future__ import annotations

import os

from .common import (DataFormatError, Problems, Record, check_nonempty, find_by_stem,
                     image_size, list_images, read_split_file, require_path, resolve_classes)
from .images import decode_mask, exif_hint

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


def mask_value_range(path: str | os.PathLike,
                     exif_orientation: bool = True) -> tuple[int, int, tuple[int, int]]:
    """(min, max, (w, h)) of a class-index mask file's real pixel values, decoded by
    ``images.decode_mask`` (the same decoder the dataset uses when it loads the mask)."""
    arr = decode_mask(path, exif_orientation)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    return lo, hi, (int(arr.shape[1]), int(arr.shape[0]))


def read_mask_folder(img_dir: str | os.PathLike, mask_dir: str | os.PathLike,
                     classes: list[str] | None, mask_suffix: str = "",
                     split_file: str | os.PathLike | None = None, missing_mask: str = "error",
                     skip_invalid: bool = False,
                     exif_orientation: bool = True) -> tuple[list[Record], list[str]]:
    if missing_mask not in ("error", "normal"):
        raise DataFormatError(f"missing_mask: must be 'error' or 'normal', got {missing_mask!r}")
    iroot = require_path(img_dir, "img_dir", kind="dir")
    mroot = require_path(mask_dir, "mask_dir", kind="dir")
    if not classes:
        raise DataFormatError("classes: required for a mask folder (the name of each mask value "
                              "1..K, in order)")
    classes = resolve_classes(classes, [], str(mroot))
    keep = set(read_split_file(split_file)) if split_file is not None else None
    problems = Problems(skip_invalid, str(mroot))
    records = []
    images = list_images(iroot)
    if keep is not None:
        missing = sorted(keep - {p.stem for p in images})
        if missing:
            problems(DataFormatError(f"{split_file}: {len(missing)} listed image(s) not found in "
                                     f"img_dir {iroot}: {missing[:5]}"))
        images = [p for p in images if p.stem in keep]
    for img in images:
        mask = find_by_stem(mroot, img.stem, mask_suffix, MASK_EXTENSIONS)
        if mask is None:
            if missing_mask == "normal":
                records.append(Record(img_path=str(img), id=img.stem, is_defective=0,
                                      meta={"mask_path": None}))
                continue
            problems(DataFormatError(f"{img}: mask not found: {mroot / (img.stem + mask_suffix + '.png')}"))
            continue
        try:
            lo, hi, (w, h) = mask_value_range(mask, exif_orientation)
            if lo < 0 or hi > len(classes):
                raise DataFormatError(f"{mask}: mask value {hi if hi > len(classes) else lo} is outside "
                                      f"0..{len(classes)} (classes: {classes})"
                                      + ("; 255 is not read as 'ignore', nor a 0/255 mask as class 1: "
                                         "write class indices (0/1 for one class)" if hi == 255 else ""))
            iw, ih = image_size(img, exif_orientation)
            if (w, h) != (iw, ih):
                raise DataFormatError(f"{mask}: mask is {w}x{h} but its image {img} is {iw}x{ih}"
                                      + exif_hint(img, exif_orientation))
        except DataFormatError as e:
            problems(e)
            continue
        records.append(Record(img_path=str(img), id=img.stem, mask_path=str(mask),
                              mask_kind="index", is_defective=int(hi > 0),
                              meta={"mask_path": str(mask)}))
    problems.report()
    check_nonempty(records, f"{iroot} (with masks in {mroot})")
    return records, classes
