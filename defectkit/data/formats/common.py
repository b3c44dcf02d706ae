"""What every reader returns (``Record``), the error it raises, and shared checks.

A reader parses annotations only (images are not decoded) into a list of ``Record``
and the ordered list of defect ``classes``. It checks what it reads and raises
``DataFormatError`` naming the file and the field. With ``skip_invalid=True`` a
reader collects the problems instead and drops only what is invalid: an invalid
annotation (COCO annotation, VOC object, LabelMe shape) is dropped and its image kept
with its valid annotations (mmdetection's rule); an image is dropped when the image
itself is invalid or when every one of its annotations was. ONE warning on the
``defectkit`` logger counts dropped annotations and dropped images separately and
names the first few problems.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("defectkit")

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image before it is an error


class DataFormatError(ValueError):
    """A problem in a dataset file; the message names the file and the field."""


@dataclass
class Record:
    """One image's parsed annotations (the image itself is not loaded).

    ``boxes`` are absolute XYXY pixels (N, 4) float32; ``labels`` (N,) int64 are
    0-based indices into the dataset's ``classes``. A class-index mask comes from
    ``mask_path`` (``mask_kind``: ``"index"`` values are used as they are,
    ``"binary"`` maps any non-zero value to 1) or from ``polygons``
    (``[(label, [(x, y), ...]), ...]``, rasterised with value ``label + 1``);
    ``polygon_groups`` (aligned with ``polygons``, or None): LabelMe's ``group_id`` of each,
    polygons sharing a label and a group (not None) being one instance (``data/instances.py``).
    ``width``/``height`` are the annotated image size when the format stores it.
    ``grade_values``: per box (aligned with ``boxes``) the raw severity grade as read,
    ``(where, value)`` with ``value`` a str or None (no grade), ``where`` naming the file and
    the object for error messages; None when the format has no grades. ``grades`` (N,)
    int64: those values as indices into the dataset's ``grade_names`` (-1 = unknown), set
    by ``assign_grades`` when the dataset is built with grades.
    """

    img_path: str
    id: Any = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    mask_path: str | None = None
    mask_kind: str = "index"
    polygons: list | None = None
    polygon_groups: list | None = None
    is_defective: int | None = 0      # None: unknown (the sample has no is_defective)
    label: int | None = None
    width: int | None = None
    height: int | None = None
    meta: dict = field(default_factory=dict)
    grade_values: list | None = None
    grades: np.ndarray | None = None


_COLLECTORS: list[list[str]] = []


@contextmanager
def collect_skipped_images():
    """Within the block, the message of every IMAGE a reader drops under ``skip_invalid``
    is also appended to the yielded list (the dataset keeps it: ``skipped_at_read``)."""
    got: list[str] = []
    _COLLECTORS.append(got)
    try:
        yield got
    finally:
        _COLLECTORS.remove(got)


class Problems:
    """Raise at once, or (``skip_invalid``) collect and report in one warning.

    ``problems(err, kind)`` records a dropped item of ``kind`` (singular noun, e.g.
    ``"image"``, ``"annotation"``); ``dropped(kind)`` counts an item dropped because of
    problems already recorded (an image left without any valid annotation).
    """

    def __init__(self, skip_invalid: bool, source: str):
        self.skip_invalid = bool(skip_invalid)
        self.source = source
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}

    def __call__(self, err: DataFormatError, kind: str = "image") -> None:
        if not self.skip_invalid:
            raise err
        self.errors.append(str(err))
        self.dropped(kind)
        if kind == "image" and _COLLECTORS:
            _COLLECTORS[-1].append(str(err))

    def dropped(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + int(n)

    def report(self) -> None:
        if not self.errors:
            return
        # e.g. "skipped 1 invalid annotation and 2 images": dropped items by kind
        parts = [f"{n} {'invalid ' if k == 0 else ''}{kind}{'' if n == 1 else 's'}"
                 for k, (kind, n) in enumerate(self.counts.items())]
        first = "; ".join(self.errors[:3])
        more = f"; ... and {len(self.errors) - 3} more" if len(self.errors) > 3 else ""
        logger.warning("%s: skipped %s (skip_invalid=True): %s%s",
                       self.source, " and ".join(parts), first, more)


def keep_known(items: list[tuple], index: dict, problems: Problems, source, field_fmt: str,
               kind: str) -> tuple[list[tuple], int]:
    """Of ``items`` ``(i, class_name, *rest)`` keep ``(class_name, *rest)`` whose name is in
    ``index``; each other one is a problem (``"{source}: {field_fmt}: ... not in classes"``,
    e.g. ``field_fmt="object[{i}].name"``) of ``kind``. Returns (kept, number dropped)."""
    kept, bad = [], 0
    for i, name, *rest in items:
        if name not in index:
            problems(DataFormatError(f"{source}: {field_fmt.format(i=i)} {name!r} is not in classes "
                                     f"{list(index)}"), kind)
            bad += 1
            continue
        kept.append((name, *rest))
    return kept, bad


# ----------------------------------------------------------------------------- paths
def require_path(path: str | os.PathLike | None, field_name: str, kind: str = "file") -> Path:
    """``path`` as a Path, or a DataFormatError naming the config field."""
    if path is None or str(path) == "":
        raise DataFormatError(f"{field_name}: a path is required")
    p = Path(path)
    ok = p.is_file() if kind == "file" else p.is_dir()
    if not ok:
        where = ("" if p.is_absolute() else
                 f" (relative paths are resolved from the current directory {os.getcwd()})")
        raise DataFormatError(f"{field_name}: {kind} not found: {p}{where}")
    return p


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def find_by_stem(folder: Path, stem: str, suffix: str = "",
                 extensions: tuple[str, ...] = IMG_EXTENSIONS) -> Path | None:
    for ext in extensions:
        for e in (ext, ext.upper()):
            p = folder / f"{stem}{suffix}{e}"
            if p.is_file():
                return p
    return None


def read_split_file(path: str | os.PathLike, field_name: str = "split_file") -> list[str]:
    """Stems listed one per line (file names or paths are reduced to their stem)."""
    p = require_path(path, field_name)
    stems = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            stems.append(Path(line.split()[0].replace("\\", "/")).stem)
    if not stems:
        raise DataFormatError(f"{p}: {field_name} lists no images (empty split)")
    return stems


EXIF_ORIENTATION = 0x0112   # the EXIF/TIFF Orientation tag; 1 = as stored, 2..8 = flip/rotate
_SWAPS_AXES = (5, 6, 7, 8)  # orientations whose display swaps width and height


def orientation_tag(im) -> int:
    """The EXIF Orientation (1..8) of a just-opened PIL image, from its header only; 1 when
    absent or unreadable. (PIL's ``getexif`` on a PNG without an eXIf chunk before the
    pixels decodes the whole image to look behind them; a header-only size must not.)"""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        v = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:   # a broken EXIF block must not hide the image
        return 1
    return v if 1 <= v <= 8 else 1


def image_size(path: str | os.PathLike, exif_orientation: bool = True) -> tuple[int, int]:
    """(width, height) from the image header (the pixels are not decoded).

    With ``exif_orientation`` the size is the one the image is decoded at (see
    ``formats.images.open_image``): width and height swap for EXIF orientations 5..8.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif_orientation and orientation_tag(im) in _SWAPS_AXES:
                w, h = h, w
            return w, h
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(f"{path}: cannot read image header: {e}") from e


