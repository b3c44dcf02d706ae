"""``SamplePreviewHook``: periodic grids of generated image | mask pairs during training
(the original's ``log_image_interval``: a full sampling of 8 samples every 10 000 iterations).

Config::

    train:
      hooks: [{type: SamplePreviewHook, interval: 500, num: 8}]

Every ``interval`` iterations (and after the last one, ``at_end``) it samples ``num`` pairs
with the model's ``sample(num, seed=seed)`` (a ``DiffusionDenoiser`` samples alone with its
``model.sampling`` options; ``num_inference_steps`` here overrides them, e.g. 50 for cheap
previews) and writes ``<work_dir>/previews/iter_<N>.png``: ``ncols`` (image | colour mask)
pairs per row. Sampling runs with the EMA weights: the hook calls the trainer's
``before_eval`` hooks first (the EMA hook swaps the averaged weights in) and ``after_eval``
after (raw weights back), and restores torch's RNG state so training is unaffected. Only
the main process writes. Same seeds at every preview: the grids show the same x_T evolving.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...hooks import HookBase
from ...registry import HOOKS
from ..weights import unwrap_model
from .result import colour_mask


@HOOKS.register()
class SamplePreviewHook(HookBase):
    """Args:
        interval: iterations between previews (>= 1).
        num: pairs per grid.
        seed: seed of the first sample (sample i uses seed + i).
        num_inference_steps: DDIM steps of the preview (None: the model's ``sampling`` option).
        ncols: pairs per row.
        at_end: also write a preview after the last iteration.
    """

    def __init__(self, interval: int = 500, num: int = 8, seed: int = 0, num_inference_steps: int | None = None,
                 ncols: int = 4, at_end: bool = True):
        if int(interval) < 1 or int(num) < 1 or int(ncols) < 1:
            raise ValueError(f"SamplePreviewHook: interval, num and ncols must be >= 1, got {interval}, {num}, {ncols}")
        if num_inference_steps is not None and int(num_inference_steps) < 1:
            raise ValueError(f"SamplePreviewHook: num_inference_steps must be >= 1, got {num_inference_steps}")
        self.interval, self.num, self.seed, self.ncols = int(interval), int(num), int(seed), int(ncols)
        self.num_inference_steps = num_inference_steps
        self.at_end = bool(at_end)
        self.written: list[Path] = []
        self._last_iter: int | None = None

    def after_step(self) -> None:
        it = int(self.trainer.iter)
        if it % self.interval == 0 or (self.at_end and it == int(self.trainer.max_iters)):
            self.preview(it)

    def after_train(self) -> None:
        it = int(self.trainer.iter)
        if self.at_end and self._last_iter != it and it > 0:
            self.preview(it)

    def preview(self, it: int) -> Path | None:
        """Write ``previews/iter_<it>.png`` (main process only); returns its path."""
        self._last_iter = it
        trainer = self.trainer
        if not getattr(trainer, "is_main", True):
            return None
        model = unwrap_model(trainer.model)
        if not callable(getattr(model, "sample", None)):
            raise TypeError(f"SamplePreviewHook: {type(model).__name__} has no sample(num, seed) method "
                            f"(use it with DiffusionDenoiser / DefectGen)")
        was_training = model.training
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        trainer.call_hooks("before_eval")
        try:
            model.eval()
            sampling = getattr(model, "sampling", None)
            old_steps = sampling.num_inference_steps if sampling is not None else None
            if sampling is not None and self.num_inference_steps is not None:
                sampling.num_inference_steps = int(self.num_inference_steps)
            try:
                results = model.sample(self.num, seed=self.seed)
            finally:
                if sampling is not None:
                    sampling.num_inference_steps = old_steps
        finally:
            model.train(was_training)
            trainer.call_hooks("after_eval", None)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        path = Path(trainer.work_dir) / "previews" / f"iter_{it}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pairs_grid(results, self.ncols).save(path)
        self.written.append(path)
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.info(f"SamplePreviewHook: wrote {path}")
        return path


def pairs_grid(results, ncols: int = 4, pad: int = 4):
    """PIL grid of ``image | colour mask`` pairs of GenerationResults, ``ncols`` pairs per row."""
    from ...visualization.draw import make_grid
    from ...visualization.segmentation import hconcat

    tiles = [hconcat([r.image_pil(), colour_mask(r.mask)], pad=2) for r in results]
    return make_grid(tiles, ncols=ncols, pad=pad)
