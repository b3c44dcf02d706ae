"""The Trainer: one small loop for every trainable family (detectron2's ``train_loop.py`` shape).

    from defectkit.config import load_config
    from defectkit.engine import train
    result = train(load_config("configs/x.yaml"), work_dir="work_dirs/x", resume="auto")

``Trainer.train()`` runs ``before_train``, then per epoch ``before_epoch``, per batch
``before_step`` / :meth:`Trainer.run_step` / ``after_step``, ``after_epoch``, and
``after_train``; the hooks (``engine/hooks/``) do the rest: LR schedule, logging,
evaluation + best checkpoint, periodic checkpoints, EMA, and any ``train.hooks``.
:meth:`Trainer.run_step` is one optimizer step: batch to the device,
``model.train_step_begin(progress)`` (a ``BaseModel``), ``losses = model(batch)`` (under
autocast with AMP), sum the ``loss*`` terms, average the terms over ranks and stop on a
non-finite one, backward (through the GradScaler), optional gradient clipping, step,
``model.train_step_end(progress)``. A subclass may override it.

Statistical models (``learning = "fit"``) go through ``engine/fitting.py`` instead.
Everything a resumed run needs to continue exactly is in the checkpoint, hooks' state
included (see ``docs/training.md``).
"""
from __future__ import annotations

import copy
import math
import re
import time
import warnings
import weakref
from dataclasses import dataclass, field
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, dump_config, validate_config
from ..data.collate import to_device
from ..models.base import BaseModel, Progress, learning_of
from ..registry import HOOKS, LR_SCHEDULES
from . import distributed as dist_utils
from .builders import (build_dataset, build_eval_loader, build_evaluator, build_model,
                       build_train_loader, dataset_classes, iters_per_epoch)
from .checkpoint import (NonFiniteCheckpointError, describe_nonfinite, link_or_copy, load_weights_from,
                         make_checkpoint, make_meta, nonfinite_tensors, save_checkpoint, update_latest)
from .fitting import run_fitting
from .hooks import (BUILTIN_HOOKS, BestCheckpointHook, CheckpointHook, EMAHook, EvalHook, HookBase,
                    LoggerHook, LRScheduleHook, resolve_save_best)
from .inference import run_inference
from .logger import ScalarWriter, close_logger, collect_env, flat_scalars, format_env, setup_logger
from .losses import NonFiniteLossError, parse_losses
from .lr_schedule import ConstantLR
from .optim import build_optimizer
from .resume import find_resume_checkpoint, restore_training_state
from .runtime import default_work_dir, resolve_device
from .sampler import TrainSampler
from .seeding import get_rng_state, preserved_rng, random_seed, set_rng_state, set_seed
from .settings import training_settings
from .workdir import take_work_dir


@dataclass
class TrainResult:
    work_dir: Path
    epoch: int                                  # epochs completed
    iter: int                                   # iterations completed
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best_metric: dict | None = None             # {"name", "value", "epoch", "iter"}
    metrics: dict | None = None                 # last evaluation
    history: list[dict] = field(default_factory=list)   # per-iteration loss terms and lr of this run


