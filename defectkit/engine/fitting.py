"""The training path of statistical models (``learning = "fit"``, e.g. PaDiM):
``model.fit(loader)`` over the training set instead of an optimiser loop, then
``model.calibrate(loader)`` on ``data.val`` when there is one, one checkpoint and one
evaluation. Uses the Trainer's public API only (``evaluate``, ``save_checkpoint``,
``call_hooks``, the counters); the hooks see ``before_train``, ``after_epoch`` (the
fit is the one epoch: the best checkpoint is kept there) and ``after_train``."""
from __future__ import annotations

import time

from .builders import DeviceLoader, build_eval_loader, build_train_loader
from .sampler import TrainSampler


def run_fitting(trainer) -> None:
    """Fit ``trainer.model`` on the whole training set (one pass), calibrate it on the
    validation split, save and evaluate. A resumed, already fitted run only evaluates."""
    if trainer.epoch >= 1:
        trainer.logger.info("the resumed checkpoint is already fitted; evaluating only")
        trainer.evaluate()
        return
    trainer.call_hooks("before_train")
    try:
        _fit(trainer)
        trainer.evaluate()
        trainer.save_checkpoint()
        trainer.call_hooks("after_epoch")
    finally:
        trainer.call_hooks("after_train")


def _fit(trainer) -> None:
    model, data_cfg = trainer.model, trainer.data_cfg
    if trainer.world_size > 1:
        trainer.logger.warning("fitting does not split work across processes: every rank fits "
                               "the whole training set (identical results)")
    if hasattr(trainer.train_set, "set_epoch"):
        trainer.train_set.set_epoch(0)
    sampler = TrainSampler(len(trainer.train_set), shuffle=False, seed=trainer.seed)
    loader = build_train_loader(trainer.train_set, trainer.batch_size, sampler, 0,
                                num_workers=data_cfg.num_workers, seed=trainer.seed,
                                pin_memory=trainer.device.type == "cuda")
    trainer.logger.info(f"fitting {type(model).__name__} on {len(trainer.train_set)} samples")
    t0 = time.perf_counter()
    model.fit(DeviceLoader(loader, trainer.device))
    if trainer.val_set is not None:
        # labelled validation images (never the test split) refine thresholds/normalisation
        trainer.logger.info(f"calibrating on data.val ({len(trainer.val_set)} samples)")
        val_loader = build_eval_loader(trainer.val_set, data_cfg.val_batch_size or trainer.batch_size,
                                       data_cfg.num_workers, distributed=False)
        model.calibrate(DeviceLoader(val_loader, trainer.device))
    trainer.logger.info(f"fitted in {time.perf_counter() - t0:.1f} s")
    trainer.epoch, trainer.iter, trainer.inner_iter = 1, len(loader), 0
    trainer.writer.write({"mode": "train", "step": trainer.iter, "epoch": 1, "iter": trainer.iter,
                          "fit_time_s": time.perf_counter() - t0})
