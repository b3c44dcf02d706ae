"""Build models, datasets, evaluators and loaders from config dicts.

Shared by the trainer and the tools (``tools/test.py``, ``tools/benchmark.py``).
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Any, Iterable

import torch
from torch.utils.data import DataLoader

from ..data.collate import EvalSamples, collate, is_empty_batch, to_device
from ..config import ConfigError, load_config
from ..data.formats.common import DataFormatError
from ..models.base import BaseModel
from ..registry import DATASETS, EVALUATORS, MODELS, Registry
from .distributed import get_rank, get_world_size
from .logger import get_logger
from .sampler import InferenceSampler, TrainSampler
from .seeding import mix_seed, worker_init_fn



def accepts(obj: Any, name: str) -> bool:
    """Whether the constructor/function ``obj`` takes a keyword argument ``name``."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_with_defaults(registry: Registry, cfg: dict, **defaults: Any) -> Any:
    """``registry.build(cfg)`` adding each ``defaults`` entry the constructor accepts and
    the config does not set (config keys always win)."""
    obj = registry.get(cfg["type"])
    extra = {k: v for k, v in defaults.items()
             if v is not None and k not in cfg and accepts(obj, k)}
    return registry.build(cfg, **extra)


def check_classes(model_classes: list[str] | None, data_classes: list[str], where: str) -> list[str]:
    """The class list to evaluate with: the checkpoint's (``model_classes``, may be None) when
    it equals the data's, in order; raises ConfigError naming ``where`` (e.g. ``data.test``)
    when they differ, since predictions and ground truth are compared by class index."""
    data_classes = list(data_classes)
    if model_classes and list(model_classes) != data_classes:
        raise ConfigError(
            f"{where}: the checkpoint's classes {list(model_classes)} differ from the data's "
            f"{data_classes} (labels are compared by index); test on data with the same classes "
            "in the same order (the readers take `classes:`) or with a checkpoint trained on them")
    return list(model_classes or data_classes)


def build_model(model_cfg: dict, classes: list[str] | None = None) -> torch.nn.Module:
    """Build ``model_cfg`` telling it the dataset's classes when the config does not:
    a constructor that takes ``classes`` gets the names (and derives its own output
    count from them and its other options); otherwise ``num_classes=len(classes)`` is
    passed when the constructor takes it.

    A composite model (``BaseModel.model_parts``, e.g. ``TwoModelDetector``) gets its parts
    BUILT here first: each part's config is a model dict or the path of a config file whose
    ``model`` section is used (``ValueError`` naming ``model.<part>`` when it has none); a
    part marked to take the classes gets ``classes`` (or the composite's ``num_classes``)
    unless its own config sets them."""
    check_pretrained(model_cfg)
    model_cls = MODELS.get(model_cfg["type"])
    defaults: dict[str, Any] = {}
    if classes is not None:
        if accepts(model_cls, "classes"):
            defaults = {"classes": list(classes)}
        else:
            defaults = {"num_classes": len(classes)}
    try:
        return build_with_defaults(MODELS, _build_parts(model_cls, model_cfg, classes), **defaults)
    except (ConfigError, DataFormatError):
        raise
    except ValueError as e:   # a constructor's own value check: a config error of the model section
        raise ConfigError(f"model ({model_cfg['type']}): {e}") from e


def _build_parts(model_cls: Any, model_cfg: dict, classes: list[str] | None) -> dict:
    """``model_cfg`` with every declared model part replaced by the built module."""
    parts = model_cls.model_parts if inspect.isclass(model_cls) and issubclass(model_cls, BaseModel) else {}
    cfg = dict(model_cfg)
    for key, takes_classes in parts.items():
        if cfg.get(key) is None or isinstance(cfg[key], torch.nn.Module):    # absent / null: not used
            continue
        part = dict(part_config(cfg[key], f"model.{key}"))
        part_classes = None
        if takes_classes and "classes" not in part and "num_classes" not in part:
            part_classes = cfg.get("classes", classes)
            if part_classes is None and cfg.get("num_classes") is not None:
                part["num_classes"] = cfg["num_classes"]
        cfg[key] = build_model(part, part_classes)
    return cfg


def part_config(spec: dict | str, key: str) -> dict:
    """A part's model dict as given, or the ``model`` section of the config file ``spec``
    (``key`` such as ``model.detector`` names it in errors)."""
    if isinstance(spec, dict):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"{key}: expected a model dict or a config file path, got {type(spec).__name__}")
    cfg = load_config(spec)
    if not isinstance(cfg.get("model"), dict):
        raise ValueError(f"{key}: config file {spec} has no `model` section")
    return cfg["model"]


def check_pretrained(model_cfg: dict) -> None:
    """A ``pretrained:`` that names a local file must exist; say which key, and how to
    get the file, before any weights are built (it is often another config's checkpoint,
    e.g. the tiny DefectNet configs start from the demo classifier's backbone)."""
    path = model_cfg.get("pretrained")
    if isinstance(path, str) and "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.pretrained: weights file '{path}' not found (cwd {os.getcwd()}). If it is "
            f"another config's checkpoint (see the config's comments), train that config first; "
            f"or pass --cfg-options model.pretrained=null to start from random weights.")