class Trainer:
    """Builds everything from a resolved config; :meth:`train` runs training (or fitting).

    ``resume``: None, ``"auto"`` (newest checkpoint of ``work_dir``, from scratch if none)
    or a checkpoint path. ``load_from``: a checkpoint whose weights initialise the model
    (non-strict; optimizer, schedule and counters start fresh). ``seed``,
    ``deterministic``, ``device`` override the config's. Construction validates the
    config (``ConfigError``) before anything is written or built.

    Public state the hooks read: ``model`` (unwrapped), ``train_model`` (DDP wrapper or
    the model), ``optimizer``, ``schedule``, ``base_lrs``, ``epoch`` / ``iter`` /
    ``inner_iter`` (completed), ``max_epochs`` / ``max_iters`` / ``iters_per_epoch`` /
    ``by_iter``, ``log_vars`` (the last step's values), ``data_time`` / ``step_start``,
    ``best`` / ``best_path`` (kept by the best-checkpoint hook), ``writer``, ``logger``.
    """

    def __init__(self, cfg: dict, work_dir: str | Path | None = None, resume: str | Path | None = None,
                 load_from: str | Path | None = None, seed: int | None = None,
                 deterministic: bool | None = None, device: str | torch.device | None = None):
        cfg = copy.deepcopy(cfg)
        validate_config(cfg)
        self.train_cfg, self.data_cfg = training_settings(cfg)
        work_dir = work_dir if work_dir is not None else cfg.get("work_dir")
        if work_dir is None:
            raise ConfigError("work_dir: not set; pass work_dir= (tools/train.py uses "
                              "work_dirs/<config-stem>) or set `work_dir` in the config")
        self.work_dir = Path(work_dir)
        self._setup_processes(device if device is not None else cfg.get("device"))
        self._take_work_dir()
        try:
            self.resume_path, resume_ckpt, self._resume_note = find_resume_checkpoint(
                resume, self.work_dir, cfg["model"].get("type"))
            self._setup_run(cfg, resume_ckpt, load_from, seed, deterministic)
            self._build_data()
            self._build_model()
            self._build_evaluation()
            self._build_optimizer()
            self._init_state()
            self.hooks: list[HookBase] = []
            self.register_hooks(self.build_hooks())
            if resume_ckpt is not None:
                self._apply_resume(resume_ckpt)
            elif self.load_from:
                self._apply_load_from(self.load_from)
            self._open_writer()
            self._wrap_ddp()
        except BaseException:
            self._release_work_dir()
            raise

    # ------------------------------------------------------------------ setup helpers
    def _setup_processes(self, req_device) -> None:
        """DDP: join (or, under torchrun, create) the process group; pick this rank's device."""
        self._owns_process_group = not dist_utils.is_distributed() and dist_utils.launched_by_torchrun()
        self.rank, self.world_size, self.local_rank = dist_utils.init_distributed(device=req_device)
        self.is_main = self.rank == 0
        self.device = resolve_device(req_device, self.local_rank)

    def _take_work_dir(self) -> None:
        """Create and lock the work dir (rank 0); see :func:`~defectkit.engine.workdir.take_work_dir`."""
        self._lock, self._start_notes = take_work_dir(self.work_dir, self.is_main, self.world_size)
        if self._lock is not None:
            weakref.finalize(self, self._lock.release)   # an abandoned Trainer frees the dir

    def _release_work_dir(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _setup_run(self, cfg: dict, resume_ckpt: dict | None, load_from, seed, deterministic) -> None:
        """Seed (the resumed checkpoint's, else the config's, else random), resolved config
        written to the work dir, logger, global seeding, AMP availability."""
        ckpt_seed = (resume_ckpt or {}).get("meta", {}).get("seed")
        if seed is None:
            seed = ckpt_seed if ckpt_seed is not None else cfg.get("seed")
        if seed is None:
            seed = dist_utils.broadcast_object(random_seed())
        self.seed = int(seed)
        self.deterministic = bool(deterministic if deterministic is not None else cfg.get("deterministic", False))
        self.load_from = load_from if load_from is not None else cfg.get("load_from")
        # the resolved config records what the run used (``device`` stays as written: null = auto)
        cfg.update(seed=self.seed, deterministic=self.deterministic, work_dir=str(self.work_dir))
        if self.load_from is not None:
            cfg["load_from"] = str(self.load_from)
        self.cfg = cfg
        if self.is_main:
            dump_config(cfg, self.work_dir / "config.yaml")
        self.logger = setup_logger(self.work_dir, self.rank)
        for note in self._start_notes:
            self.logger.warning(note)
        self.logger.info(format_env(collect_env(self.device, self.world_size)))
        self.logger.info(f"work_dir: {self.work_dir.resolve()}  seed: {self.seed}  "
                         f"deterministic: {self.deterministic}")
        if self._resume_note:
            self.logger.info(self._resume_note)
        set_seed(self.seed, self.deterministic)
        self.amp = bool(self.train_cfg.amp)
        if self.amp and self.device.type != "cuda":
            msg = f"train.amp is on but the device is {self.device.type}: AMP needs CUDA; training in fp32"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            self.logger.warning(msg)
            self.amp = False

    def _build_data(self) -> None:
        self.train_set = build_dataset(self.data_cfg.train)
        self.val_set = build_dataset(self.data_cfg.val) if self.data_cfg.val else None
        self.classes = dataset_classes(self.train_set, self.cfg)
        self.batch_size = self.data_cfg.batch_size
        self.sampler = TrainSampler(len(self.train_set), shuffle=self.data_cfg.shuffle, seed=self.seed,
                                    rank=self.rank, world_size=self.world_size)
        self.iters_per_epoch = iters_per_epoch(self.sampler.num_samples, self.batch_size,
                                               self.data_cfg.drop_last)
        if self.iters_per_epoch == 0:
            raise ConfigError(f"data.batch_size: {self.batch_size} per process with drop_last leaves "
                              f"no batch from {self.sampler.num_samples} samples per process")
        self.by_iter = self.train_cfg.max_iters is not None
        self.max_epochs = (math.ceil(self.train_cfg.max_iters / self.iters_per_epoch) if self.by_iter
                           else self.train_cfg.epochs)
        self.max_iters = self.train_cfg.max_iters if self.by_iter else self.max_epochs * self.iters_per_epoch

    def _build_model(self) -> None:
        self.model = build_model(self.cfg["model"], self.classes).to(self.device)
        self.fit_mode = learning_of(self.model) == "fit"
        self.logger.info(f"model: {type(self.model).__name__} "
                         f"({sum(p.numel() for p in self.model.parameters()):,} parameters, "
                         f"learning: {learning_of(self.model)}); train set: {len(self.train_set)} samples"
                         + (f"; val set: {len(self.val_set)} samples" if self.val_set is not None else ""))

    def _build_evaluation(self) -> None:
        self.evaluator = self.val_loader = None
        if self.cfg.get("evaluation") and self.val_set is not None:
            self.evaluator = build_evaluator(self.cfg["evaluation"], self.classes, dataset=self.val_set)
            self.val_loader = build_eval_loader(
                self.val_set, self.data_cfg.val_batch_size or self.data_cfg.batch_size,
                self.data_cfg.num_workers, pin_memory=self.device.type == "cuda")
        elif self.cfg.get("evaluation"):
            self.logger.info("evaluation is configured but data.val is not: no validation during training")

    def _build_optimizer(self) -> None:
        """Optimizer (with ``optimizer.paramwise`` groups), LR schedule and GradScaler; none
        for a fitted model."""
        self.optimizer = self.schedule = self.scaler = None
        self.base_lrs: list[float] = []
        if self.fit_mode:
            if self.cfg.get("optimizer"):
                self.logger.warning("optimizer: ignored: the model is fitted (learning = 'fit'), not trained")
            return
        cfg = self.cfg
        if not cfg.get("optimizer"):
            raise ConfigError("optimizer: required to train this model "
                              "(e.g. optimizer: {type: SGD, lr: 0.01, momentum: 0.9})")
        self.optimizer = build_optimizer(cfg["optimizer"], self.model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.schedule = LR_SCHEDULES.build(cfg["lr_schedule"]) if cfg.get("lr_schedule") else ConstantLR()
        self.schedule.bind(max_epochs=None if self.by_iter else self.max_epochs, max_iters=self.max_iters)
        if self.by_iter and self.schedule.by_epoch and not isinstance(self.schedule, ConstantLR):
            self.logger.warning(
                f"iteration-based training (train.max_iters) with an epoch-based LR schedule: "
                f"{type(self.schedule).__name__} counts epochs of {self.iters_per_epoch} iterations; "
                f"set lr_schedule.by_epoch: false to count iterations")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def _init_state(self) -> None:
        self.epoch = 0             # epochs completed
        self.iter = 0              # iterations completed
        self.inner_iter = 0        # iterations completed in the running epoch
        self.best: dict | None = None
        self.best_path: Path | None = None
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_iter: int | None = None   # self.iter when last_checkpoint was written
        self.last_metrics: dict | None = None
        self.history: list[dict] = []
        self.log_vars: dict[str, float] = {}
        self.data_time = self.step_start = 0.0
        self._resume_rng: dict | None = None
        self._kept: list[Path] = []
        self.load_report = None    # LoadReport of load_from

    def build_hooks(self) -> list[HookBase]:
        """The built-in hooks for this config, then ``train.hooks`` (from the HOOKS registry).

        Order: LR schedule, EMA, logging, evaluation, periodic checkpoint, best checkpoint,
        custom hooks (a fitted model gets only the best checkpoint and the custom hooks)."""
        t = self.train_cfg
        save_best = resolve_save_best(t.save_best, self.evaluator, self.logger)
        if self.fit_mode and t.ema is not None:
            raise ConfigError("train.ema: the model is fitted (learning = 'fit'), not trained: no weights "
                              "to average; remove train.ema")
        hooks: list[HookBase] = []
        if not self.fit_mode:
            hooks.append(LRScheduleHook())
            if t.ema is not None:
                hooks.append(EMAHook(t.ema.decay, t.ema.update_after_step, t.ema.update_every,
                                     t.ema.use_for_eval, t.ema.warmup))
            hooks.append(LoggerHook())
            if self.evaluator is not None:
                hooks.append(EvalHook())
            hooks.append(CheckpointHook())
        if save_best is not None:
            hooks.append(BestCheckpointHook(*save_best))
        for i, h in enumerate(t.hooks or []):
            if HOOKS.get(h["type"]) in BUILTIN_HOOKS:
                raise ConfigError(f"train.hooks.{i}: {h['type']} is a built-in hook, on by default "
                                  f"(set it through its train.* keys, e.g. train.ema)")
            hooks.append(HOOKS.build(h))
        return hooks

    def register_hooks(self, hooks: list[HookBase]) -> None:
        """Append ``hooks`` (each gets ``hook.trainer``) and log the resolved list."""
        for h in hooks:
            h.trainer = weakref.proxy(self)
        self.hooks.extend(hooks)
        self.logger.info("hooks: " + ", ".join(repr(h) for h in self.hooks))

    def _open_writer(self) -> None:
        self.writer = ScalarWriter(self.work_dir, self.train_cfg.tensorboard, enabled=self.is_main)
        if self.is_main:   # a resumed run continues the file, a fresh one starts it anew
            self.writer.truncate_after(self.iter if self.resume_path is not None else -1)
        if self.is_main:
            self._kept = self._existing_periodic()

    def _wrap_ddp(self) -> None:
        self.train_model: torch.nn.Module = self.model
        if self.world_size > 1 and not self.fit_mode:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.train_cfg.find_unused_parameters)

    # ------------------------------------------------------------------ resume / load
    def _apply_resume(self, ckpt: dict) -> None:
        """Weights, optimizer/scaler state, counters, RNG states (``engine/resume.py``), then
        every hook's state."""
        state = restore_training_state(
            ckpt, str(self.resume_path), self.model, None if self.fit_mode else self.optimizer,
            self.scaler, seed=self.seed, iters_per_epoch=self.iters_per_epoch,
            world_size=self.world_size, rank=self.rank, logger=self.logger)
        self.epoch, self.iter, self.inner_iter = state.epoch, state.iter, state.inner_iter
        self._resume_rng = state.rng
        for h in self.hooks:
            h.load_state(ckpt)
        self.last_checkpoint = self.resume_path if state.finite else None
        self.logger.info(f"resumed from {self.resume_path}: epoch {self.epoch}, iteration {self.iter}"
                         + (f", best {self.best['name']}={self.best['value']:.6g}" if self.best else ""))

    def _apply_load_from(self, path: str | Path) -> None:
        """Weights only, non-strict (:func:`~defectkit.engine.checkpoint.load_weights_from`)."""
        self.load_report = load_weights_from(self.model, path, self.cfg["model"].get("type"),
                                             self.train_cfg.load_from_min_match, self.logger)

    # ------------------------------------------------------------------ checkpoints
    def _periodic_name(self) -> str:
        return f"iter_{self.iter}.pth" if self.by_iter else f"epoch_{self.epoch}.pth"

    def _existing_periodic(self) -> list[Path]:
        pat = re.compile(r"^(epoch|iter)_(\d+)\.pth$")
        found = [(int(m.group(2)), p) for p in self.work_dir.glob("*.pth")
                 if (m := pat.match(p.name)) and m.group(1) == ("iter" if self.by_iter else "epoch")]
        return [p for _, p in sorted(found)]

    def _checkpoint(self) -> dict | None:
        """The checkpoint dict on rank 0 (None elsewhere); every rank must call it (RNG gather)."""
        rng = get_rng_state()
        rng_ranks = dist_utils.all_gather_object(rng) if self.world_size > 1 else None
        if not self.is_main:
            return None
        meta = make_meta(self.cfg, self.epoch, self.iter, self.seed, self.classes, self.best,
                         iters_per_epoch=self.iters_per_epoch, world_size=self.world_size,
                         max_iters=self.max_iters, device=str(self.device))
        ckpt = make_checkpoint(self.model, meta, self.optimizer, self.schedule, self.scaler, rng)
        if rng_ranks is not None:
            ckpt["rng_ranks"] = rng_ranks
        for h in self.hooks:
            h.save_state(ckpt)
        return ckpt

    def _check_finite(self, path: Path) -> None:
        """Raise :class:`NonFiniteCheckpointError` (naming the last finite checkpoint) when
        a parameter or buffer of the model holds NaN/Inf, before ``path`` is written."""
        state = self.model.state_dict() if self.is_main else None
        bad = nonfinite_tensors(state) if self.is_main else None
        if self.world_size > 1:
            bad = dist_utils.broadcast_object(bad)
        if not bad:
            return
        last = self.last_checkpoint
        where = (f"last finite checkpoint: {last} (continue with --resume {last}, e.g. with a lower "
                 f"lr or train.grad_clip)") if last else "no finite checkpoint was saved before it"
        err = NonFiniteCheckpointError(
            f"{path}: not saved at iteration {self.iter} (epoch {self.epoch}): the model's "
            f"{describe_nonfinite(bad, len(state) if state is not None else None)} "
            f"(the training diverged even if the loss looked finite); {where}")
        self.logger.error(str(err))
        raise err

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Save ``epoch_N.pth`` / ``iter_N.pth`` (or ``name``), repoint latest, prune old ones.
        Never writes NaN/Inf weights or buffers (:class:`NonFiniteCheckpointError`). All ranks call it."""
        path = self.work_dir / (name or self._periodic_name())
        self._check_finite(path)
        ckpt = self._checkpoint()
        if self.is_main:
            save_checkpoint(ckpt, path)
            update_latest(self.work_dir, path)
            if path in self._kept:
                self._kept.remove(path)
            self._kept.append(path)
            keep = self.train_cfg.max_keep_ckpts
            while keep > 0 and len(self._kept) > keep:
                old = self._kept.pop(0)
                old.unlink(missing_ok=True)
            self.logger.info(f"saved checkpoint {path}")
        self.last_checkpoint, self.last_checkpoint_iter = path, self.iter
        return path

    def write_checkpoint(self, name: str, same_as: Path | None = None) -> Path:
        """Write ``work_dir/name`` outside the periodic rotation (``latest.pth`` stays): a
        hard link (or copy) of ``same_as`` when given (a checkpoint of this very state),
        else a fresh checkpoint. All ranks call it."""
        path = self.work_dir / name
        if same_as is not None:
            if self.is_main:
                link_or_copy(same_as, path)
            return path
        self._check_finite(path)
        ckpt = self._checkpoint()
        if self.is_main:
            save_checkpoint(ckpt, path)
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict | None:
        """Run validation (all ranks) between the hooks' ``before_eval`` / ``after_eval``
        (e.g. EMA weights swapped in and out), log it; returns the metrics (None without
        an evaluator)."""
        if self.evaluator is None or self.val_loader is None:
            return None
        metrics = None
        self.call_hooks("before_eval")
        try:
            metrics = self._validate()
        finally:
            self.call_hooks("after_eval", metrics)
        return metrics

    def _validate(self) -> dict:
        t0 = time.perf_counter()
        with preserved_rng():
            out = run_inference(self.model, self.val_loader, self.evaluator, self.device,
                                time_model=True, keep_results=False, amp=self.amp)
        metrics = out.metrics or {}
        self.last_metrics = metrics
        scalars = flat_scalars(metrics)
        if self.is_main:
            summary = self.evaluator.summary(metrics) if hasattr(self.evaluator, "summary") else None
            shown = "  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scalars.items())
            self.logger.info(f"Val epoch {self.epoch} iter {self.iter}: {shown}  "
                             f"att_ms: {out.timing.get('att_ms', float('nan')):.2f}  "
                             f"({out.timing.get('num_images', 0)} images, {time.perf_counter() - t0:.1f} s)")
            if summary:
                self.logger.info("\n" + str(summary))
            self.writer.write({"mode": "val", "step": self.iter, "epoch": self.epoch, "iter": self.iter,
                               **scalars, "att_ms": out.timing.get("att_ms")})
        return metrics

    # ------------------------------------------------------------------ training
    def call_hooks(self, event: str, *args: Any) -> None:
        """Call ``event`` (e.g. ``"after_step"``) on every hook, in order."""
        for h in self.hooks:
            getattr(h, event)(*args)

    def train(self) -> TrainResult:
        """Train (or fit) to the end; returns a :class:`TrainResult`."""
        try:
            if self.fit_mode:
                run_fitting(self)
            elif self.iter >= self.max_iters:
                self.logger.info(f"nothing to train: iteration {self.iter} of {self.max_iters} already reached")
            else:
                self._restore_rng()
                self._log_start()
                self.call_hooks("before_train")
                try:
                    while self.iter < self.max_iters:
                        self.call_hooks("before_epoch")
                        for batch in self._timed(self._epoch_loader()):
                            self.call_hooks("before_step")
                            self.log_vars = self.run_step(batch)
                            self.history.append({"iter": self.iter, "epoch": self.epoch + 1, **self.log_vars})
                            self.call_hooks("after_step")
                            if self.iter >= self.max_iters:
                                break
                        if self._end_epoch():
                            self.call_hooks("after_epoch")
                finally:
                    self.call_hooks("after_train")
        finally:
            self.writer.close()
        return self.result()

    def run_step(self, batch: dict) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the logged values (rank-averaged loss
        terms, ``lr``, ``grad_norm`` with clipping). Raises :class:`NonFiniteLossError`."""
        self.train_model.train()
        batch = to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        declared = isinstance(self.model, BaseModel)
        if declared:   # e.g. DefectNet's gate-loss schedule
            self.model.train_step_begin(self.progress())
        with torch.autocast(device_type="cuda") if self.amp else nullcontext():
            outputs = self.train_model(batch)
        loss, terms = parse_losses(outputs)
        keys = list(terms)
        values = dist_utils.all_reduce_mean(torch.stack([terms[k].float().to(self.device) for k in keys]))
        log_vars = dict(zip(keys, values.tolist()))
        if not all(math.isfinite(log_vars[k]) for k in keys if k.startswith("loss")):
            err = NonFiniteLossError(self.iter + 1, self.epoch + 1, log_vars, self.last_checkpoint)
            self.logger.error(str(err))
            raise err
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.train_cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            log_vars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iter += 1
        self.inner_iter += 1
        if declared:
            self.model.train_step_end(self.progress())
        log_vars["lr"] = self.optimizer.param_groups[0]["lr"]
        return log_vars

    def progress(self) -> Progress:
        """Where training stands (what ``train_step_begin`` / ``train_step_end`` receive)."""
        return Progress(epoch=self.epoch, iter=self.iter, max_epochs=None if self.by_iter else self.max_epochs,
                        max_iters=self.max_iters)

    def _restore_rng(self) -> None:
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    def _log_start(self) -> None:
        unit = f"{self.max_iters} iterations" if self.by_iter else \
            f"{self.max_epochs} epochs x {self.iters_per_epoch} iterations"
        self.logger.info(f"training for {unit} (batch {self.batch_size} x {self.world_size} process(es)) "
                         f"from iteration {self.iter}")

    def _epoch_loader(self):
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        skip = min(self.inner_iter * self.batch_size, self.sampler.num_samples)
        self.sampler.set_epoch(self.epoch, skip=skip)
        return build_train_loader(self.train_set, self.batch_size, self.sampler, self.epoch,
                                  num_workers=self.data_cfg.num_workers, drop_last=self.data_cfg.drop_last,
                                  seed=self.seed, pin_memory=self.device.type == "cuda")

    def _timed(self, loader):
        """Yield the batches of ``loader``, setting ``step_start`` (when the wait for the
        batch began) and ``data_time`` (how long it took); counts them in ``_epoch_batches``."""
        self._epoch_batches = 0
        self.step_start = time.perf_counter()
        for batch in loader:
            self.data_time = time.perf_counter() - self.step_start
            self._epoch_batches += 1
            yield batch
            self.step_start = time.perf_counter()

    def _end_epoch(self) -> bool:
        """After the epoch's batches: True (epoch counter advanced) when it ran to its end."""
        if self._epoch_batches == 0 and self.inner_iter < self.iters_per_epoch:
            raise RuntimeError(f"the training loader of epoch {self.epoch + 1} yielded no batch "
                               f"({self.inner_iter}/{self.iters_per_epoch} iterations done)")
        if self.inner_iter < self.iters_per_epoch:
            return False
        self.epoch, self.inner_iter = self.epoch + 1, 0
        return True

    def result(self) -> TrainResult:
        return TrainResult(work_dir=self.work_dir, epoch=self.epoch, iter=self.iter,
                           last_checkpoint=self.last_checkpoint, best_checkpoint=self.best_path,
                           best_metric=self.best, metrics=self.last_metrics, history=self.history)

    def close(self) -> None:
        """Release logs, the work dir's lock and (if this trainer created it) the process group."""
        self.writer.close()
        close_logger()
        self._release_work_dir()
        if self._owns_process_group:
            dist_utils.destroy_distributed()


def train(cfg: dict | str | Path, work_dir: str | Path | None = None, resume: str | Path | None = None,
          load_from: str | Path | None = None, seed: int | None = None, deterministic: bool | None = None,
          device: str | None = None) -> TrainResult:
    """Train from a resolved config dict (or a config file path) and return the result.

    With a path, the config is loaded and validated here and ``work_dir`` defaults to
    ``work_dirs/<config-stem>``. See :class:`Trainer` for the arguments.
    """
    if isinstance(cfg, (str, Path)):
        from ..config import load_config

        path = cfg
        cfg = load_config(path)
        if work_dir is None and cfg.get("work_dir") is None:
            work_dir = default_work_dir(path)
    trainer = Trainer(cfg, work_dir=work_dir, resume=resume, load_from=load_from, seed=seed,
                      deterministic=deterministic, device=device)
    try:
        return trainer.train()
    finally:
        trainer.close()
