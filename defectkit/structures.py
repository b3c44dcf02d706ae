"""Typed per-image results returned by ``model.predict(batch)``.

Every result inherits :class:`Result`, which declares what the tools ask of it (JSON form,
files, ground-truth key, display names); its drawing is registered for its type with
``defectkit.visualization.register_drawer``. The tools never branch on the type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch


class Result:
    """Base of per-image results (a dataclass subclass adds the fields).

    ``gt_key``: the sample key (or tuple of keys) that ``tools/test.py --show`` draws as
    ground truth; None (default): the model's ``target`` (e.g. ``is_defective``)."""

    gt_key: ClassVar[str | tuple | None] = None

    def to_json(self) -> dict:
        """The JSON form of ``predictions.json`` / ``results.json`` (plain types only)."""
        raise NotImplementedError(f"{type(self).__name__}.to_json")

    def write_files(self, out_dir, stem: str) -> list[str]:
        """Files ``tools/infer.py`` writes next to the drawing (e.g. a mask PNG), named
        ``<out_dir>/<stem>_*``; returns their paths. None by default."""
        return []

    def class_names(self, target: str, classes: Sequence[str] | None) -> Sequence[str] | None:
        """Names of the result's class indices, given the model's ``target`` and the
        dataset's ``classes`` (default: ``classes``: boxes, masks and maps)."""
        return classes

    def table_rows(self, path: str, class_names: Sequence[str] | None) -> dict[str, list[dict]]:
        """Rows this image adds to ``tools/infer.py``'s summary tables: ``{table: [row, ...]}``,
        each row a flat dict of plain values (``path``: the input file; ``class_names``: as
        :meth:`class_names` gives them). ``infer.py`` writes one ``<out_dir>/<table>.csv`` per
        table over all inputs (e.g. one row per defect). None by default."""
        return {}


@dataclass
class ClassificationResult(Result):
    label: int                  # predicted class index (0 = normal for 2-way models)
    scores: torch.Tensor        # (num_classes,) softmax probabilities, on CPU

    @property
    def score(self) -> float:
        return float(self.scores[self.label])

    def name(self, class_names: Sequence[str]) -> str:
        """The predicted class name, e.g. ``r.name(BINARY_CLASS_NAMES)`` -> "defective"."""
        return str(class_names[self.label])

    def to_json(self) -> dict:
        return {"label": self.label, "scores": [round(float(s), 6) for s in self.scores]}

    def class_names(self, target: str, classes: Sequence[str] | None) -> list[str]:
        """An image-level label is named after ``target`` (:func:`class_names_for`)."""
        return class_names_for(target, len(self.scores), classes)


# image-level class names of every 2-way normal/defective model and evaluator
BINARY_CLASS_NAMES = ["normal", "defective"]


def class_names_for(target: str, num_classes: int, classes: Sequence[str] | None = None) -> list[str]:
    """Display names of the classifier outputs.

    ``is_defective`` -> ``['normal', 'defective']`` whatever ``classes`` says (a dataset's
    ``classes`` are its defect types, not the image labels); otherwise ``classes`` when it
    has one name per output, else ``['0', '1', ...]``.
    """
    if target == "is_defective":
        return list(BINARY_CLASS_NAMES)
    if classes is not None and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


@dataclass
class DetectionResult(Result):
    """Detections of one image, in ORIGINAL image pixels (the model undoes the pipeline's
    resize with ``meta['scale_factor']``), on CPU.

    ``gate_score``: P(defective) from an image-level gate (DefectNet / two-model), or None.
    ``gated``: True when the gate judged the image normal and the detection heads were
    skipped (then the result is empty by construction).
    """
    boxes: torch.Tensor          # (N, 4) float32 XYXY
    scores: torch.Tensor         # (N,) float32
    labels: torch.Tensor         # (N,) int64, 0-based index into the dataset's classes
    gate_score: float | None = None
    gated: bool = False

    gt_key: ClassVar[tuple] = ("boxes", "labels")   # the sample keys tools/test.py draws as GT

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_json(self) -> dict:
        return {"boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
                "scores": [round(float(s), 5) for s in self.scores],
                "labels": [int(l) for l in self.labels],
                "gate_score": None if self.gate_score is None else round(float(self.gate_score), 5),
                "gated": bool(self.gated)}

    def table_rows(self, path: str, class_names: Sequence[str] | None) -> dict[str, list[dict]]:
        """``detections``: one row per box (file, class, score, box in original px)."""
        return {"detections": [
            {"file": path, "class": class_names[int(l)] if class_names is not None else int(l),
             "score": round(float(s), 5), **dict(zip(("xmin", "ymin", "xmax", "ymax"),
                                                     (round(float(v), 2) for v in b)))}
            for b, s, l in zip(self.boxes, self.scores, self.labels)]}