def loads_own_weights(model_cfg: dict) -> bool:
    """Whether the model loads its trained weights itself (``TwoModelDetector`` from its
    parts' checkpoints), so that tools need no checkpoint for it. Unknown types: False."""
    model_type = model_cfg.get("type")
    return model_type in MODELS and bool(getattr(MODELS.get(model_type), "loads_own_weights", False))


def build_dataset(dataset_cfg: dict) -> Any:
    """Build a dataset config; a constructor's own value check (``ValueError``) becomes a
    ``ConfigError`` naming the dataset type (file problems stay ``DataFormatError``)."""
    try:
        return DATASETS.build(dataset_cfg)
    except (ConfigError, DataFormatError):
        raise
    except ValueError as e:
        raise ConfigError(f"dataset ({dataset_cfg.get('type')}): {e}") from e


def build_evaluator(eval_cfg: dict, classes: list[str] | None = None, dataset: Any = None) -> Any:
    """Build ``eval_cfg`` with the runtime defaults ``classes`` and, for evaluators whose
    constructor takes it, ``dataset`` (the evaluated dataset: e.g. the detection evaluator
    reads ground truth in original image pixels from ``dataset.records``)."""
    return build_with_defaults(EVALUATORS, eval_cfg, classes=list(classes) if classes is not None else None,
                               dataset=dataset)


def dataset_classes(dataset: Any, cfg: dict | None = None) -> list[str] | None:
    classes = getattr(dataset, "classes", None)
    if classes is None and cfg is not None:
        classes = cfg.get("classes")
    return list(classes) if classes is not None else None


def build_train_loader(dataset: Any, batch_size: int, sampler: TrainSampler, epoch: int,
                       num_workers: int = 0, drop_last: bool = False, seed: int = 0,
                       pin_memory: bool = False) -> DataLoader:
    """A fresh loader for one epoch (the trainer rebuilds it every epoch so that
    ``dataset.set_epoch`` reaches the workers); worker seeds depend on (seed, epoch, rank)."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, epoch, sampler.rank, 1))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=worker_init_fn if num_workers > 0 else None, generator=g)


def build_eval_loader(dataset: Any, batch_size: int = 1, num_workers: int = 0,
                      pin_memory: bool = False, distributed: bool = True) -> DataLoader:
    """Ordered loader over this rank's contiguous, unpadded shard (whole set when alone).
    It reads through ``EvalSamples``: with ``skip_invalid`` an unreadable sample is dropped
    and listed in ``batch["skipped"]``, never replaced (see ``data/collate.py``)."""
    rank, world = (get_rank(), get_world_size()) if distributed else (0, 1)
    sampler = InferenceSampler(len(dataset), rank, world)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(EvalSamples(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      worker_init_fn=worker_init_fn if num_workers > 0 else None, generator=g)


def iters_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


class DeviceLoader:
    """Wraps a loader so it yields batches already on ``device`` (what ``model.fit`` gets)."""

    def __init__(self, loader: Iterable, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            if is_empty_batch(batch):        # every sample of it was unreadable (skip_invalid)
                continue
            yield to_device(batch, self.device, non_blocking=self.device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)


def init_model(cfg: dict, checkpoint: str | None = None, device: str | torch.device | None = None,
               strict: bool = True, use_ema: bool = True) -> tuple[torch.nn.Module, dict]:
    """A model for inference: built from ``cfg['model']`` with the classes stored in the
    checkpoint (else the config's test/val dataset is not opened: ``cfg['classes']``),
    weights loaded, moved to ``device`` and put in eval mode. Returns ``(model, meta)``.

    ``use_ema``: when the checkpoint holds an EMA entry (``ckpt["ema"]["state_dict"]``,
    written by ``train.ema``), load those averaged weights instead of the raw ones
    (``False``: the raw ``state_dict``); which ones were used is logged and recorded in
    ``meta["weights"]`` (``"ema"`` or ``"raw"``).

    Errors (``CheckpointError``, naming the file): the file cannot be read or is not a
    checkpoint; it was saved from another model type than ``cfg['model']['type']``
    (checked before the model is built; skipped with ``strict=False``); with ``strict``,
    its weights do not match. A checkpoint holding NaN/Inf tensors loads with a
    ``RuntimeWarning`` naming them."""
    import warnings

    from .checkpoint import (check_model_type, describe_nonfinite, has_ema, load_checkpoint, load_state_dict,
                             nonfinite_tensors, select_weights)

    meta: dict = {}
    ckpt = None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        if strict:
            check_model_type(ckpt, cfg["model"].get("type"), str(checkpoint), "testing or inference")
        meta = ckpt.get("meta") or {}
    classes = meta.get("classes") or cfg.get("classes")
    model = build_model(cfg["model"], classes)
    if ckpt is not None:
        state, weights = select_weights(ckpt, str(checkpoint), use_ema)
        meta = {**meta, "weights": weights}
        get_logger().info(f"{checkpoint}: using the {'EMA' if weights == 'ema' else 'raw'} weights"
                  + (" (the checkpoint has EMA weights; pass use_ema=True / drop --no-ema to use them)"
                     if weights == "raw" and has_ema(ckpt) else ""))
        bad = nonfinite_tensors(state)
        if bad:
            warnings.warn(f"{checkpoint}: {describe_nonfinite(bad, len(state))}: its predictions will be "
                          f"NaN or meaningless (the training diverged); use an earlier checkpoint",
                          RuntimeWarning, stacklevel=2)
        load_state_dict(model, state, strict=strict, source=str(checkpoint))
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    return model, meta
