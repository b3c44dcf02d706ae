"""The hook interface of the training loop (detectron2's ``HookBase``, plus checkpoint state).

The trainer calls, in this order::

    before_train
    for each epoch:    before_epoch
        for each step: before_step; trainer.run_step(batch); after_step
        after_epoch                  (only when the epoch ran to its end)
    after_train                      (also when training stops with an error)

and ``before_eval`` / ``after_eval(metrics)`` around every ``trainer.evaluate()``.
Hooks run in the order of ``trainer.hooks``; ``after_*`` methods run in the same order
as ``before_*`` ones. ``self.trainer`` is set when the trainer registers the hook.

The class lives at the package's bottom layer (next to ``registry.py``) so that a family's
own hook (e.g. Defect-Gen's sample previews, in ``models/generation/``) can subclass it
without importing the engine.

A hook with state that a resumed run needs (EMA weights, the best metric) writes it into
the checkpoint dict in ``save_state(ckpt)`` and reads it back in ``load_state(ckpt)``.
"""
from __future__ import annotations

from typing import Any


class HookBase:
    """No-op base class of every training hook."""

    trainer: Any = None

    def before_train(self) -> None: ...
    def after_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def after_epoch(self) -> None: ...
    def before_step(self) -> None: ...
    def after_step(self) -> None: ...
    def before_eval(self) -> None: ...

    def after_eval(self, metrics: dict | None) -> None:
        """``metrics``: what ``trainer.evaluate()`` returns (None without an evaluator)."""

    def save_state(self, ckpt: dict) -> None:
        """Add this hook's state to the checkpoint dict ``ckpt`` (called on every rank that
        writes a checkpoint, i.e. rank 0)."""

    def load_state(self, ckpt: dict) -> None:
        """Restore this hook's state from a checkpoint dict being resumed."""

    def __repr__(self) -> str:
        return type(self).__name__
