"""Defect-Gen's diffusion process on diffusers schedulers: training noise and the two-stage
DDIM sampler.

Source: the original's ``diffusion/base_diffusion.py`` (``ColdDiffusion``, ``parameterization:
x0``, ``schedule: cosine``, ``num_timestep: 1000``) and ``scripts/inference.py``; research
note §1.4.

Schedule: Nichol & Dhariwal's cosine schedule, ``abar(t) = cos^2(((t / T) + s) / (1 + s) *
pi / 2)`` normalised, s = 0.008, betas clipped to 0.999, identical to diffusers'
``beta_schedule="squaredcos_cap_v2"``; T = 1000 (abar_399 = 0.65, abar_599 = 0.34).

Training (:func:`make_train_scheduler`): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``
(``DDPMScheduler.add_noise``), the network predicts x0 (``prediction_type="sample"``).

Sampling (:func:`sample_loop`): ``DDIMScheduler.step`` with ``eta`` (0 = the original's
deterministic sampler; > 0 injects noise, an extension against the low diversity of the
original's issue #10)::

    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)            # from the UNclipped x0_hat
    x0_c    = clip(x0_hat, -1, 1)                                        # clip_sample=True
    x_prev  = sqrt(abar_prev) x0_c + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma   = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))

With eta = 0 and nothing clipped this IS the original's "improved cold-diffusion" update
``x_{t-1} = x_t - D(x0_hat, t) + D(x0_hat, t-1)``, ``D(x0, tau) = sqrt(abar_tau) x0 +
sqrt(1 - abar_tau) eps_hat`` (tested). When x0_hat is clipped the original keeps an extra
``sqrt(abar_t) (x0_hat - x0_c)`` (it subtracts D of the CLIPPED x0 from the unclipped x_t);
diffusers' DDIM (the note's recommended sampler) does not. The one-hot mask channels lie in
[0, 1], inside the clip range. ``abar_prev`` of the last step (t = 0) is 1
(``set_alpha_to_one``): the last step returns x0_c, as the original's t = 0 branch. Not
reproduced: the original's ``t == 1`` branch, which subtracts x0_hat instead of D(x0_hat, 1)
(a slip for ``t == 0``, harmless; note §1.4).

Respacing: ``num_inference_steps`` N <= T runs the DDIM grid ``t = (N-1)k, ..., k, 0`` with
k = T // N (diffusers' "leading" spacing); N = T = 1000 runs every integer step, as the
original (which has no respacing).

Stages (:func:`plan_stages`), one trajectory from x_T ~ N(0, I):

- ``two_stage``: the large model for the grid steps t >= t_switch, the small model for
  t < t_switch (the paper's figure; t_switch = the original's ``--step_inference``, 400).
- ``large_only`` / ``small_only``: one model for every step.
- ``compat_repo_sampling: true`` (two_stage only) reproduces the original
  ``scripts/inference.py``: the large model's ``p_sample_loop`` is told
  ``num_timesteps = (1000, 400)`` and runs t = 599, ..., 0 starting from PURE NOISE labelled
  t = 599, to a clean x0; the small model then starts again from that output labelled
  t = 399 and runs t = 399, ..., 0. I.e. stage one runs the grid steps t < T - t_switch,
  stage two the grid steps t < t_switch, each a complete loop. With respacing N the same
  rule applies to the respaced grid: with N = 50 (k = 20) the large model runs t = 580, ...,
  0 (30 steps, noise labelled 580 instead of 599) and the small model t = 380, ..., 0 (20
  steps): the 600 / 400 split of the original, scaled by N / T.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import torch

MODES = ("two_stage", "large_only", "small_only")
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (x (B,C,H,W), t (B,) long) -> x0_hat


def make_train_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    """``diffusers.DDPMScheduler`` for ``add_noise`` in training (x0 prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                         prediction_type="sample", clip_sample=False)


def make_sample_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                          clip_sample: bool = True, num_inference_steps: int | None = None):
    """``diffusers.DDIMScheduler`` for sampling (x0 prediction, x0_hat clipped to [-1, 1] with
    ``clip_sample``, abar = 1 after the last step), with its timesteps set when
    ``num_inference_steps`` is given (ValueError when not in 1..T)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                          prediction_type="sample", clip_sample=bool(clip_sample), clip_sample_range=1.0,
                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    if num_inference_steps is not None:
        n = int(num_inference_steps)
        if not 1 <= n <= int(num_train_timesteps):
            raise ValueError(f"num_inference_steps: must be in 1..{num_train_timesteps}, got {num_inference_steps}")
        sched.set_timesteps(n)
    return sched


def check_sampler_options(mode: str, t_switch: int, eta: float, num_inference_steps: int,
                          compat_repo_sampling: bool, num_train_timesteps: int = 1000) -> None:
    """ValueError naming the option when a sampler option is out of range."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if not 0 < int(t_switch) < int(num_train_timesteps):
        raise ValueError(f"t_switch: must be in 1..{num_train_timesteps - 1}, got {t_switch}")
    if float(eta) < 0:
        raise ValueError(f"eta: must be >= 0, got {eta}")
    if not 1 <= int(num_inference_steps) <= int(num_train_timesteps):
        raise ValueError(f"num_inference_steps: must be in 1..{num_train_timesteps}, got {num_inference_steps}")
    if compat_repo_sampling and mode != "two_stage":
        raise ValueError(f"compat_repo_sampling: reproduces the original two-stage script; it needs "
                         f"mode two_stage, got {mode!r}")


