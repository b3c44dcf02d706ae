"""Pure metric functions for generated (image, mask) pairs (issue 12, "Measuring generated data").

Every image here is float (N, 3, H, W) in [0, 1] (``data_range = 1``) and every mask
int64 (H, W) or (N, H, W) class index (0 = background, 1..K = defect classes). The SSIM
family comes from torchmetrics (``torchmetrics.functional.image``), FID / KID from
torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance``; nothing here
downloads anything.

* **Alignment** (:func:`alignment_iou`): a segmenter trained on real data predicts a
  generated image; its mask is compared with the generated mask. Defect IoU = IoU of the
  foreground (every class > 0 merged); per-class IoU from the confusion matrix
  (``evaluation.segmentation.confusion_matrix``, rows = generated mask = ground truth).
  Both foregrounds empty (a normal sample the segmenter also calls normal): defect IoU 1.0
  (agreement); a class absent from both masks has IoU NaN (left out of means).
* **Diversity** (:func:`msssim_diversity`): mean pairwise MS-SSIM (Wang, Simoncelli & Bovik
  2003) among generated images of the same class (:func:`sample_class`); lower = more
  diverse, 1.0 = identical images. MS-SSIM's 5 scales need >= 176 px with the standard
  11-px Gaussian window (torchmetrics' check; the coarsest scale is side / 16); smaller
  images use the first ``n`` standard weights renormalised to sum 1, ``n`` the most scales
  whose coarsest side still holds the window (:func:`msssim_betas`): 3 at 64 px, 4 at
  128 px, 1 (= plain SSIM) below 22 px. The metric names the scale count (``msssim_scales``).
* **Memorisation** (:func:`memorisation`): per generated image the SSIM of its nearest real
  training image; a copy is one with SSIM > ``threshold`` (0.95, the issue's value).
* **FID / KID** (:func:`fid_kid`, :func:`inception_extractor`): torchmetrics on features of
  torch-fidelity's Inception v3 (``NoTrainInceptionV3``) read from a LOCAL weights file
  (``feature_extractor_weights_path``: torch-fidelity then calls ``torch.load`` on it
  instead of ``load_state_dict_from_url``). Missing pieces raise
  :class:`InceptionUnavailable` with a one-line "what to install / which file where".
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .segmentation import confusion_matrix

# MS-SSIM weights of Wang et al. 2003 (torchmetrics' default betas), finest scale first
MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_KERNEL = 11          # Gaussian window (sigma 1.5), torchmetrics' / Wang et al.'s default
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


# ------------------------------------------------------------------------- alignment
def alignment_iou(pred_mask: torch.Tensor, gen_mask: torch.Tensor, num_classes: int) -> dict:
    """Alignment of one generated pair: the segmenter's prediction ``pred_mask`` vs the
    generated mask ``gen_mask`` (both int (H, W) class indices in ``0..num_classes-1``).

    Returns ``{"defect_iou": float, "iou": list[float] (num_classes,), "cm": (C, C) int64}``:
    ``defect_iou`` = |P∩G| / |P∪G| over foreground pixels (class > 0, classes merged),
    1.0 when both are empty; ``iou[c]`` = I_c / (P_c + G_c - I_c), NaN when class c is in
    neither mask; ``cm`` rows = generated mask, columns = prediction."""
    pred, gen = torch.as_tensor(pred_mask).long(), torch.as_tensor(gen_mask).long()
    if pred.shape != gen.shape:
        raise ValueError(f"alignment_iou: prediction {tuple(pred.shape)} and generated mask "
                         f"{tuple(gen.shape)} differ in size")
    cm = confusion_matrix(pred, gen, int(num_classes), ignore_index=-1)
    inter, p, g = np.diag(cm).astype(np.float64), cm.sum(0), cm.sum(1)
    union = p + g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    fp, fg = pred > 0, gen > 0
    fg_union = int((fp | fg).sum())
    defect = 1.0 if fg_union == 0 else int((fp & fg).sum()) / fg_union
    return {"defect_iou": float(defect), "iou": [float(v) for v in iou], "cm": cm}


def sample_class(mask: torch.Tensor | np.ndarray) -> int:
    """The class of a generated sample: the defect class (> 0) with the most pixels in its
    mask (ties: the lowest index), 0 ("normal") when the mask has no defect pixel."""
    m = np.asarray(mask).reshape(-1).astype(np.int64)
    counts = np.bincount(m[m > 0]) if (m > 0).any() else np.zeros(1, np.int64)
    return int(np.argmax(counts)) if counts.max() > 0 else 0


# ------------------------------------------------------------------------- diversity
def msssim_betas(height: int, width: int, kernel_size: int = SSIM_KERNEL) -> tuple[float, ...]:
    """MS-SSIM weights for an ``height`` x ``width`` image: the first ``n`` of
    :data:`MSSSIM_BETAS` renormalised to sum 1, ``n`` (<= 5) the most scales for which the
    coarsest scale (side // 2**(n-1)) still holds the ``kernel_size`` window and
    torchmetrics' size check (side // max(1, n-1)**2 > kernel_size - 1) passes.
    ValueError when even one scale does not fit (side < ``kernel_size``)."""
    side = min(int(height), int(width))
    for n in range(len(MSSSIM_BETAS), 0, -1):
        if side // 2 ** (n - 1) >= kernel_size and side // max(1, n - 1) ** 2 > kernel_size - 1:
            b = MSSSIM_BETAS[:n]
            return tuple(float(x / sum(b)) for x in b)
    raise ValueError(f"MS-SSIM: images of {height}x{width} px are smaller than the "
                     f"{kernel_size}-px SSIM window")


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def pairwise_msssim(images: torch.Tensor, pairs: torch.Tensor, betas: Sequence[float],
                    chunk: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """MS-SSIM of ``images[pairs[k, 0]]`` vs ``images[pairs[k, 1]]`` for every row k of
    ``pairs`` (P, 2) long; torchmetrics, data_range 1, Gaussian 11 px / sigma 1.5, ``relu``
    normalisation (its default: negative contrast terms clamp to 0). Returns (P,) float64."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    out = []
    for sl in _chunks(len(pairs), chunk):
        a = images[pairs[sl, 0]].to(device, torch.float32)
        b = images[pairs[sl, 1]].to(device, torch.float32)
        out.append(msssim(a, b, data_range=1.0, reduction="none", betas=tuple(betas)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def sample_pairs(n: int, max_pairs: int | None, seed: int = 0) -> torch.Tensor:
    """(P, 2) index pairs i < j among ``n`` items: all ``n(n-1)/2``, or ``max_pairs`` of them
    drawn without replacement with ``seed`` when there are more."""
    total = n * (n - 1) // 2
    if total == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    pairs = torch.triu_indices(n, n, 1).t()          # row-major: (0, 1), (0, 2), ...
    if max_pairs is None or total <= max_pairs:
        return pairs
    g = torch.Generator().manual_seed(int(seed))
    return pairs[torch.randperm(total, generator=g)[:int(max_pairs)].sort().values]


def msssim_diversity(images: torch.Tensor, labels: Sequence[int], max_pairs: int | None = 2000,
                     seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Mean pairwise MS-SSIM among ``images`` (N, 3, H, W) in [0, 1] within each group of
    ``labels`` (N,) (:func:`sample_class`: 0 = normal, k = defect class k).

    Returns ``{"per_class": {label: (mean, pairs)}, "overall": float, "pairs": int,
    "scales": int}``: ``overall`` = mean over every evaluated within-group pair (groups
    weighted by their pair count; NaN when no group has 2 images); a group of one image is
    absent. At most ``max_pairs`` random pairs per group (``seed``)."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    betas = msssim_betas(*images.shape[-2:])
    per_class, values = {}, []
    for c in sorted(set(labels.tolist())):
        idx = (labels == c).nonzero().flatten()
        pairs = sample_pairs(len(idx), max_pairs, seed)
        if not len(pairs):
            continue
        v = pairwise_msssim(images[idx], pairs, betas, device=device)
        per_class[int(c)] = (float(v.mean()), int(len(v)))
        values.append(v)
    allv = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    return {"per_class": per_class, "overall": float(allv.mean()) if len(allv) else math.nan,
            "pairs": int(len(allv)), "scales": len(betas)}


# ---------------------------------------------------------------------- memorisation
def nearest_ssim(generated: torch.Tensor, reference: torch.Tensor, candidates: int | None = None,
                 chunk: int = 256, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per generated image (N, 3, H, W) the highest SSIM over ``reference`` (M, 3, H, W)
    (both in [0, 1], same size) and its index: ``(values (N,) float64, index (N,) long)``.
    SSIM: torchmetrics, data_range 1, Gaussian 11 px / sigma 1.5, mean over the map.

    ``candidates``: search only the ``candidates`` references nearest in pixel L2 per image
    (a near copy, SSIM > 0.95, is also near in L2); None or >= M: all of them (exact)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    n, m = len(generated), len(reference)
    if m == 0:
        raise ValueError("nearest_ssim: no reference image")
    if candidates is None or candidates >= m:
        cand = torch.arange(m).expand(n, m)
    else:
        d = torch.cdist(generated.reshape(n, -1).float(), reference.reshape(m, -1).float())
        cand = d.topk(int(candidates), dim=1, largest=False).indices
    gi = torch.arange(n)[:, None].expand_as(cand).reshape(-1)
    ri = cand.reshape(-1)
    vals = []
    for sl in _chunks(len(gi), chunk):
        a = generated[gi[sl]].to(device, torch.float32)
        b = reference[ri[sl]].to(device, torch.float32)
        vals.append(ssim(a, b, data_range=1.0, reduction="none").double().cpu())
    v = torch.cat(vals).reshape(cand.shape)
    best, k = v.max(1)
    return best, cand.gather(1, k[:, None])[:, 0]


def memorisation(generated: torch.Tensor, reference: torch.Tensor, threshold: float = 0.95,
                 candidates: int | None = None, device: str | torch.device = "cpu") -> dict:
    """``{"copy_share": share of generated images whose nearest reference has SSIM >
    threshold, "nn_ssim_mean": mean nearest-neighbour SSIM, "nn_ssim": (N,) list,
    "nn_index": (N,) list}`` (see :func:`nearest_ssim`)."""
    best, idx = nearest_ssim(generated, reference, candidates, device=device)
    return {"copy_share": float((best > threshold).double().mean()), "nn_ssim_mean": float(best.mean()),
            "nn_ssim": best.tolist(), "nn_index": idx.tolist()}


# --------------------------------------------------------------------------- FID/KID
class InceptionUnavailable(RuntimeError):
    """FID/KID cannot run offline; the message says what to install or place where."""


def inception_extractor(weights_path: str | os.PathLike, feature: int = 2048) -> torch.nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's FID Inception v3, input
    uint8 (N, 3, H, W), output (N, ``feature``)) with its weights read from the local file
    ``weights_path`` (never downloaded). :class:`InceptionUnavailable` when the file is
    missing or unreadable, or torch-fidelity is not installed."""
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise InceptionUnavailable(
            f"FID/KID Inception weights not found at {path}: download {INCEPTION_URL} on a machine "
            f"with internet and place it there (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, "
            f"same sha256 prefix, should be the same file)")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise InceptionUnavailable(
            f"FID/KID need torch-fidelity (torchmetrics' Inception v3): `pip install torch-fidelity`; "
            f"the weights file {path} is then read locally, nothing is downloaded")
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(int(feature))],
                                  feature_extractor_weights_path=path)
    except Exception as e:  # noqa: BLE001 - a wrong or corrupt file: one line naming it
        first = str(e).splitlines()[0] if str(e) else ""
        raise InceptionUnavailable(f"{path}: not torch-fidelity's Inception v3 weights "
                                   f"({type(e).__name__}: {first}); expected {INCEPTION_FILE}") from e


class _Features(torch.nn.Module):
    """Identity over precomputed (N, D) features, so FID and KID share one Inception pass."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def features(images_u8: torch.Tensor, extractor: torch.nn.Module, batch_size: int = 32,
             device: str | torch.device = "cpu") -> torch.Tensor:
    """``extractor`` features (N, D) float64 of uint8 images (N, 3, H, W)."""
    extractor = extractor.to(device).eval()
    out = [extractor(images_u8[sl].to(device)).double().cpu() for sl in _chunks(len(images_u8), batch_size)]
    return torch.cat(out).reshape(len(images_u8), -1)


def fid_kid(real_u8: torch.Tensor, fake_u8: torch.Tensor, extractor: torch.nn.Module,
            kid_subsets: int = 100, kid_subset_size: int = 1000,
            device: str | torch.device = "cpu") -> dict:
    """FID and KID (torchmetrics ``FrechetInceptionDistance`` / ``KernelInceptionDistance``,
    cubic polynomial kernel) between uint8 images ``real_u8`` and ``fake_u8`` (N, 3, H, W)
    in the feature space of ``extractor`` (:func:`inception_extractor`). KID's subset size
    is ``min(kid_subset_size, N_real, N_fake)``. Returns ``{"fid", "kid_mean", "kid_std",
    "kid_subset_size"}``; ValueError with fewer than 2 images on a side."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if min(len(real_u8), len(fake_u8)) < 2:
        raise ValueError(f"FID/KID need >= 2 real and >= 2 generated images, got {len(real_u8)} "
                         f"and {len(fake_u8)}")
    fr, ff = features(real_u8, extractor, device=device), features(fake_u8, extractor, device=device)
    ident = _Features(fr.shape[1])
    fid = FrechetInceptionDistance(feature=ident)
    fid.update(fr, real=True)
    fid.update(ff, real=False)
    size = int(min(kid_subset_size, len(fr), len(ff)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "KID will save all extracted features"
        kid = KernelInceptionDistance(feature=ident, subsets=int(kid_subsets), subset_size=size)
    kid.update(fr, real=True)
    kid.update(ff, real=False)
    km, ks = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(km), "kid_std": float(ks),
            "kid_subset_size": size}


def to_uint8(images01: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 round(255 x) (clamped)."""
    return (images01.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (N, 3, h, w) -> (N, 3, H, W) bilinear with antialiasing (unchanged when equal)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)
