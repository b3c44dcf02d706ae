"""The Trainer: one loop for every trainable family, plus the ``fit`` path for statistical models.

    from defectkit.config import load_config
    from defectkit.engine import train
    result = train(load_config("configs/x.yaml"), work_dir="work_dirs/x", resume="auto")

Order of one training iteration: set the LR from the schedule (a pure function of
(iteration, epoch)), move the batch to the device, ``losses = model(batch)`` (under
autocast with AMP), sum the ``loss*`` terms, average the terms over ranks and stop on a
non-finite one, backward (through the GradScaler), optional gradient clipping, step.

After an epoch (or every ``val_interval`` / ``checkpoint_interval`` iterations in an
iteration-based run): evaluate, save ``epoch_N.pth`` / ``iter_N.pth`` and repoint
``latest.pth`` / ``last_checkpoint``, keep ``best_<metric>.pth``. Everything a resumed
run needs to continue exactly is in the checkpoint (see ``docs/training.md``).
"""
from __future__ import annotations

import copy
import math
import re
import time
import warnings
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, dump_config, validate_config
from ..data.collate import to_device
from ..registry import LR_SCHEDULES
from . import distributed as dist_utils
from .builders import (build_dataset, build_eval_loader, build_evaluator, build_model,
                       build_train_loader, dataset_classes, iters_per_epoch)
from .fitting import fit_model
from .checkpoint import (CheckpointError, CheckpointNotFoundError, NonFiniteCheckpointError,
                         check_model_type, checkpoint_model_type, describe_nonfinite, extract_state_dict,
                         find_latest_checkpoint, link_or_copy, load_checkpoint, load_state_dict,
                         make_checkpoint, make_meta, nonfinite_tensors, remove_stale_temp_files,
                         repair_latest, save_checkpoint, update_latest)
from .inference import run_inference
from .logger import (ProgressBar, ScalarWriter, close_logger, collect_env, flat_scalars, format_env,
                     format_eta, memory_mb, setup_logger)
from .losses import NonFiniteLossError, parse_losses
from .lr_schedule import ConstantLR, LRSchedule
from .optim import build_optimizer
from .runtime import default_work_dir, resolve_device
from .sampler import TrainSampler
from .seeding import get_rng_state, preserved_rng, random_seed, set_rng_state, set_seed
from .settings import training_settings
from .workdir import WorkDirError, WorkDirLock, make_work_dir


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


_LOWER_IS_BETTER = {"loss", "error", "err", "time", "att", "fpr", "fnr", "mae", "mse", "rmse", "ms"}


def _greater_is_better(metric: str, evaluator: Any) -> bool:
    if evaluator is not None and metric == getattr(evaluator, "main_metric", None):
        return bool(getattr(evaluator, "greater_is_better", True))
    tokens = set(re.split(r"[^a-z0-9]+", metric.lower()))
    return not (tokens & _LOWER_IS_BETTER)