@dataclass
class SegmentationResult(Result):
    """Semantic segmentation of one image (ZNet, UNet), in ORIGINAL image pixels, on CPU.

    ``mask``: per-pixel class index (0 = background). ``image_scores``: softmax of an
    optional image-level head (normal/defective), or None. ``gated``: the image head judged
    the image normal and the decoder was skipped (the mask is all background).
    """
    mask: torch.Tensor                     # (H, W) int64
    probs: torch.Tensor | None = None      # (C, H, W) float32 softmax, when kept
    image_scores: torch.Tensor | None = None  # (2,) float32, when the model has an image head
    gated: bool = False

    gt_key: ClassVar[str] = "mask"         # the sample key tools/test.py draws as ground truth

    def write_files(self, out_dir, stem: str) -> list[str]:
        """``<stem>_mask.png``: the class-index mask as 8-bit PNG (what tools/infer.py saves)."""
        from pathlib import Path

        import numpy as np
        from PIL import Image

        path = Path(out_dir) / f"{stem}_mask.png"
        Image.fromarray(self.mask.to(torch.uint8).numpy().astype(np.uint8)).save(path)
        return [str(path)]

    def to_json(self) -> dict:
        return {"shape": list(self.mask.shape),
                "class_pixels": {int(c): int(n) for c, n in zip(*torch.unique(self.mask, return_counts=True))},
                "image_scores": None if self.image_scores is None
                else [round(float(s), 6) for s in self.image_scores],
                "gated": bool(self.gated)}


