"""Metrics of generated (image, mask) pairs: ``GenerationEvaluator`` (issue 12, "Measuring
generated data"); the formulas are in :mod:`defectkit.evaluation.generation_metrics`.

    evaluation:
      type: GenerationEvaluator
      alignment: {config: configs/znet/unet_tiny_synth.yaml, checkpoint: work_dirs/unet/latest.pth}
      reference: *train_set            # the real TRAINING images (memorisation, FID); a DATASETS dict
      copy_ssim_threshold: 0.95
      max_reference: 500
      fid: {inception_weights: weights/weights-inception-2015-12-05-6726825d.pth}

Every result must carry ``image`` float (3, H, W) in [0, 1] and ``mask`` int (H, W) class
index (``GenerationResult``; read by attribute, so this module never imports the models
layer); ``seed`` and ``stage_seconds`` are used when present.

Reported (``compute``): ``num_samples``; ``samples.<class>`` (a sample's class is its
largest defect class, ``normal`` without defect pixels); ``defect_pixel_share`` (defect
pixels / all pixels) and ``pixel_share.<class>``; ``msssim_diversity`` and
``msssim_diversity.<class>`` (mean pairwise MS-SSIM within a class, lower = more diverse,
``msssim_scales`` scales: 3 at 64 px, see ``generation_metrics.msssim_betas``);
``copy_share`` (share of samples whose nearest reference image has SSIM >
``copy_ssim_threshold``) and ``nn_ssim_mean``; with ``alignment``: ``alignment_defect_iou``
(mean over samples of the foreground IoU between the segmenter's prediction and the
generated mask, 1.0 when both are empty), ``alignment_defect_iou_pooled`` (the same IoU
over all pixels of all samples), ``alignment_miou`` (mmseg mIoU of the summed confusion
matrix, background included) and ``alignment_iou.<class>``; with ``fid``: ``fid``,
``kid_mean``, ``kid_std``. A metric that is NaN or skipped has a ``<metric>_note`` saying why.

Layering (docs/architecture.md): evaluation imports neither ``defectkit.models`` nor
``defectkit.engine``, so the alignment segmenter is built from the bottom row only: its
config with ``defectkit.config.load_config``, the model with the ``MODELS`` registry, its
input pipeline with ``TRANSFORMS``, and the checkpoint read with ``defectkit.checkpoint_io``
(``weights_only=True``; the EMA entry ``ckpt["ema"]["state_dict"]`` when present).
"""
from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint_io import CheckpointError, check_model_type, load_checkpoint, load_state_dict, select_weights
from ..config import ConfigError, load_config, parse_options
from ..registry import DATASETS, EVALUATORS, MODELS, TRANSFORMS
from .base import BaseEvaluator, batch_meta, format_table, metric_notes
from .generation_metrics import (INCEPTION_FILE, INCEPTION_URL, InceptionUnavailable, alignment_iou,
                                 fid_kid, inception_extractor, memorisation, msssim_betas,
                                 msssim_diversity, resize_images, sample_class, to_uint8)
from .segmentation import dataset_metrics