class Trainer:
    """Builds everything from a resolved config and runs training (or fitting).

    ``resume``: None, ``"auto"`` (newest checkpoint of ``work_dir``, from scratch if none)
    or a checkpoint path. ``load_from``: a checkpoint whose weights initialise the model
    (non-strict; optimizer, schedule and counters start fresh). ``seed``,
    ``deterministic``, ``device`` override the config's. Construction validates the
    config (``ConfigError``) before anything is written or built.
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

        # -- processes and device
        self._owns_process_group = not dist_utils.is_distributed() and dist_utils.launched_by_torchrun()
        req_device = device if device is not None else cfg.get("device")
        self.rank, self.world_size, self.local_rank = dist_utils.init_distributed(device=req_device)
        self.is_main = self.rank == 0
        self.device = resolve_device(req_device, self.local_rank)

        # -- the work dir: created and locked by rank 0 before anything reads or writes it
        self._lock: WorkDirLock | None = None
        self._take_work_dir()
        try:
            self._setup(cfg, resume, load_from, seed, deterministic)
        except BaseException:
            self._release_work_dir()
            raise

    def _take_work_dir(self) -> None:
        """Rank 0 creates and locks the work dir, removes the temp files of killed saves and
        re-aligns ``latest.pth`` / ``last_checkpoint``; every rank raises if that failed."""
        self._start_notes: list[str] = []
        error: BaseException | None = None
        if self.is_main:
            try:
                make_work_dir(self.work_dir)
                self._lock = WorkDirLock(self.work_dir).acquire()
                weakref.finalize(self, self._lock.release)   # an abandoned Trainer frees the dir
                self._start_notes += self._lock.notes
                removed = remove_stale_temp_files(self.work_dir)
                if removed:
                    self._start_notes.append(f"removed {len(removed)} temp file(s) left by killed "
                                             f"saves: {', '.join(removed)}")
                note = repair_latest(self.work_dir)
                if note:
                    self._start_notes.append(note)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        if self.world_size > 1:
            msg = dist_utils.broadcast_object(f"{error}" if error is not None else None)
            if msg is not None and error is None:
                raise WorkDirError(msg)
        if error is not None:
            self._release_work_dir()
            raise error

    def _release_work_dir(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _setup(self, cfg: dict, resume, load_from, seed, deterministic) -> None:
        # -- what to resume from (its seed is needed before anything random happens)
        self._resume_ckpt: dict | None = None
        self._resume_note: str | None = None
        self.resume_path: Path | None = None
        if resume is not None and resume is not False:
            self.resume_path = self._resolve_resume(resume)
            if self.resume_path is not None:
                self._resume_ckpt = load_checkpoint(self.resume_path, map_location="cpu")
                check_model_type(self._resume_ckpt, cfg["model"].get("type"), str(self.resume_path),
                                 "--resume")
        ckpt_seed = (self._resume_ckpt or {}).get("meta", {}).get("seed")
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

        # -- work dir, logs
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
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.logger.warning(msg)
            self.amp = False

        # -- data, model
        self.train_set = build_dataset(self.data_cfg.train)
        self.val_set = build_dataset(self.data_cfg.val) if self.data_cfg.val else None
        self.classes = dataset_classes(self.train_set, cfg)
        self.model = build_model(cfg["model"], self.classes).to(self.device)
        self.logger.info(f"model: {type(self.model).__name__} "
                         f"({sum(p.numel() for p in self.model.parameters()):,} parameters); "
                         f"train set: {len(self.train_set)} samples"
                         + (f"; val set: {len(self.val_set)} samples" if self.val_set is not None else ""))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.fit_mode = callable(getattr(self.model, "fit", None)) and (not trainable or not cfg.get("optimizer"))

        # -- evaluation
        self.evaluator = None
        if cfg.get("evaluation") and self.val_set is not None:
            self.evaluator = build_evaluator(cfg["evaluation"], self.classes, dataset=self.val_set)
        elif cfg.get("evaluation"):
            self.logger.info("evaluation is configured but data.val is not: no validation during training")
        self.val_loader = None
        if self.evaluator is not None:
            self.val_loader = build_eval_loader(
                self.val_set, self.data_cfg.val_batch_size or self.data_cfg.batch_size,
                self.data_cfg.num_workers, pin_memory=self.device.type == "cuda")
        self.save_best = self._resolve_save_best()

        # -- sampler and length of training
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

        # -- optimisation
        self.optimizer = None
        self.schedule: LRSchedule | None = None
        self.scaler = None
        if not self.fit_mode:
            if not cfg.get("optimizer"):
                raise ConfigError("optimizer: required to train this model "
                                  "(e.g. optimizer: {type: SGD, lr: 0.01, momentum: 0.9})")
            self.optimizer = build_optimizer(cfg["optimizer"], self.model)
            self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
            self.schedule = (LR_SCHEDULES.build(cfg["lr_schedule"]) if cfg.get("lr_schedule")
                             else ConstantLR())
            self.schedule.bind(max_epochs=None if self.by_iter else self.max_epochs,
                               max_iters=self.max_iters)
            if self.by_iter and self.schedule.by_epoch and not isinstance(self.schedule, ConstantLR):
                self.logger.warning(
                    f"iteration-based training (train.max_iters) with an epoch-based LR schedule: "
                    f"{type(self.schedule).__name__} counts epochs of {self.iters_per_epoch} iterations; "
                    f"set lr_schedule.by_epoch: false to count iterations")
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

        # -- state
        self.epoch = 0             # epochs completed
        self.iter = 0              # iterations completed
        self.inner_iter = 0        # iterations completed in the running epoch
        self.best: dict | None = None
        self.best_path: Path | None = None
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict | None = None
        self.history: list[dict] = []
        self._resume_rng: dict | None = None
        self._kept: list[Path] = []
        self._warned_missing_metric = False
        self.load_report = None    # LoadReport of load_from

        if self._resume_ckpt is not None:
            self._apply_resume(self._resume_ckpt)
            self._resume_ckpt = None
        elif self.load_from:
            self._apply_load_from(self.load_from)
        if self.is_main:
            self._kept = self._existing_periodic()

        self.writer = ScalarWriter(self.work_dir, self.train_cfg.tensorboard, enabled=self.is_main)
        if self.is_main:   # a resumed run continues the file, a fresh one starts it anew
            self.writer.truncate_after(self.iter if self.resume_path is not None else -1)

        self.train_model: torch.nn.Module = self.model
        if self.world_size > 1 and not self.fit_mode:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.train_cfg.find_unused_parameters)

    def _resolve_resume(self, resume: str | Path) -> Path | None:
        if str(resume) == "auto" or resume is True:
            path = find_latest_checkpoint(self.work_dir)
            if path is None:
                self._resume_note = f"resume=auto: no checkpoint in {self.work_dir}; starting from scratch"
            return path
        path = Path(resume)
        if not path.is_file():
            raise CheckpointNotFoundError(f"--resume: checkpoint file not found: {path}")
        return path

    def _resolve_save_best(self) -> tuple[str, bool] | None:
        name = self.train_cfg.save_best
        if not name or self.evaluator is None:
            return None
        if name == "auto":
            main = getattr(self.evaluator, "main_metric", None)
            if main is None:
                self.logger.warning("train.save_best: auto, but the evaluator has no main_metric; "
                                    "no best checkpoint will be kept")
                return None
            return main, bool(getattr(self.evaluator, "greater_is_better", True))
        return name, _greater_is_better(name, self.evaluator)

    # ------------------------------------------------------------------ resume / load
    def _apply_resume(self, ckpt: dict) -> None:
        meta = ckpt.get("meta") or {}
        src = str(self.resume_path)
        load_state_dict(self.model, extract_state_dict(ckpt, src), strict=True, source=src)
        if not self.fit_mode:
            if ckpt.get("optimizer") is None:
                raise CheckpointError(f"{src}: has no optimizer state, so training cannot resume "
                                      f"from it; use load_from to start from its weights")
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scaler.is_enabled() and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        if meta.get("seed") is not None and meta["seed"] != self.seed:
            self.logger.warning(f"resuming with seed {self.seed}, the checkpoint was trained with "
                                f"{meta['seed']}: the data order will differ from an uninterrupted run")
        old_ipe, old_world = meta.get("iters_per_epoch"), meta.get("world_size")
        if old_ipe not in (None, self.iters_per_epoch) or old_world not in (None, self.world_size):
            self.logger.warning(f"resuming with {self.iters_per_epoch} iterations per epoch on "
                                f"{self.world_size} process(es); the checkpoint had {old_ipe} on "
                                f"{old_world}: the run will not match an uninterrupted one")
        self.epoch, self.iter = int(meta.get("epoch", 0)), int(meta.get("iter", 0))
        self.inner_iter = self.iter - self.epoch * self.iters_per_epoch
        if not 0 <= self.inner_iter <= self.iters_per_epoch:      # different epoch length
            self.epoch, self.inner_iter = divmod(self.iter, self.iters_per_epoch)
        if self.inner_iter == self.iters_per_epoch:
            self.epoch, self.inner_iter = self.epoch + 1, 0
        self.best = meta.get("best_metric")
        if self.best and self.save_best and self.best.get("name") != self.save_best[0]:
            self.best = None
        if self.best:
            p = self.work_dir / self._best_name(self.best["name"])
            self.best_path = p if p.is_file() else None
        rng = ckpt.get("rng")
        ranks = ckpt.get("rng_ranks")
        if ranks and len(ranks) == self.world_size:
            rng = ranks[self.rank]
        self._resume_rng = rng
        bad = nonfinite_tensors(extract_state_dict(ckpt, src))
        if bad:   # written before saves were checked: not a good checkpoint to fall back on
            self.logger.warning(f"resuming from {src}, whose {describe_nonfinite(bad)}: "
                                f"training will not recover from it; resume from an earlier checkpoint")
        self.last_checkpoint = None if bad else self.resume_path
        self.logger.info(f"resumed from {src}: epoch {self.epoch}, iteration {self.iter}"
                         + (f", best {self.best['name']}={self.best['value']:.6g}" if self.best else ""))

    def _apply_load_from(self, path: str | Path) -> None:
        """Non-strict weight loading; a :class:`CheckpointError` (with the matched/total
        tensor counts and both model types) when no tensor, or fewer than the share
        ``train.load_from_min_match`` of the model's tensors, match."""
        src = str(path)
        ckpt = load_checkpoint(path, map_location="cpu")
        stored, wanted = checkpoint_model_type(ckpt), self.cfg["model"].get("type")
        types = (f"checkpoint model type '{stored or 'unknown (no defectkit meta)'}', "
                 f"config model.type '{wanted}'")
        report = load_state_dict(self.model, extract_state_dict(ckpt, src), strict=False, source=src)
        self.load_report = report
        least = self.train_cfg.load_from_min_match
        if report.total and (report.matched == 0 or report.share < least):
            raise CheckpointError(
                f"{src}: load_from matched {report.matched} of the model's {report.total} tensors "
                f"({report.share:.0%}; train.load_from_min_match is {least:g}); {types}"
                + ("" if stored in (None, wanted) else ": a checkpoint of another model type")
                + "; give a checkpoint of this model (or of its backbone)"
                + (", or lower train.load_from_min_match" if report.matched else ""))
        if stored not in (None, wanted):
            self.logger.warning(f"load_from {src}: {types}; {report.matched}/{report.total} tensors matched")
        log = self.logger.info if report.clean else self.logger.warning
        log(f"load_from {path}: weights only (optimizer, schedule and counters start fresh); "
            f"{report.matched}/{report.total} model tensors loaded; {report}")

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _best_name(metric: str) -> str:
        return f"best_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.pth"

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
        Never writes NaN/Inf weights or buffers (:class:`NonFiniteCheckpointError`)."""
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
        self.last_checkpoint = path
        return path

    def _save_best(self, just_saved: Path | None) -> None:
        path = self.work_dir / self._best_name(self.best["name"])
        if just_saved is not None:
            if self.is_main:
                link_or_copy(just_saved, path)
        else:
            self._check_finite(path)
            ckpt = self._checkpoint()
            if self.is_main:
                save_checkpoint(ckpt, path)
        self.best_path = path
        if self.is_main:
            self.logger.info(f"new best {self.best['name']}={self.best['value']:.6g} "
                             f"(epoch {self.best['epoch']}, iteration {self.best['iter']}): {path}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict | None:
        """Run validation (all ranks), log it, update the best metric; returns the metrics."""
        if self.evaluator is None or self.val_loader is None:
            return None
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

    def _update_best(self, metrics: dict | None) -> bool:
        if not metrics or self.save_best is None:
            return False
        name, greater = self.save_best
        value = flat_scalars(metrics).get(name)
        if value is None:
            if not self._warned_missing_metric:
                self.logger.warning(f"train.save_best: metric '{name}' is not among the evaluation "
                                    f"results ({', '.join(sorted(flat_scalars(metrics)))})")
                self._warned_missing_metric = True
            return False
        value = float(value)
        if math.isnan(value):
            return False
        if self.best is not None and not (value > self.best["value"] if greater else value < self.best["value"]):
            return False
        self.best = {"name": name, "value": value, "epoch": self.epoch, "iter": self.iter,
                     "greater_is_better": greater}
        return True

    def _after_period(self, count: int, last: bool) -> None:
        """Evaluate / checkpoint after epoch or iteration ``count`` (``last``: end of training)."""
        t = self.train_cfg
        improved = False
        if self.evaluator is not None and t.val_interval > 0 and (count % t.val_interval == 0 or last):
            improved = self._update_best(self.evaluate())
        saved = None
        if last or (t.checkpoint_interval > 0 and count % t.checkpoint_interval == 0):
            saved = self.save_checkpoint()
        if improved:
            self._save_best(saved)

    # ------------------------------------------------------------------ training
    def train(self) -> TrainResult:
        """Train (or fit) to the end; returns a :class:`TrainResult`."""
        try:
            if self.fit_mode:
                self._fit()
            else:
                self._train_loop()
        finally:
            self.writer.close()
        return self.result()

    def result(self) -> TrainResult:
        return TrainResult(work_dir=self.work_dir, epoch=self.epoch, iter=self.iter,
                           last_checkpoint=self.last_checkpoint, best_checkpoint=self.best_path,
                           best_metric=self.best, metrics=self.last_metrics, history=self.history)

    def _set_lr(self) -> float:
        factor = self.schedule(self.iter, self.epoch, self.iters_per_epoch)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]

    def _epoch_loader(self):
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        skip = min(self.inner_iter * self.batch_size, self.sampler.num_samples)
        self.sampler.set_epoch(self.epoch, skip=skip)
        return build_train_loader(self.train_set, self.batch_size, self.sampler, self.epoch,
                                  num_workers=self.data_cfg.num_workers, drop_last=self.data_cfg.drop_last,
                                  seed=self.seed, pin_memory=self.device.type == "cuda")

    def _train_loop(self) -> None:
        if self.iter >= self.max_iters:
            self.logger.info(f"nothing to train: iteration {self.iter} of {self.max_iters} already reached")
            return
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        unit = f"{self.max_iters} iterations" if self.by_iter else \
            f"{self.max_epochs} epochs x {self.iters_per_epoch} iterations"
        self.logger.info(f"training for {unit} (batch {self.batch_size} x {self.world_size} process(es)) "
                         f"from iteration {self.iter}")
        self._bar = ProgressBar(self.max_iters, initial=self.iter,
                                enabled=self.train_cfg.progress and self.is_main)
        self._run_start, self._run_start_iter = time.perf_counter(), self.iter
        self._window: list[dict] = []
        try:
            while self.iter < self.max_iters:
                loader = self._epoch_loader()
                t_data = time.perf_counter()
                n_batches = 0
                for batch in loader:
                    n_batches += 1
                    data_time = time.perf_counter() - t_data
                    self._train_step(batch, data_time, t_data)
                    if self.by_iter:
                        self._after_period(self.iter, last=self.iter >= self.max_iters)
                    if self.iter >= self.max_iters:
                        break
                    t_data = time.perf_counter()
                if n_batches == 0 and self.inner_iter < self.iters_per_epoch:
                    raise RuntimeError(f"the training loader of epoch {self.epoch + 1} yielded no batch "
                                       f"({self.inner_iter}/{self.iters_per_epoch} iterations done)")
                if self.inner_iter >= self.iters_per_epoch:
                    self.epoch, self.inner_iter = self.epoch + 1, 0
                    if not self.by_iter:
                        self._after_period(self.epoch, last=self.epoch >= self.max_epochs)
        finally:
            self._bar.close()

    def _train_step(self, batch: dict, data_time: float, t_start: float) -> None:
        self.train_model.train()
        lr = self._set_lr()
        batch = to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        if callable(getattr(self.model, "set_progress", None)):   # e.g. DefectNet's gate-loss schedule
            self.model.set_progress(self.epoch, self.iter)
        autocast = torch.autocast(device_type="cuda") if self.amp else nullcontext()
        with autocast:
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
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.grad_clip)
            log_vars["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iter += 1
        self.inner_iter += 1
        log_vars["lr"] = lr
        self.history.append({"iter": self.iter, "epoch": self.epoch + 1, **log_vars})
        now = time.perf_counter()
        self._window.append({**log_vars, "time": now - t_start, "data_time": data_time})
        self._bar.update(1, loss=f"{log_vars['loss']:.4f}", lr=f"{lr:.2e}")
        if self.iter % self.train_cfg.log_interval == 0 or self.iter >= self.max_iters:
            self._log_train()

    def _log_train(self) -> None:
        window, self._window = self._window, []
        if not window or not self.is_main:
            return
        keys = [k for k in window[-1] if k != "lr"]
        avg = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in keys}
        lr = window[-1]["lr"]
        done = self.iter - self._run_start_iter
        per_iter = (time.perf_counter() - self._run_start) / max(done, 1)
        eta = per_iter * (self.max_iters - self.iter)
        mem = memory_mb(self.device)
        if self.by_iter:
            pos = f"Iter [{self.iter}/{self.max_iters}] (epoch {self.epoch + 1})"
        else:
            pos = f"Epoch [{self.epoch + 1}/{self.max_epochs}][{self.inner_iter}/{self.iters_per_epoch}]"
        losses = "  ".join(f"{k}: {avg[k]:.4f}" for k in keys if k not in ("time", "data_time"))
        self.logger.info(f"{pos}  lr: {lr:.3e}  eta: {format_eta(eta)}  time: {avg['time']:.3f}  "
                         f"data_time: {avg['data_time']:.3f}  memory: {mem:.0f} MB  {losses}",
                         extra={"bar_replaces": True})
        self.writer.write({"mode": "train", "step": self.iter, "epoch": self.epoch + 1, "iter": self.iter,
                           "lr": lr, **avg, "memory_mb": mem})

    def _fit(self) -> None:
        """Statistical models: ``model.fit(loader)`` over the training set, save, evaluate."""
        fit_model(self)

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