@dataclass
class AnomalyResult(Result):
    """Anomaly score of one image (PaDiM), maps in the model's input pixels (after the pipeline).

    ``score``: image anomaly score (normalised to [0, 1] once thresholds are fitted, raw
    otherwise); ``anomaly_map``: per-pixel score on the same scale; ``pred_label`` /
    ``pred_mask``: decisions at the fitted thresholds (None before fitting).
    ``raw_score`` / ``raw_map``: the unnormalised values (metrics use these: the clamp of
    the normalisation would create ties).
    """
    score: float
    anomaly_map: torch.Tensor                  # (H, W) float32
    pred_label: int | None = None
    pred_mask: torch.Tensor | None = None      # (H, W) bool
    raw_score: float | None = None
    raw_map: torch.Tensor | None = None        # (H, W) float32

    gt_key: ClassVar[str] = "mask"

    def write_files(self, out_dir, stem: str) -> list[str]:
        """``<stem>_heatmap.png`` (the anomaly map, 0..255 over [0, 1] when normalised, else
        over its own min..max) and ``<stem>_mask.png`` when a predicted mask exists."""
        from pathlib import Path

        import numpy as np
        from PIL import Image

        m = self.anomaly_map.float()
        if self.pred_label is None:     # raw scale: stretch for display
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
        paths = [Path(out_dir) / f"{stem}_heatmap.png"]
        Image.fromarray((m.clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(np.uint8)).save(paths[0])
        if self.pred_mask is not None:
            paths.append(Path(out_dir) / f"{stem}_mask.png")
            Image.fromarray(self.pred_mask.to(torch.uint8).numpy().astype(np.uint8) * 255).save(paths[1])
        return [str(p) for p in paths]

    def to_json(self) -> dict:
        return {"score": round(float(self.score), 6), "pred_label": self.pred_label,
                "raw_score": None if self.raw_score is None else round(float(self.raw_score), 6),
                "map_shape": list(self.anomaly_map.shape),
                "map_max": round(float(self.anomaly_map.max()), 6) if self.anomaly_map.numel() else None,
                "pred_mask_pixels": None if self.pred_mask is None else int(self.pred_mask.sum())}


@dataclass
class InstanceSegmentationResult(Result):
    """Instances of one image (Mask R-CNN), in ORIGINAL image pixels, on CPU.

    ``masks`` (N, H, W) bool (or uint8 0/1): instance ``k``'s pixels, aligned with
    ``boxes[k]`` / ``scores[k]`` / ``labels[k]`` (0-based class index); an image without
    instances has masks (0, H, W), so the image size is always known. ``gate_score`` /
    ``gated``: as :class:`DetectionResult` (a gated image skipped the box AND mask heads).
    ``score_thr``: the score from which an instance counts (the default threshold of
    :meth:`semantic_map`, :meth:`instance_map`, :meth:`write_files` and the drawing); the
    ``InstanceSegmentationEvaluator`` sets it to ``evaluation.score_thr`` (``process`` /
    ``export_fields``), so the mask PNG and overlay of tools/infer.py / tools/test.py show
    the instances the metrics count.
    """
    boxes: torch.Tensor          # (N, 4) float32 XYXY
    scores: torch.Tensor         # (N,) float32
    labels: torch.Tensor         # (N,) int64
    masks: torch.Tensor          # (N, H, W) bool / uint8
    gate_score: float | None = None
    gated: bool = False
    score_thr: float = 0.5

    gt_key: ClassVar[str] = "mask"   # tools/test.py draws the semantic class-index mask as GT

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    def semantic_map(self, score_thr: float | None = None) -> torch.Tensor:
        """(H, W) int64 class-index map (0 background, ``label + 1`` for an instance pixel)
        of the instances with ``score >= score_thr`` (None: ``self.score_thr``). Overlaps: the HIGHER-scoring instance
        wins the pixel (instances are painted in ascending score order; equal scores: the
        one listed first wins). This is how Mask R-CNN is scored as a semantic segmenter
        (``InstanceSegmentationEvaluator``)."""
        out = torch.zeros(self.image_size, dtype=torch.int64)
        for k in self._paint_order(score_thr):
            out[self.masks[k].bool()] = int(self.labels[k]) + 1
        return out

    def _paint_order(self, score_thr: float | None) -> list[int]:
        """Indices of the instances with score >= ``score_thr``, lowest score first; among
        equal scores the later-listed first (so painting in this order, the higher score and
        then the earlier-listed instance wins a pixel)."""
        thr = self.score_thr if score_thr is None else float(score_thr)
        scores = self.scores.tolist()
        keep = [k for k, s in enumerate(scores) if s >= thr]
        return sorted(keep, key=lambda k: (scores[k], -k))

    def instance_map(self, score_thr: float | None = None) -> torch.Tensor:
        """(H, W) int64: 0 background, ``k + 1`` for a pixel of instance ``k`` (same
        threshold and overlap rule as :meth:`semantic_map`)."""
        out = torch.zeros(self.image_size, dtype=torch.int64)
        for k in self._paint_order(score_thr):
            out[self.masks[k].bool()] = k + 1
        return out

    def rles(self) -> list[dict]:
        """COCO RLE (pycocotools, ``counts`` as str) of every mask."""
        from pycocotools import mask as mask_utils
        import numpy as np

        if len(self) == 0:
            return []
        m = np.asfortranarray(self.masks.to(torch.uint8).permute(1, 2, 0).numpy())
        out = mask_utils.encode(m)
        for r in out:
            r["counts"] = r["counts"].decode("ascii")
        return out

    def write_files(self, out_dir, stem: str) -> list[str]:
        """``<stem>_mask.png``: :meth:`semantic_map` (score >= ``self.score_thr``) as 8-bit PNG (class
        index per pixel, as SegmentationResult writes it)."""
        from pathlib import Path

        import numpy as np
        from PIL import Image

        path = Path(out_dir) / f"{stem}_mask.png"
        Image.fromarray(self.semantic_map().to(torch.uint8).numpy().astype(np.uint8)).save(path)
        return [str(path)]

    def to_json(self) -> dict:
        return {"boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
                "scores": [round(float(s), 5) for s in self.scores],
                "labels": [int(l) for l in self.labels],
                "masks": self.rles(), "image_size": list(self.image_size),
                "gate_score": None if self.gate_score is None else round(float(self.gate_score), 5),
                "gated": bool(self.gated), "score_thr": float(self.score_thr)}

    def table_rows(self, path: str, class_names: Sequence[str] | None) -> dict[str, list[dict]]:
        """``instances``: one row per instance (file, class, score, mask pixels, box in
        original px, ``counted``: score >= ``self.score_thr``, i.e. drawn, in the mask PNG and
        in the semantic metrics; the other rows are the model's lower-scored candidates)."""
        areas = self.masks.reshape(len(self), -1).bool().sum(1).tolist() if len(self) else []
        return {"instances": [
            {"file": path, "class": class_names[int(l)] if class_names is not None else int(l),
             "score": round(float(s), 5), "area": int(a), **dict(zip(("xmin", "ymin", "xmax", "ymax"),
                                                                      (round(float(v), 2) for v in b))),
             "counted": bool(float(s) >= self.score_thr)}
            for b, s, l, a in zip(self.boxes, self.scores, self.labels, areas)]}
