"""The trainer's path for statistical models (PaDiM): ``model.fit(loader)`` instead of an
optimiser loop, then optional calibration on ``data.val``, one checkpoint and one evaluation."""
from __future__ import annotations

import time

from .builders import DeviceLoader, build_eval_loader, build_train_loader
from .sampler import TrainSampler


def fit_model(trainer) -> None:
    """Fit ``trainer.model`` on the whole training set (one pass), calibrate it on the
    validation split when it can, save and evaluate. A resumed, already fitted run only
    evaluates."""
    if trainer.epoch >= 1:
        trainer.logger.info("the resumed checkpoint is already fitted; evaluating only")
        trainer._update_best(trainer.evaluate())
        return
    if trainer.world_size > 1:
        trainer.logger.warning("fitting does not split work across processes: every rank fits "
                               "the whole training set (identical results)")
    if hasattr(trainer.train_set, "set_epoch"):
        trainer.train_set.set_epoch(0)
    sampler = TrainSampler(len(trainer.train_set), shuffle=False, seed=trainer.seed)
    loader = build_train_loader(trainer.train_set, trainer.batch_size, sampler, 0,
                                num_workers=trainer.data_cfg.num_workers, seed=trainer.seed,
                                pin_memory=trainer.device.type == "cuda")
    trainer.logger.info(f"fitting {type(trainer.model).__name__} on {len(trainer.train_set)} samples")
    t0 = time.perf_counter()
    trainer.model.fit(DeviceLoader(loader, trainer.device))
    if trainer.val_set is not None and callable(getattr(trainer.model, "calibrate", None)):
        # labelled validation images (never the test split) refine thresholds/normalisation
        trainer.logger.info(f"calibrating on data.val ({len(trainer.val_set)} samples)")
        val_loader = build_eval_loader(trainer.val_set, trainer.data_cfg.val_batch_size or trainer.batch_size,
                                       trainer.data_cfg.num_workers, distributed=False)
        trainer.model.calibrate(DeviceLoader(val_loader, trainer.device))
    trainer.logger.info(f"fitted in {time.perf_counter() - t0:.1f} s")
    trainer.epoch, trainer.iter, trainer.inner_iter = 1, len(loader), 0
    trainer.writer.write({"mode": "train", "step": trainer.iter, "epoch": 1, "iter": trainer.iter,
                          "fit_time_s": time.perf_counter() - t0})
    improved = trainer._update_best(trainer.evaluate()) if trainer.evaluator is not None else False
    saved = trainer.save_checkpoint()
    if improved:
        trainer._save_best(saved)
