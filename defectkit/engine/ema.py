"""Exponential moving average of a model's weights (timm ``ModelEmaV3`` / diffusers ``EMAModel`` math).

After optimizer step ``s`` (1-based count of steps), when ``s > update_after_step`` and
``(s - update_after_step) % update_every == 0``::

    ema_p = decay * ema_p + (1 - decay) * p       # every floating-point parameter
    ema_b = b                                     # every buffer (BN statistics, counters)

Before ``update_after_step`` steps the average is a copy of the weights (so a warm-up
does not bake the random initialisation into it). The average starts as a copy of the
weights when it is created. Kept as a ``state_dict``-shaped dict of tensors on the
model's device, so it loads into the model as it is (``init_model(use_ema=True)``).

Written here rather than with ``torch.optim.swa_utils.AveragedModel``: that class deep-copies
the module, prefixes its keys with ``module.`` and averages buffers instead of copying
them; the update itself is the two lines above.
"""
from __future__ import annotations

import torch
from torch import nn


class ModelEMA:
    """EMA of ``model``'s weights (pass the unwrapped model, not the DDP wrapper).

    ``decay`` in [0, 1]; ``update_after_step`` >= 0 and ``update_every`` >= 1 count
    optimizer steps. ``state`` maps every ``model.state_dict()`` key to a detached tensor
    (same dtype and device as the model's).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, update_after_step: int = 0,
                 update_every: int = 1):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if update_after_step < 0 or update_every < 1:
            raise ValueError(f"update_after_step must be >= 0 and update_every >= 1, got "
                             f"{update_after_step} and {update_every}")
        self.decay, self.update_after_step, self.update_every = float(decay), int(update_after_step), int(update_every)
        self.num_updates = 0       # optimizer steps seen
        self.params = {name for name, _ in model.named_parameters()}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Account for one optimizer step of ``model`` (call it after ``optimizer.step()``)."""
        self.num_updates += 1
        s = self.num_updates - self.update_after_step
        if s <= 0:
            self.copy_from(model)
            return
        if s % self.update_every:
            return
        for k, v in model.state_dict().items():
            ema = self.state[k]
            if k in self.params and ema.is_floating_point():
                ema.lerp_(v.detach(), 1.0 - self.decay)
            else:
                ema.copy_(v)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.state[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (same architecture)."""
        model.load_state_dict(self.state, strict=True)

    def state_dict(self) -> dict:
        """``{"state_dict": {key: cpu tensor}, "num_updates", "decay"}`` (a checkpoint's ``ema`` entry)."""
        return {"state_dict": {k: v.detach().cpu() for k, v in self.state.items()},
                "num_updates": self.num_updates, "decay": self.decay}

    @torch.no_grad()
    def load_state_dict(self, entry: dict) -> None:
        for k, v in entry["state_dict"].items():
            self.state[k].copy_(v)
        self.num_updates = int(entry["num_updates"])
