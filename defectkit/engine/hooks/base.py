"""Helpers of the built-in hooks; ``HookBase`` (the hook interface and the order of calls)
lives in ``defectkit/hooks.py``, below the engine, and is re-exported here."""
from __future__ import annotations

from ...hooks import HookBase  # noqa: F401  (re-exported)


def period_end(trainer, after_step: bool) -> tuple[int, bool] | None:
    """``(count, last)`` when a period (an iteration in iteration-based training, an epoch
    otherwise) has just ended at this call, else None. ``after_step``: called from
    ``after_step`` (else from ``after_epoch``); ``last``: the end of training."""
    if trainer.by_iter != after_step:
        return None
    if after_step:
        return trainer.iter, trainer.iter >= trainer.max_iters
    return trainer.epoch, trainer.epoch >= trainer.max_epochs

