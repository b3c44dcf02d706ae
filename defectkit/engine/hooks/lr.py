"""LR schedule hook: sets every parameter group's LR before each step.

``group['lr'] = base_lr * schedule(iteration, epoch, iters_per_epoch)`` where the base LR
``trainer.base_lrs[k]`` is group k's LR when the optimizer was built (``optimizer.lr``
times a ``paramwise`` ``lr_mult``). The schedule is a pure function of the position
(``engine/lr_schedule.py``), so a resumed run needs no scheduler state.
"""
from __future__ import annotations

from .base import HookBase


class LRScheduleHook(HookBase):
    def before_step(self) -> None:
        t = self.trainer
        factor = t.schedule(t.iter, t.epoch, t.iters_per_epoch)
        for g, base in zip(t.optimizer.param_groups, t.base_lrs):
            g["lr"] = base * factor
