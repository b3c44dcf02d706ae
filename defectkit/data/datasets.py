"""Registered datasets: thin wrappers over the readers in ``defectkit.data.formats``.

``BaseDataset`` loads an image (PIL -> RGB -> ``tv_tensors.Image`` float32 in
[0, 1]), builds the sample dict of docs/architecture.md from a ``Record``, and
applies the ``pipeline``. Augmentation is deterministic for exact resume: sample
``i`` at epoch ``e`` is transformed under a forked torch RNG seeded from
``(seed, e, i)`` (the trainer calls ``set_epoch`` and recreates the DataLoader).

Paths in configs are relative to the current directory (the repo root).
A subclass sets its own attributes, then calls ``super().__init__(...)``, which
calls ``self.load() -> (records, classes)``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..registry import DATASETS, TRANSFORMS
from .collate import skipped_sample
from .formats.common import DataFormatError, Record, assign_grades, collect_skipped_images
from .formats.coco import read_coco
from .formats.image_folder import read_image_folder
from .formats.images import decode_mask, exif_hint, open_image
from .formats.labelme import read_labelme
from .formats.mask_folder import read_mask_folder
from .formats.mvtec import read_anomaly_folders, read_mvtec
from .formats.voc import read_voc
from .instances import mask_instances, masks_to_boxes, polygon_instances
from .transforms import build_pipeline

logger = logging.getLogger("defectkit")


def load_image(path: str | os.PathLike, exif_orientation: bool = True) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] of an image file, as displayed: the EXIF orientation
    is applied (``PIL.ImageOps.exif_transpose``) unless ``exif_orientation=False``
    (then the raw pixel grid). 16-bit grey images are scaled by 1/65535, everything
    else is converted to RGB / 255. DataFormatError naming ``path`` if it is missing
    or cannot be decoded. The one image loader of datasets, ``tools/infer.py`` and
    the anomaly path."""
    im = open_image(path, exif_orientation,
                    convert=lambda im: im if im.mode.startswith("I;16") else im.convert("RGB"))
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        return torch.from_numpy(arr)[None].expand(3, -1, -1).contiguous()
    return TF.pil_to_tensor(im).float().div_(255.0)


def rasterize_polygons(polygons: list, height: int, width: int) -> np.ndarray:
    """Class-index mask (H, W) int64: each ``(label, points)`` drawn with value
    ``label + 1`` by ``PIL.ImageDraw.polygon`` (fill and outline, like LabelMe's
    ``shape_to_mask``), later polygons over earlier ones."""
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for label, pts in polygons:
        v = int(label) + 1
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=v, outline=v)
    return np.asarray(canvas, dtype=np.int64)


def read_mask(path: str, kind: str, num_classes: int, exif_orientation: bool = True) -> np.ndarray:
    """(H, W) int64 mask of a mask file, decoded by ``formats.images.decode_mask`` (real
    pixel values of modes 1, L, P, LA, I;16, I, grey RGB/RGBA). ``kind="binary"``: any
    non-zero value -> 1; ``"index"``: values must be in ``0..num_classes``
    (DataFormatError naming the file otherwise)."""
    arr = decode_mask(path, exif_orientation)
    if kind == "binary":
        return (arr > 0).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > num_classes):
        bad = int(arr.max()) if arr.max() > num_classes else int(arr.min())
        raise DataFormatError(f"{path}: mask value {bad} is outside 0..{num_classes} "
                              f"(number of classes {num_classes})")
    return arr


