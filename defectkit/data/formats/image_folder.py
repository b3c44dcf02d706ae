"""torchvision-style ImageFolder: ``<root>/<class>/*.{png,jpg,...}`` (subfolders included).

``classes``: the config's list (each must be a subfolder; other subfolders are
ignored) or the sorted subfolder names. ``label`` is the class index. With
``normal_class`` set, ``is_defective`` is 1 for every other class.
"""
from __future__ import annotations

import os

from .common import (DataFormatError, Record, check_nonempty, list_images, logger, require_path,
                     resolve_classes)


def read_image_folder(root: str | os.PathLike, classes: list[str] | None = None,
                      normal_class: str | None = None) -> tuple[list[Record], list[str]]:
    base = require_path(root, "root", kind="dir")
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = resolve_classes(classes, found, str(base))
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataFormatError(f"classes: {missing} have no folder in {base} (found: {found})")
    if normal_class is not None and str(normal_class) not in classes:
        raise DataFormatError(f"normal_class: {normal_class!r} is not one of the classes {classes}")
    records = []
    for k, c in enumerate(classes):
        files = list_images(base / c, recursive=True)
        if not files:
            logger.warning("%s: class folder %r has no images", base, c)
        for p in files:
            defective = None if normal_class is None else int(c != str(normal_class))
            records.append(Record(img_path=str(p), id=str(p.relative_to(base).with_suffix("")),
                                  label=k, is_defective=defective, meta={"class_name": c}))
    check_nonempty(records, str(base))
    return records, classes