# ----------------------------------------------------------------------------- boxes
def check_box(x1: float, y1: float, x2: float, y2: float, width: int | None, height: int | None,
              where: str, tol: float = BOX_TOLERANCE) -> list[float]:
    """Validate an XYXY box; clip it to the image when it sticks out by <= ``tol``.

    ``where`` names the file and field for the error message.
    """
    vals = [float(x1), float(y1), float(x2), float(y2)]
    if not all(np.isfinite(vals)):
        raise DataFormatError(f"{where}: box {vals} has a non-finite coordinate")
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise DataFormatError(f"{where}: degenerate box {_fmt(vals)} (width {x2 - x1:g}, "
                              f"height {y2 - y1:g}; both must be > 0)")
    if width is not None and height is not None:
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DataFormatError(f"{where}: box {_fmt(vals)} (xyxy) is outside the "
                                  f"{width}x{height} image (tolerance {tol:g} px)")
        vals = [min(max(vals[0], 0.0), width), min(max(vals[1], 0.0), height),
                min(max(vals[2], 0.0), width), min(max(vals[3], 0.0), height)]
        if vals[2] - vals[0] <= 0 or vals[3] - vals[1] <= 0:
            raise DataFormatError(f"{where}: box {_fmt(vals)} is degenerate after clipping "
                                  f"to the {width}x{height} image")
    return vals


