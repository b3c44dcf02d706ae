"""The plain (not registry-built) top-level config sections and their defaults.

``defectkit.config.validate_config`` checks every config against ``ROOT_SCHEMA``;
the sections are declared here so a reader sees every accepted key in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import register_section
from ..registry import DATASETS, EVALUATORS, LR_SCHEDULES, MODELS, OPTIMIZERS


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


@dataclass
class BenchmarkSettings:
    warmup: int = 10
    iters: int = 50
    batch_size: int = 1
    num_images: int | None = None   # default: warmup + iters images of the test set


def _declare() -> None:
    register_section("model", MODELS)
    register_section("data", DataSettings)
    register_section("optimizer", OPTIMIZERS)
    register_section("lr_schedule", LR_SCHEDULES)
    register_section("train", TrainSettings)
    register_section("evaluation", EVALUATORS)
    register_section("benchmark", BenchmarkSettings)
    for plain in ("seed", "deterministic", "work_dir", "custom_imports", "device",
                  "load_from", "classes"):
        register_section(plain, None)


_declare()
