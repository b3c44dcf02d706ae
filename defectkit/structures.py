"""Typed per-image results returned by ``model.predict(batch)``.

Each family adds its own dataclass here; evaluators, visualisers and tools
only rely on these fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class ClassificationResult:
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
class DetectionResult:
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

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_json(self) -> dict:
        return {"boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
                "scores": [round(float(s), 5) for s in self.scores],
                "labels": [int(l) for l in self.labels],
                "gate_score": None if self.gate_score is None else round(float(self.gate_score), 5),
                "gated": bool(self.gated)}


@dataclass
class SegmentationResult:
    """Semantic segmentation of one image (ZNet, UNet), in ORIGINAL image pixels, on CPU.

    ``mask``: per-pixel class index (0 = background). ``image_scores``: softmax of an
    optional image-level head (normal/defective), or None.
    """
    mask: torch.Tensor                     # (H, W) int64
    probs: torch.Tensor | None = None      # (C, H, W) float32 softmax, when kept
    image_scores: torch.Tensor | None = None  # (2,) float32, when the model has an image head

    def to_json(self) -> dict:
        return {"shape": list(self.mask.shape),
                "class_pixels": {int(c): int(n) for c, n in zip(*torch.unique(self.mask, return_counts=True))},
                "image_scores": None if self.image_scores is None
                else [round(float(s), 6) for s in self.image_scores]}


@dataclass
class AnomalyResult:
    """Anomaly score of one image (PaDiM), in ORIGINAL image pixels where maps are concerned.

    ``score``: image anomaly score (normalised to [0, 1] once thresholds are fitted, raw
    otherwise); ``anomaly_map``: per-pixel score; ``pred_label`` / ``pred_mask``: decisions
    at the fitted thresholds (None before fitting).
    """
    score: float
    anomaly_map: torch.Tensor                  # (H, W) float32
    pred_label: int | None = None
    pred_mask: torch.Tensor | None = None      # (H, W) bool

    def to_json(self) -> dict:
        return {"score": round(float(self.score), 6), "pred_label": self.pred_label,
                "map_shape": list(self.anomaly_map.shape),
                "map_max": round(float(self.anomaly_map.max()), 6) if self.anomaly_map.numel() else None}
