"""``DefectGen``: the two-stage Defect-Gen SAMPLER (nothing to train).

Two independently trained :class:`~.denoiser.DiffusionDenoiser` s (research note §1, §3):
the large-receptive-field ADM UNet handles the high-noise steps t >= ``t_switch`` (global
layout), the small-receptive-field SinDiffusion UNet the low-noise steps t < ``t_switch``
(local texture and defect detail, patch-level diversity), on ONE trajectory; the stage
plan, ``compat_repo_sampling`` (the original script's call pattern) and the DDIM options
are in :mod:`.diffusion`.

Weights: each part's checkpoint (``large_checkpoint`` / ``small_checkpoint``, written by
``tools/train.py`` on the part's own config) is loaded here (``loads_own_weights``), strict.
With ``use_ema: true`` (default) the checkpoint's EMA entry ``ckpt["ema"]["state_dict"]``
(``train.ema``) is loaded when present, else the raw ``state_dict`` (with a warning);
``use_ema: false`` always loads the raw weights. The ORIGINAL sampled with the raw weights
(``inference.py`` loads ``ckpt['model']``); sampling with the EMA is our default.
``weights_source`` records what was loaded ("ema" / "raw" / "random"; "unused" for the part
a ``large_only`` / ``small_only`` mode does not sample with, whose checkpoint is not read).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from ...registry import MODELS
from ..base import BaseModel
from ..weights import CheckpointError, load_checkpoint, load_state_dict, select_weights
from .diffusion import MODES, check_sampler_options
from .denoiser import DiffusionDenoiser, check_eta, check_size, generate, image_hw, sample_seed
from .result import GenerationResult

logger = logging.getLogger(__name__)
STAGES_OF_MODE = {"two_stage": ("large", "small"), "large_only": ("large",), "small_only": ("small",)}


def load_denoiser_weights(model: nn.Module, path: str, use_ema: bool = True, key: str = "large_checkpoint",
                          classes: Sequence[str] | None = None) -> str:
    """Load the checkpoint file ``path`` into ``model`` (strict): its EMA weights
    (``ckpt["ema"]["state_dict"]``) when ``use_ema`` and present, else its model weights.
    Returns "ema" or "raw"; every failure is a ``CheckpointError`` naming ``key`` and the
    file, among them a checkpoint of another model or denoiser network (its stored config's
    ``model.type`` / ``model.denoiser.type``), caught before the weights are compared, and
    one trained on other defect classes than ``classes`` (default: ``model.classes``; mask
    value k means the k-th class, so a same-size list in another order would mislabel every
    mask). A ``model`` without classes takes the checkpoint's (``meta.classes``)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise type(e)(f"{key}: {e}") from e
    saved_classes = (ckpt.get("meta") or {}).get("classes")
    want = classes if classes is not None else getattr(model, "classes", None)
    if isinstance(saved_classes, list) and want is not None and list(want) != list(saved_classes):
        raise CheckpointError(f"{key}: {path} was trained on the classes {list(saved_classes)}, but the "
                              f"model generates {list(want)} (mask values are class indices: same names, same order)")
    saved = ((ckpt.get("meta") or {}).get("config") or {}).get("model") or {}
    net = getattr(model, "denoiser", None)
    for what, saved_type, own in (("model", saved.get("type"), type(model).__name__),
                                  ("denoiser", (saved.get("denoiser") or {}).get("type")
                                   if isinstance(saved.get("denoiser"), dict) else None, type(net).__name__)):
        if isinstance(saved_type, str) and saved_type != own:
            raise CheckpointError(f"{key}: {path} holds a {saved_type} {what}, but this part builds {own} "
                                  f"(a checkpoint of the other denoiser, or of another config?)")
    state, source = select_weights(ckpt, f"{key}: {path}", use_ema)
    if use_ema and source == "raw":
        logger.warning("%s: %s has no EMA entry (train.ema was off); sampling with its raw weights", key, path)
    load_state_dict(model, state, strict=True, source=f"{key}: {path}" + (" (ema)" if source == "ema" else ""))
    if isinstance(saved_classes, list) and getattr(model, "classes", None) is None \
            and len(saved_classes) == getattr(model, "num_defect", len(saved_classes)):
        model.classes = [str(c) for c in saved_classes]
    return source


