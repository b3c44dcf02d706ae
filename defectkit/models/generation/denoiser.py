"""``DiffusionDenoiser``: ONE trainable Defect-Gen denoiser (the large ADM or the small
SinDiffusion UNet) with its training loss, and sampling by this denoiser alone.

Training step (the original's ``GaussianDiffusion.training_losses``, research note §1.4/§3)::

    x0  = to_x0(batch["image"], batch["mask"], K)           # (B, 3+K+1, H, W), channels.py
    t   ~ U{t_min .. t_max}                                  # 0..T-1, or train_t_range
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps             # DDPMScheduler.add_noise
    x0_hat = denoiser(x_t, t)
    loss "mse":    loss = MSE(x0_hat, x0) over all channels (the original's default)
    loss "mse_ce": loss_rgb = MSE(x0_hat[:, :3], x0[:, :3]);
                   loss_mask = ce_weight * CE(x0_hat[:, 3:] as logits, mask)   (0.2: the
                   original's ``--seperate_channel_loss 1``)

``train_t_range: [t_min, t_max]`` (inclusive; an extension, not in the original, which
trains both models on all 1000 steps) restricts training to the stage the denoiser serves,
e.g. [400, 999] for the large model and [0, 399] for the small one with t_switch 400.

``predict(batch)`` and ``sample(num, seed)`` run :func:`~.diffusion.sample_loop` with this
denoiser for every step (``mode: large_only``; the stage is labelled with the network's
declared ``stage``, "large" for the ADM UNet and "small" for the SinDiffusion one: ``stage_name``). The trainer's EMA hook swaps the
averaged weights in around evaluation; ``DefectGen`` loads ``ckpt["ema"]`` for sampling.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config import parse_options
from ...registry import MODELS
from ..base import BaseModel
from .channels import check_channels, check_mask, num_channels, split_x0, to_x0
from .diffusion import make_train_scheduler, sample_loop
from .result import GenerationResult

LOSSES = ("mse", "mse_ce")


@dataclass
class SamplingConfig:
    """``model.sampling`` of a ``DiffusionDenoiser``: how ``predict`` / ``sample`` / the
    preview hook sample with this denoiser alone."""
    num_inference_steps: int = 1000     # DDIM steps (1000: every step, as the original)
    eta: float = 0.0                    # DDIM eta (0: deterministic, the original)
    seed: int = 0                       # sample i of sample(num, seed) uses seed + i
    batch_size: int = 4                 # samples per forward pass in sample()
    image_size: list[int] | int | None = None   # (H, W) or side of sample(); None: the denoiser's image_size
    clip_sample: bool = True            # clip x0_hat to [-1, 1] at every step (the original)

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be >= 1, got {self.num_inference_steps}")
        check_eta(self.eta, "eta")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


def check_eta(eta: float, key: str = "model.eta") -> None:
    """ValueError naming ``key`` unless 0 <= eta <= 1: DDIM's noise scale sigma_t =
    eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) exceeds
    sqrt(1 - abar_prev) for eta > 1, and the step's sqrt(1 - abar_prev - sigma_t^2) is NaN."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"{key}: DDIM eta must be in [0, 1] (0: deterministic, the original; 1: DDPM-like "
                         f"noise; above 1 the DDIM step is NaN), got {eta}")


def image_hw(size, default: int, where: str, divisor: int = 1) -> tuple[int, int]:
    """``size`` (int, [H, W] or None -> ``default``) as (H, W); ValueError naming ``where``
    unless both are >= 1 and multiples of ``divisor`` (the UNet's 2 ** down-samplings)."""
    if size is None:
        size = default
    if isinstance(size, int) and not isinstance(size, bool):
        hw = int(size), int(size)
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        hw = int(size[0]), int(size[1])
    else:
        raise ValueError(f"{where}: expected an int or [H, W], got {size!r}")
    check_size(hw, divisor, where)
    return hw


def check_size(hw: Sequence[int], divisor: int, where: str) -> None:
    """ValueError naming ``where`` unless H and W (px) are >= 1 and multiples of ``divisor``."""
    if min(hw) < 1 or any(int(v) % int(divisor) for v in hw):
        raise ValueError(f"{where}: {hw[0]}x{hw[1]} px, but the denoiser's UNet needs sides that are "
                         f"multiples of {divisor} (2 ** its down-samplings)")


def sample_seed(meta: dict | None, position: int, base: int) -> int:
    """The seed of a ``predict`` sample: ``base`` + the sample's dataset ``index`` (meta) or
    integer ``id``; a string id (file stem) adds its CRC32 (Python's ``hash`` is salted per
    process); no meta: ``base + position``."""
    meta = meta if isinstance(meta, dict) else {}
    for key in ("index", "id"):
        v = meta.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return int(base) + v
    key = meta.get("id") if meta.get("id") is not None else meta.get("path")
    if key is not None:
        return int(base) + zlib.crc32(str(key).encode()) % (2 ** 31)
    return int(base) + position


