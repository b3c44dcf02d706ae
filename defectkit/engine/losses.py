"""Summing a model's loss dict, and the error raised when a loss is not finite."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message has the iteration, every loss term and
    the last good checkpoint."""

    def __init__(self, iteration: int, epoch: int, terms: dict[str, float],
                 last_checkpoint: str | Path | None):
        self.iteration, self.epoch, self.terms = iteration, epoch, dict(terms)
        self.last_checkpoint = last_checkpoint
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        where = (f"last good checkpoint: {last_checkpoint} (continue with --resume {last_checkpoint}, "
                 f"e.g. with a lower lr or train.grad_clip)") if last_checkpoint else \
            "no checkpoint was saved before it"
        super().__init__(f"non-finite loss at iteration {iteration} (epoch {epoch}): {shown}; {where}")


def parse_losses(outputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss (sum of the ``loss*`` terms) and every term as a scalar tensor."""
    if not isinstance(outputs, dict):
        raise TypeError(f"model(batch) must return a dict of losses in train mode, got "
                        f"{type(outputs).__name__}")
    terms: dict[str, torch.Tensor] = {}
    for k, v in outputs.items():
        if isinstance(v, torch.Tensor):
            terms[k] = v.mean() if v.numel() != 1 else v.reshape(())
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v):
            terms[k] = sum(x.mean() for x in v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            terms[k] = torch.tensor(float(v))
    loss_keys = [k for k in terms if k.startswith("loss")]
    if not loss_keys:
        raise ValueError(f"model(batch) returned no 'loss*' entries (keys: {sorted(outputs)})")
    total = sum(terms[k] for k in loss_keys)
    return total, {"loss": total.detach(), **{k: v.detach() for k, v in terms.items() if k != "loss"}}
