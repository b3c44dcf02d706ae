"""Evaluation hooks: evaluate every ``train.val_interval`` periods, and keep the best
checkpoint (``best_<metric>.pth``) of the metric ``train.save_best``.

The direction of a metric comes from the evaluator only (``main_metric`` /
``greater_is_better`` / ``metric_directions``, see ``evaluation/base.py``). A new best
after a period in which a periodic checkpoint was saved is a hard link (or copy) of that
file; otherwise the best checkpoint is written on its own. The best metric
(``{"name", "value", "epoch", "iter", "greater_is_better"}``) is the checkpoint's
``meta.best_metric``, restored on resume.
"""
from __future__ import annotations

import math
import re

from ...evaluation.base import metric_greater_is_better
from ..logger import flat_scalars
from .base import HookBase, period_end


class EvalHook(HookBase):
    """Calls ``trainer.evaluate()`` after every ``train.val_interval``-th period and at the end."""

    def after_step(self) -> None:
        self._maybe_eval(after_step=True)

    def after_epoch(self) -> None:
        self._maybe_eval(after_step=False)

    def _maybe_eval(self, after_step: bool) -> None:
        t = self.trainer
        end = period_end(t, after_step)
        interval = t.train_cfg.val_interval
        if end is not None and interval > 0 and (end[0] % interval == 0 or end[1]):
            t.evaluate()


def best_name(metric: str) -> str:
    return f"best_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.pth"


def resolve_save_best(name: str | None, evaluator, logger) -> tuple[str, bool] | None:
    """``(metric, greater_is_better)`` for ``train.save_best`` (``"auto"``: the evaluator's
    main metric), or None when no best checkpoint is kept."""
    if not name or evaluator is None:
        return None
    if name == "auto":
        if not evaluator.main_metric:
            logger.warning("train.save_best: auto, but the evaluator has no main_metric; "
                           "no best checkpoint will be kept")
            return None
        name = evaluator.main_metric
    return name, metric_greater_is_better(evaluator, name)


class BestCheckpointHook(HookBase):
    """Tracks ``trainer.best`` from every evaluation and saves ``best_<metric>.pth`` at the
    end of the period in which it improved (after the periodic checkpoint)."""

    def __init__(self, metric: str, greater_is_better: bool):
        self.metric, self.greater = metric, bool(greater_is_better)
        self.pending = False
        self.warned = False

    def after_eval(self, metrics: dict | None) -> None:
        if metrics:
            self.pending = self.update(flat_scalars(metrics)) or self.pending

    def update(self, scalars: dict) -> bool:
        t = self.trainer
        value = scalars.get(self.metric)
        if value is None:
            if not self.warned:
                t.logger.warning(f"train.save_best: metric '{self.metric}' is not among the evaluation "
                                 f"results ({', '.join(sorted(scalars))})")
                self.warned = True
            return False
        value = float(value)
        if math.isnan(value):
            return False
        if t.best is not None and not (value > t.best["value"] if self.greater else value < t.best["value"]):
            return False
        t.best = {"name": self.metric, "value": value, "epoch": t.epoch, "iter": t.iter,
                  "greater_is_better": self.greater}
        return True

    def after_step(self) -> None:
        if self.trainer.by_iter:
            self.save_if_improved()

    def after_epoch(self) -> None:
        if not self.trainer.by_iter:
            self.save_if_improved()

    def save_if_improved(self) -> None:
        """Write ``best_<metric>.pth`` when the best improved since the last call."""
        if not self.pending:
            return
        self.pending = False
        t = self.trainer
        just_saved = t.last_checkpoint if t.last_checkpoint_iter == t.iter else None
        t.best_path = t.write_checkpoint(best_name(self.metric), same_as=just_saved)
        if t.is_main:
            t.logger.info(f"new best {t.best['name']}={t.best['value']:.6g} "
                          f"(epoch {t.best['epoch']}, iteration {t.best['iter']}): {t.best_path}")

    def save_state(self, ckpt: dict) -> None:
        ckpt["meta"]["best_metric"] = self.trainer.best

    def load_state(self, ckpt: dict) -> None:
        t = self.trainer
        best = (ckpt.get("meta") or {}).get("best_metric")
        t.best = best if best and best.get("name") == self.metric else None
        if t.best:
            p = t.work_dir / best_name(t.best["name"])
            t.best_path = p if p.is_file() else None
