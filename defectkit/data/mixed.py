"""``MixedDataset``: a real dataset plus a share of a generated one, at a synthetic:real ratio
(the paper's downstream experiment: research note ``defectgen.md`` §4, ratios 0.2 .. 3).

    data:
      train:
        type: MixedDataset
        ratio: 1.0            # generated images = round(ratio * len(real)), rounded half up
        seed: 0               # which generated images are drawn
        datasets:
          - {type: DefectSpectrumDataset, root: data/Defect_Spectrum/DS-MVTec, category: bottle,
             classes: [broken_large, broken_small, contamination], split: train}
          - {type: DefectSpectrumDataset, root: work_dirs/generated/bottle, layout: synthetic,
             classes: [broken_large, broken_small, contamination]}

Any registered datasets work (segmentation, detection, classification) as long as both give
the same ``classes`` and the same kind of samples (``with_mask`` / ``with_boxes``).

**Index layout.** Item ``i < n_real`` is real item ``i``; item ``n_real + k`` is generated item
``order[k]``, where ``order`` is a permutation of the generated set drawn with
``numpy.random.default_rng(seed)``, repeated when more items are asked for than there are
(without replacement while it lasts, then cycling). ``ratio: 0`` is the real set alone. The
draw is fixed for a seed (the paper's "amount of synthetic data"); with
``resample_per_epoch: true`` it is redrawn each epoch from ``(seed, epoch)`` instead, so that
a small ratio sees other generated images in later epochs.

Samples are the children's, with ``meta["source"]`` (``"real"``/``"generated"``),
``meta["source_index"]`` (the index in that child) and ``meta["id"]`` prefixed with the
source (``"real/<id>"``, ``"generated/<id>"``, ``"#<k>"`` appended to the k-th repeat) so that
ids stay unique. ``records`` lists the children's records in this dataset's index order with
the same ids; ``classes``, ``category_ids`` and ``pipeline`` are the real dataset's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..config import ConfigError
from ..registry import DATASETS
from .collate import is_skipped

SOURCES = ("real", "generated")


def _build(cfg: Any, where: str) -> Any:
    if isinstance(cfg, dict):
        return DATASETS.build(cfg)
    if hasattr(cfg, "__len__") and hasattr(cfg, "__getitem__"):
        return cfg           # an already built dataset (Python use, tests)
    raise ConfigError(f"MixedDataset: {where}: expected a dataset config dict, got {type(cfg).__name__}")


@DATASETS.register()
class MixedDataset(Dataset):
    """Real + generated samples at ``ratio`` generated per real one (see the module docstring).

    Args:
        datasets: ``[real_cfg, generated_cfg]``, two DATASETS config dicts (or built datasets).
        ratio: generated:real ratio, >= 0; ``round(ratio * n_real)`` generated items (half up).
        seed: seed of the draw of generated items.
        resample_per_epoch: redraw the generated items every epoch (seeded by seed and epoch).
        exif_orientation: None (default): each child's own setting; a bool is set in both
            children's configs (the key every dataset takes, docs/data_formats.md).
    """

    config_children = {"datasets": ("list", DATASETS)}

    def __init__(self, datasets: list[dict], ratio: float = 1.0, seed: int = 0,
                 resample_per_epoch: bool = False, exif_orientation: bool | None = None):
        if not isinstance(datasets, (list, tuple)) or len(datasets) != 2:
            n = len(datasets) if isinstance(datasets, (list, tuple)) else type(datasets).__name__
            raise ConfigError(f"MixedDataset: datasets: expected [real, generated] (2 configs), got {n}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
                or ratio < 0:
            raise ConfigError(f"MixedDataset: ratio: must be a finite number >= 0, got {ratio!r}")
        self.ratio, self.seed = float(ratio), int(seed)
        self.resample_per_epoch = bool(resample_per_epoch)
        if exif_orientation is not None:
            datasets = [{**d, "exif_orientation": bool(exif_orientation)} if isinstance(d, dict) else d
                        for d in datasets]
        self.real = _build(datasets[0], "datasets[0] (real)")
        self.generated = _build(datasets[1], "datasets[1] (generated)")
        rc, gc = getattr(self.real, "classes", None), getattr(self.generated, "classes", None)
        if rc is None or gc is None or list(rc) != list(gc):
            raise ConfigError(f"MixedDataset: the real and generated datasets have different classes: "
                             f"real {None if rc is None else list(rc)} vs generated "
                             f"{None if gc is None else list(gc)} (same names, same order)")
        for attr in ("with_mask", "with_boxes"):
            a, b = getattr(self.real, attr, None), getattr(self.generated, attr, None)
            if a is not None and b is not None and bool(a) != bool(b):
                raise ConfigError(f"MixedDataset: {attr} differs: real {type(self.real).__name__} {a} vs "
                                 f"generated {type(self.generated).__name__} {b} (the samples would "
                                 f"not batch together)")
        self.classes: list[str] = list(rc)
        self.n_real = len(self.real)
        self.n_generated = int(math.floor(self.ratio * self.n_real + 0.5))
        if self.n_generated and len(self.generated) == 0:
            raise ConfigError(f"MixedDataset: ratio {self.ratio:g} asks for {self.n_generated} generated "
                             f"images but the generated dataset is empty")
        self.epoch = 0
        self._draw()

    # -------------------------------------------------------------------- the draw
    def _draw(self) -> None:
        n_gen = len(self.generated)
        if self.n_generated == 0:
            self.generated_order = np.zeros(0, np.int64)
        else:
            key = [self.seed % 2**32] + ([self.epoch % 2**32] if self.resample_per_epoch else [])
            perm = np.random.default_rng(np.random.SeedSequence(key)).permutation(n_gen)
            self.generated_order = np.resize(perm, self.n_generated).astype(np.int64)
        self._records = None

    def source_of(self, index: int) -> tuple[str, int, int]:
        """(source, index in that dataset, repeat number) of item ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        if index < self.n_real:
            return "real", index, 0
        k = index - self.n_real
        return "generated", int(self.generated_order[k]), k // max(len(self.generated), 1)

    def _id(self, source: str, rid: Any, repeat: int) -> str:
        return f"{source}/{rid}" + (f"#{repeat}" if repeat else "")

    # ---------------------------------------------------------------------- public
    def __len__(self) -> int:
        return self.n_real + self.n_generated

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in (self.real, self.generated):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        if self.resample_per_epoch:
            self._draw()

    def _child(self, source: str):
        return self.real if source == "real" else self.generated

    def _tag(self, sample: Any, index: int, source: str, j: int, repeat: int) -> Any:
        if is_skipped(sample):
            sample["skipped"]["index"] = int(index)
            return sample
        meta = dict(sample.get("meta") or {})
        meta["id"] = self._id(source, meta.get("id", j), repeat)
        meta.update(source=source, source_index=int(j))
        sample["meta"] = meta
        return sample

    def __getitem__(self, index: int) -> dict:
        source, j, rep = self.source_of(index)
        return self._tag(self._child(source)[j], index, source, j, rep)

    def get_sample(self, index: int, replace_invalid: bool = True) -> dict:
        """The child's ``get_sample`` (evaluation view, skipped markers; see BaseDataset)."""
        source, j, rep = self.source_of(index)
        child = self._child(source)
        get = getattr(child, "get_sample", None)
        sample = get(j, replace_invalid=replace_invalid) if callable(get) else child[j]
        return self._tag(sample, index, source, j, rep)

    def load_sample(self, index: int) -> dict:
        """The child's untransformed sample (tools/test.py, browse_dataset)."""
        source, j, rep = self.source_of(index)
        return self._tag(self._child(source).load_sample(j), index, source, j, rep)

    @property
    def records(self) -> list:
        """The children's records in this dataset's index order, ids prefixed by the source."""
        if self._records is None:
            out, self._owner = [], {}
            for i in range(len(self)):
                source, j, rep = self.source_of(i)
                child = self._child(source)
                rec = child.records[j]
                if dataclasses.is_dataclass(rec):
                    rec = dataclasses.replace(rec, id=self._id(source, rec.id, rep),
                                              meta={**rec.meta, "source": source})
                elif isinstance(rec, dict):
                    rec = {**rec, "id": self._id(source, rec.get("id", j), rep), "source": source}
                self._owner[id(rec)] = child
                out.append(rec)
            self._records = out
        return self._records

    def load_mask(self, rec: Any, h: int, w: int) -> np.ndarray:
        """The owning child's ``load_mask`` of a record of ``records`` (segmentation evaluator)."""
        self.records   # noqa: B018 - builds the owner map
        child = self._owner.get(id(rec))
        if child is None:
            raise KeyError("MixedDataset.load_mask: the record is not one of this dataset's records")
        return child.load_mask(rec, h, w)

    @property
    def category_ids(self):
        return getattr(self.real, "category_ids", None)

    @property
    def pipeline(self):
        return getattr(self.real, "pipeline", None)

    @property
    def skipped_at_read(self) -> list[str]:
        return list(getattr(self.real, "skipped_at_read", [])) + \
            list(getattr(self.generated, "skipped_at_read", []))

    @property
    def with_mask(self) -> bool:
        return bool(getattr(self.real, "with_mask", False))

    @property
    def with_boxes(self) -> bool:
        return bool(getattr(self.real, "with_boxes", False))

    def counts(self) -> dict[str, int]:
        """Items per source: ``{"real": n_real, "generated": n_generated}``."""
        return {"real": self.n_real, "generated": self.n_generated}

    def __repr__(self) -> str:
        return (f"MixedDataset({self.n_real} real + {self.n_generated} generated (ratio {self.ratio:g}, "
                f"seed {self.seed}), classes={self.classes})")
