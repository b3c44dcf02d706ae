"""Periodic checkpoint hook: ``epoch_N.pth`` every ``train.checkpoint_interval`` epochs
(``iter_N.pth`` every that many iterations in iteration-based training) and always at
the end of training, through ``trainer.save_checkpoint()`` (atomic write, ``latest.pth``
repointed, only the ``train.max_keep_ckpts`` newest periodic files kept)."""
from __future__ import annotations

from .base import HookBase, period_end


class CheckpointHook(HookBase):
    def after_step(self) -> None:
        self._maybe_save(after_step=True)

    def after_epoch(self) -> None:
        self._maybe_save(after_step=False)

    def _maybe_save(self, after_step: bool) -> None:
        t = self.trainer
        end = period_end(t, after_step)
        if end is None:
            return
        count, last = end
        interval = t.train_cfg.checkpoint_interval
        if last or (interval > 0 and count % interval == 0):
            t.save_checkpoint()
