"""Pascal VOC XML (LabelImg's output)::

    <root>/Annotations/<stem>.xml
    <root>/ImageSets/Main/<split>.txt      (optional: image stems, one a line)
    <root>/JPEGImages/<filename>           (or ``img_dir``)

Read per ``<object>``: ``name``, ``difficult`` (kept in ``meta['difficult']``,
aligned with the boxes as read, before any transform; ``skip_difficult`` drops
those objects instead) and ``bndbox`` ``xmin ymin xmax ymax`` used as written
(absolute pixels, no -1 shift). ``size/width``/``height`` give the image size
(the image header is read when they are missing or 0, EXIF-turned unless
``exif_orientation=False``). The class list (without ``classes``) is every object name
found, difficult ones included, so it never depends on ``skip_difficult``.
``skip_invalid``: an invalid object is dropped and its image kept with the valid ones;
an image is dropped when its file is invalid or when every object in it was.
The image is ``img_dir/<filename>``, else ``<root>/JPEGImages/<filename>``, else
``<path>`` (absolute or relative to the XML), else ``<stem>.<ext>`` in those folders.

Severity grade of an object (``Record.grade_values``, used by ``VOCDataset(with_grades=True)``):
``<severity>3</severity>`` (what ``tools/make_synth.py`` and ``write_voc`` write) or the
CVAT / LabelImg-plus attribute ``<attributes><attribute><name>severity</name>
<value>3</value></attribute></attributes>``; both present with different values is an error.

``write_voc`` writes one XML in LabelImg's element order (atomically), with optional
``<severity>`` and ``<score>`` per object; ``read_voc_file`` reads one back as its input.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import (IMG_EXTENSIONS, DataFormatError, Problems, Record, as_boxes, as_labels,
                     check_box, check_nonempty, find_by_stem, image_size, read_split_file,
                     keep_known, require_path, resolve_classes)

GRADE_TAG = "severity"   # <severity> and the attribute named "severity"


def _text(node, tag: str, where: str, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DataFormatError(f"{where}: field <{tag}> is missing")
        return None
    return child.text.strip()


def _number(node, tag: str, where: str) -> float:
    v = _text(node, tag, where)
    try:
        return float(v)
    except ValueError:
        raise DataFormatError(f"{where}: field <{tag}> is not a number: {v!r}") from None


def _find_image(xml: Path, filename: str | None, path: str | None, dirs: list[Path]) -> Path:
    for d in dirs:
        if filename and (d / filename).is_file():
            return d / filename
    if path:
        p = Path(path.replace("\\", "/"))
        c = p if p.is_absolute() else xml.parent / p     # LabelImg: relative to the XML
        if c.is_file():
            return c
    stem = Path(filename).stem if filename else xml.stem
    for d in dirs:
        found = find_by_stem(d, stem, extensions=IMG_EXTENSIONS) or find_by_stem(d, xml.stem)
        if found is not None:
            return found
    if not dirs:
        raise DataFormatError(f"{xml}: filename: image file not found: {filename or xml.stem} "
                              f"(no img_dir given and no JPEGImages folder next to Annotations; "
                              f"set img_dir)")
    raise DataFormatError(f"{xml}: filename: image file not found: {dirs[0] / (filename or xml.stem)}")


def _grade(obj, where: str) -> str | None:
    """The severity grade text of one ``<object>`` (see the module docstring) or None."""
    direct = _text(obj, GRADE_TAG, where, required=False)
    attr = None
    for a in obj.findall("attributes/attribute"):
        if (_text(a, "name", where, required=False) or "").lower() == GRADE_TAG:
            attr = _text(a, "value", where, required=False)
    if direct is not None and attr is not None and direct != attr:
        raise DataFormatError(f"{where}: <{GRADE_TAG}> {direct!r} and attribute {GRADE_TAG} "
                              f"{attr!r} differ")
    return direct if direct is not None else attr


def _object(obj, where: str, w: int, h: int, skip_difficult: bool):
    """``(name, box or None, difficult)`` of one ``<object>``; the box is None for a
    difficult object under ``skip_difficult`` (its name still counts as a class)."""
    name = _text(obj, "name", where)
    difficult = _text(obj, "difficult", where, required=False)
    try:
        difficult = bool(int(float(difficult))) if difficult else False
    except ValueError:
        raise DataFormatError(f"{where}: field <difficult> is not a number: {difficult!r}") from None
    if difficult and skip_difficult:
        return name, None, True
    bb = obj.find("bndbox")
    if bb is None:
        raise DataFormatError(f"{where}: field <bndbox> is missing")
    coords = [_number(bb, t, f"{where}.bndbox") for t in ("xmin", "ymin", "xmax", "ymax")]
    return name, check_box(*coords, w, h, f"{where}.bndbox ({name})"), difficult


def read_voc(root: str | os.PathLike, split: str | None = None, img_dir: str | os.PathLike | None = None,
             classes: list[str] | None = None, skip_difficult: bool = False,
             skip_invalid: bool = False,
             exif_orientation: bool = True) -> tuple[list[Record], list[str]]:
    base = require_path(root, "root", kind="dir")
    ann_dir = base / "Annotations"
    if not ann_dir.is_dir():
        raise DataFormatError(f"root: {ann_dir} not found (expected <root>/Annotations/*.xml)")
    dirs = [require_path(img_dir, "img_dir", kind="dir")] if img_dir is not None else []
    if (base / "JPEGImages").is_dir():
        dirs.append(base / "JPEGImages")
    if split is not None:
        split_txt = base / "ImageSets" / "Main" / f"{split}.txt"
        if not split_txt.is_file():
            raise DataFormatError(f"split: {split_txt} not found")
        stems = read_split_file(split_txt, "split")
        xmls = [ann_dir / f"{s}.xml" for s in stems]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    problems = Problems(skip_invalid, str(ann_dir))

    parsed, names = [], []
    for xml in xmls:
        try:
            if not xml.is_file():
                raise DataFormatError(f"{xml}: annotation file not found (listed in split {split!r})")
            try:
                tree = ET.parse(xml)
            except ET.ParseError as e:
                raise DataFormatError(f"{xml}: broken XML: {e}") from e
            ann = tree.getroot()
            filename = _text(ann, "filename", str(xml), required=False)
            img = _find_image(xml, filename, _text(ann, "path", str(xml), required=False), dirs)
            size = ann.find("size")
            w = h = None
            if size is not None:
                w = _text(size, "width", f"{xml}: size", required=False)
                h = _text(size, "height", f"{xml}: size", required=False)
            try:
                w, h = int(float(w)), int(float(h))
            except (TypeError, ValueError):
                w = h = 0
            if w <= 0 or h <= 0:
                w, h = image_size(img, exif_orientation)   # as the image is decoded
            objs, bad = [], 0
            for i, obj in enumerate(ann.findall("object")):
                try:
                    name, box, difficult = _object(obj, f"{xml}: object[{i}]", w, h, skip_difficult)
                    grade = _grade(obj, f"{xml}: object[{i}]") if box is not None else None
                except DataFormatError as e:
                    problems(e, "object")   # skip_invalid: only this object is dropped
                    bad += 1
                    continue
                names.append(name)          # every named object counts, difficult or not
                if box is not None:
                    objs.append((i, name, box, difficult, (f"{xml}: object[{i}]", grade)))
        except DataFormatError as e:
            problems(e)
            continue
        parsed.append((xml, img, w, h, objs, bad))

    classes = resolve_classes(classes, names, str(ann_dir))
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for xml, img, w, h, objs, bad in parsed:
        kept, unknown = keep_known(objs, index, problems, xml, "object[{i}].name", "object")
        bad += unknown
        if bad and not kept:
            problems.dropped("image")   # every object invalid: not known to be normal
            continue
        records.append(Record(
            img_path=str(img), id=xml.stem, boxes=as_boxes([k[1] for k in kept]),
            labels=as_labels([index[k[0]] for k in kept]), is_defective=int(len(kept) > 0),
            width=w, height=h,
            meta={"ann_file": str(xml), "difficult": [k[2] for k in kept]},
            grade_values=[k[3] for k in kept]))
    problems.report()
    check_nonempty(records, str(ann_dir) + (f" (split {split!r})" if split else ""), "images")
    return records, classes


# ------------------------------------------------------------------------------ writer
_OBJECT_KEYS = {"name", "box", "severity", "score", "pose", "truncated", "difficult", "extra"}


def _coord(v: float, decimals: int | None) -> str:
    """A box coordinate as written: an int when whole (LabelImg), else rounded."""
    v = float(v) if decimals is None else round(float(v), decimals)
    if decimals is None or v == int(v):
        return str(int(round(v)))
    return f"{v:.{decimals}f}".rstrip("0").rstrip(".")


def write_voc(path: str | os.PathLike, filename: str, size: tuple[int, int, int],
              objects: list[dict] = (), folder: str = "", img_path: str | None = None,
              database: str = "Unknown", decimals: int | None = 2) -> Path:
    """Write one Pascal VOC XML in LabelImg's element order, atomically.

    ``size = (height, width, depth)`` of the image in pixels. Each object is a dict:
    ``name`` (str), ``box`` (xmin, ymin, xmax, ymax) absolute pixels (no -1 shift, as
    ``read_voc`` reads them), optional ``severity`` (grade name, written as
    ``<severity>``), ``score`` (float in [0, 1], ``<score>``, e.g. a pseudo-label's detector
    confidence), ``pose`` ("Unspecified"), ``truncated`` / ``difficult`` (0/1) and ``extra``
    ({tag: value} written as further elements, e.g. ``{"severity_score": 0.79}``).

    Element order (research note severity.md §4, LabelImg ``pascal_voc_io.py``):
    ``annotation/{folder, filename, path, source/database, size/{width, height, depth},
    segmented, object/{name, pose, truncated, difficult, bndbox/{xmin, ymin, xmax, ymax}}}``;
    the optional ``severity``, ``score`` and ``extra`` tags come after ``bndbox`` so that
    positional readers (object[4] = bndbox) still work. ``<path>`` is ``img_path`` or
    ``filename``. Coordinates: integers when whole, else rounded to ``decimals`` places
    (None: rounded to integers, LabelImg's own output).

    Atomic: written to a temporary file in the same folder, then ``os.replace``d, so a reader
    never sees a half-written file and an interrupted run leaves the old file (or none).
    The folder is created. Returns the written path. ValueError naming the object index and
    field for a missing name, a box that is not 4 finite numbers with xmin < xmax and
    ymin < ymax, a score outside [0, 1], or an unknown key."""
    path = Path(path)
    try:
        h, w, depth = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size: expected (height, width, depth), got {size!r}") from None
    if h <= 0 or w <= 0 or depth <= 0:
        raise ValueError(f"size: height, width and depth must be > 0, got {size!r}")

    def sub(parent, tag, text=None):
        e = ET.SubElement(parent, tag)
        if text is not None:
            e.text = str(text)
        return e

    root = ET.Element("annotation")
    sub(root, "folder", folder)
    sub(root, "filename", filename)
    sub(root, "path", img_path if img_path is not None else filename)
    sub(sub(root, "source"), "database", database)
    sz = sub(root, "size")
    for tag, v in (("width", w), ("height", h), ("depth", depth)):
        sub(sz, tag, v)
    sub(root, "segmented", 0)
    for i, o in enumerate(objects):
        where = f"objects[{i}]"
        unknown = sorted(set(o) - _OBJECT_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(_OBJECT_KEYS)}; "
                             f"put other tags in 'extra')")
        name = o.get("name")
        if name is None or not str(name).strip():
            raise ValueError(f"{where}: 'name' is missing")
        box = [float(v) for v in o.get("box", ())]
        if len(box) != 4 or not all(math.isfinite(v) for v in box) \
                or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{where}.box: expected finite (xmin, ymin, xmax, ymax) with "
                             f"xmin < xmax and ymin < ymax, got {o.get('box')!r}")
        ob = sub(root, "object")
        sub(ob, "name", name)
        sub(ob, "pose", o.get("pose", "Unspecified"))
        sub(ob, "truncated", int(o.get("truncated", 0)))
        sub(ob, "difficult", int(o.get("difficult", 0)))
        bb = sub(ob, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            sub(bb, tag, _coord(v, decimals))
        if o.get("severity") is not None:
            sub(ob, GRADE_TAG, o["severity"])
        if o.get("score") is not None:
            s = float(o["score"])
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"{where}.score: must be in [0, 1], got {o['score']!r}")
            sub(ob, "score", f"{s:.6g}")
        for tag, v in (o.get("extra") or {}).items():
            sub(ob, str(tag), v)
    ET.indent(root, space="\t")
    data = ET.tostring(root, encoding="utf-8") + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_voc_file(path: str | os.PathLike) -> dict:
    """One VOC XML as ``write_voc`` takes it: ``{"filename", "size": (h, w, depth),
    "objects": [{"name", "box": [xmin, ymin, xmax, ymax] floats, "severity"?: str,
    "score"?: float}]}`` (``severity``/``score`` only when present; no box checks against
    the image: use ``read_voc`` for a dataset). DataFormatError naming the file."""
    path = Path(path)
    try:
        ann = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataFormatError(f"{path}: broken XML: {e}") from e
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read: {e}") from e
    size = ann.find("size")
    if size is None:
        raise DataFormatError(f"{path}: field <size> is missing")
    dims = tuple(int(_number(size, t, f"{path}: size")) for t in ("height", "width", "depth"))
    objects = []
    for i, obj in enumerate(ann.findall("object")):
        where = f"{path}: object[{i}]"
        bb = obj.find("bndbox")
        if bb is None:
            raise DataFormatError(f"{where}: field <bndbox> is missing")
        o = {"name": _text(obj, "name", where),
             "box": [_number(bb, t, f"{where}.bndbox") for t in ("xmin", "ymin", "xmax", "ymax")]}
        grade = _grade(obj, where)
        if grade is not None:
            o["severity"] = grade
        if _text(obj, "score", where, required=False) is not None:
            o["score"] = _number(obj, "score", where)
        objects.append(o)
    return {"filename": _text(ann, "filename", str(path), required=False), "size": dims,
            "objects": objects}
