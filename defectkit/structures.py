"""Typed per-image results returned by ``model.predict(batch)``.

Each family adds its own dataclass here; evaluators, visualisers and tools
only rely on these fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassificationResult:
    label: int                  # predicted class index (0 = normal for 2-way models)
    scores: torch.Tensor        # (num_classes,) softmax probabilities, on CPU

    @property
    def score(self) -> float:
        return float(self.scores[self.label])

    def to_json(self) -> dict:
        return {"label": self.label, "scores": [round(float(s), 6) for s in self.scores]}
