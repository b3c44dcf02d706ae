"""Learning-rate schedules as pure functions of the training position.

A schedule gives the factor that multiplies each parameter group's base LR (the
``lr`` of the optimizer config); the trainer sets ``group['lr'] = base_lr * factor``
before every iteration, so a resumed run recomputes the LR from (iteration, epoch)
and needs no scheduler state.

Warm-up is linear by iteration (mmdet's ``warmup='linear'``): for ``i < warmup_iters``
the regular factor ``r`` becomes ``r * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))``,
i.e. ``r * warmup_ratio`` at the first iteration and ``r`` at ``warmup_iters``.

``by_epoch=True`` changes the regular factor at epoch boundaries (``epoch`` is the
0-based index of the running epoch); ``by_epoch=False`` changes it every iteration
(``iteration`` = iterations completed before this one). In iteration-based training
``epoch`` is ``iteration // iters_per_epoch``.
"""
from __future__ import annotations

import math

from ..registry import LR_SCHEDULES


class LRSchedule:
    """Base class: subclasses implement :meth:`regular`."""

    def __init__(self, warmup_iters: int = 0, warmup_ratio: float = 0.001, by_epoch: bool = True):
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not 0 <= warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.by_epoch = bool(by_epoch)
        self.max_epochs: int | None = None
        self.max_iters: int | None = None

    def bind(self, max_epochs: int | None = None, max_iters: int | None = None) -> "LRSchedule":
        """Tell the schedule the length of training (the trainer calls this)."""
        self.max_epochs, self.max_iters = max_epochs, max_iters
        return self

    def total(self, iters_per_epoch: int) -> int:
        """T: total epochs (``by_epoch``) or iterations of the run."""
        if self.by_epoch:
            if self.max_epochs is not None:
                return self.max_epochs
            return math.ceil(self._require_iters() / iters_per_epoch)
        if self.max_iters is not None:
            return self.max_iters
        if self.max_epochs is None:
            raise RuntimeError(f"{type(self).__name__}: call bind() with the training length first")
        return self.max_epochs * iters_per_epoch

    def _require_iters(self) -> int:
        if self.max_iters is None:
            raise RuntimeError(f"{type(self).__name__}: call bind() with the training length first")
        return self.max_iters

    def regular(self, iteration: int, epoch: int, iters_per_epoch: int) -> float:
        return 1.0

    def __call__(self, iteration: int, epoch: int, iters_per_epoch: int) -> float:
        """LR factor for the iteration that follows ``iteration`` completed ones."""
        factor = self.regular(iteration, epoch, iters_per_epoch)
        if iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            factor *= 1 - k
        return factor

    def state_dict(self) -> dict:
        """What the schedule was (stored in checkpoints for the record; resume does not need it)."""
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items()
                                                if isinstance(v, (int, float, bool, list, type(None)))}}

    def load_state_dict(self, state: dict) -> None:   # pure function: nothing to restore
        pass


@LR_SCHEDULES.register()
class ConstantLR(LRSchedule):
    """Factor 1 after the warm-up."""

    def __init__(self, warmup_iters: int = 0, warmup_ratio: float = 0.001, by_epoch: bool = True):
        super().__init__(warmup_iters, warmup_ratio, by_epoch)


@LR_SCHEDULES.register()
class StepLR(LRSchedule):
    """Multiply by ``gamma`` at each milestone (epochs with ``by_epoch``, else iterations)."""

    def __init__(self, milestones: int | list[int], gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_ratio: float = 0.001, by_epoch: bool = True):
        super().__init__(warmup_iters, warmup_ratio, by_epoch)
        if isinstance(milestones, int):
            milestones = [milestones]
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def regular(self, iteration: int, epoch: int, iters_per_epoch: int) -> float:
        pos = epoch if self.by_epoch else iteration
        return self.gamma ** sum(pos >= m for m in self.milestones)


@LR_SCHEDULES.register()
class CosineLR(LRSchedule):
    """``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t / T)) / 2`` with t the epoch
    (``by_epoch``, T = total epochs, as torch's CosineAnnealingLR stepped per epoch) or the
    iteration (T = total iterations)."""

    def __init__(self, min_lr_ratio: float = 0.0, warmup_iters: int = 0,
                 warmup_ratio: float = 0.001, by_epoch: bool = True):
        super().__init__(warmup_iters, warmup_ratio, by_epoch)
        self.min_lr_ratio = float(min_lr_ratio)

    def regular(self, iteration: int, epoch: int, iters_per_epoch: int) -> float:
        t = epoch if self.by_epoch else iteration
        T = max(self.total(iters_per_epoch), 1)
        t = min(t, T)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * (1 + math.cos(math.pi * t / T)) / 2