class BaseDataset(Dataset):
    """Records + image loading + pipeline; see the module docstring."""

    config_children = {"pipeline": ("list", TRANSFORMS)}
    with_boxes: bool = False   # the samples carry boxes/labels
    with_mask: bool = False    # the samples carry a mask
    # the samples carry ``instance_masks`` (N, H, W) with boxes/labels derived from them
    # (``with_instances: true`` on LabelMeDataset / MaskFolderDataset; ``data/instances.py``)
    with_instances: bool = False
    size_field: str = "width/height"   # how the annotation file names the image size
    # the source's own id of each class (COCO category ids: classes[k] is id category_ids[k]),
    # what exported predictions use; None: the source names classes only (ids 1..K in exports)
    category_ids: list | None = None
    # severity grades (VOCDataset / CocoDataset ``with_grades``/``grades``): the samples carry
    # ``grades`` and ``grade_names`` lists the grade names; None: no grades
    with_grades: bool = False
    given_grades: list | None = None
    grade_names: list[str] | None = None

    def __init__(self, pipeline: list[dict] | None = None, skip_invalid: bool = False,
                 seed: int = 0, max_images: int | None = None, exif_orientation: bool = True):
        self.skip_invalid = bool(skip_invalid)
        self.exif_orientation = bool(exif_orientation)   # read before self.load() (readers)
        self.seed = int(seed)
        self.epoch = 0
        with collect_skipped_images() as skipped:
            records, classes = self.load()
        # images the reader dropped (skip_invalid): tools/test.py lists them with the unreadable ones
        self.skipped_at_read: list[str] = list(skipped)
        if self.with_grades:   # before max_images: the grade names never depend on it
            src = getattr(self, "ann_file", None) or getattr(self, "root", None) or type(self).__name__
            self.grade_names = assign_grades(records, self.given_grades, str(src), self.skip_invalid)
        if max_images is not None:
            records = records[:int(max_images)]
        self.records: list[Record] = records
        self.classes: list[str] = list(classes)
        self.pipeline = build_pipeline(pipeline)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ to override
    def load(self) -> tuple[list[Record], list[str]]:
        raise NotImplementedError

    # ---------------------------------------------------------------------- public
    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> int:
        """The torch seed of sample ``index`` at the current epoch."""
        ss = np.random.SeedSequence([self.seed % 2**32, self.epoch % 2**32, int(index)])
        return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` after the pipeline; an unreadable one is replaced (training)."""
        return self.get_sample(index, replace_invalid=True)

    def get_sample(self, index: int, replace_invalid: bool = True) -> dict[str, Any]:
        """Sample ``index`` after the pipeline. An unreadable sample raises DataFormatError;
        with ``skip_invalid`` it is replaced by the next readable one when
        ``replace_invalid`` (training: the batch keeps its size), else a
        ``skipped_sample`` marker ``{"skipped": {index, path, error}}`` comes back
        (evaluation: ``data.collate.EvalSamples``; the marker is dropped and recorded)."""
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for attempt in range(n if self.skip_invalid else 1):
            j = (index + attempt) % n
            try:
                sample = self.load_sample(j)
            except DataFormatError as e:
                if not self.skip_invalid:
                    raise
                path = self.records[j].img_path
                if not replace_invalid:
                    return skipped_sample(j, path, str(e))
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("skipped an unreadable sample (skip_invalid=True): %s", e)
                continue
            return self.apply_pipeline(sample, index)
        raise DataFormatError(f"{type(self).__name__}: no sample could be loaded")

    def apply_pipeline(self, sample: dict, index: int) -> dict:
        if self.pipeline is None:
            return sample
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed CUDA generators
            torch.default_generator.manual_seed(self.sample_seed(index))
            return self.pipeline(sample)

    def load_sample(self, index: int) -> dict[str, Any]:
        """The untransformed sample of record ``index`` (image read by ``load_image`` with
        the dataset's ``exif_orientation``). DataFormatError naming the image and the
        annotation file when the image's size is not the annotated one."""
        rec = self.records[index]
        img = load_image(rec.img_path, self.exif_orientation)
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if rec.width is not None and rec.height is not None and (rec.width, rec.height) != (w, h):
            src = rec.meta.get("ann_file") or getattr(self, "ann_file", "the annotation")
            raise DataFormatError(f"{rec.img_path}: image is {w}x{h} but {src} gives "
                                  f"{self.size_field} {rec.width}x{rec.height}"
                                  + exif_hint(rec.img_path, self.exif_orientation))
        sample: dict[str, Any] = {"image": tv_tensors.Image(img)}
        if self.with_boxes:
            sample["boxes"] = tv_tensors.BoundingBoxes(
                torch.as_tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY", canvas_size=(h, w))
            sample["labels"] = torch.as_tensor(rec.labels, dtype=torch.int64).reshape(-1)
            if self.with_grades:
                sample["grades"] = torch.as_tensor(rec.grades, dtype=torch.int64).reshape(-1)
        if self.with_mask:
            sample["mask"] = tv_tensors.Mask(torch.from_numpy(self.load_mask(rec, h, w)))
        if self.with_instances:     # boxes/labels replaced by the masks' own, aligned with them
            masks, labels = self.load_instances(rec, h, w)
            sample["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(masks_to_boxes(masks)),
                                                       format="XYXY", canvas_size=(h, w))
            sample["labels"] = torch.from_numpy(labels)
            sample["instance_masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        if rec.is_defective is not None:
            sample["is_defective"] = int(rec.is_defective)
        if rec.label is not None:
            sample["label"] = int(rec.label)
        sample["meta"] = {"path": rec.img_path, "id": rec.id, "orig_size": (h, w), **rec.meta}
        return sample

    def load_mask(self, rec: Record, h: int, w: int) -> np.ndarray:
        """(h, w) int64 class-index mask of ``rec``: its polygons rasterised, its mask file
        decoded (``read_mask``), or zeros. DataFormatError naming the mask file AND the
        image when their sizes differ."""
        if rec.polygons is not None:
            return rasterize_polygons(rec.polygons, h, w)
        if rec.mask_path is None:
            return np.zeros((h, w), np.int64)
        mask = read_mask(rec.mask_path, rec.mask_kind, len(self.classes), self.exif_orientation)
        if mask.shape != (h, w):
            raise DataFormatError(f"{rec.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                                  f"its image {rec.img_path} is {w}x{h}"
                                  + exif_hint(rec.img_path, self.exif_orientation))
        return mask

    def load_instances(self, rec: Record, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(masks (N, h, w) uint8, labels (N,) int64) of ``rec``: one instance per polygon,
        else the connected components of each class of its class-index mask
        (``data/instances.py``)."""
        if rec.polygons is not None:
            return polygon_instances(rec.polygons, h, w, rec.polygon_groups)
        return mask_instances(self.load_mask(rec, h, w), len(self.classes))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, classes={self.classes}, "
                f"pipeline={self.pipeline})")


# ------------------------------------------------------------------------ detection
@DATASETS.register()
class CocoDataset(BaseDataset):
    """COCO detection json; ``normal_category`` marks normal images (DefectNet's 0).
    Grades from an annotation's ``"severity"`` or ``"attributes": {"severity": ..}``; the
    ``grades`` / ``with_grades`` options and the ``grades`` sample key as ``VOCDataset``."""

    with_boxes = True

    def __init__(self, ann_file: str, img_dir: str, normal_category: int | None = None,
                 filter_empty: bool = False, pipeline: list[dict] | None = None,
                 skip_invalid: bool = False, seed: int = 0, max_images: int | None = None,
                 exif_orientation: bool = True, grades: list[str] | None = None,
                 with_grades: bool = False):
        self.ann_file, self.img_dir = ann_file, img_dir
        self.given_grades = None if grades is None else [str(g) for g in grades]
        self.with_grades = bool(with_grades) or grades is not None
        self.normal_category, self.filter_empty = normal_category, filter_empty
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        records, classes, self.category_ids = read_coco(
            self.ann_file, self.img_dir, normal_category=self.normal_category,
            filter_empty=self.filter_empty, skip_invalid=self.skip_invalid, return_category_ids=True,
            exif_orientation=self.exif_orientation)
        return records, classes


@DATASETS.register()
class VOCDataset(BaseDataset):
    """Pascal VOC / LabelImg XML; ``split`` reads ``ImageSets/Main/<split>.txt``.
    Grades from an object's ``<severity>`` or its ``severity`` attribute (``formats.voc``).

    Severity grades (``grades`` / ``with_grades``): with ``with_grades: true`` or a
    ``grades`` list every sample carries ``grades``, an int64 tensor (N,) aligned with
    ``boxes``/``labels``: the index of each box's grade in ``grade_names`` (-1 = no grade).
    ``grade_names`` is ``grades`` (ordered, lightest first) or, when None, the NATURAL sort
    of every grade found (``"2"`` before ``"10"``). A grade not in ``grades`` is a
    DataFormatError naming the file, the object and the value (``skip_invalid``: grade -1).
    ``SanitizeBoundingBoxes`` keeps ``grades`` aligned when it drops boxes."""

    with_boxes = True

    def __init__(self, root: str, split: str | None = None, img_dir: str | None = None,
                 classes: list[str] | None = None, skip_difficult: bool = False,
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True,
                 grades: list[str] | None = None, with_grades: bool = False):
        self.root, self.split, self.img_dir = root, split, img_dir
        self.given_grades = None if grades is None else [str(g) for g in grades]
        self.with_grades = bool(with_grades) or grades is not None
        self.given_classes, self.skip_difficult = classes, skip_difficult
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        return read_voc(self.root, split=self.split, img_dir=self.img_dir,
                        classes=self.given_classes, skip_difficult=self.skip_difficult,
                        skip_invalid=self.skip_invalid, exif_orientation=self.exif_orientation)


# --------------------------------------------------------------------- segmentation
@DATASETS.register()
class LabelMeDataset(BaseDataset):
    """LabelMe JSON polygons/rectangles -> boxes + class-index mask (BSData).
    ``with_instances: true`` adds ``instance_masks`` (one per shape; boxes from the masks)."""

    with_boxes = True
    with_mask = True
    size_field = "imageWidth/imageHeight"

    def __init__(self, ann_dir: str, img_dir: str | None = None, classes: list[str] | None = None,
                 unlabeled: str = "skip", split_file: str | None = None, split: str | None = None,
                 split_mode: str = "official", test_fraction: float = 0.2, split_seed: int = 7,
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True,
                 with_instances: bool = False):
        self.ann_dir, self.img_dir, self.given_classes = ann_dir, img_dir, classes
        self.with_instances = bool(with_instances)
        self.unlabeled, self.split_file, self.split = unlabeled, split_file, split
        self.split_mode, self.test_fraction, self.split_seed = split_mode, test_fraction, split_seed
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        return read_labelme(self.ann_dir, img_dir=self.img_dir, classes=self.given_classes,
                            unlabeled=self.unlabeled, split_file=self.split_file, split=self.split,
                            skip_invalid=self.skip_invalid, split_mode=self.split_mode,
                            test_fraction=self.test_fraction, split_seed=self.split_seed,
                            exif_orientation=self.exif_orientation)


@DATASETS.register()
class MaskFolderDataset(BaseDataset):
    """Images + class-index PNG masks matched by stem (Defect Spectrum style).
    ``with_instances: true`` adds ``instance_masks`` (connected components per class) with
    ``boxes`` / ``labels`` derived from them."""

    with_mask = True

    def __init__(self, img_dir: str, mask_dir: str, classes: list[str], mask_suffix: str = "",
                 split_file: str | None = None, missing_mask: str = "error",
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True,
                 with_instances: bool = False):
        self.img_dir, self.mask_dir, self.given_classes = img_dir, mask_dir, classes
        self.with_instances = bool(with_instances)
        self.mask_suffix, self.split_file, self.missing_mask = mask_suffix, split_file, missing_mask
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        return read_mask_folder(self.img_dir, self.mask_dir, self.given_classes,
                                mask_suffix=self.mask_suffix, split_file=self.split_file,
                                missing_mask=self.missing_mask, skip_invalid=self.skip_invalid,
                                exif_orientation=self.exif_orientation)


# -------------------------------------------------------------------------- anomaly
@DATASETS.register()
class MVTecDataset(BaseDataset):
    """MVTec AD: ``train`` = train/good; ``test`` = good + defect types with binary
    masks. ``classes == ['defect']``; ``defect_types`` lists the test types."""

    with_mask = True

    def __init__(self, root: str, category: str | None = None, split: str = "train",
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True):
        self.root, self.category, self.split = root, category, split
        self.defect_types: list[str] = []
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        records, classes, self.defect_types = read_mvtec(self.root, self.category, self.split,
                                                         skip_invalid=self.skip_invalid)
        return records, classes


@DATASETS.register()
class FolderAnomalyDataset(BaseDataset):
    """Normal/abnormal folders (+ optional binary ``mask_dir``); without
    ``mask_dir`` the samples have no mask."""

    def __init__(self, normal_dir: str | None = None, abnormal_dir: str | None = None,
                 mask_dir: str | None = None, mask_suffix: str = "_mask",
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True):
        self.normal_dir, self.abnormal_dir = normal_dir, abnormal_dir
        self.mask_dir, self.mask_suffix = mask_dir, mask_suffix
        self.with_mask = mask_dir is not None
        self.defect_types: list[str] = []
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        records, classes, self.defect_types = read_anomaly_folders(
            self.normal_dir, self.abnormal_dir, self.mask_dir, self.mask_suffix,
            skip_invalid=self.skip_invalid)
        return records, classes


# ------------------------------------------------------------------- classification
@DATASETS.register()
class ImageFolderDataset(BaseDataset):
    """``root/<class>/*``: ``label`` = class index; ``normal_class`` adds ``is_defective``."""

    def __init__(self, root: str, classes: list[str] | None = None, normal_class: str | None = None,
                 pipeline: list[dict] | None = None, skip_invalid: bool = False, seed: int = 0,
                 max_images: int | None = None, exif_orientation: bool = True):
        self.root, self.given_classes, self.normal_class = root, classes, normal_class
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        return read_image_folder(self.root, classes=self.given_classes,
                                 normal_class=self.normal_class)