def _fmt(vals) -> str:
    return "[" + ", ".join(f"{v:g}" for v in vals) + "]"


def as_boxes(boxes: list) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def as_labels(labels: list) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def check_nonempty(records: list, source: str, what: str = "images") -> None:
    if not records:
        raise DataFormatError(f"{source}: no {what} found (empty dataset/split)")


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of a name by value: ``"2" < "10"``,
    ``"grade2" < "grade10"`` (plain ``sorted`` puts ``"10"`` before ``"2"``). Ties in value
    (``"2"`` / ``"02"``) fall back to the plain string, so the order is total."""
    parts = re.split(r"(\d+)", str(name))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts if p != ""), str(name)


def natural_sorted(names) -> list[str]:
    """The distinct ``names`` in natural order (``natural_key``)."""
    return sorted({str(n) for n in names}, key=natural_key)


def grade_text(value: Any) -> str | None:
    """A grade as read (XML text, JSON number or string) -> its name: stripped str; a whole
    float (JSON ``3.0``) -> ``"3"``; None / empty / JSON null -> None (no grade). Any
    other type (list, dict, bool) is a DataFormatError raised by the caller's context."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"a grade must be a string or a number, got {value!r}")
    if isinstance(value, float):
        if not np.isfinite(value):
            raise TypeError(f"a grade must be finite, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def assign_grades(records: list[Record], given: list | None, source: str,
                  skip_invalid: bool = False) -> list[str]:
    """Set ``rec.grades`` (N,) int64 of every record from its ``grade_values`` and return the
    grade names: ``given`` (checked for duplicates, each a str) or the NATURAL sort of every
    value found (``"2"`` before ``"10"``; ``natural_sorted``). A box without a value gets
    -1 (unknown). A value not in ``given`` is a DataFormatError naming the file, the object
    and the value; with ``skip_invalid`` that box keeps its box and gets -1 instead (one
    warning counts them). A record without ``grade_values`` (format without grades) gets
    all -1."""
    found = [v for r in records for _, v in (r.grade_values or []) if v is not None]
    if given is None:
        names = natural_sorted(found)
        if not names:
            logger.warning("%s: with_grades is set but no object has a severity grade; every "
                           "grade is -1 (unknown)", source)
    else:
        names = [str(g) for g in given]
        dup = sorted({g for g in names if names.count(g) > 1})
        if dup:
            raise DataFormatError(f"{source}: grades has duplicates: {dup}")
    index = {g: i for i, g in enumerate(names)}
    bad: list[str] = []
    for r in records:
        n = len(r.labels)
        vals = r.grade_values or [(None, None)] * n
        if len(vals) != n:
            raise AssertionError(f"{r.img_path}: {len(vals)} grade values for {n} boxes")
        out = np.full((n,), -1, np.int64)
        for k, (where, v) in enumerate(vals):
            if v is None:
                continue
            if v not in index:
                msg = f"{where}: severity grade {v!r} is not in grades {names}"
                if not skip_invalid:
                    raise DataFormatError(msg)
                bad.append(msg)
                continue
            out[k] = index[v]
        r.grades = out
    if bad:
        more = f"; ... and {len(bad) - 3} more" if len(bad) > 3 else ""
        logger.warning("%s: %d boxes have a grade not in grades; they keep their box with grade "
                       "-1 (skip_invalid=True): %s%s", source, len(bad), "; ".join(bad[:3]), more)
    return names


def resolve_classes(given: list[str] | None, found: list[str], source: str,
                    field_name: str = "classes") -> list[str]:
    """The config's ``classes`` when given (checked for duplicates), else sorted names."""
    if given is None:
        return sorted(set(found))
    given = [str(c) for c in given]
    dup = sorted({c for c in given if given.count(c) > 1})
    if dup:
        raise DataFormatError(f"{source}: {field_name} has duplicates: {dup}")
    return given
