"""``DefectSpectrumDataset``: the Defect Spectrum layouts (DS-MVTec, DS-VISION, DS-DAGM,
DS-Cotton-Fabric, ``synthetic_*``, the original Defect-Gen loader's layout) and MVTec AD, as
images with class-index masks; the paper's 5-per-class split. The reader and the layouts are
in ``formats/defect_spectrum.py``; docs/data_formats.md describes them.

Samples: ``image`` float32 (3, H, W) in [0, 1], ``mask`` int64 (H, W) with 0 = background and
``k + 1`` = ``classes[k]``, ``is_defective`` (1 when the mask has a defect pixel) and ``meta``
with ``defect_type`` (the defect folder; None in the flat layouts), ``group`` (the class the
split counted the image in), ``split`` (``train``/``val``), ``mask_path``, ``path``, ``id``.
"""
from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .datasets import BaseDataset
from .formats.common import Record
from .formats.defect_spectrum import read_defect_spectrum


@DATASETS.register()
class DefectSpectrumDataset(BaseDataset):
    """Defect Spectrum / MVTec AD images with class-index masks (see the module docstring).

    Args:
        root: the subset folder (e.g. ``data/Defect_Spectrum/DS-MVTec``) or, without
            ``category``, the folder holding the layout's sub-folders itself.
        classes: the defect class names, mask value ``k + 1`` = ``classes[k]`` (the per-object
            table: ``configs/_base_/datasets/defect_spectrum_classes.yaml``). For MVTec AD, the
            defect folder names to read, in class-id order.
        category: the object sub-folder of ``root`` (``bottle``, ``Capacitor``), or None.
        layout: ``auto`` (detected from the sub-folders) or one of ``ds_mvtec``, ``ds_flat``,
            ``synthetic``, ``original``, ``mvtec_ad``.
        split: ``train`` (the first ``num_train_per_class`` images of each defect class, sorted by
            stem), ``val`` (the rest) or ``all``.
        num_train_per_class: N of the split (5: the paper's protocol, issue #7).
        skip_folders: defect folders to leave out besides ``good`` (e.g. MVTec AD's ``combined``).
    """

    with_mask = True

    def __init__(self, root: str, classes: list[str], category: str | None = None,
                 layout: str = "auto", split: str = "all", num_train_per_class: int = 5,
                 skip_folders: list[str] | None = None, pipeline: list[dict] | None = None,
                 skip_invalid: bool = False, seed: int = 0, max_images: int | None = None,
                 exif_orientation: bool = True):
        self.root, self.given_classes, self.category = root, classes, category
        self.layout, self.split, self.num_train_per_class = layout, split, num_train_per_class
        self.skip_folders = list(skip_folders or [])
        self.defect_types: list[str] = []
        super().__init__(pipeline=pipeline, skip_invalid=skip_invalid, seed=seed,
                         max_images=max_images, exif_orientation=exif_orientation)

    def load(self):
        records, classes, self.layout_read, self.defect_types = read_defect_spectrum(
            self.root, self.given_classes, category=self.category, layout=self.layout,
            split=self.split, num_train_per_class=self.num_train_per_class,
            skip_folders=self.skip_folders, skip_invalid=self.skip_invalid,
            exif_orientation=self.exif_orientation)
        return records, classes

    def load_mask(self, rec: Record, h: int, w: int) -> np.ndarray:
        """(h, w) int64 class-index mask; an MVTec AD 0/255 mask becomes its folder's class id."""
        mask = super().load_mask(rec, h, w)
        cid = rec.meta.get("folder_class_id")
        return mask * int(cid) if cid is not None else mask
