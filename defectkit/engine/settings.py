"""The plain (not registry-built) top-level config sections and their defaults.

``defectkit.config.validate_config`` checks every config against ``ROOT_SCHEMA``;
the sections are declared here so a reader sees every accepted key in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, register_section
from ..registry import DATASETS, EVALUATORS, HOOKS, LR_SCHEDULES, MODELS, OPTIMIZERS
from .optim import Paramwise


@dataclass
class DataSettings:
    train: dict | None = field(default=None, metadata={"spec": DATASETS})
    val: dict | None = field(default=None, metadata={"spec": DATASETS})
    test: dict | None = field(default=None, metadata={"spec": DATASETS})
    batch_size: int = 2            # per process
    val_batch_size: int | None = None   # default: batch_size
    num_workers: int = 2
    shuffle: bool = True
    drop_last: bool = False
    category: str | None = None    # when set, replaces `category` of every split (and of `evaluation`)


@dataclass
class EMASettings:
    """``train.ema``: an exponential moving average of the weights (``engine/ema.py``)."""

    decay: float = 0.9999
    update_after_step: int = 0      # optimizer steps before averaging starts (a copy until then)
    update_every: int = 1           # average every this many optimizer steps
    use_for_eval: bool = True       # evaluate during training with the EMA weights
    warmup: str | None = None       # null | linear | power: decay ramps up (engine/ema.py)

    def __post_init__(self):
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"decay: must be in [0, 1], got {self.decay!r}")
        if self.warmup not in (None, "linear", "power"):
            raise ValueError(f"warmup: must be null, 'linear' or 'power', got {self.warmup!r}")
        if self.update_after_step < 0 or self.update_every < 1:
            raise ValueError(f"update_after_step must be >= 0 and update_every >= 1, got "
                             f"{self.update_after_step!r} and {self.update_every!r}")


@dataclass
class TrainSettings:
    epochs: int | None = 12         # epoch-based training ...
    max_iters: int | None = None    # ... or iteration-based when set (epochs ignored)
    val_interval: int = 1           # epochs (or iterations when iteration-based); 0 = never
    log_interval: int = 10          # iterations
    checkpoint_interval: int = 1    # epochs (or iterations)
    max_keep_ckpts: int = 3         # periodic checkpoints kept; latest/best always kept
    grad_clip: float | None = None  # max L2 norm of all gradients
    amp: bool = False               # mixed precision, CUDA only (ignored with a warning on CPU)
    save_best: str | None = "auto"  # metric name; "auto" = the evaluator's main metric; null = off
    tensorboard: bool = False
    progress: bool = True           # progress bar on a terminal (plain lines otherwise)
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    load_from_min_match: float = 0.0  # load_from fails when no tensor, or under this share, matches
    ema: EMASettings | None = None  # e.g. {decay: 0.9999}: keep an EMA of the weights (null = off)
    hooks: list[dict] | None = field(default=None, metadata={"spec": ("list", HOOKS)})  # custom hooks


@dataclass
class BenchmarkSettings:
    warmup: int = 10
    iters: int = 50
    batch_size: int = 1
    num_images: int | None = None   # default: warmup + iters images of the test set


def training_settings(cfg: dict) -> tuple[TrainSettings, DataSettings]:
    """The ``train`` and ``data`` sections as dataclasses, with their values checked
    (validate_config has already checked the keys)."""
    def build(cls, name):
        try:
            return cls(**(cfg.get(name) or {}))
        except TypeError as e:   # a last guard; validate_config reports unknown keys first
            raise ConfigError(f"{name}: {e}") from None

    train, data = build(TrainSettings, "train"), build(DataSettings, "data")
    if isinstance(train.ema, dict):
        try:
            train.ema = EMASettings(**train.ema)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"train.ema: {e}") from None
    if not cfg.get("model"):
        raise ConfigError("model: required (a dict with a 'type' from the model registry)")
    if not data.train:
        raise ConfigError("data.train: a training dataset is required")
    if train.max_iters is None and not train.epochs:
        raise ConfigError("train: set train.epochs (epoch-based) or train.max_iters (iteration-based)")
    for name in ("max_iters", "epochs"):
        v = getattr(train, name)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise ConfigError(f"train.{name}: must be a positive integer, got {v!r}")
    for name in ("val_interval", "checkpoint_interval", "log_interval"):
        v = getattr(train, name)
        if not isinstance(v, int) or v < 0 or (name == "log_interval" and v == 0):
            raise ConfigError(f"train.{name}: must be a {'positive' if name == 'log_interval' else 'non-negative'} "
                              f"integer, got {v!r}")
    share = train.load_from_min_match
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"train.load_from_min_match: must be a number in [0, 1], "
                          f"got {train.load_from_min_match!r}")
    if train.grad_clip is not None and not train.grad_clip > 0:
        raise ConfigError(f"train.grad_clip: must be > 0 or null, got {train.grad_clip!r}")
    if not isinstance(data.batch_size, int) or data.batch_size <= 0:
        raise ConfigError(f"data.batch_size: must be a positive integer, got {data.batch_size!r}")
    return train, data


def _declare() -> None:
    register_section("model", MODELS)
    register_section("data", DataSettings)
    register_section("optimizer", ("extra_keys", OPTIMIZERS, {"paramwise": Paramwise}))
    register_section("lr_schedule", LR_SCHEDULES)
    register_section("train", TrainSettings)
    register_section("evaluation", EVALUATORS)
    register_section("benchmark", BenchmarkSettings)
    for plain, annotation in (("seed", int), ("deterministic", bool), ("work_dir", str),
                              ("custom_imports", list[str]), ("device", str), ("load_from", str),
                              ("classes", list[str])):
        register_section(plain, annotation)   # a type annotation: the value is type-checked


_declare()
