"""Exponential moving average of a model's weights (timm ``ModelEmaV3`` / diffusers ``EMAModel`` math).

After optimizer step ``s`` (1-based count of steps), when ``s > update_after_step`` and
``(s - update_after_step) % update_every == 0``::

    ema_p = decay * ema_p + (1 - decay) * p       # every floating-point parameter
    ema_b = b                                     # every buffer (BN statistics, counters)

With ``warmup`` the decay of the update at averaging step ``s`` (steps since
``update_after_step``) is ``min(decay, d_s)``, diffusers ``EMAModel.get_decay``:

    warmup: "linear"   d_s = (1 + s) / (10 + s)            (diffusers' default branch)
    warmup: "power"    d_s = 1 - (1 + s) ** (-2 / 3)       (diffusers ``use_ema_warmup``, inv_gamma 1)
    warmup: null       d_s = decay                          (guided-diffusion's fixed rate; default)

Without it a short run keeps ``decay ** N`` of the initial weights after N updates (0.999:
67 % after 400 steps), so the average of a few-hundred-step CPU run is mostly the random
initialisation. Before ``update_after_step`` steps the average is a copy of the weights (so
a warm-up does not bake the random initialisation into it). The average starts as a copy of the
weights when it is created. Kept as a ``state_dict``-shaped dict of tensors on the
model's device, so it loads into the model as it is (``init_model(use_ema=True)``).

Written here rather than with ``torch.optim.swa_utils.AveragedModel``: that class deep-copies
the module, prefixes its keys with ``module.`` and averages buffers instead of copying
them; the update itself is the two lines above.
"""
from __future__ import annotations

import torch
from torch import nn

WARMUPS = (None, "linear", "power")


class ModelEMA:
    """EMA of ``model``'s weights (pass the unwrapped model, not the DDP wrapper).

    ``decay`` in [0, 1]; ``update_after_step`` >= 0 and ``update_every`` >= 1 count
    optimizer steps; ``warmup``: None, ``"linear"`` or ``"power"`` (module docstring).
    ``state`` maps every ``model.state_dict()`` key to a detached tensor (same dtype and
    device as the model's). ValueError for an out-of-range value.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, update_after_step: int = 0,
                 update_every: int = 1, warmup: str | None = None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {list(WARMUPS)}, got {warmup!r}")
        self.warmup = warmup
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
        decay = self.decay_at(s)
        for k, v in model.state_dict().items():
            ema = self.state[k]
            if k in self.params and ema.is_floating_point():
                ema.lerp_(v.detach(), 1.0 - decay)
            else:
                ema.copy_(v)

    def decay_at(self, s: int) -> float:
        """The decay of the update ``s`` steps after ``update_after_step`` (s >= 1)."""
        if self.warmup == "linear":
            return min(self.decay, (1.0 + s) / (10.0 + s))
        if self.warmup == "power":
            return min(self.decay, 1.0 - (1.0 + s) ** (-2.0 / 3.0))
        return self.decay

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
