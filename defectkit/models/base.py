"""The interface a model declares to the engine (``BaseModel``) and what the engine tells it
(``Progress``).

Every defectkit model inherits ``BaseModel``; a plain ``nn.Module`` (a user's own model)
also trains, with the defaults below. The engine reads these declarations and calls these
methods; it never probes a model with ``getattr``/``hasattr``.

Contract (DESIGN §5):

- ``learning = "gradient"``: ``forward(batch)`` in train mode returns a dict of scalar
  loss tensors; the engine sums them, back-propagates and steps the optimizer.
- ``learning = "fit"``: a statistical model (PaDiM): the engine calls ``fit(loader)`` once
  over the training set, then ``calibrate(loader)`` on ``data.val`` when present; there is
  no optimizer.
- ``predict(batch)`` in eval mode returns one typed result per image
  (``defectkit.structures``).
- ``export_spec()``: the graph ``tools/export.py`` writes to ONNX, or ``None`` (default)
  when the model does not export.
- ``train_step_begin(progress)`` / ``train_step_end(progress)`` run before the forward and
  after the optimizer step of every training iteration (e.g. DefectNet's gate-loss weight
  follows ``progress.epoch`` or ``progress.iter``). No-ops by default.
- ``model_parts``: constructor arguments that are models themselves (a composite such as
  ``TwoModelDetector``). The builder (``engine.builders.build_model``) builds each from its
  config (a model dict, or the path of a config file whose ``model`` section is used) and
  passes the BUILT module, so a model never reads a config or imports the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Mapping

from torch import nn

Learning = Literal["gradient", "fit"]


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step begins or ends.

    ``epoch``: 0-based epoch of the step; ``iter``: optimizer steps completed before this
    step (``train_step_begin``) or including it (``train_step_end``); ``max_epochs`` /
    ``max_iters``: the run's length (``max_epochs`` is ``None`` in an iteration-based run).
    """

    epoch: int
    iter: int
    max_epochs: int | None
    max_iters: int


@dataclass
class ExportSpec:
    """What ``tools/export.py`` exports: ``module`` maps ``image`` float32 (B, 3, H, W) RGB in
    [0, 1] to a tuple of tensors named ``output_names`` (batch dimension first);
    ``input_size`` is the default (H, W) in px."""

    module: nn.Module
    output_names: tuple[str, ...]
    input_size: tuple[int, int]


class BaseModel(nn.Module):
    """Base class of every defectkit model: declares how it learns, with no-op hooks."""

    learning: ClassVar[Learning] = "gradient"
    # argument name -> whether the builder tells that part the dataset's classes
    model_parts: ClassVar[Mapping[str, bool]] = {}

    def export_spec(self) -> ExportSpec | None:
        """The ONNX export graph (see ``ExportSpec``); ``None``: this model does not export.
        Raises ``ValueError`` when the model exports in general but not in this state."""
        return None

    def train_step_begin(self, progress: Progress) -> None:
        """Called by the engine before the forward pass of every training step."""

    def train_step_end(self, progress: Progress) -> None:
        """Called by the engine after the optimizer step of every training step."""

    def calibrate(self, loader) -> None:
        """``learning = "fit"``: called after ``fit`` with the ``data.val`` batches when the
        config has a validation split (e.g. PaDiM's thresholds); no-op by default."""


def learning_of(model: nn.Module) -> Learning:
    """``model.learning`` for a ``BaseModel``; ``"gradient"`` for any other module."""
    return model.learning if isinstance(model, BaseModel) else "gradient"
