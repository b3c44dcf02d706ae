"""Toy model, dataset and evaluator for the engine tests (registered under ``_Toy*`` names).

Tiny on purpose: 3x8x8 images, a one-conv classifier, so a whole training run takes
well under a second on one CPU core. Importable as ``helpers_toy`` when ``tests/`` is on
``sys.path`` (pytest does that; subprocesses get it through PYTHONPATH), so configs can
name it in ``custom_imports``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from defectkit.models.base import BaseModel
from defectkit.evaluation import BaseEvaluator
from defectkit.registry import DATASETS, EVALUATORS, MODELS
from defectkit.structures import ClassificationResult


def _register(registry, obj):
    if obj.__name__ not in registry:
        registry.register(obj=obj)
    return registry.get(obj.__name__)


class _ToyDataset:
    """``num_samples`` images; label ``i % 2``; label-1 images carry a bright square.

    With ``augment`` each sample gets noise and a flip drawn from a generator seeded by
    (seed, epoch, index): augmentation is a function of those three, as the engine expects.
    """

    def __init__(self, num_samples: int = 32, size: int = 8, seed: int = 0, augment: bool = True,
                 classes: list[str] | None = None):
        self.num_samples, self.size, self.seed, self.augment = num_samples, size, seed, augment
        self.classes = list(classes) if classes is not None else ["ok", "defect"]
        self.epoch = 0
        g = torch.Generator().manual_seed(seed)
        self.base = torch.rand(num_samples, 3, size, size, generator=g) * 0.5
        for i in range(1, num_samples, 2):
            self.base[i, :, 2:5, 2:5] += 0.5
        self.records = [{"id": i, "label": i % 2} for i in range(num_samples)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        img = self.base[i].clone()
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
            img = img + 0.05 * torch.randn(img.shape, generator=g)
            if torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
        return {"image": img, "label": i % 2, "is_defective": i % 2,
                "meta": {"id": i, "path": f"toy/{i}.png"}}


class _ToyClassifier(nn.Module):
    """conv -> pool -> dropout -> linear; ``nan_at_call`` / ``crash_at_call`` make the
    n-th training forward of this process return a NaN loss / raise."""

    def __init__(self, num_classes: int = 2, hidden: int = 8, dropout: float = 0.0,
                 nan_at_call: int | None = None, crash_at_call: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)
        self.nan_at_call, self.crash_at_call = nan_at_call, crash_at_call
        self.calls = 0

    def logits(self, batch: dict) -> torch.Tensor:
        x = F.relu(self.conv(batch["image"]))
        return self.fc(self.drop(x.amax(dim=(2, 3))))

    def forward(self, batch: dict) -> dict:
        self.calls += 1
        if self.crash_at_call == self.calls:
            raise RuntimeError(f"simulated crash at training call {self.calls}")
        logits = self.logits(batch)
        loss = F.cross_entropy(logits, batch["label"])
        if self.nan_at_call == self.calls:
            loss = loss * float("nan")
        return {"loss_cls": loss, "loss_reg": 1e-3 * self.fc.weight.pow(2).sum(),
                "acc": (logits.argmax(1) == batch["label"]).float().mean()}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[ClassificationResult]:
        probs = self.logits(batch).softmax(1).cpu()
        return [ClassificationResult(label=int(p.argmax()), scores=p) for p in probs]


class _ToyFitModel(BaseModel):
    """A statistical model: ``fit`` stores the mean colour of each class; no parameters."""

    learning = "fit"

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_classes, 3))
        self.fit_calls = 0

    def fit(self, loader) -> None:
        self.fit_calls += 1
        sums = torch.zeros_like(self.means)
        counts = torch.zeros(len(self.means), device=self.means.device)
        for batch in loader:
            assert batch["image"].device == self.means.device
            colour = batch["image"].mean(dim=(2, 3))
            sums.index_add_(0, batch["label"], colour)
            counts.index_add_(0, batch["label"], torch.ones_like(batch["label"], dtype=counts.dtype))
        self.means.copy_(sums / counts.clamp(min=1)[:, None])

    def forward(self, batch: dict) -> dict:
        raise RuntimeError("_ToyFitModel is fitted, not trained")

    @torch.no_grad()
    def predict(self, batch: dict) -> list[ClassificationResult]:
        d = torch.cdist(batch["image"].mean(dim=(2, 3)), self.means)
        probs = (-d).softmax(1).cpu()
        return [ClassificationResult(label=int(p.argmax()), scores=p) for p in probs]


class _ToyEvaluator(BaseEvaluator):
    """Accuracy over ``label``; ``scripted`` replaces the accuracy of the k-th evaluation
    by ``scripted[k]`` (to test best-checkpoint keeping). ``ids`` lists every evaluated
    sample id (to test that gathering counts each sample once)."""

    main_metric = "accuracy"
    greater_is_better = True

    def __init__(self, classes: list[str] | None = None, scripted: list[float] | None = None):
        self.classes, self.scripted = classes, scripted
        self.records: list = []
        self.calls = 0

    def reset(self) -> None:
        self.records = []

    def process(self, batch: dict, results: list) -> None:
        for meta, label, res in zip(batch["meta"], batch["label"].tolist(), results):
            self.records.append({"id": meta["id"], "label": label, "pred": res.label})

    def compute(self) -> dict:
        n = len(self.records)
        acc = sum(r["label"] == r["pred"] for r in self.records) / max(n, 1)
        if self.scripted is not None:
            acc = float(self.scripted[min(self.calls, len(self.scripted) - 1)])
        self.calls += 1
        return {"accuracy": acc, "count": n, "ids": [r["id"] for r in self.records]}

    def summary(self, metrics: dict) -> str:
        return f"toy accuracy {metrics['accuracy']:.3f} over {metrics['count']} images"


_ToyDataset = _register(DATASETS, _ToyDataset)
_ToyClassifier = _register(MODELS, _ToyClassifier)
_ToyFitModel = _register(MODELS, _ToyFitModel)
_ToyEvaluator = _register(EVALUATORS, _ToyEvaluator)


BASE_CONFIG = {
    "custom_imports": ["helpers_toy"],
    "model": {"type": "_ToyClassifier", "hidden": 8},
    "data": {
        "train": {"type": "_ToyDataset", "num_samples": 32},
        "val": {"type": "_ToyDataset", "num_samples": 13, "seed": 1, "augment": False},
        "batch_size": 8,
        "num_workers": 0,
    },
    "optimizer": {"type": "SGD", "lr": 0.2, "momentum": 0.9},
    "lr_schedule": {"type": "CosineLR", "warmup_iters": 3},
    "train": {"epochs": 4, "log_interval": 1, "progress": False, "max_keep_ckpts": 0},
    "evaluation": {"type": "_ToyEvaluator"},
    "seed": 0,
    "device": "cpu",
}


def toy_config(**sections) -> dict:
    """``BASE_CONFIG`` with top-level sections merged in (dicts update, other values replace)."""
    cfg = copy.deepcopy(BASE_CONFIG)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(copy.deepcopy(v))
        else:
            cfg[k] = copy.deepcopy(v)
    return cfg
