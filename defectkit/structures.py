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
