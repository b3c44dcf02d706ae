"""Timing and logging hook: progress bar with ETA, a log line and a ``scalars.jsonl`` row
(and TensorBoard, through ``trainer.writer``) every ``train.log_interval`` iterations.

The line averages each logged value over the iterations since the previous line; ``time``
is the wall time of an iteration including data loading, ``data_time`` the part spent
waiting for the batch, ``eta`` = mean time per iteration of this run x iterations left.
Only rank 0 writes.
"""
from __future__ import annotations

import time

from ..logger import ProgressBar, format_eta, memory_mb
from .base import HookBase


class LoggerHook(HookBase):
    bar: ProgressBar | None = None

    def before_train(self) -> None:
        t = self.trainer
        self.bar = ProgressBar(t.max_iters, initial=t.iter, enabled=t.train_cfg.progress and t.is_main)
        self.run_start, self.run_start_iter = time.perf_counter(), t.iter
        self.window: list[dict] = []

    def after_step(self) -> None:
        t = self.trainer
        log_vars = t.log_vars
        self.window.append({**log_vars, "time": time.perf_counter() - t.step_start, "data_time": t.data_time})
        self.bar.update(1, loss=f"{log_vars['loss']:.4f}", lr=f"{log_vars['lr']:.2e}")
        if t.iter % t.train_cfg.log_interval == 0 or t.iter >= t.max_iters:
            self.write()

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def write(self) -> None:
        window, self.window = self.window, []
        t = self.trainer
        if not window or not t.is_main:
            return
        keys = [k for k in window[-1] if k != "lr"]
        avg = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in keys}
        lr = window[-1]["lr"]
        per_iter = (time.perf_counter() - self.run_start) / max(t.iter - self.run_start_iter, 1)
        eta = per_iter * (t.max_iters - t.iter)
        mem = memory_mb(t.device)
        if t.by_iter:
            pos = f"Iter [{t.iter}/{t.max_iters}] (epoch {t.epoch + 1})"
        else:
            pos = f"Epoch [{t.epoch + 1}/{t.max_epochs}][{t.inner_iter}/{t.iters_per_epoch}]"
        losses = "  ".join(f"{k}: {avg[k]:.4f}" for k in keys if k not in ("time", "data_time"))
        t.logger.info(f"{pos}  lr: {lr:.3e}  eta: {format_eta(eta)}  time: {avg['time']:.3f}  "
                      f"data_time: {avg['data_time']:.3f}  memory: {mem:.0f} MB  {losses}",
                      extra={"bar_replaces": True})
        t.writer.write({"mode": "train", "step": t.iter, "epoch": t.epoch + 1, "iter": t.iter,
                        "lr": lr, **avg, "memory_mb": mem})
