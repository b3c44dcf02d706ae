"""DefectNet's "two-model" baseline: an image classifier in front of a detector.

Both are trained separately (``configs/classifier/*`` and the one-model detector); this
class only assembles them for testing, so ``forward`` (training) raises. For each batch
the classifier computes P(defective) for every image; images with P > ``threshold`` go
through the detector (``detector.predict`` on that sub-batch), the others return an
empty ``DetectionResult(gated=True)``. ``gate_score`` is the classifier's P(defective).

Inputs: the classifier sees the detector's input batch (already normalised with the
same ImageNet mean/std), either as it is (``classifier_size: null``, e.g. the "large"
1333x800 classifier) or resized with bilinear ``F.interpolate`` to ``classifier_size``
= (w, h) (the "small" 224x224 classifier, aspect not kept). Each image is cropped to its
``image_sizes`` entry first, so the collate padding does not reach the classifier. The
original re-read the file with its own pipeline; resizing the detector's input is the
simple equivalent here (the interpolation differs slightly from PIL's).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ...structures import DetectionResult
from ..base import BaseModel
from ..weights import load_weights
from .rcnn_parts import empty_result


def _subset(batch: dict, idx: list[int]) -> dict:
    n = batch["image"].shape[0]
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            out[k] = v[torch.tensor(idx, device=v.device)]
        elif isinstance(v, (list, tuple)) and len(v) == n:
            out[k] = [v[i] for i in idx]
        else:
            out[k] = v
    return out


@MODELS.register()
class TwoModelDetector(BaseModel):
    """Args:
        classifier: the built classifier (an ``ImageClassifier`` with 2 classes). In a
            config: its model dict, or the path of the classifier's config file (its
            ``model`` section is used); ``engine.builders.build_model`` builds it first
            (``model_parts``), so this class never reads a config.
        detector: the built detector (e.g. a ``CascadeRCNN`` without gate); in a config a
            model dict or a config path, as ``classifier``. The builder tells it the
            dataset's classes (or ``num_classes``) unless its own config sets them.
        classifier_checkpoint / detector_checkpoint: paths of their trained weights, loaded
            strictly here (``models.weights.load_weights``; ``CheckpointError`` naming the
            file); null keeps the parts' current weights (only useful in tests).
        threshold: the image goes to the detector when P(defective) > threshold.
        classifier_size: (w, h) to resize the classifier's input to, or null (as is).
        classes / num_classes: the dataset's classes; the detector must have that many
            (ValueError naming ``model.detector`` otherwise).
    """

    loads_own_weights = True    # tools/test.py needs no checkpoint for it
    model_parts = {"classifier": False, "detector": True}

    def __init__(self, classifier: nn.Module | dict | str, detector: nn.Module | dict | str,
                 classifier_checkpoint: str | None = None, detector_checkpoint: str | None = None,
                 threshold: float = 0.5, classifier_size: tuple[int, int] | None = None,
                 classes: list[str] | None = None, num_classes: int | None = None):
        super().__init__()
        for key, part in (("classifier", classifier), ("detector", detector)):
            if not isinstance(part, nn.Module):
                raise TypeError(f"model.{key}: TwoModelDetector takes a built model; build the config "
                                f"with defectkit.engine.build_model, which builds its parts")
        expected = len(classes) if classes is not None else num_classes
        got = getattr(detector, "num_classes", None)
        if expected is not None and got is not None and int(got) != int(expected):
            raise ValueError(f"model.detector: has {got} classes but the dataset has {expected}")
        self.classifier = classifier
        self.detector = detector
        self.threshold = float(threshold)
        self.classifier_size = tuple(int(v) for v in classifier_size) if classifier_size else None
        for module, path in ((self.classifier, classifier_checkpoint), (self.detector, detector_checkpoint)):
            if path:
                load_weights(module, path, strict=True)
        self.reset_gate_stats()

    def reset_gate_stats(self) -> None:
        self._seen, self._passed = 0, 0

    def gate_stats(self) -> dict:
        return {"images": self._seen, "passed": self._passed,
                "pass_rate": self._passed / self._seen if self._seen else float("nan")}

    def forward(self, batch: dict):
        raise RuntimeError("TwoModelDetector is assembled from two trained models (a classifier and "
                           "a one-model detector) and cannot be trained; train each with its own "
                           "config and point classifier_checkpoint / detector_checkpoint at them")

    def classifier_input(self, batch: dict) -> torch.Tensor:
        images = batch["image"]
        sizes = batch.get("image_sizes") or [tuple(images.shape[-2:])] * images.shape[0]
        if self.classifier_size is None and all(tuple(s) == tuple(images.shape[-2:]) for s in sizes):
            return images
        out = []
        for img, (h, w) in zip(images, sizes):
            img = img[:, :int(h), :int(w)][None]
            if self.classifier_size is not None:
                cw, ch = self.classifier_size
                img = F.interpolate(img, size=(ch, cw), mode="bilinear", align_corners=False)
            out.append(img)
        if self.classifier_size is None:   # different sizes: classify one at a time
            return out
        return torch.cat(out)

    @torch.no_grad()
    def gate_scores(self, batch: dict) -> torch.Tensor:
        x = self.classifier_input(batch)
        if isinstance(x, list):
            logits = torch.cat([self.classifier.logits(xi) for xi in x])
        else:
            logits = self.classifier.logits(x)
        return logits.float().softmax(1)[:, 1]

    @torch.no_grad()
    def predict(self, batch: dict) -> list[DetectionResult]:
        p = self.gate_scores(batch).cpu()
        n = p.shape[0]
        passed = torch.where(p > self.threshold)[0].tolist()
        self._seen += n
        self._passed += len(passed)
        results = [empty_result(float(p[i]), gated=True) for i in range(n)]
        if passed:
            dets = self.detector.predict(batch if len(passed) == n else _subset(batch, passed))
            for i, r in zip(passed, dets):
                r.gate_score, r.gated = float(p[i]), False
                results[i] = r
        return results
