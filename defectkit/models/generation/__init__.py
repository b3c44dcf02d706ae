"""Defect-Gen (Defect Spectrum, ECCV 2024): two-stage diffusion generating defective images
together with their class-index masks; see docs/defectgen.md and the research note."""
from .channels import check_channels, check_mask, num_channels, split_x0, to_x0  # noqa: F401
from .result import PALETTE, GenerationResult, colour_mask, draw_generation  # noqa: F401
