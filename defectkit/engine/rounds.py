"""Rounds: train several times in one process with a changed config per round (self-training:
train -> pseudo-label -> retrain on a new ``data.train``; repeated experiments).

    from defectkit.config import load_config
    from defectkit.engine.rounds import run_rounds
    results = run_rounds(load_config("configs/x.yaml"),
                         rounds=[{}, {"data.train.ann_file": "pseudo_1.json", "train.epochs": 6}],
                         work_dir="work_dirs/x_rounds")

Round ``k`` trains ``cfg`` with ``rounds[k]`` applied as ``--cfg-options`` keys (dotted
keys, mmengine grammar: ``{"optimizer.lr": 0.01, "data.train": {...}}``) in its own
sub-work-dir ``work_dir/round_k/`` (own logs, checkpoints, ``latest.pth``). With
``init_from_previous`` (default) round k > 0 starts from the final weights of round
k-1 (its last checkpoint, as ``load_from``: weights only; the optimizer, schedule and
counters start fresh); a ``load_from`` key in a round's overrides wins.
``names`` replaces the ``round_<k>`` sub-dir names (e.g. ``["unet_seed0", "unet_seed1"]`` for
repeated experiments, as ``tools/compare.py --seeds`` does).
``resume=True`` continues an interrupted sequence: every round resumes from its
sub-work-dir's newest checkpoint (a finished round trains nothing more).

Between rounds the caller may do anything (e.g. write pseudo labels) through
``before_round(k, cfg, previous_result)``, which may return a changed config.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

from ..config import apply_options
from .trainer import Trainer, TrainResult


def round_dir(work_dir: str | Path, k: int, names: Sequence[str] | None = None) -> Path:
    """``work_dir/round_<k>`` (or ``work_dir/names[k]``): the sub-work-dir of round ``k``."""
    return Path(work_dir) / (str(names[k]) if names is not None else f"round_{k}")


def run_rounds(cfg: dict, rounds: Sequence[dict], work_dir: str | Path, init_from_previous: bool = True,
               resume: bool = False, seed: int | None = None, device: str | None = None,
               before_round: Callable[[int, dict, TrainResult | None], dict | None] | None = None,
               trainer_cls: type[Trainer] = Trainer, names: Sequence[str] | None = None) -> list[TrainResult]:
    """Train ``len(rounds)`` times; returns each round's :class:`TrainResult` in order.

    ``cfg``: a resolved config (``load_config``); ``rounds[k]``: dotted-key overrides of
    round k (``{}`` = the config as it is). Raises what :class:`Trainer` raises, naming the
    config key (``ConfigError``) or the checkpoint (``CheckpointError``); a round that
    fails stops the sequence (earlier rounds' directories stay complete).
    """
    if not rounds:
        raise ValueError("run_rounds: `rounds` is empty; give one overrides dict per round ({} = unchanged)")
    if names is not None and (len(names) != len(rounds) or len(set(map(str, names))) != len(names)
                              or any(not str(n) or Path(str(n)).name != str(n) for n in names)):
        raise ValueError(f"run_rounds: `names` must be {len(rounds)} distinct folder names (one per "
                         f"round, no path separators), got {list(names)}")
    results: list[TrainResult] = []
    for k, overrides in enumerate(rounds):
        round_cfg = copy.deepcopy(cfg)
        round_cfg.pop("work_dir", None)
        apply_options(round_cfg, dict(overrides))
        previous = results[-1] if results else None
        if before_round is not None:
            round_cfg = before_round(k, round_cfg, previous) or round_cfg
        load_from = None
        if init_from_previous and previous is not None and "load_from" not in overrides:
            if previous.last_checkpoint is None:
                raise RuntimeError(f"round {k}: round {k - 1} saved no checkpoint to start from")
            load_from = previous.last_checkpoint
        trainer = trainer_cls(round_cfg, work_dir=round_dir(work_dir, k, names), resume="auto" if resume else None,
                              load_from=load_from, seed=seed, device=device)
        try:
            trainer.logger.info(f"round {k} of {len(rounds)}: overrides {dict(overrides) or 'none'}"
                                + (f"; weights from {load_from}" if load_from is not None else ""))
            results.append(trainer.train())
        finally:
            trainer.close()
    return results
