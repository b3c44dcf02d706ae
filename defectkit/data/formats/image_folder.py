"""torchvision-style ImageFolder: ``<root>/<class>/*.{png,jpg,...}`` (subfolders included).

``classes``: the config's list (each must be a subfolder; other subfolders are
ignored; its order wins) or the subfolder names in NATURAL order: digit runs compare
by value, so grade folders ``1, 2, ..., 9, 10`` keep their order (``common.natural_key``).
``label`` is the class index. With ``normal_class`` set, ``is_defective`` is 1 for every
other class.

The pitfall this avoids (research note severity.md §2): the original severity classifier
read ``root/<grade>/`` with Keras ``flow_from_directory``, which (like
``torchvision.datasets.ImageFolder``) numbers the folders in ALPHABETICAL order, so with 10
or more grades ``"10"`` sorts before ``"2"`` and label 2 silently means grade 10. Here the
folders ``1..12`` get labels ``0..11`` in grade order. Names without digits sort as before;
a model trained with the alphabetical order of digit folders is matched by giving that
order as ``classes``.
"""
from __future__ import annotations

import os

from .common import (DataFormatError, Record, check_nonempty, list_images, logger, natural_key,
                     require_path, resolve_classes)


def read_image_folder(root: str | os.PathLike, classes: list[str] | None = None,
                      normal_class: str | None = None) -> tuple[list[Record], list[str]]:
    base = require_path(root, "root", kind="dir")
    found = sorted((p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                   key=natural_key)
    classes = resolve_classes(classes, found, str(base)) if classes is not None else found
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
