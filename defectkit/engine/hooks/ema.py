"""EMA hook (``train.ema``): updates a :class:`~defectkit.engine.ema.ModelEMA` of the
unwrapped model after every optimizer step (never inside forward), stores it as the
checkpoint's ``ema`` entry, and with ``use_for_eval`` swaps the averaged weights into the
model for the duration of every ``trainer.evaluate()`` (the raw weights go back before
anything else runs, so periodic checkpoints hold both)."""
from __future__ import annotations

from ..ema import ModelEMA
from .base import HookBase


class EMAHook(HookBase):
    def __init__(self, decay: float = 0.9999, update_after_step: int = 0, update_every: int = 1,
                 use_for_eval: bool = True, warmup: str | None = None):
        self.options = dict(decay=decay, update_after_step=update_after_step, update_every=update_every,
                            warmup=warmup)
        self.use_for_eval = bool(use_for_eval)
        self._ema: ModelEMA | None = None
        self._raw: dict | None = None

    @property
    def ema(self) -> ModelEMA:
        """The average, created from the (unwrapped) model on first use."""
        if self._ema is None:
            self._ema = ModelEMA(self.trainer.model, **self.options)
        return self._ema

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)

    def before_eval(self) -> None:
        if self.use_for_eval:
            model = self.trainer.model
            self._raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.ema.copy_to(model)

    def after_eval(self, metrics) -> None:
        if self._raw is not None:
            self.trainer.model.load_state_dict(self._raw)
            self._raw = None

    def save_state(self, ckpt: dict) -> None:
        ckpt["ema"] = self.ema.state_dict()

    def load_state(self, ckpt: dict) -> None:
        if isinstance(ckpt.get("ema"), dict):
            self.ema.load_state_dict(ckpt["ema"])
        else:
            self.trainer.logger.warning("train.ema: the resumed checkpoint has no EMA entry; the "
                                        "average restarts from its weights")
