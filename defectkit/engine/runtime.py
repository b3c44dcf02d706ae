"""Where a run writes (work dir) and what it runs on (device)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from . import distributed as dist_utils


def default_work_dir(config_path: str | Path) -> Path:
    """``work_dirs/<config-stem>`` (relative to the current directory)."""
    return Path("work_dirs") / Path(config_path).stem


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' was requested but CUDA is not available "
                               f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                               f"use device: cpu")
        if d.index is None or dist_utils.get_world_size() > 1:   # one GPU per process under torchrun
            d = torch.device("cuda", local_rank)
    return d