def plan_stages(timesteps: Sequence[int], *, mode: str = "two_stage", t_switch: int = 400,
                compat_repo_sampling: bool = False, num_train_timesteps: int = 1000) -> list[tuple[str, list[int]]]:
    """The segments ``[(stage, [t, ...]), ...]`` run one after the other, each continuing from
    the previous one's output (see the module docstring); empty segments are dropped.
    ``timesteps``: the DDIM grid, descending."""
    ts = [int(t) for t in timesteps]
    if mode == "large_only":
        plan = [("large", ts)]
    elif mode == "small_only":
        plan = [("small", ts)]
    elif mode == "two_stage" and compat_repo_sampling:
        plan = [("large", [t for t in ts if t < num_train_timesteps - t_switch]),
                ("small", [t for t in ts if t < t_switch])]
    elif mode == "two_stage":
        plan = [("large", [t for t in ts if t >= t_switch]), ("small", [t for t in ts if t < t_switch])]
    else:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    return [(name, seg) for name, seg in plan if seg]


def initial_noise(shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator] | None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T ~ N(0, I) float32 ``shape`` (B, C, H, W) on ``device``, drawn on the CPU: with a
    list of B generators sample i comes from generator i alone (so it does not depend on
    the batch it is in); the same seeds give the same tensors on every device."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"initial_noise: {len(generator)} generators for a batch of {shape[0]}")
        x = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator])
    else:
        x = torch.randn(tuple(shape), generator=generator)
    return x.to(device)


def _step_noise(shape, generator, device) -> torch.Tensor | None:
    return initial_noise(shape, generator, device) if generator is not None else None


@torch.no_grad()
def sample_loop(stages: Mapping[str, Denoise], shape: Sequence[int], *, num_inference_steps: int = 1000,
                eta: float = 0.0, t_switch: int = 400, mode: str = "two_stage",
                compat_repo_sampling: bool = False,
                generator: torch.Generator | Sequence[torch.Generator] | None = None,
                progress: Callable[[int], object] | None = None, device: torch.device | str | None = None,
                num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                clip_sample: bool = True, x_T: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample x0 (B, C, H, W) float32 with the stage plan of :func:`plan_stages`.

    ``stages``: ``{"large": fn, "small": fn}`` (only the ones the mode uses are needed),
    ``fn(x, t) -> x0_hat`` with x (B, C, H, W) float32 and t (B,) int64. ``shape``: (B, C, H, W).
    ``generator``: one ``torch.Generator`` or B of them (one per sample: sample i depends on
    its own seed only), drawing x_T and, with eta > 0, the DDIM noise (on the CPU, moved to
    ``device``). ``progress(n)``: called with 1 after each denoiser step (e.g. tqdm's
    ``update``). ``x_T``: the initial noise (then ``generator`` only drives the eta noise).
    Returns ``(x0, stage_seconds)``: the last step's output and the wall time in s of each
    stage (keys of the stages that ran; CUDA synchronised at the end of each segment).
    """
    check_sampler_options(mode, t_switch, eta, num_inference_steps, compat_repo_sampling, num_train_timesteps)
    sched = make_sample_scheduler(num_train_timesteps, beta_schedule, clip_sample, num_inference_steps)
    plan = plan_stages(sched.timesteps.tolist(), mode=mode, t_switch=t_switch,
                       compat_repo_sampling=compat_repo_sampling, num_train_timesteps=num_train_timesteps)
    missing = sorted({name for name, _ in plan} - set(stages))
    if missing:
        raise ValueError(f"sample_loop: mode {mode!r} needs the {' and '.join(missing)} denoiser(s); "
                         f"got {sorted(stages)}")
    if device is None:
        device = x_T.device if x_T is not None else "cpu"
    x = x_T.to(device=device, dtype=torch.float32) if x_T is not None else initial_noise(shape, generator, device)
    b = x.shape[0]
    seconds: dict[str, float] = {}
    eta = float(eta)
    for name, seg in plan:
        fn = stages[name]
        t0 = time.perf_counter()
        for t in seg:
            x0_hat = fn(x, torch.full((b,), t, device=x.device, dtype=torch.long))
            noise = _step_noise(x.shape, generator, x.device) if eta > 0 else None
            x = sched.step(x0_hat, t, x, eta=eta, variance_noise=noise).prev_sample
            if progress is not None:
                progress(1)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return x, seconds


def count_steps(num_inference_steps: int, *, mode: str = "two_stage", t_switch: int = 400,
                compat_repo_sampling: bool = False, num_train_timesteps: int = 1000) -> dict[str, int]:
    """Denoiser calls per stage for these options (e.g. for a progress bar's total)."""
    sched = make_sample_scheduler(num_train_timesteps, num_inference_steps=num_inference_steps)
    plan = plan_stages(sched.timesteps.tolist(), mode=mode, t_switch=t_switch,
                       compat_repo_sampling=compat_repo_sampling, num_train_timesteps=num_train_timesteps)
    out: dict[str, int] = {}
    for name, seg in plan:
        out[name] = out.get(name, 0) + len(seg)
    return out
