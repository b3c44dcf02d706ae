"""Optimizers available to configs (``optimizer: {type: SGD, lr: 0.01, momentum: 0.9}``).

The torch classes are registered as they are, so every keyword of their constructor is a
valid config key; the trainer passes the parameters at build time.

``optimizer.paramwise`` (mmengine's ``paramwise_cfg`` names) sets per-parameter LR and
weight decay::

    optimizer:
      type: SGD
      lr: 0.02
      weight_decay: 1.0e-4
      paramwise:
        norm_decay_mult: 0.0        # weight decay x0 for BatchNorm/GroupNorm/LayerNorm/InstanceNorm params
        bias_decay_mult: 0.0        # weight decay x0 for other ``bias`` params
        bias_lr_mult: 1.0           # LR multiplier of those biases
        custom_keys:                # the longest key contained in a parameter's name wins
          backbone: {lr_mult: 0.1, decay_mult: 1.0}

A parameter's group gets ``lr = optimizer.lr * lr_mult`` and ``weight_decay =
optimizer.weight_decay * decay_mult``; a ``custom_keys`` match overrides the norm/bias
rules (as in mmengine). Parameters with equal (lr, weight_decay) share one group, in the
order the model lists them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ..registry import OPTIMIZERS

for _name in ("SGD", "Adam", "AdamW"):
    OPTIMIZERS.register(_name, getattr(torch.optim, _name))

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class CustomKey:
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class Paramwise:
    """``optimizer.paramwise``: see the module docstring."""

    norm_decay_mult: float = 1.0
    bias_decay_mult: float = 1.0
    bias_lr_mult: float = 1.0
    custom_keys: dict[str, dict] = field(default_factory=dict)   # {key: {lr_mult, decay_mult}}

    def __post_init__(self):
        keys = {}
        for k, v in (self.custom_keys or {}).items():
            if isinstance(v, dict) and set(v) - {"lr_mult", "decay_mult"}:
                raise ValueError(f"custom_keys.{k}: unknown key(s) {sorted(set(v) - {'lr_mult', 'decay_mult'})} "
                                 f"(accepted: decay_mult, lr_mult)")
            keys[k] = v if isinstance(v, CustomKey) else CustomKey(**v)
        self.custom_keys = keys
        for name in ("norm_decay_mult", "bias_decay_mult", "bias_lr_mult"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


def param_groups(model: nn.Module, lr: float, weight_decay: float, paramwise: Paramwise) -> list[dict]:
    """The optimizer's parameter groups for the trainable parameters of ``model``:
    ``[{"params": [...], "lr": float, "weight_decay": float, "names": [...]}, ...]``."""
    keys = sorted(paramwise.custom_keys, key=lambda k: (-len(k), k))
    groups: dict[tuple[float, float], dict] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            lr_mult, decay_mult = 1.0, 1.0
            key = next((k for k in keys if k in full), None)
            if key is not None:
                lr_mult, decay_mult = paramwise.custom_keys[key].lr_mult, paramwise.custom_keys[key].decay_mult
            elif isinstance(module, _NORMS):
                decay_mult = paramwise.norm_decay_mult
            elif p_name == "bias":
                lr_mult, decay_mult = paramwise.bias_lr_mult, paramwise.bias_decay_mult
            g = groups.setdefault((lr * lr_mult, weight_decay * decay_mult),
                                  {"params": [], "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult,
                                   "names": []})
            g["params"].append(p)
            g["names"].append(full)
    return list(groups.values())


def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    """Build ``cfg`` over the parameters of ``model`` that require gradients (grouped by
    ``cfg["paramwise"]`` when set). Raises ``ValueError`` when there is none."""
    cfg = dict(cfg)
    paramwise = cfg.pop("paramwise", None)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to optimise")
    if paramwise is None:
        return OPTIMIZERS.build(cfg, params=params)
    lr = cfg.get("lr", inspect.signature(OPTIMIZERS.get(cfg["type"])).parameters["lr"].default)
    groups = param_groups(model, float(lr), float(cfg.get("weight_decay", 0.0)), Paramwise(**paramwise))
    return OPTIMIZERS.build(cfg, params=groups)
