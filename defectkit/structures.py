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