def generate(stages: dict, seeds: Sequence[int], channels: int, hw: tuple[int, int], *, batch_size: int,
             device: torch.device, progress: Callable[[int], object] | None = None,
             **sampler: object) -> list[GenerationResult]:
    """One :class:`GenerationResult` per seed: sample i from x_T drawn with ``seeds[i]`` alone
    (so it does not depend on ``batch_size``), in batches of ``batch_size``; ``sampler``:
    the options of :func:`~.diffusion.sample_loop`. ``stage_seconds`` of a sample = its
    batch's stage time / batch length."""
    out: list[GenerationResult] = []
    seeds = [int(s) for s in seeds]
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        gens = [torch.Generator().manual_seed(s) for s in chunk]
        x0, seconds = sample_loop(stages, (len(chunk), channels, *hw), generator=gens, progress=progress,
                                  device=device, **sampler)
        image, mask = split_x0(x0)
        share = {k: v / len(chunk) for k, v in seconds.items()}
        out += [GenerationResult(image=image[j].float().cpu(), mask=mask[j].cpu(), seed=s, stage_seconds=dict(share))
                for j, s in enumerate(chunk)]
    return out


def resolve_num_defect(name: str, num_defect: int | None, classes: Sequence[str] | None) -> int:
    """K from ``num_defect`` or the dataset's ``classes`` (they must agree)."""
    if num_defect is None:
        if classes is None:
            raise ValueError(f"{name}: model.num_defect is not set and there are no dataset classes "
                             f"to count (set num_defect: K, the number of defect classes)")
        num_defect = len(classes)
    if classes is not None and int(num_defect) != len(classes):
        raise ValueError(f"{name}: model.num_defect {num_defect} does not match the {len(classes)} "
                         f"dataset classes {list(classes)}")
    return int(num_defect)


