"""The small-receptive-field denoiser of Defect-Gen: SinDiffusion's UNet, in plain PyTorch.

Source: the original's ``models/unet/unet_receptive.py`` + ``config/small_recep.yml``, a copy
of ``guided_diffusion/sinddpm.py`` of WeilunWang/SinDiffusion (research note §1.3; the
structure below was checked against ``sinddpm.py`` at commit 2ec70a1, the code is our own)::

    conv_in 3x3 (C -> ch0)                                   -> skip
    encoder   per level i (width w_i = model_channels * channel_mult[i]):
              num_res_blocks x ResBlock                       -> skip after each
              strided 3x3 conv (all but the last level)       -> skip
    (no middle block, no attention anywhere)
    decoder   per level, reversed: (num_res_blocks + 1) x ResBlock; the FIRST block of the
              deepest level takes the deepest encoder feature alone (no concatenation),
              every other block takes cat[h, skip]; nearest x2 + 3x3 conv after each level
              but the first (shallowest)
    out       GroupNorm -> SiLU -> conv 3x3 (zero-initialised) (ch0 -> C)

ResBlock (``use_scale_shift_norm=False``, the default: ADDITIVE time embedding)::

    h = conv3x3(SiLU(GN(x)));  h = h + Linear(SiLU(emb))[:, :, None, None]
    h = conv3x3_zero(Dropout(SiLU(GN(h))));  return skip(x) + h     # skip: id or 1x1 conv

Time embedding: sinusoidal ([cos, sin], max period 10000) of width ch0 -> Linear(ch0, 4ch0)
-> SiLU -> Linear(4ch0, 4ch0). GroupNorm with 32 groups (``norm_num_groups``).

Full size (``small_recep.yml``): ``model_channels 192``, ``channel_mult [1, 2, 4]`` (two
down-samplings: 64x64 bottleneck at 256 px), 2 res-blocks, 6 channels (cotton, num_defect 2):
98.2 M parameters. SinDiffusion's own setting: 64 channels, 1 res-block.

Receptive field (theoretical, of one output pixel, counting every 3x3 conv on the longest
path, ignoring GroupNorm's image-wide statistics): :meth:`SinDiffusionUNet.receptive_field`.
**157 px** for 2 res-blocks and mult [1, 2, 4] (101 px for SinDiffusion's 1 res-block), at
any input size: the model is fully convolutional, so on a 256-px image each output pixel
sees at most a 157-px window (the note's §1.3 [calc]); the effective receptive field is much
smaller. It is trained on the whole resized image (no patch cropping), as the original.
diffusers' ``UNet2DModel`` cannot express it: it always adds a middle block (two ResNets at
the bottleneck: ~189 px) and concatenates a skip in every decoder block.

``forward(x, t) -> x0_hat`` as :class:`~defectkit.models.generation.adm_unet.ADMUNet`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import MODELS


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (guided-diffusion ``nn.timestep_embedding``): t (B,) -> (B, dim)
    = [cos(t * f_k), sin(t * f_k)], f_k = max_period ** (-k / (dim // 2)), k < dim // 2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """SinDiffusion / guided-diffusion ResBlock (see the module docstring)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, scale_shift: bool, groups: int):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout if scale_shift else cout))
        self.out_norm = nn.GroupNorm(groups, cout)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, 1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (guided-diffusion ``Upsample(use_conv=True)``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


@MODELS.register()
class SinDiffusionUNet(nn.Module):
    """SinDiffusion UNet predicting x0 (architecture in the module docstring).

    Args:
        in_channels: C = 3 + num_defect + 1 (also the output channels).
        model_channels: width of the first level (192 in ``small_recep.yml``).
        channel_mult: width multipliers per level ([1, 2, 4]: two down-samplings).
        num_res_blocks: ResBlocks per encoder level (2; the decoder has one more).
        use_scale_shift_norm: FiLM time conditioning; False (default): additive, as SinDiffusion.
        dropout: in the ResBlocks (0).
        norm_num_groups: GroupNorm groups (32; must divide every width).
        image_size: training resolution in px (informative; any size divisible by
            2 ** (levels - 1) works).
    """

    stage = "small"      # the two-stage sampler's name for this network (stage_seconds keys)

    def __init__(self, in_channels: int = 6, model_channels: int = 192, channel_mult: list[int] = (1, 2, 4),
                 num_res_blocks: int = 2, use_scale_shift_norm: bool = False, dropout: float = 0.0,
                 norm_num_groups: int = 32, image_size: int = 256):
        super().__init__()
        mult = [int(m) for m in channel_mult]
        for key, value in (("in_channels", in_channels), ("model_channels", model_channels),
                           ("num_res_blocks", num_res_blocks)):
            if int(value) < 1:
                raise ValueError(f"SinDiffusionUNet: {key} must be >= 1, got {value}")
        if not mult or min(mult) < 1:
            raise ValueError(f"SinDiffusionUNet: channel_mult must be a non-empty list of ints >= 1, got {mult}")
        widths = [int(model_channels) * m for m in mult]
        if any(w % norm_num_groups for w in widths):
            raise ValueError(f"SinDiffusionUNet: widths {widths} (model_channels x channel_mult) must be "
                             f"multiples of norm_num_groups {norm_num_groups}")
        self.in_channels = self.out_channels = int(in_channels)
        self.model_channels, self.channel_mult, self.num_res_blocks = int(model_channels), mult, int(num_res_blocks)
        self.image_size = int(image_size)
        self.size_divisor = 2 ** (len(mult) - 1)
        emb_dim = 4 * self.model_channels
        self.time_embed = nn.Sequential(nn.Linear(self.model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        block = dict(emb_dim=emb_dim, dropout=float(dropout), scale_shift=bool(use_scale_shift_norm),
                     groups=int(norm_num_groups))

        ch = widths[0]
        self.conv_in = nn.Conv2d(self.in_channels, ch, 3, padding=1)
        skip_chans = [ch]
        self.down = nn.ModuleList()            # ResBlock or strided Conv2d, in order
        for level, w in enumerate(widths):
            for _ in range(self.num_res_blocks):
                self.down.append(ResBlock(ch, w, **block))
                ch = w
                skip_chans.append(ch)
            if level != len(widths) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chans.append(ch)

        self.up = nn.ModuleList()              # per block: ModuleList([ResBlock, (Upsample)])
        self.up_takes_skip: list[bool] = []
        for level in reversed(range(len(widths))):
            for i in range(self.num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                first = level == len(widths) - 1 and i == 0
                layers = nn.ModuleList([ResBlock(ch + (0 if first else skip_ch), widths[level], **block)])
                ch = widths[level]
                if level and i == self.num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(layers)
                self.up_takes_skip.append(not first)
        self.out = nn.Sequential(nn.GroupNorm(int(norm_num_groups), ch), nn.SiLU(),
                                 nn.Conv2d(ch, self.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x float32 (B, C, H, W) (H, W divisible by 2 ** (levels - 1)), t int64 (B,) ->
        x0_hat (B, C, H, W)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            skips.append(h)
        for layers, takes_skip in zip(self.up, self.up_takes_skip):
            s = skips.pop()
            h = torch.cat([h, s], 1) if takes_skip else s     # first block: the deepest feature alone
            h = layers[0](h, emb)
            if len(layers) > 1:
                h = layers[1](h)
        return self.out(h)

    def receptive_field(self) -> int:
        """Theoretical receptive field in px (longest path of 3x3 convs; see the module
        docstring): 157 for 2 res-blocks and mult [1, 2, 4], 101 for 1 res-block.

        r grows by 2 * jump per 3x3 conv (jump = the stride product so far), a strided conv
        doubles the jump after adding its own 2 * jump, nearest up-sampling halves it."""
        r, jump, levels = 1, 1, len(self.channel_mult)
        r += 2 * jump                                           # conv_in
        for level in range(levels):
            r += 4 * jump * self.num_res_blocks                 # two 3x3 convs per ResBlock
            if level != levels - 1:
                r += 2 * jump
                jump *= 2
        for level in reversed(range(levels)):
            r += 4 * jump * (self.num_res_blocks + 1)
            if level:
                jump //= 2
                r += 2 * jump                                   # the conv after the up-sampling
        return r + 2 * jump                                     # out conv


def sindiffusion_param_count_full(in_channels: int = 6) -> int:
    """Parameters of the full ``small_recep.yml`` network (192 channels, mult [1, 2, 4], 2
    res-blocks, 6 channels: 98.2 M), counted on the ``meta`` device (no memory)."""
    with torch.device("meta"):
        model = SinDiffusionUNet(in_channels=in_channels)
    return sum(p.numel() for p in model.parameters())