@MODELS.register()
class DefectGen(BaseModel):
    """Two-stage sampler over two ``DiffusionDenoiser`` s.

    Args:
        large / small: the denoisers: a ``DiffusionDenoiser`` config dict, the path of its
            training config (its ``model`` section is used), or a built module. ``small`` may
            be omitted with ``mode: large_only``, ``large`` with ``small_only``.
        large_checkpoint / small_checkpoint: checkpoint files of the parts (None: random
            weights, with a warning; for tests and timing).
        use_ema: sample with the checkpoints' EMA weights when present (default True).
        mode: "two_stage" | "large_only" | "small_only".
        t_switch: the large model runs the steps t >= t_switch, the small one t < t_switch
            (400, the original's ``--step_inference``).
        eta: DDIM eta (0: the original's deterministic sampler).
        num_inference_steps: DDIM steps (1000: every step, the original).
        compat_repo_sampling: reproduce the original script's two separate loops (see
            :mod:`.diffusion`).
        seed: base seed (sample i of ``sample(num)`` uses seed + i).
        batch_size: samples per forward pass in ``sample``.
        image_size: (H, W) or side of ``sample`` (None: the large part's ``image_size``).
        clip_sample: clip x0_hat to [-1, 1] at every step (True, the original).
        classes / num_defect: the defect classes (checked against the parts').
    """

    model_parts = {"large": False, "small": False}
    loads_own_weights = True

    def __init__(self, large: nn.Module | dict | str | None = None, small: nn.Module | dict | str | None = None,
                 large_checkpoint: str | None = None, small_checkpoint: str | None = None, use_ema: bool = True,
                 mode: str = "two_stage", t_switch: int = 400, eta: float = 0.0, num_inference_steps: int = 1000,
                 compat_repo_sampling: bool = False, seed: int = 0, batch_size: int = 4,
                 image_size: int | list[int] | None = None, clip_sample: bool = True,
                 classes: list[str] | None = None, num_defect: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"DefectGen: model.mode must be one of {MODES}, got {mode!r}")
        parts = {"large": large, "small": small}
        for key in STAGES_OF_MODE[mode]:
            if parts[key] is None:
                raise ValueError(f"DefectGen: model.{key} is required with mode {mode!r} (a DiffusionDenoiser "
                                 f"config dict or the path of its training config)")
        for key, part in parts.items():
            if isinstance(part, str):           # a model never reads a config (docs/architecture.md)
                raise TypeError(f"DefectGen: model.{key} is the config path {part!r}: build DefectGen with "
                                f"defectkit.engine.builders.build_model (the tools do), which builds the "
                                f"parts from their configs, or pass a config dict / a built DiffusionDenoiser")
            if isinstance(part, dict):
                part = parts[key] = MODELS.build(part)
            if part is not None and not isinstance(part, DiffusionDenoiser):
                raise TypeError(f"DefectGen: model.{key} must be a DiffusionDenoiser, got {type(part).__name__}")
        built = [p for p in parts.values() if p is not None]
        first = built[0]
        for p in built[1:]:
            if p.num_defect != first.num_defect:
                raise ValueError(f"DefectGen: model.large has num_defect {parts['large'].num_defect} but "
                                 f"model.small has {parts['small'].num_defect}: both must generate the same channels")
            if (p.num_train_timesteps, p.beta_schedule) != (first.num_train_timesteps, first.beta_schedule):
                raise ValueError("DefectGen: model.large and model.small were trained with different schedules "
                                 f"({first.num_train_timesteps}, {first.beta_schedule}) vs "
                                 f"({p.num_train_timesteps}, {p.beta_schedule})")
        if num_defect is not None and int(num_defect) != first.num_defect:
            raise ValueError(f"DefectGen: model.num_defect {num_defect} differs from its denoisers' {first.num_defect}")
        if classes is not None and len(classes) != first.num_defect:
            raise ValueError(f"DefectGen: {len(classes)} classes {list(classes)} but the denoisers generate "
                             f"num_defect {first.num_defect} defect classes")
        check_eta(eta, "eta")
        check_sampler_options(mode, t_switch, eta, num_inference_steps, compat_repo_sampling,
                              first.num_train_timesteps)
        if int(batch_size) < 1:
            raise ValueError(f"DefectGen: model.batch_size must be >= 1, got {batch_size}")
        self.large, self.small = parts["large"], parts["small"]
        self.num_defect, self.channels = first.num_defect, first.channels
        self.classes = list(classes) if classes is not None else first.classes
        self.num_train_timesteps, self.beta_schedule = first.num_train_timesteps, first.beta_schedule
        self.mode, self.t_switch, self.eta = mode, int(t_switch), float(eta)
        self.num_inference_steps, self.compat_repo_sampling = int(num_inference_steps), bool(compat_repo_sampling)
        self.seed, self.batch_size, self.clip_sample = int(seed), int(batch_size), bool(clip_sample)
        self.image_size = image_size
        self.use_ema = bool(use_ema)
        self.weights_source = {k: "random" for k, p in parts.items() if p is not None}
        self.size_divisor = max(getattr(self, k).size_divisor for k in self.parts)
        self._default_size = getattr(self.large if self.large is not None else self.small, "image_size", 64)
        image_hw(image_size, self._default_size, "model.image_size", self.size_divisor)
        self.load_checkpoints(large_checkpoint, small_checkpoint)

    def load_checkpoints(self, large: str | None = None, small: str | None = None) -> dict[str, str]:
        """Load the parts' checkpoint files (None: keep the part's weights); returns
        ``weights_source``. EMA per ``use_ema`` (module docstring). Only the parts the mode
        samples with (``parts``) are loaded: with ``large_only`` the small checkpoint is not
        read (it need not exist; its part is marked "unused"), and with ``small_only`` the
        large one."""
        for key, path in (("large", large), ("small", small)):
            part = getattr(self, key)
            if key not in self.parts:
                if part is not None:
                    self.weights_source[key] = "unused"
                if path is not None:
                    logger.info("DefectGen: mode %s does not sample with the %s denoiser: %s is not loaded",
                                self.mode, key, path)
                continue
            if path is None:
                if part is not None:
                    logger.warning("DefectGen: model.%s_checkpoint is not set: the %s denoiser has random "
                                   "weights", key, key)
                continue
            if part is None:
                raise CheckpointError(f"model.{key}_checkpoint: {path} given but model.{key} is not configured")
            self.weights_source[key] = load_denoiser_weights(part, path, self.use_ema, f"model.{key}_checkpoint",
                                                             self.classes)
            if self.classes is None and part.classes is not None:
                self.classes = list(part.classes)      # named by the checkpoint the config did not name
        return dict(self.weights_source)

    @staticmethod
    def parts_for_mode(mode: str) -> tuple[str, ...]:
        """The parts (``"large"``, ``"small"``) a ``mode`` samples with, in the order of
        ``model_parts``: the checkpoints it needs."""
        if mode not in STAGES_OF_MODE:
            raise ValueError(f"DefectGen: model.mode must be one of {MODES}, got {mode!r}")
        return STAGES_OF_MODE[mode]

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this sampler's mode samples with (:meth:`parts_for_mode`)."""
        return self.parts_for_mode(self.mode)

    @property
    def sample_batch_size(self) -> int:
        """Samples per forward pass in :meth:`sample` (``model.batch_size``)."""
        return self.batch_size

    def _stages(self) -> dict:
        return {k: getattr(self, k).denoise for k in self.parts}

    def sampler_options(self) -> dict:
        """The options passed to :func:`~.diffusion.sample_loop` (also what ``generation.json``
        should record)."""
        return dict(num_inference_steps=self.num_inference_steps, eta=self.eta, t_switch=self.t_switch,
                    mode=self.mode, compat_repo_sampling=self.compat_repo_sampling,
                    num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                    clip_sample=self.clip_sample)

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def forward(self, batch: dict):
        raise RuntimeError("DefectGen is a sampler: train its two denoisers with their own configs "
                           "(DiffusionDenoiser), then name their checkpoints in large_checkpoint / small_checkpoint")

    @torch.no_grad()
    def predict(self, batch: dict) -> list[GenerationResult]:
        """One generated sample per image of ``batch`` at its size; seed = ``seed`` + the
        sample's dataset index / id (deterministic whatever the batching)."""
        image = batch["image"]
        metas = batch.get("meta") or [None] * image.shape[0]
        seeds = [sample_seed(m, i, self.seed) for i, m in enumerate(metas)]
        check_size(tuple(image.shape[-2:]), self.size_divisor, "DefectGen.predict: the batch's images")
        return generate(self._stages(), seeds, self.channels, tuple(image.shape[-2:]), batch_size=len(seeds),
                        device=self._device(), **self.sampler_options())

    @torch.no_grad()
    def sample(self, num: int, seed: int | None = None, batch_size: int | None = None,
               progress: Callable[[int], object] | None = None,
               image_size: int | Sequence[int] | None = None) -> list[GenerationResult]:
        """``num`` samples with seeds ``seed + 0 .. seed + num - 1`` (default ``self.seed``);
        ``progress(1)`` after each denoiser step (:func:`~.diffusion.count_steps` gives the total
        per sample batch)."""
        seed = self.seed if seed is None else int(seed)
        hw = image_hw(image_size if image_size is not None else self.image_size, self._default_size,
                      "image_size" if image_size is not None else "model.image_size", self.size_divisor)
        return generate(self._stages(), range(seed, seed + int(num)), self.channels, hw,
                        batch_size=int(batch_size or self.batch_size), device=self._device(), progress=progress,
                        **self.sampler_options())
