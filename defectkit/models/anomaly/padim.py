"""PaDiM: a Patch Distribution Modeling framework (Defard et al., 2020), in one file.

    model = PaDiM(backbone="resnet18", pretrained="torchvision://resnet18")   # d = 100
    model.fit(train_loader)            # normal images only; no optimiser
    results = model.predict(batch)     # one AnomalyResult per image

What it does, in order:

1. **Pre-processing** (part of the model, so a checkpoint or an ONNX file scores raw
   images): an input whose size is not the final size is resized to ``image_size``
   (bilinear, antialias) and centre-cropped to ``crop_size`` (``null`` = no crop), then
   normalised with ``mean``/``std`` (ImageNet). Inputs that already have the final size
   (the configs do the resize/crop in the data pipeline so masks follow) are only
   normalised. Protocols: ``image_size: 256, crop_size: 224`` (paper / seed) and
   ``image_size: 256, crop_size: null`` (anomalib).
2. **Embedding**: a frozen torchvision ResNet (eval mode) gives ``layers`` (layer1..3 by
   default); each layer keeps only its channels among the ``d`` selected ones, coarser
   maps are nearest-upsampled to the first layer's grid and concatenated: (B, d, h, w).
   This equals the seed's unfold/fold ``embedding_concat`` followed by ``index_select``
   without ever building the full t_d-channel tensor. ``selection: random`` draws ``d``
   of the t_d channels with ``torch.Generator().manual_seed(seed)`` (sorted; stored in
   the ``channel_idx`` buffer); ``channel_indices`` gives them explicitly (a list or a
   .json/.txt/.pt/.npy file). ``selection: semi_orthogonal`` (Kim et al. 2021) projects
   the t_d channels with a random semi-orthogonal W (t_d x d, QR of a Gaussian matrix,
   stored in ``projection``); the Gaussian is then fitted in the projected space, i.e.
   scored with (WᵀΣW)⁻¹.
3. **Fit** (streaming): per position, Σ(x-c) and Σ(x-c)(x-c)ᵀ are accumulated in float64
   batch by batch (c = the first batch's mean, which removes the cancellation of the
   one-pass formula; the upper triangle is stored packed), so peak memory does not grow
   with the number of training images. Then Σ = unbiased covariance + ε·I (ε = 0.01)
   and a factor F of the precision (Σ = LLᵀ, F = L⁻ᵀ, so Σ⁻¹ = FFᵀ; computed in float64)
   is stored per position in ``precision_dtype`` (float32, or float16 to halve the
   statistics). One training image
   (N - 1 = 0) falls back to Σ = ε·I with a warning instead of NaN.
4. **Score**: squared Mahalanobis distance ‖Fᵀδ‖² of every position in one batched
   matrix product (HW, B, d) @ (HW, d, d), sqrt, bilinear upsampling to the input size,
   Gaussian blur σ = 4 (33 x 33, reflect padding), image score = max of the map.
5. **Thresholds and normalisation** (fitted on validation data only): ``fit`` holds out
   every k-th training image (k = round(1 / calibration.val_ratio)); they do not enter the
   Gaussian and are scored afterwards. ``calibrate(loader)`` adds labelled validation
   images (the trainer passes ``data.val``). With abnormal validation images the image
   threshold is the F1-maximising one (and the pixel threshold too when masks exist);
   without, it is the ``image_quantile`` (``pixel_quantile``) of the normal scores.
   Normalisation (anomalib's): ``clamp((x - t) / (max - min) + 0.5, 0, 1)`` with min/max
   over the validation scores, so the threshold maps to 0.5.

Everything needed to score a new image is in ``state_dict()``: the backbone weights,
``channel_idx`` / ``projection``, ``mean``, ``precision_factor``, ``pixel_mean``/``pixel_std``,
the thresholds and min/max; the pre-processing sizes and the calibration record (which
images were used) travel as the module's extra state.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ...metrics_core import f1_max
from ...registry import MODELS
from ...structures import AnomalyResult
from ..base import BaseModel, ExportSpec
from ..backbones import build_backbone

logger = logging.getLogger("defectkit")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NUM_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
MIN_CALIBRATION_IMAGES = 20     # fewer validation images: a warning (thresholds/normalisation unreliable)


@dataclass
class CalibrationConfig:
    """Validation data for thresholds and min-max normalisation (never the test set)."""

    val_ratio: float = 0.1          # every round(1/val_ratio)-th training image is held out; 0 = none
    image_quantile: float = 0.99    # image threshold without abnormal validation images
    pixel_quantile: float = 0.999   # pixel threshold without abnormal validation pixels

    def __post_init__(self):
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"model.calibration.val_ratio: must be in [0, 1), got {self.val_ratio}")
        for k in ("image_quantile", "pixel_quantile"):
            if not 0.0 < getattr(self, k) <= 1.0:
                raise ValueError(f"model.calibration.{k}: must be in (0, 1], got {getattr(self, k)}")


# ------------------------------------------------------------------------ small pieces
def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """scipy's / anomalib's kernel: size 2 * int(4 sigma + 0.5) + 1, normalised."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable blur of (B, 1, H, W) with reflect padding (replicate when the map is too small)."""
    r = kernel.numel() // 2
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.pad(maps, (r, r, r, r), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def read_channel_indices(spec: Sequence[int] | str) -> list[int]:
    """``channel_indices``: a list, or a .json / .txt (whitespace or comma separated) /
    .pt / .npy file holding one."""
    if not isinstance(spec, (str, Path)):
        return [int(i) for i in spec]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model.channel_indices: file {path} not found")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    elif path.suffix == ".pt":
        values = torch.load(path, map_location="cpu", weights_only=True)
        values = values.tolist() if isinstance(values, torch.Tensor) else values
    elif path.suffix == ".npy":
        import numpy as np

        values = np.load(path).tolist()
    else:
        values = path.read_text().replace(",", " ").split()
    return [int(v) for v in values]


def random_semi_orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal columns: Q of the QR of a Gaussian matrix."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()      # sign fix: unique Q


class StreamingGaussian:
    """Per-position first and second moments, accumulated batch by batch in float64.

    ``update(x)`` with x (P, B, d): positions, samples, features. Memory: P·d (Σx) plus
    P·d(d+1)/2 (packed upper triangle of Σxxᵀ) float64 values, whatever the number of
    samples. Samples are shifted by the first batch's mean before the products.
    """

    def __init__(self, positions: int, dim: int, chunk: int = 512):
        self.positions, self.dim, self.n = positions, dim, 0
        iu = torch.triu_indices(dim, dim)
        self.flat_triu = iu[0] * dim + iu[1]
        self.chunks = [(a, min(a + chunk, positions)) for a in range(0, positions, chunk)]
        self.shift: torch.Tensor | None = None
        self.s1 = torch.zeros(positions, dim, dtype=torch.float64)
        self.s2: list[torch.Tensor | None] = [
            torch.zeros(b - a, self.flat_triu.numel(), dtype=torch.float64) for a, b in self.chunks]

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().cpu()
        if self.shift is None:
            self.shift = x.mean(1)
        # (P, d, B) contiguous: bmm on a permuted view is orders of magnitude slower on CPU
        xc = (x - self.shift[:, None, :]).transpose(1, 2).contiguous()
        self.s1 += xc.sum(2, dtype=torch.float64)
        for (a, b), s2 in zip(self.chunks, self.s2):
            blk = xc[a:b]
            s2 += torch.bmm(blk, blk.transpose(1, 2)).flatten(1)[:, self.flat_triu].double()
        self.n += x.shape[1]

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(packed.shape[0], self.dim * self.dim, dtype=torch.float64)
        full[:, self.flat_triu] = packed
        full = full.view(-1, self.dim, self.dim)
        return full + full.transpose(1, 2) - torch.diag_embed(torch.diagonal(full, dim1=1, dim2=2))

    def mean(self) -> torch.Tensor:
        return self.shift.double() + self.s1 / self.n

    def covariances(self, epsilon: float, release: bool = True) -> Iterable[tuple[int, int, torch.Tensor]]:
        """Yield ``(a, b, cov)`` per chunk of positions: unbiased covariance + ε·I in float64.
        ``release`` frees each chunk's accumulator once yielded (peak memory stays flat)."""
        n = self.n
        eye = torch.eye(self.dim, dtype=torch.float64)
        # positions per float64 (d, d) block: ~64 MB per temporary (128 for d = 100, 27 for d = 550)
        step = max(1, min(128, 2 ** 26 // (8 * self.dim * self.dim)))
        for c, (a, b) in enumerate(self.chunks):
            for s in range(a, b, step):
                e = min(s + step, b)
                if n < 2:
                    cov = torch.zeros(e - s, self.dim, self.dim, dtype=torch.float64)
                else:
                    m = self.s1[s:e] / n
                    cov = (self._unpack(self.s2[c][s - a:e - a]) - n * m[:, :, None] * m[:, None, :]) / (n - 1)
                cov += epsilon * eye
                yield s, e, cov
            if release:
                self.s2[c] = None


def f1_adaptive_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The score threshold t maximising F1 of ``score >= t`` (ties broken by the lower t)."""
    return f1_max(scores.double().numpy(), labels.numpy())[1]


# ------------------------------------------------------------------------------ model
@MODELS.register()
class PaDiM(BaseModel):
    """PaDiM; see the module docstring. ``num_features`` (d) defaults to 100 for
    resnet18 and 550 for wide_resnet50_2 (required for other backbones)."""

    learning = "fit"

    def __init__(self, backbone: str = "resnet18", pretrained: str | None = None,
                 layers: Sequence[str] = ("layer1", "layer2", "layer3"),
                 num_features: int | None = None, selection: str = "random",
                 channel_indices: list[int] | str | None = None, seed: int = 1024,
                 image_size: int = 256, crop_size: int | None = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 epsilon: float = 0.01, precision_dtype: str = "float32", blur_sigma: float = 4.0,
                 calibration: CalibrationConfig | dict | None = None, chunk_positions: int = 512,
                 fit_micro_batch: int = 8):
        super().__init__()
        if selection not in ("random", "semi_orthogonal"):
            raise ValueError(f"model.selection: 'random' or 'semi_orthogonal', got {selection!r}")
        if precision_dtype not in ("float32", "float16"):
            raise ValueError(f"model.precision_dtype: 'float32' or 'float16', got {precision_dtype!r}")
        bad = [l for l in layers if l not in _STAGES]
        if bad or not layers:
            raise ValueError(f"model.layers: {bad or layers} not stages of {_STAGES}")
        self.layers = sorted(layers, key=_STAGES.index)
        self.backbone = build_backbone(backbone, pretrained=pretrained, frozen_stages=4, norm_eval=True,
                                       out_indices=self.layers)
        self.backbone.eval()
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.crop_size = int(crop_size) if crop_size else None
        self.input_size = self.crop_size or self.image_size
        self.epsilon = float(epsilon)
        self.selection = selection
        self.chunk_positions = int(chunk_positions)        # positions per block (fit / float16 scoring)
        self.fit_micro_batch = int(fit_micro_batch)        # images per backbone call in fit (activation memory)
        self.calibration = (calibration if isinstance(calibration, CalibrationConfig)
                            else CalibrationConfig(**(calibration or {})))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("blur_kernel", gaussian_kernel1d(blur_sigma), persistent=False)

        # -- channels
        self.layer_channels = list(self.backbone.out_channels)
        total = sum(self.layer_channels)
        if channel_indices is not None:
            if selection != "random":
                raise ValueError("model.channel_indices: only with selection: random")
            idx = sorted(set(read_channel_indices(channel_indices)))
            if not idx or idx[0] < 0 or idx[-1] >= total:
                raise ValueError(f"model.channel_indices: indices must be in 0..{total - 1} "
                                 f"({'+'.join(map(str, self.layer_channels))} channels of {self.layers})")
            d = len(idx)
            if num_features is not None and num_features != d:
                raise ValueError(f"model.num_features: {num_features} but channel_indices has {d} entries")
        else:
            d = num_features if num_features is not None else DEFAULT_NUM_FEATURES.get(backbone)
            if d is None:
                raise ValueError(f"model.num_features: required for backbone {backbone!r} "
                                 f"(defaults exist for {', '.join(DEFAULT_NUM_FEATURES)})")
            if not 0 < d <= total:
                raise ValueError(f"model.num_features: {d} not in 1..{total} (channels of {self.layers})")
            g = torch.Generator().manual_seed(int(seed))
            idx = sorted(torch.randperm(total, generator=g)[:d].tolist()) if selection == "random" else []
        self.num_features = int(d)
        self.register_buffer("channel_idx", torch.tensor(idx, dtype=torch.long))
        if selection == "semi_orthogonal":
            g = torch.Generator().manual_seed(int(seed))
            self.register_buffer("projection", random_semi_orthogonal(total, d, g))
        else:
            self.projection = None
        # per-layer local indices (derived from channel_idx; rebuilt after loading a state dict)
        self._local_idx: list[torch.Tensor | None] = []
        self._split_indices()

        # -- statistics (shapes fixed by the input size, so checkpoints load strictly)
        with torch.no_grad():
            h, w = self.backbone(torch.zeros(1, 3, self.input_size, self.input_size))[self.layers[0]].shape[-2:]
        self.grid = (int(h), int(w))
        hw = self.grid[0] * self.grid[1]
        self.register_buffer("mean", torch.zeros(hw, d))
        # torch.empty: the pages are only touched when fit() writes them
        self.register_buffer("precision_factor", torch.empty(hw, d, d, dtype=getattr(torch, precision_dtype)))
        self.register_buffer("fitted", torch.tensor(False))
        for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
            self.register_buffer(name, torch.tensor(float("nan")))
        self.record: dict = {}    # calibration record (extra state): sources, methods, counts
        self._val_maps: list[tuple[float, int, torch.Tensor, torch.Tensor | None, str]] = []

    # ------------------------------------------------------------------ state
    def _split_indices(self) -> None:
        self._local_idx, start = [], 0
        for c in self.layer_channels:
            sel = self.channel_idx[(self.channel_idx >= start) & (self.channel_idx < start + c)] - start
            self._local_idx.append(sel if self.projection is None else None)
            start += c

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._split_indices()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._split_indices()          # follow .to(device)
        return out

    def get_extra_state(self) -> dict:
        return {"image_size": self.image_size, "crop_size": self.crop_size, "grid": list(self.grid),
                "selection": self.selection, "backbone": self.backbone_name, "layers": list(self.layers),
                "epsilon": self.epsilon, "calibration": asdict(self.calibration), "record": self.record}

    def set_extra_state(self, state: dict) -> None:
        if state.get("grid") and tuple(state["grid"]) != self.grid:
            raise ValueError(f"PaDiM checkpoint was fitted on a {state['grid']} grid; this config "
                             f"gives {list(self.grid)} (model.image_size / crop_size differ)")
        self.record = dict(state.get("record") or {})

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()      # frozen feature extractor: BN statistics never move
        return self

    # ------------------------------------------------------------------ features
    def preprocess(self, images: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> resized/cropped (when not already final) and normalised."""
        s = self.input_size
        if tuple(images.shape[-2:]) != (s, s):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=antialias)
            if self.crop_size:
                top = int(round((self.image_size - s) / 2.0))
                images = images[..., top:top + s, top:top + s]
        return (images - self.pixel_mean) / self.pixel_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> embeddings (B, d, h, w)."""
        feats = self.backbone(x)
        size = feats[self.layers[0]].shape[-2:]
        parts = []
        for name, local in zip(self.layers, self._local_idx):
            f = feats[name]
            if local is not None:
                if local.numel() == 0:
                    continue
                f = f.index_select(1, local)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="nearest")
            parts.append(f)
        emb = torch.cat(parts, 1)
        if self.projection is not None:
            emb = torch.einsum("bchw,cd->bdhw", emb, self.projection)
        return emb

    # ------------------------------------------------------------------ scoring
    def mahalanobis(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> (B, h, w) distances; one batched product over all positions."""
        b, d, h, w = emb.shape
        delta = (emb.flatten(2).permute(2, 0, 1) - self.mean[:, None, :]).contiguous()   # (HW, B, d)
        f = self.precision_factor
        if f.dtype == torch.float32:
            d2 = torch.bmm(delta, f).square().sum(-1)                              # ‖Fᵀδ‖² = δᵀΣ⁻¹δ
        else:   # float16 storage, float32 arithmetic, converted a chunk of positions at a time
            c = self.chunk_positions
            d2 = torch.cat([torch.bmm(delta[a:a + c], f[a:a + c].float()).square().sum(-1)
                            for a in range(0, delta.shape[0], c)])
        return d2.sqrt().t().reshape(b, h, w)

    def precision(self) -> torch.Tensor:
        """Σ⁻¹ per position (HW, d, d) in float32, rebuilt from the stored factor."""
        f = self.precision_factor.float()
        return f @ f.transpose(1, 2)

    def raw_maps(self, images: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> smoothed anomaly maps (B, 1, S, S), raw scale."""
        x = self.preprocess(images, antialias=antialias)
        dist = self.mahalanobis(self.embed(x))[:, None]
        dist = F.interpolate(dist, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return gaussian_blur(dist, self.blur_kernel)

    def normalize(self, x: torch.Tensor, level: str) -> torch.Tensor:
        t, lo, hi = (getattr(self, f"{level}_threshold"), getattr(self, f"{level}_min"),
                     getattr(self, f"{level}_max"))
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        return ((x - t) / span + 0.5).clamp(0, 1)

    def export_spec(self) -> ExportSpec:
        """Pre-processing + model + score normalisation in one graph (``padim_export.py``)."""
        from .padim_export import padim_export_spec

        return padim_export_spec(self)

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.image_threshold)) and bool(torch.isfinite(self.pixel_threshold))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensor in, tensors out (the exported graph): ``raw_map`` (B, 1, S, S), ``raw_score``,
        and when calibrated the normalised ``anomaly_map`` / ``pred_score`` (0.5 = threshold)."""
        raw = self.raw_maps(images)
        out = {"raw_map": raw, "raw_score": raw.amax(dim=(1, 2, 3))}
        out["anomaly_map"] = self.normalize(raw, "pixel")
        out["pred_score"] = self.normalize(out["raw_score"], "image")
        return out

    @torch.no_grad()
    def predict(self, batch: dict) -> list[AnomalyResult]:
        if not bool(self.fitted):
            raise RuntimeError("PaDiM.predict: the model is not fitted (run tools/train.py, or load "
                               "a checkpoint written by it)")
        out = self.forward(batch["image"])
        cal = self.calibrated
        results = []
        for i in range(out["raw_map"].shape[0]):
            raw_map = out["raw_map"][i, 0].float().cpu()
            raw_score = float(out["raw_score"][i])
            if cal:
                results.append(AnomalyResult(
                    score=float(out["pred_score"][i]), anomaly_map=out["anomaly_map"][i, 0].cpu(),
                    pred_label=int(raw_score >= float(self.image_threshold)),
                    pred_mask=raw_map >= float(self.pixel_threshold), raw_score=raw_score, raw_map=raw_map))
            else:
                results.append(AnomalyResult(score=raw_score, anomaly_map=raw_map, raw_score=raw_score,
                                             raw_map=raw_map))
        return results

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, loader: Iterable[dict]) -> None:
        """Fit the per-position Gaussians on ``loader`` (normal images), holding out every
        k-th image for the thresholds, then calibrate on the held-out images."""
        from tqdm import tqdm

        self.eval()
        ratio = self.calibration.val_ratio
        k = max(2, round(1.0 / ratio)) if ratio > 0 else 0
        dataset = getattr(getattr(loader, "loader", loader), "dataset", None)
        total = len(dataset) if dataset is not None else None
        acc = StreamingGaussian(self.grid[0] * self.grid[1], self.num_features, self.chunk_positions)
        held: list[tuple[torch.Tensor, str]] = []
        seen = skipped = 0
        bar = tqdm(total=total, desc="PaDiM fit", unit="img", disable=None, leave=False)
        for batch in loader:
            images = batch["image"]
            n = images.shape[0]
            paths = [str((m or {}).get("path", f"#{seen + j}")) for j, m in enumerate(batch.get("meta") or [None] * n)]
            hold = [k > 0 and (seen + j) % k == k - 1 for j in range(n)]
            defective = batch.get("is_defective")
            bad = [j for j in range(n) if defective is not None and int(defective[j]) == 1]
            skipped += len(bad)
            keep = [j for j in range(n) if not hold[j] and j not in bad]
            hold = [h and j not in bad for j, h in enumerate(hold)]
            held += [(images[j].cpu(), paths[j]) for j in range(n) if hold[j]]
            for a in range(0, len(keep), self.fit_micro_batch):
                emb = self.embed(self.preprocess(images[keep[a:a + self.fit_micro_batch]]))
                acc.update(emb.flatten(2).permute(2, 0, 1))
            seen += n
            bar.update(n)
        bar.close()
        if skipped:
            msg = f"PaDiM.fit: skipped {skipped} training images labelled defective (PaDiM fits normal images only)"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)
        if acc.n == 0:
            raise ValueError("PaDiM.fit: no training image (the training set is empty or every "
                             "image was held out; lower model.calibration.val_ratio)")
        if acc.n < 2:
            msg = (f"PaDiM.fit: {acc.n} training image: the covariance is undefined (N - 1 = 0); "
                   f"using Σ = ε·I (ε = {self.epsilon}) at every position")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)
        self.mean.copy_(acc.mean().float().to(self.mean.device))
        eye = torch.eye(self.num_features, dtype=torch.float64)
        for a, b, cov in acc.covariances(self.epsilon):
            # Σ = L Lᵀ  ->  Σ⁻¹ = L⁻ᵀ L⁻¹; store F = L⁻ᵀ (upper triangular): δᵀΣ⁻¹δ = ‖Fᵀδ‖²,
            # a sum of squares (no cancellation, which is what makes float16 storage usable)
            l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye, upper=False)
            f = self.precision_factor
            f[a:b] = l_inv.transpose(1, 2).to(f.dtype).to(f.device)
        num_fit = acc.n
        del acc
        self.fitted.fill_(True)
        self.record = {"num_train": int(num_fit), "train_held_out": [p for _, p in held], "skipped_defective": skipped,
                       "sources": []}
        self._val_maps = []
        for a in range(0, len(held), 16):
            chunk = held[a:a + 16]
            imgs = torch.stack([im for im, _ in chunk]).to(self.mean.device)
            self._add_val(self.raw_maps(imgs), [0] * len(chunk), [None] * len(chunk), [p for _, p in chunk])
        self._fit_thresholds()

    @torch.no_grad()
    def calibrate(self, loader: Iterable[dict]) -> None:
        """Add labelled validation images (``is_defective``, optional ``mask``) to the
        held-out training normals and refit thresholds and min-max normalisation."""
        self.eval()
        for batch in loader:
            maps = self.raw_maps(batch["image"])
            n = maps.shape[0]
            labels = batch.get("is_defective")
            labels = [int(v) for v in labels] if labels is not None else [0] * n
            masks = batch.get("mask")
            masks = [masks[i] if masks is not None else None for i in range(n)]
            paths = [str((m or {}).get("path", "")) for m in (batch.get("meta") or [None] * n)]
            self._add_val(maps, labels, masks, paths)
        self._fit_thresholds()

    def _add_val(self, maps: torch.Tensor, labels, masks, paths) -> None:
        for i in range(maps.shape[0]):
            m = maps[i, 0].float().cpu()
            mask = masks[i]
            if mask is not None:
                mask = mask.cpu() > 0
                if mask.shape != m.shape:     # a mask in other geometry cannot calibrate pixels
                    mask = None
            self._val_maps.append((float(m.max()), int(labels[i]), m, mask, paths[i]))

    def _fit_thresholds(self) -> None:
        vals = self._val_maps
        cal = self.calibration
        if not vals:
            msg = ("PaDiM: no validation image (calibration.val_ratio is 0 and no data.val): thresholds "
                   "and normalisation are not fitted; predictions carry raw scores and no labels")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            logger.warning(msg)
            return
        scores = torch.tensor([v[0] for v in vals], dtype=torch.float64)
        labels = torch.tensor([v[1] for v in vals])
        if labels.min() == 0 and labels.max() == 1:
            img_t, img_method = f1_adaptive_threshold(scores, labels), "f1_adaptive"
        else:
            img_t, img_method = float(torch.quantile(scores[labels == 0] if (labels == 0).any() else scores,
                                                     cal.image_quantile)), f"quantile_{cal.image_quantile}"
        pix = torch.cat([v[2].flatten() for v in vals]).double()
        with_mask = [v for v in vals if v[3] is not None or v[1] == 0]
        gt = torch.cat([(v[3] if v[3] is not None else torch.zeros_like(v[2], dtype=torch.bool)).flatten()
                        for v in with_mask])
        pix_m = torch.cat([v[2].flatten() for v in with_mask]).double()
        if gt.any() and not gt.all():
            px_t, px_method = f1_adaptive_threshold(pix_m, gt.long()), "f1_adaptive"
        else:
            normal = pix_m[~gt] if (~gt).any() else pix
            if normal.numel() > 2_000_000:    # torch.quantile's input limit; an even subsample
                normal = normal[:: math.ceil(normal.numel() / 2_000_000)]
            px_t, px_method = float(torch.quantile(normal, cal.pixel_quantile)), f"quantile_{cal.pixel_quantile}"
        for name, v in (("image_threshold", img_t), ("pixel_threshold", px_t),
                        ("image_min", scores.min()), ("image_max", scores.max()),
                        ("pixel_min", pix.min()), ("pixel_max", pix.max())):
            getattr(self, name).fill_(float(v))
        self.record.update({
            "sources": [v[4] for v in vals], "num_val": len(vals), "num_val_abnormal": int(labels.sum()),
            "image_threshold_method": img_method, "pixel_threshold_method": px_method})
        logger.info("PaDiM thresholds on %d validation images (%d abnormal): image %.4f (%s), pixel %.4f (%s)",
                    len(vals), int(labels.sum()), img_t, img_method, px_t, px_method)
        if len(vals) < MIN_CALIBRATION_IMAGES:
            held = len(self.record.get("train_held_out", []))
            logger.warning(
                "PaDiM: thresholds and score normalisation rest on only %d validation images (%d held out "
                "of the training set, %d from data.val; fewer than %d): the threshold is an extreme of %d "
                "scores and min-max spans only %.4g..%.4g, so the normalised scores and maps of new images "
                "mostly clamp to 0 or 1 and pred_label / image_f1 are unreliable (AUROC, AUPRO and F1-max use "
                "raw scores and are not affected). Add labelled images as `data.val` (e.g. a "
                "FolderAnomalyDataset with normal_dir, abnormal_dir, mask_dir; docs/padim.md) or raise "
                "model.calibration.val_ratio (now %g)", len(vals), held, len(vals) - held,
                MIN_CALIBRATION_IMAGES, len(vals), float(scores.min()), float(scores.max()), cal.val_ratio)

    def statistics_bytes(self) -> int:
        """Bytes of the fitted statistics (mean, precision, channel indices / projection)."""
        tensors = [self.mean, self.precision_factor, self.channel_idx]
        if self.projection is not None:
            tensors.append(self.projection)
        return sum(t.numel() * t.element_size() for t in tensors)

