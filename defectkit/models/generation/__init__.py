"""Defect-Gen (Defect Spectrum, ECCV 2024): two-stage diffusion generating defective images
together with their class-index masks; see docs/defectgen.md and the research note
(``channels`` sample layout, ``adm_unet`` / ``sindiffusion_unet`` the two denoisers,
``diffusion`` schedulers and the two-stage sampler, ``denoiser`` one trainable denoiser,
``defect_gen`` the two-stage sampler model, ``result`` / ``preview`` outputs)."""
from .channels import check_channels, check_mask, num_channels, split_x0, to_x0  # noqa: F401
from .result import PALETTE, GenerationResult, colour_mask, draw_generation  # noqa: F401
from .adm_unet import ADMUNet, adm_param_count_full  # noqa: F401
from .sindiffusion_unet import SinDiffusionUNet, sindiffusion_param_count_full  # noqa: F401
from .diffusion import (MODES, count_steps, make_sample_scheduler, make_train_scheduler,  # noqa: F401
                        plan_stages, sample_loop)
from .denoiser import DiffusionDenoiser, SamplingConfig  # noqa: F401
from .defect_gen import DefectGen, load_denoiser_weights  # noqa: F401
from .preview import SamplePreviewHook, pairs_grid  # noqa: F401
