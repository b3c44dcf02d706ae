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
    (``[(label, [(x, y), ...]), ...]``, rasterised with value ``label + 1``).
    ``width``/``height`` are the annotated image size when the format stores it.
    """

    img_path: str
    id: Any = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    mask_path: str | None = None
    mask_kind: str = "index"
    polygons: list | None = None
    is_defective: int | None = 0      # None: unknown (the sample has no is_defective)
    label: int | None = None
    width: int | None = None
    height: int | None = None
    meta: dict = field(default_factory=dict)


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
