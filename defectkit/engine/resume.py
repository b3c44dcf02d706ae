"""Resuming a run (``--resume``): which checkpoint, and the training state it restores.

The trainer calls :func:`find_resume_checkpoint` before anything is built (the seed of a
resumed run is the checkpoint's) and :func:`restore_training_state` once the model,
optimizer and hooks exist; the hooks then read their own entries (``HookBase.load_state``).
Everything here is a plain function of its arguments, so a reader finds resume in one file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (CheckpointError, CheckpointNotFoundError, check_model_type, describe_nonfinite,
                         extract_state_dict, find_latest_checkpoint, load_checkpoint, load_state_dict,
                         nonfinite_tensors)


def find_resume_checkpoint(resume: Any, work_dir: Path, model_type: str | None
                           ) -> tuple[Path | None, dict | None, str | None]:
    """``(path, checkpoint dict, note)`` of the run to resume, or ``(None, None, note)``.

    ``resume``: None/False (start fresh), ``"auto"``/True (the newest checkpoint of
    ``work_dir``; a note says so when there is none) or a path. Raises
    ``CheckpointNotFoundError`` for a missing path and ``CheckpointError`` for an
    unreadable file or one saved from another model type than ``model_type``."""
    if resume is None or resume is False:
        return None, None, None
    if str(resume) == "auto" or resume is True:
        path = find_latest_checkpoint(work_dir)
        if path is None:
            return None, None, f"resume=auto: no checkpoint in {work_dir}; starting from scratch"
    else:
        path = Path(resume)
        if not path.is_file():
            raise CheckpointNotFoundError(f"--resume: checkpoint file not found: {path}")
    ckpt = load_checkpoint(path, map_location="cpu")
    check_model_type(ckpt, model_type, str(path), "--resume")
    return path, ckpt, None


@dataclass
class ResumedState:
    """Counters and RNG state of a resumed run. ``epoch`` / ``iter``: completed;
    ``inner_iter``: iterations completed in the running epoch; ``rng``: this rank's RNG
    state to restore when training starts (None: keep the current one); ``finite``: the
    checkpoint's weights are finite (it may serve as the last good checkpoint)."""

    epoch: int
    iter: int
    inner_iter: int
    rng: dict | None
    finite: bool


def restore_training_state(ckpt: dict, src: str, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer | None, scaler: Any, *, seed: int,
                           iters_per_epoch: int, world_size: int, rank: int,
                           logger: logging.Logger) -> ResumedState:
    """Load the weights (strict) and, for a trained model (``optimizer`` not None), the
    optimizer and GradScaler states of ``ckpt`` (read from ``src``); work out the counters
    for this run's epoch length and this rank's RNG state. Warns when the seed, the epoch
    length or the number of processes differ from the checkpoint's (the run will not match
    an uninterrupted one). ``CheckpointError`` when a trained model's checkpoint has no
    optimizer state."""
    meta = ckpt.get("meta") or {}
    load_state_dict(model, extract_state_dict(ckpt, src), strict=True, source=src)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{src}: has no optimizer state, so training cannot resume "
                                  f"from it; use load_from to start from its weights")
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    if meta.get("seed") is not None and meta["seed"] != seed:
        logger.warning(f"resuming with seed {seed}, the checkpoint was trained with "
                       f"{meta['seed']}: the data order will differ from an uninterrupted run")
    old_ipe, old_world = meta.get("iters_per_epoch"), meta.get("world_size")
    if old_ipe not in (None, iters_per_epoch) or old_world not in (None, world_size):
        logger.warning(f"resuming with {iters_per_epoch} iterations per epoch on {world_size} "
                       f"process(es); the checkpoint had {old_ipe} on {old_world}: the run will "
                       f"not match an uninterrupted one")
    epoch, it = int(meta.get("epoch", 0)), int(meta.get("iter", 0))
    inner = it - epoch * iters_per_epoch
    if not 0 <= inner <= iters_per_epoch:      # different epoch length
        epoch, inner = divmod(it, iters_per_epoch)
    if inner == iters_per_epoch:
        epoch, inner = epoch + 1, 0
    rng = ckpt.get("rng")
    ranks = ckpt.get("rng_ranks")
    if ranks and len(ranks) == world_size:
        rng = ranks[rank]
    bad = nonfinite_tensors(extract_state_dict(ckpt, src))
    if bad:   # written before saves were checked: not a good checkpoint to fall back on
        logger.warning(f"resuming from {src}, whose {describe_nonfinite(bad)}: training will not "
                       f"recover from it; resume from an earlier checkpoint")
    return ResumedState(epoch=epoch, iter=it, inner_iter=inner, rng=rng, finite=not bad)
