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


def period_end(trainer, after_step: bool) -> tuple[int, bool] | None:
    """``(count, last)`` when a period (an iteration in iteration-based training, an epoch
    otherwise) has just ended at this call, else None. ``after_step``: called from
    ``after_step`` (else from ``after_epoch``); ``last``: the end of training."""
    if trainer.by_iter != after_step:
        return None
    if after_step:
        return trainer.iter, trainer.iter >= trainer.max_iters
    return trainer.epoch, trainer.epoch >= trainer.max_epochs

