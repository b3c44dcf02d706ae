"""``GenerationResult``: one generated (image, mask) pair, its colour palette and its drawer.

The palette is the original's ``semantic_mask_to_rgb`` (``scripts/inference.py`` of
EnVision-Research/Defect_Spectrum): 11 colours, index 0 black, so at most 10 defect classes
get a distinct colour (higher indices wrap around). The original's comments name some
colours wrongly (e.g. (0, 255, 255) "Yellow"); the RGB triples are what it writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from ...structures import Result
from ...visualization.draw import draw_banner, register_drawer, to_pil

# index -> RGB of the original's colour masks (`masks/` of its output)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255),
    (255, 255, 0), (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 128))


def colour_mask(mask: Any) -> Image.Image:
    """Class-index mask (H, W) (tensor or array, 0 = background) -> RGB PIL image with
    :data:`PALETTE` (index k > 10 takes colour ``1 + (k - 1) % 10``)."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    if m.ndim != 2:
        raise ValueError(f"colour_mask: expected an (H, W) class-index mask, got shape {m.shape}")
    idx = np.where(m > 0, 1 + (np.maximum(m, 1) - 1) % (len(PALETTE) - 1), 0)
    return Image.fromarray(np.asarray(PALETTE, dtype=np.uint8)[idx], "RGB")


@dataclass
class GenerationResult(Result):
    """One generated sample, on CPU.

    ``image``: float32 (3, H, W) RGB in [0, 1]; ``mask``: int64 (H, W) class index
    (0 = background, k = ``classes[k - 1]``); ``seed``: the seed of its initial noise (the
    same seed, model and sampler options give the same tensors); ``stage_seconds``: this
    sample's share of each sampling stage's wall time in s (keys ``"large"`` / ``"small"``;
    a batch's stage time divided by the batch size).
    """
    image: torch.Tensor
    mask: torch.Tensor
    seed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    gt_key: ClassVar[str] = "mask"      # tools/test.py --show: the real sample's mask, for reference

    def to_json(self) -> dict:
        return {"seed": int(self.seed), "shape": list(self.mask.shape),
                "class_pixels": {int(c): int(n) for c, n in zip(*torch.unique(self.mask, return_counts=True))},
                "stage_seconds": {k: round(float(v), 6) for k, v in self.stage_seconds.items()}}

    def image_pil(self) -> Image.Image:
        """The image as 8-bit RGB PIL (round(255 * x))."""
        a = (self.image.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(a), "RGB")

    def write_files(self, out_dir, stem: str) -> list[str]:
        """``<stem>_image.png`` (RGB) and ``<stem>_mask.png`` (8-bit class index)."""
        out = Path(out_dir)
        img_path, mask_path = out / f"{stem}_image.png", out / f"{stem}_mask.png"
        self.image_pil().save(img_path)
        Image.fromarray(self.mask.to(torch.uint8).numpy().astype(np.uint8)).save(mask_path)
        return [str(img_path), str(mask_path)]


def draw_generation(image: Any, result: GenerationResult, class_names: Sequence[str] | None = None,
                    gt: Any = None) -> Image.Image:
    """``generated image | colour mask`` side by side (preceded by ``real | real mask`` when
    ``gt`` is a class-index mask of ``image``); banner: seed and defect-pixel share per class.
    ``image`` (the real picture tools pass) is drawn only with a ground-truth mask."""
    from ...visualization.segmentation import hconcat

    gen = result.image_pil()
    panels = []
    if isinstance(gt, (torch.Tensor, np.ndarray)) and np.ndim(gt) == 2:
        real = to_pil(image).resize(gen.size, Image.BILINEAR)
        g = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt).astype(np.int64)
        g = np.where(g == 255, 0, g)
        panels += [real, colour_mask(g).resize(gen.size, Image.NEAREST)]
    panels += [gen, colour_mask(result.mask)]
    counts = torch.bincount(result.mask.flatten().long()) if result.mask.numel() else torch.zeros(1)
    total = max(int(result.mask.numel()), 1)
    shares = []
    for k in range(1, len(counts)):
        if counts[k] > 0:
            name = class_names[k - 1] if class_names is not None and k - 1 < len(class_names) else str(k)
            shares.append(f"{name} {100 * float(counts[k]) / total:.1f}%")
    text = f"seed {result.seed} | " + (", ".join(shares) if shares else "no defect pixels")
    return draw_banner(hconcat(panels), text, font_size=11)


register_drawer(GenerationResult, draw_generation)
