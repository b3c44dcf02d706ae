"""The large-receptive-field denoiser of Defect-Gen: the ADM / guided-diffusion UNet
(Dhariwal & Nichol 2021) on ``diffusers.UNet2DModel``.

Source: the original's ``models/unet/openaiunet.py`` + ``config/large_recep.yml``
(research note §1.2), mapped to diffusers as in note §1.5::

    conv_in 3x3 (C -> ch0)
    encoder   per level i (width ch * channel_mult[i]): num_res_blocks x ResBlock
              [+ self-attention at the levels whose downsample factor 2**i is in
              attention_downsample], then a strided 3x3 conv (all but the last level)
    middle    ResBlock -> self-attention -> ResBlock
    decoder   per level, reversed: (num_res_blocks + 1) x [cat skip -> ResBlock
              (+ attention)], then nearest x2 + 3x3 conv (all but the last level)
    out       GroupNorm -> SiLU -> conv 3x3 (ch0 -> C)

ResBlock = GN -> SiLU -> conv3x3 -> FiLM(time) ("scale_shift": GN(h) * (1 + s) + b, the
original's ``use_scale_shift_norm=True``) -> SiLU -> dropout -> conv3x3, plus a 1x1 skip
when the width changes. Time: sinusoidal embedding of t ([cos, sin], guided-diffusion's
order: ``flip_sin_to_cos=True, freq_shift=0``) -> Linear(ch, 4ch) -> SiLU -> Linear.
Attention heads are ``width / num_head_channels`` wide heads of ``num_head_channels`` (16).

Full size (``large_recep.yml``): 256 px, ``model_channels 128``, ``channel_mult
[1, 1, 2, 2, 4, 4]`` (8x8 bottleneck), 2 res-blocks, attention at downsample 8/16/32
(32x32, 16x16, 8x8) and in the middle block, head width 16, 9 channels (a 5-class object):
125.4 M parameters (:func:`adm_param_count_full` counts them; the note's §1.2 computes
125.4 M for the original). Differences from the original: diffusers' attention blocks
(GroupNorm + separate q/k/v/out linear layers with biases, same parameter count up to the
biases) instead of guided-diffusion's ``QKVAttentionLegacy`` on a 1x1 conv.

Receptive field: GLOBAL. Self-attention at the 32x32 / 16x16 / 8x8 levels and in the middle
block lets every output pixel depend on every input pixel (at any input size); this is the
"large receptive field" of the paper. (Without attention the convolutions alone would
already cover far more than 256 px: five down-samplings.)

Both denoisers share ``forward(x, t) -> x0_hat``: ``x`` float32 (B, C, H, W) noisy sample
(C = 3 + K + 1), ``t`` int64 (B,) timestep in 0..T-1; output (B, C, H, W), the predicted
clean sample (``prediction_type="sample"``, the original's ``parameterization: x0``).
"""
from __future__ import annotations

import torch
from torch import nn

from ...registry import MODELS


@MODELS.register()
class ADMUNet(nn.Module):
    """ADM UNet predicting x0 (see the module docstring for the architecture).

    Args:
        in_channels: C = 3 + num_defect + 1 (also the output channels).
        image_size: training resolution in px (square; informative: the network is
            fully convolutional + attention, any size divisible by 2**(levels-1) works).
        model_channels: width of the first level (128).
        channel_mult: width multipliers per level ([1, 1, 2, 2, 4, 4]); levels - 1 down-samplings.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        attention_downsample: downsample factors (2**level) with self-attention ([8, 16, 32]);
            the original's ``attention_downsample`` (guided-diffusion's ``attention_resolutions``).
        num_head_channels: width of one attention head (16).
        use_scale_shift_norm: FiLM time conditioning (True) or additive (False).
        dropout: in the ResBlocks (0).
        norm_num_groups: GroupNorm groups (32; must divide every width).
        mid_attention: self-attention in the middle block (True, as the original).
    """

    stage = "large"      # the two-stage sampler's name for this network (stage_seconds keys)

    def __init__(self, in_channels: int = 9, image_size: int = 256, model_channels: int = 128,
                 channel_mult: list[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_downsample: list[int] = (8, 16, 32), num_head_channels: int = 16,
                 use_scale_shift_norm: bool = True, dropout: float = 0.0, norm_num_groups: int = 32,
                 mid_attention: bool = True):
        super().__init__()
        from diffusers import UNet2DModel

        channel_mult = [int(m) for m in channel_mult]
        widths = tuple(int(model_channels) * m for m in channel_mult)
        for key, value in (("in_channels", in_channels), ("model_channels", model_channels),
                           ("num_res_blocks", num_res_blocks), ("num_head_channels", num_head_channels)):
            if int(value) < 1:
                raise ValueError(f"ADMUNet: {key} must be >= 1, got {value}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"ADMUNet: channel_mult must be a non-empty list of ints >= 1, got {channel_mult}")
        bad = [w for w in widths if w % norm_num_groups or w % num_head_channels]
        if bad:
            raise ValueError(f"ADMUNet: widths {list(widths)} (model_channels x channel_mult) must be "
                             f"multiples of norm_num_groups {norm_num_groups} and num_head_channels "
                             f"{num_head_channels}; {bad} are not")
        attn = {int(a) for a in attention_downsample}
        levels = [2 ** i in attn for i in range(len(widths))]
        unknown = sorted(a for a in attn if a not in {2 ** i for i in range(len(widths))})
        if unknown:
            raise ValueError(f"ADMUNet: attention_downsample {unknown} is not a downsample factor of the "
                             f"{len(widths)} levels (1, 2, ..., {2 ** (len(widths) - 1)})")
        self.in_channels = self.out_channels = int(in_channels)
        self.image_size = int(image_size)
        self.size_divisor = 2 ** (len(widths) - 1)
        self.attention_levels = levels
        self.unet = UNet2DModel(
            sample_size=int(image_size), in_channels=int(in_channels), out_channels=int(in_channels),
            layers_per_block=int(num_res_blocks), block_out_channels=widths,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
            attention_head_dim=int(num_head_channels),
            resnet_time_scale_shift="scale_shift" if use_scale_shift_norm else "default",
            norm_num_groups=int(norm_num_groups), downsample_type="conv", upsample_type="conv",
            add_attention=bool(mid_attention), dropout=float(dropout),
            flip_sin_to_cos=True, freq_shift=0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x float32 (B, C, H, W), t int64 (B,) -> x0_hat (B, C, H, W)."""
        return self.unet(x, t).sample

    def receptive_field(self, image_size: int | None = None) -> float | None:
        """Theoretical receptive field in px: ``inf`` (global) with any self-attention; None
        for an attention-free variant (not computed: the paper's large model always has
        attention; without it five down-samplings already exceed any tiny input)."""
        if any(self.attention_levels) or self.unet.config.add_attention:
            return float("inf")
        return None


def adm_param_count_full(in_channels: int = 9) -> int:
    """Parameters of the full ``large_recep.yml`` network (256 px, 9 channels: 125.4 M),
    counted on a model built on the ``meta`` device (no memory, no forward pass)."""
    with torch.device("meta"):
        model = ADMUNet(in_channels=in_channels)
    return sum(p.numel() for p in model.parameters())