logger = logging.getLogger("defectkit")


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------- options
@dataclass
class AlignmentOptions:
    """``evaluation.alignment``: the segmenter trained on the real data."""
    config: str | None = None           # its config file (``model`` and the ``data.test`` pipeline)
    checkpoint: str | None = None       # its checkpoint (``meta.classes`` names its classes)
    use_ema: bool = True                # the checkpoint's EMA weights when it has them
    batch_size: int = 16

    def __post_init__(self):
        for key, what in (("config", "the segmenter's config file"), ("checkpoint", "its checkpoint file")):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"evaluation.alignment.{key}: required ({what}), got {getattr(self, key)!r}")
        if self.batch_size < 1:
            raise ValueError(f"evaluation.alignment.batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class FIDOptions:
    """``evaluation.fid``: FID / KID with a local Inception weights file."""
    inception_weights: str | None = None   # torch-fidelity's weights-inception-2015-12-05-6726825d.pth
    feature: int = 2048                    # Inception feature layer: 64, 192, 768 or 2048
    kid_subsets: int = 100
    kid_subset_size: int = 1000            # capped at the number of images

    def __post_init__(self):
        if self.feature not in (64, 192, 768, 2048):
            raise ValueError(f"evaluation.fid.feature: must be 64, 192, 768 or 2048, got {self.feature}")
        if self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise ValueError("evaluation.fid: kid_subsets must be >= 1 and kid_subset_size >= 2")


# -------------------------------------------------------------------- alignment model
class AlignmentSegmenter:
    """A trained segmenter that predicts class-index masks of generated images.

    ``model``: a built segmenter in eval mode whose ``predict(batch)`` returns results with
    ``mask`` (H, W) in the pixels of ``meta.orig_size``; ``pipeline``: its test transforms
    (sample dict -> sample dict, e.g. ``Resize``); ``classes``: its defect class names."""

    def __init__(self, model: torch.nn.Module, classes: Sequence[str] | None, pipeline: Sequence[Any] = (),
                 device: str | torch.device | None = None, source: str = "segmenter", batch_size: int = 16):
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.classes = list(classes) if classes is not None else None
        self.pipeline = list(pipeline)
        self.source = source
        self.batch_size = int(batch_size)

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else 1 + len(self.classes)

    def _input(self, image01: torch.Tensor) -> dict:
        from torchvision import tv_tensors

        h, w = image01.shape[-2:]
        sample = {"image": tv_tensors.Image(image01.float().clamp(0, 1)),
                  "meta": {"orig_size": (int(h), int(w))}}
        for t in self.pipeline:
            sample = t(sample)
        return sample

    @torch.no_grad()
    def predict_masks(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, H, W) int64 predicted class indices (CPU)."""
        out = []
        for s in range(0, len(images01), self.batch_size):
            samples = [self._input(im) for im in images01[s:s + self.batch_size].cpu()]
            shapes = {tuple(x["image"].shape) for x in samples}
            if len(shapes) != 1:
                raise ValueError(f"{self.source}: its test pipeline gives inputs of different sizes {shapes}")
            batch = {"image": torch.stack([x["image"].as_subclass(torch.Tensor) for x in samples]).to(self.device),
                     "meta": [x["meta"] for x in samples]}
            out += [torch.as_tensor(r.mask).long().cpu() for r in self.model.predict(batch)]
        return torch.stack(out) if out else torch.zeros(0, *images01.shape[-2:], dtype=torch.long)


def load_alignment_segmenter(config: str | dict, checkpoint: str, device: str | torch.device | None = None,
                             use_ema: bool = True, batch_size: int = 16) -> AlignmentSegmenter:
    """Build the segmenter of ``config`` (a config file path or a loaded config dict) with
    the classes stored in ``checkpoint`` (``meta.classes``; else the config's data classes),
    load its weights strictly (EMA entry when ``use_ema`` and present) and take its
    ``data.test`` (else ``data.val``) pipeline as input transforms.

    The checkpoint is read, type-checked and loaded with the bottom layer's
    ``checkpoint_io`` (``load_checkpoint``, ``check_model_type``, ``select_weights``,
    ``load_state_dict``: the same code as the engine's ``init_model``, which this layer may
    not import): a ``CheckpointError`` naming the file when it is missing or unreadable, of
    another model type, or its weights do not match; a ``ConfigError`` for the config."""
    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    where = str(config) if isinstance(config, (str, os.PathLike)) else "alignment config"
    model_cfg = cfg.get("model")
    if not isinstance(model_cfg, dict) or "type" not in model_cfg:
        raise ConfigError(f"{where}: no `model` section with a type")
    ckpt = load_checkpoint(str(checkpoint))
    check_model_type(ckpt, model_cfg["type"], str(checkpoint), f"the alignment segmenter ({where})")
    state, weights = select_weights(ckpt, str(checkpoint), use_ema)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    data = cfg.get("data") or {}
    split = data.get("test") or data.get("val") or {}
    classes = meta.get("classes") or cfg.get("classes") or split.get("classes") \
        or (data.get("train") or {}).get("classes")
    model_cls = MODELS.get(model_cfg["type"])
    if getattr(model_cls, "model_parts", None):
        raise ConfigError(f"{where}: {model_cfg['type']} is a composite model; the alignment needs a plain segmenter")
    params = inspect.signature(model_cls).parameters
    extra: dict[str, Any] = {}
    if classes is not None and "classes" in params and "classes" not in model_cfg:
        extra["classes"] = list(classes)
    elif classes is not None and "num_classes" in params and "num_classes" not in model_cfg:
        extra["num_classes"] = 1 + len(classes)
    model = MODELS.build(model_cfg, **extra)
    load_state_dict(model, state, strict=True, source=f"{checkpoint} (the {model_cfg['type']} of {where})")
    pipeline = [TRANSFORMS.build(t) for t in (split.get("pipeline") or [])]
    logger.info("alignment segmenter: %s from %s (%s weights)", model_cfg["type"], checkpoint, weights)
    return AlignmentSegmenter(model, classes, pipeline, device, f"{where} + {checkpoint}", batch_size)


def alignment_scores(segmenter: AlignmentSegmenter, images01: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Per generated pair the defect (foreground) IoU between ``segmenter``'s prediction on
    ``images01`` (N, 3, H, W) float [0, 1] and ``masks`` (N, H, W) int (1.0 when both are
    empty): the score ``tools/generate.py --filter-alignment THR`` thresholds."""
    masks = torch.as_tensor(masks).long()
    if not len(masks):
        return []
    pred = segmenter.predict_masks(images01)
    c = max(segmenter.num_classes or 2, int(masks.max()) + 1, int(pred.max()) + 1)
    return [alignment_iou(p, m, c)["defect_iou"] for p, m in zip(pred, masks)]


# ------------------------------------------------------------------------- evaluator
@EVALUATORS.register()
class GenerationEvaluator(BaseEvaluator):
    """Args:
        classes: defect class names (runtime default: the dataset's); class 0 is background.
        alignment: ``AlignmentOptions`` (``{config, checkpoint, use_ema, batch_size}``) or None.
        reference: a DATASETS config of the real TRAINING images (memorisation, FID), resized
            to the generated size; its pipeline is applied as written (prefer one without
            random transforms). None: the real images of the evaluated batches.
        copy_ssim_threshold: a sample is a copy when its nearest reference has SSIM above it.
        max_reference: the first this many reference images are used.
        nn_candidates: the nearest neighbour is searched among the references nearest in
            pixel L2 (null: exhaustive SSIM over all of them).
        max_pairs: at most this many random pairs per class for MS-SSIM (``seed``).
        fid: ``FIDOptions`` (``{inception_weights, feature, kid_subsets, kid_subset_size}``) or None.
        device: where the segmenter and the SSIM computations run (None: CUDA when available).
        num_preview: samples drawn in ``generated_grid.png``.
    """

    config_children = {"reference": DATASETS}
    main_metric = "msssim_diversity"       # "alignment_defect_iou" (higher is better) with `alignment`
    greater_is_better = False
    table_columns = (("align defect IoU", "alignment_defect_iou", 3), ("MS-SSIM", "msssim_diversity", 3),
                     ("copy share", "copy_share", 3), ("FID", "fid", 2), ("s/sample", "sec_per_sample", 3))

    def __init__(self, classes: list[str] | None = None, alignment: AlignmentOptions | dict | None = None,
                 reference: dict | None = None, copy_ssim_threshold: float = 0.95, max_reference: int = 500,
                 nn_candidates: int | None = 32, max_pairs: int | None = 2000,
                 fid: FIDOptions | dict | None = None, device: str | None = None, num_preview: int = 16,
                 seed: int = 0):
        super().__init__()
        self.classes = list(classes) if classes is not None else None
        self.alignment = parse_options(AlignmentOptions, alignment, "evaluation.alignment")
        self.fid = parse_options(FIDOptions, fid, "evaluation.fid")
        if self.alignment is not None and not os.path.isfile(self.alignment.checkpoint):
            raise FileNotFoundError(f"evaluation.alignment.checkpoint: file not found: {self.alignment.checkpoint}")
        if not 0.0 < float(copy_ssim_threshold) <= 1.0:
            raise ConfigError(f"evaluation.copy_ssim_threshold: must be in (0, 1], got {copy_ssim_threshold}")
        if int(max_reference) < 1:
            raise ConfigError(f"evaluation.max_reference: must be >= 1, got {max_reference}")
        self.reference_cfg = reference
        self.copy_ssim_threshold = float(copy_ssim_threshold)
        self.max_reference = int(max_reference)
        self.nn_candidates = None if nn_candidates is None else int(nn_candidates)
        self.max_pairs = None if max_pairs is None else int(max_pairs)
        self.device = device
        self.num_preview = int(num_preview)
        self.seed = int(seed)
        self._segmenter: AlignmentSegmenter | None = None
        self._reference: torch.Tensor | None = None
        self._preview: list = []
        self.main_metric = "alignment_defect_iou" if self.alignment is not None else "msssim_diversity"
        self.greater_is_better = self.alignment is not None
        self.metric_directions = {**BaseEvaluator.metric_directions, **{k: False for k in (
            "msssim_diversity", "copy_share", "nn_ssim_mean", "fid", "kid_mean", "kid_std",
            "sec_per_sample", "sec_per_sample_large", "sec_per_sample_small")},
            **{k: True for k in ("alignment_defect_iou", "alignment_defect_iou_pooled", "alignment_miou")}}
        for name in self.class_names:
            self.metric_directions[f"msssim_diversity.{name}"] = False
            self.metric_directions[f"alignment_iou.{name}"] = True

    @property
    def class_names(self) -> list[str]:
        """Group names by class index: ``normal`` (no defect) then the defect classes."""
        return ["normal"] + list(self.classes or [])

    def _name(self, k: int) -> str:
        names = self.class_names
        return names[k] if k < len(names) else str(k)

    def reset(self) -> None:
        super().reset()
        self._preview = []

    # ------------------------------------------------------------------ per batch
    @property
    def segmenter(self) -> AlignmentSegmenter | None:
        if self.alignment is not None and self._segmenter is None:
            a = self.alignment
            try:
                self._segmenter = load_alignment_segmenter(a.config, a.checkpoint, self.device, a.use_ema,
                                                           a.batch_size)
            except (ConfigError, CheckpointError) as e:
                raise type(e)(f"evaluation.alignment: {e}") from e
            seg, gen = self._segmenter.classes, self.classes
            if seg is not None and gen is not None and list(seg) != list(gen):
                raise ConfigError(f"evaluation.alignment: the segmenter ({a.checkpoint}) has classes {list(seg)} "
                                 f"but the generated masks use {list(gen)}")
        return self._segmenter

    def process(self, batch: dict, results: list) -> None:
        images, masks = [], []
        for i, r in enumerate(results):
            image, mask = getattr(r, "image", None), getattr(r, "mask", None)
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 \
                    or not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(image.shape[-2:]):
                raise TypeError(f"GenerationEvaluator: expected results with image (3, H, W) and mask (H, W) "
                                f"(GenerationResult), got {type(r).__name__}")
            image, mask = image.detach().float().cpu(), mask.detach().long().cpu()
            meta = batch_meta(batch, i)
            rec = {"id": meta.get("id", len(self.records)), "seed": int(getattr(r, "seed", 0) or 0),
                   "image": to_uint8(image).numpy(),
                   "mask": mask.numpy().astype(np.uint8 if int(mask.max()) < 256 else np.int32),
                   "stage_seconds": {k: float(v) for k, v in (getattr(r, "stage_seconds", None) or {}).items()}}
            if self.reference_cfg is None and isinstance(batch.get("image"), torch.Tensor) and i < len(batch["image"]):
                h, w = (batch.get("image_sizes") or [batch["image"].shape[-2:]] * len(results))[i]
                real = batch["image"][i, :, :int(h), :int(w)].detach().float().cpu()
                rec["real"] = to_uint8(resize_images(real[None], tuple(image.shape[-2:]))[0]).numpy()
            self.records.append(rec)
            images.append(image)
            masks.append(mask)
            if len(self._preview) < self.num_preview:
                self._preview.append(r)
        if self.segmenter is not None and images:
            k = max(2, self.segmenter.num_classes or 1 + len(self.classes or []))
            preds = self.segmenter.predict_masks(torch.stack(images))
            for rec, p, m in zip(self.records[-len(images):], preds, masks):
                c = max(k, int(m.max()) + 1, int(p.max()) + 1)
                a = alignment_iou(p, m, c)
                rec["align"] = {"defect_iou": a["defect_iou"], "cm": a["cm"].tolist()}

    # -------------------------------------------------------------------- metrics
    def _reference_images(self, size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
        """Reference images (M, 3, H, W) in [0, 1] at ``size`` and a description of them."""
        if self.reference_cfg is not None:
            if self._reference is None:
                ds = DATASETS.build(dict(self.reference_cfg))
                n = min(len(ds), self.max_reference)
                imgs = [torch.as_tensor(ds[i]["image"]).as_subclass(torch.Tensor).float().clamp(0, 1)[None]
                        for i in range(n)]
                self._reference = torch.cat([resize_images(x, size) for x in imgs]) if imgs else None
            src = f"evaluation.reference ({self.reference_cfg.get('type')})"
            return (None if self._reference is None else resize_images(self._reference, size)), src
        reals = [r["real"] for r in self.records if "real" in r][:self.max_reference]
        if not reals:
            return None, "none"
        return torch.from_numpy(np.stack(reals)).float() / 255, "the evaluated batches' real images"

    def compute(self) -> dict[str, Any]:
        if not self.records:
            raise RuntimeError("GenerationEvaluator.compute: no records (nothing was generated)")
        sizes = {tuple(r["mask"].shape) for r in self.records}
        if len(sizes) != 1:
            raise ValueError(f"GenerationEvaluator: generated samples have different sizes {sorted(sizes)}")
        size = sizes.pop()
        dev = _device(self.device)
        images = torch.from_numpy(np.stack([r["image"] for r in self.records])).float() / 255
        masks = np.stack([r["mask"].astype(np.int64) for r in self.records])
        n = len(masks)
        labels = [sample_class(m) for m in masks]
        num_groups = max(len(self.class_names), int(masks.max()) + 1)
        m: dict[str, Any] = {"num_samples": n}
        pixels = np.bincount(masks.reshape(-1), minlength=num_groups) / masks.size
        m["defect_pixel_share"] = float(pixels[1:].sum())
        counts = np.bincount(labels, minlength=num_groups)
        for k in range(num_groups):
            m[f"samples.{self._name(k)}"] = int(counts[k])
        for k in range(1, num_groups):
            m[f"pixel_share.{self._name(k)}"] = float(pixels[k])

        div = msssim_diversity(images, labels, self.max_pairs, self.seed, dev)
        m["msssim_diversity"] = div["overall"]
        if math.isnan(div["overall"]):
            m["msssim_diversity_note"] = f"no class has 2 generated samples among the {n} to compare"
        for k in range(num_groups):
            if counts[k]:
                m[f"msssim_diversity.{self._name(k)}"] = div["per_class"].get(k, (math.nan, 0))[0]
                if k not in div["per_class"]:
                    m[f"msssim_diversity.{self._name(k)}_note"] = "only 1 generated sample of this class"
        m["msssim_pairs"] = div["pairs"]
        m["msssim_scales"] = len(msssim_betas(*size))
        plain = " = plain SSIM" if m["msssim_scales"] == 1 else ""
        m["msssim_setting"] = (f"{m['msssim_scales']} of MS-SSIM's 5 scales at {size[0]}x{size[1]} px "
                               f"(11-px window; weights renormalised){plain}")

        ref, src = self._reference_images(size)
        m["memorisation_reference"] = src
        if ref is None or not len(ref):
            m["copy_share"] = m["nn_ssim_mean"] = math.nan
            m["copy_share_note"] = m["nn_ssim_mean_note"] = \
                "no real reference images (set evaluation.reference to the training set)"
        else:
            mem = memorisation(images, ref, self.copy_ssim_threshold, self.nn_candidates, dev)
            m["copy_share"], m["nn_ssim_mean"] = mem["copy_share"], mem["nn_ssim_mean"]
            m["num_reference"] = int(len(ref))
        m["copy_ssim_threshold"] = self.copy_ssim_threshold

        if self.alignment is not None:
            m.update(self._alignment_metrics(num_groups))
        m.update(self._fid_metrics(ref, images, dev))
        m["classes"] = [self._name(k) for k in range(num_groups)]
        return m

    def _alignment_metrics(self, num_groups: int) -> dict[str, Any]:
        recs = [r["align"] for r in self.records if "align" in r]
        if not recs:
            return {"alignment_defect_iou": math.nan, "alignment_miou": math.nan,
                    "alignment_defect_iou_note": "no sample went through the alignment segmenter"}
        c = max(len(a["cm"]) for a in recs)
        cm = np.zeros((c, c), np.int64)
        for a in recs:
            k = len(a["cm"])
            cm[:k, :k] += np.asarray(a["cm"], np.int64)
        union = cm.sum() - cm[0, 0]
        d = dataset_metrics(cm)
        out = {"alignment_defect_iou": float(np.mean([a["defect_iou"] for a in recs])),
               "alignment_defect_iou_pooled": float(cm[1:, 1:].sum() / union) if union else 1.0,
               "alignment_miou": d["mIoU"]}
        for k in range(max(c, num_groups)):
            name = "background" if k == 0 else self._name(k)
            out[f"alignment_iou.{name}"] = float(d["iou"][k]) if k < c else math.nan
        return out

    def _fid_metrics(self, ref: torch.Tensor | None, images: torch.Tensor, dev: torch.device) -> dict[str, Any]:
        nan = {"fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan}
        if self.fid is None or not self.fid.inception_weights:
            note = (f"skipped: set evaluation.fid.inception_weights to the local file {INCEPTION_FILE} "
                    f"(torch-fidelity's Inception v3, {INCEPTION_URL}; needs `pip install torch-fidelity`)")
        elif ref is None or min(len(ref), len(images)) < 2:
            note = "FID/KID need >= 2 real reference and >= 2 generated images"
        else:
            try:
                ext = inception_extractor(self.fid.inception_weights, self.fid.feature)
                r = fid_kid(to_uint8(ref), to_uint8(images), ext, self.fid.kid_subsets,
                            self.fid.kid_subset_size, dev)
                return {"fid": r["fid"], "kid_mean": r["kid_mean"], "kid_std": r["kid_std"],
                        "kid_subset_size": r["kid_subset_size"]}
            except InceptionUnavailable as e:
                note = str(e)
                logger.warning("FID/KID skipped: %s", note)
        return {**nan, "fid_note": note, "kid_mean_note": "see fid_note", "kid_std_note": "see fid_note"}

    # --------------------------------------------------------------------- timing
    def add_timing(self, metrics: dict[str, Any], times: Sequence[tuple[float, Any]],
                   results: Sequence[Any] | None = None) -> str | None:
        """``sec_per_sample`` (mean over samples of the summed ``stage_seconds``) and
        ``sec_per_sample_<stage>``, from ``results`` when given, else from the records."""
        rows = [dict(getattr(r, "stage_seconds", None) or {}) for r in results] if results is not None \
            else [r.get("stage_seconds") or {} for r in self.records]
        rows = [r for r in rows if r]
        if not rows:
            return None
        stages = sorted({k for r in rows for k in r})
        metrics["sec_per_sample"] = float(np.mean([sum(r.values()) for r in rows]))
        for s in stages:
            metrics[f"sec_per_sample_{s}"] = float(np.mean([r.get(s, 0.0) for r in rows]))
        parts = ", ".join(f"{s} {metrics[f'sec_per_sample_{s}']:.3f}" for s in stages)
        return f"generation: {metrics['sec_per_sample']:.3f} s/sample ({parts}) over {len(rows)} samples"

    # -------------------------------------------------------------------- reports
    def summary(self, metrics: dict[str, Any]) -> str:
        names = metrics.get("classes") or self.class_names
        rows = [[c, metrics.get(f"samples.{c}", 0), 100 * metrics.get(f"pixel_share.{c}", math.nan)
                 if c != "normal" else math.nan, metrics.get(f"msssim_diversity.{c}", math.nan),
                 metrics.get(f"alignment_iou.{c}", math.nan)] for c in names
                if c != "normal" or metrics.get("samples.normal")]
        out = [format_table(["class", "samples", "pixels %", "MS-SSIM", "align IoU"], rows, digits=3)]
        f = lambda k: "nan" if math.isnan(float(metrics.get(k, math.nan))) else f"{metrics[k]:.4f}"  # noqa: E731
        out.append(f"{metrics['num_samples']} samples, defect pixels {100 * metrics['defect_pixel_share']:.2f}%; "
                   f"diversity: mean pairwise MS-SSIM {f('msssim_diversity')} over {metrics.get('msssim_pairs', 0)} "
                   f"same-class pairs (lower = more diverse; {metrics.get('msssim_setting', '')})")
        out.append(f"memorisation: copy share {f('copy_share')} (nearest real SSIM > "
                   f"{metrics.get('copy_ssim_threshold')}), mean nearest SSIM {f('nn_ssim_mean')}, "
                   f"reference: {metrics.get('memorisation_reference')}")
        if "alignment_defect_iou" in metrics:
            out.append(f"alignment: defect IoU {f('alignment_defect_iou')} (mean per sample), pooled "
                       f"{f('alignment_defect_iou_pooled')}, mIoU {f('alignment_miou')}")
        out.append(f"FID {f('fid')}  KID {f('kid_mean')} ± {f('kid_std')}")
        return "\n".join(out + metric_notes(metrics))

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """``generated_grid.png`` (image | colour mask of the first ``num_preview`` samples,
        drawn by the result's registered drawer) and ``diversity_per_class.png``."""
        from ..visualization import draw_result, make_grid

        os.makedirs(out_dir, exist_ok=True)
        paths = []
        if self._preview:
            tiles = [draw_result(r.image, r, class_names=self.classes) for r in self._preview]
            p = os.path.join(out_dir, "generated_grid.png")
            make_grid(tiles, ncols=4).save(p)
            paths.append(p)
        bars = {k.split(".", 1)[1]: v for k, v in metrics.items()
                if k.startswith("msssim_diversity.") and not k.endswith("_note") and not math.isnan(v)}
        if bars:
            paths.append(_bar_plot(bars, os.path.join(out_dir, "diversity_per_class.png"),
                                   f"mean pairwise MS-SSIM per class\n(lower = more diverse; "
                                   f"{metrics.get('msssim_scales')} scales)"))
        return paths


def _bar_plot(values: dict[str, float], path: str, title: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.8 * len(values) + 2), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(list(values), list(values.values()), color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("MS-SSIM")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
