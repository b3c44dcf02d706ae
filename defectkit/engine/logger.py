"""Training logs: ``train.log`` (human), ``scalars.jsonl`` (machine), TensorBoard, progress bar.

Only rank 0 writes files; other ranks log warnings and errors to the console.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

LOGGER_NAME = "defectkit"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _TqdmAwareHandler(logging.StreamHandler):
    """Console handler that prints above an active tqdm bar instead of through it."""

    bar = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is not None and getattr(record, "bar_replaces", False):
            return          # per-iteration lines: the bar shows them on the terminal
        if self.bar is None:
            return super().emit(record)
        try:
            self.bar.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001
            self.handleError(record)


_FMT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logger(work_dir: str | os.PathLike | None, rank: int = 0,
                 filename: str = "train.log") -> logging.Logger:
    """Console + ``work_dir/filename`` handlers (file on rank 0 only); replaces earlier ones."""
    logger = get_logger()
    for h in list(logger.handlers):
        if getattr(h, "_defectkit", False):
            logger.removeHandler(h)
            h.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = _TqdmAwareHandler(sys.stdout)
    console.setFormatter(_FMT)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console._defectkit = True
    logger.addHandler(console)
    if rank == 0 and work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(work_dir) / filename, encoding="utf-8")
        fh.setFormatter(_FMT)
        fh._defectkit = True
        logger.addHandler(fh)
    return logger


def close_logger() -> None:
    logger = get_logger()
    for h in list(logger.handlers):
        if getattr(h, "_defectkit", False):
            logger.removeHandler(h)
            h.close()


def collect_env(device: torch.device | str | None = None, world_size: int = 1) -> dict[str, Any]:
    import numpy
    import torchvision

    import defectkit

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "defectkit": defectkit.__version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__,
           "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
           "device": str(device), "world_size": world_size,
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        env["gpu_count"] = torch.cuda.device_count()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def format_env(env: dict[str, Any]) -> str:
    width = max(len(k) for k in env)
    return "environment:\n" + "\n".join(f"  {k:<{width}} : {v}" for k, v in env.items())


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:d}:{m:02d}:{s:02d}"


def memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process' peak RSS on CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
    except (ImportError, OSError):
        return float("nan")


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if hasattr(v, "item") and not isinstance(v, (list, dict)):
        try:
            return v.item()
        except (ValueError, TypeError):
            return v
    return v


def flat_scalars(metrics: dict) -> dict[str, float]:
    """The numeric, non-nested entries of an evaluator's metrics dict."""
    out = {}
    for k, v in metrics.items():
        v = _plain(v)
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = v
    return out


class ScalarWriter:
    """Appends one JSON object per call to ``scalars.jsonl``; mirrors to TensorBoard."""

    def __init__(self, work_dir: str | os.PathLike | None, tensorboard: bool = False,
                 enabled: bool = True):
        self.enabled = enabled and work_dir is not None
        self.path = Path(work_dir) / "scalars.jsonl" if work_dir is not None else None
        self._tb = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:   # tensorboard not installed
                get_logger().warning(f"train.tensorboard is on but TensorBoard is unavailable ({e}); "
                                     f"install it with `pip install tensorboard`")
            else:
                self._tb = SummaryWriter(log_dir=str(Path(work_dir) / "tb"))

    def truncate_after(self, iteration: int) -> None:
        """Drop records of iterations after ``iteration`` (left by a run that was resumed)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("iter", 0) <= iteration:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            mode, step = record.get("mode", "train"), record.get("step", 0)
            for k, v in record.items():
                if k in ("mode", "step", "epoch", "iter") or isinstance(v, bool) \
                        or not isinstance(v, (int, float)):
                    continue
                self._tb.add_scalar(f"{mode}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """tqdm over iterations on a terminal (``enabled``), a no-op otherwise."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self._bar = None
        if enabled and sys.stdout.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                             file=sys.stdout, leave=True)
            for h in get_logger().handlers:
                if isinstance(h, _TqdmAwareHandler):
                    h.bar = self._bar

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            for h in get_logger().handlers:
                if isinstance(h, _TqdmAwareHandler):
                    h.bar = None
            self._bar.close()
            self._bar = None
