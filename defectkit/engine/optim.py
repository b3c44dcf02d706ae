"""Optimizers available to configs (``optimizer: {type: SGD, lr: 0.01, momentum: 0.9}``).

The torch classes are registered as they are, so every keyword of their constructor
is a valid config key; the trainer passes ``params`` (the model's trainable
parameters) at build time.
"""
from __future__ import annotations

import torch

from ..registry import OPTIMIZERS

for _name in ("SGD", "Adam", "AdamW"):
    OPTIMIZERS.register(_name, getattr(torch.optim, _name))


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build ``cfg`` over the parameters of ``model`` that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to optimise")
    return OPTIMIZERS.build(cfg, params=params)