@MODELS.register()
class DiffusionDenoiser(BaseModel):
    """One Defect-Gen denoiser and its diffusion training (see the module docstring).

    Args:
        denoiser: the network (``ADMUNet`` / ``SinDiffusionUNet`` config dict or module),
            ``forward(x, t) -> x0_hat``; its ``in_channels`` must be 3 + num_defect + 1.
        num_defect: K, number of defect classes (default: len(classes)).
        classes: the dataset's defect class names (filled in by the builder).
        num_train_timesteps: T (1000). beta_schedule: diffusers name ("squaredcos_cap_v2").
        loss: "mse" (all channels) or "mse_ce" (MSE on RGB + ce_weight * CE on the mask).
        ce_weight: weight of the mask CE in "mse_ce" (0.2, the original's).
        train_t_range: [t_min, t_max] inclusive training timesteps (None: 0..T-1).
        sampling: :class:`SamplingConfig` (``predict`` / ``sample`` / previews).
    """

    model_parts = {"denoiser": False}

    def __init__(self, denoiser: nn.Module | dict, num_defect: int | None = None, classes: list[str] | None = None,
                 num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2", loss: str = "mse",
                 ce_weight: float = 0.2, train_t_range: list[int] | None = None,
                 sampling: SamplingConfig | dict | None = None):
        super().__init__()
        name = type(self).__name__
        if isinstance(denoiser, dict):
            denoiser = MODELS.build(denoiser)
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"{name}: model.denoiser must be a model config dict or a module, "
                            f"got {type(denoiser).__name__}")
        self.num_defect = resolve_num_defect(name, num_defect, classes)
        self.classes = list(classes) if classes is not None else None
        in_ch = getattr(denoiser, "in_channels", None)
        if in_ch is not None:
            check_channels(in_ch, self.num_defect, "model.denoiser.in_channels")
        self.channels = num_channels(self.num_defect)
        if loss not in LOSSES:
            raise ValueError(f"{name}: model.loss must be one of {LOSSES}, got {loss!r}")
        self.loss, self.ce_weight = loss, float(ce_weight)
        self.num_train_timesteps, self.beta_schedule = int(num_train_timesteps), str(beta_schedule)
        if train_t_range is None:
            train_t_range = [0, self.num_train_timesteps - 1]
        if (len(train_t_range) != 2 or not 0 <= int(train_t_range[0]) <= int(train_t_range[1])
                < self.num_train_timesteps):
            raise ValueError(f"{name}: model.train_t_range must be [t_min, t_max] with 0 <= t_min <= t_max "
                             f"<= {self.num_train_timesteps - 1}, got {train_t_range}")
        self.train_t_range = (int(train_t_range[0]), int(train_t_range[1]))
        self.sampling = parse_options(SamplingConfig, sampling, "model.sampling") or SamplingConfig()
        self.denoiser = denoiser
        self.scheduler = make_train_scheduler(self.num_train_timesteps, self.beta_schedule)
        image_hw(self.sampling.image_size, self.image_size, "model.sampling.image_size"
                 if self.sampling.image_size is not None else "model.denoiser.image_size", self.size_divisor)

    # ------------------------------------------------------------------ properties
    @property
    def stage_name(self) -> str:
        """The network's ``stage`` ("large" for the ADM UNet, "small" for the SinDiffusion
        one; "small" when it declares none): the key of ``stage_seconds`` when sampling alone."""
        return str(getattr(self.denoiser, "stage", "small"))

    @property
    def image_size(self) -> int:
        return int(getattr(self.denoiser, "image_size", 64))

    @property
    def size_divisor(self) -> int:
        """Image sides must be multiples of this (the UNet's 2 ** down-samplings; 1 if unknown)."""
        return int(getattr(self.denoiser, "size_divisor", 1))

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x float32 (B, C, H, W) noisy sample, t int64 (B,) -> x0_hat (B, C, H, W)."""
        return self.denoiser(x, t)

    # ------------------------------------------------------------------ training
    def make_x0(self, batch: dict) -> torch.Tensor:
        """``batch['image']`` (B, 3, H, W) in [0, 1] + ``batch['mask']`` (B, H, W) -> x0;
        a mask value > num_defect is a ValueError naming the image file and the value."""
        if "mask" not in batch:
            raise KeyError(f"{type(self).__name__}: the batch has no 'mask' (a dataset with class-index "
                           f"masks, e.g. MaskFolderDataset or DefectSpectrumDataset, is needed)")
        mask = batch["mask"]
        check_size(tuple(batch["image"].shape[-2:]), self.size_divisor,
                   f"{type(self).__name__}: the training images (set a Resize in data.train.pipeline)")
        if mask.numel() and (int(mask.max()) > self.num_defect or int(mask.min()) < 0):
            metas = batch.get("meta") or []
            for i in range(mask.shape[0]):
                where = metas[i].get("path") if i < len(metas) and isinstance(metas[i], dict) else None
                check_mask(mask[i], self.num_defect, str(where or f"batch['mask'][{i}]"))
        return to_x0(batch["image"], mask, self.num_defect)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training losses (see the module docstring); ``t`` and ``eps`` come from torch's
        global RNG (seeded by the trainer)."""
        x0 = self.make_x0(batch)
        b = x0.shape[0]
        lo, hi = self.train_t_range
        t = torch.randint(lo, hi + 1, (b,), device=x0.device, dtype=torch.long)
        noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)       # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        pred = self.denoiser(x_t, t)
        if self.loss == "mse":
            return {"loss": F.mse_loss(pred, x0)}
        loss_rgb = F.mse_loss(pred[:, :3], x0[:, :3])
        ce = F.cross_entropy(pred[:, 3:], x0[:, 3:].argmax(1))
        return {"loss_rgb": loss_rgb, "loss_mask": self.ce_weight * ce, "ce": ce.detach()}

    # ------------------------------------------------------------------ sampling
    def sampler_options(self) -> dict:
        """The options passed to :func:`~.diffusion.sample_loop` (this denoiser for every
        step: mode "large_only", no ``t_switch``), as ``DefectGen.sampler_options``."""
        s = self.sampling
        return dict(num_inference_steps=s.num_inference_steps, eta=s.eta, mode="large_only",
                    num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                    clip_sample=s.clip_sample)

    @property
    def sample_batch_size(self) -> int:
        """Samples per forward pass in :meth:`sample` (``model.sampling.batch_size``)."""
        return self.sampling.batch_size

    def _stages(self) -> dict:
        return {"large": self.denoise}

    def _rename(self, results: list[GenerationResult]) -> list[GenerationResult]:
        for r in results:
            r.stage_seconds = {self.stage_name: v for v in r.stage_seconds.values()}
        return results

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def predict(self, batch: dict) -> list[GenerationResult]:
        """One generated sample per image of ``batch``, at the batch's image size; the seed
        of sample i is ``sampling.seed`` + its dataset index / id (:func:`sample_seed`), so
        it is deterministic whatever the batching. The batch's pixels are not used."""
        image = batch["image"]
        metas = batch.get("meta") or [None] * image.shape[0]
        seeds = [sample_seed(m, i, self.sampling.seed) for i, m in enumerate(metas)]
        check_size(tuple(image.shape[-2:]), self.size_divisor, f"{type(self).__name__}.predict: the batch's images")
        return self._rename(generate(self._stages(), seeds, self.channels, tuple(image.shape[-2:]),
                                     batch_size=len(seeds), device=self._device(), **self.sampler_options()))

    @torch.no_grad()
    def sample(self, num: int, seed: int | None = None, batch_size: int | None = None,
               progress: Callable[[int], object] | None = None,
               image_size: int | Sequence[int] | None = None) -> list[GenerationResult]:
        """``num`` samples with seeds ``seed + 0 .. seed + num - 1`` (default seed:
        ``sampling.seed``) at ``image_size`` (default ``sampling.image_size``, else the
        denoiser's); ``progress(1)`` after each denoiser step."""
        seed = self.sampling.seed if seed is None else int(seed)
        hw = image_hw(image_size if image_size is not None else self.sampling.image_size, self.image_size,
                      "image_size" if image_size is not None else "model.sampling.image_size", self.size_divisor)
        return self._rename(generate(self._stages(), range(seed, seed + int(num)), self.channels, hw,
                                     batch_size=int(batch_size or self.sampling.batch_size),
                                     device=self._device(), progress=progress, **self.sampler_options()))
