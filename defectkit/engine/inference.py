"""One inference loop for validation during training and for ``tools/test.py``.

``run_inference`` calls ``model.predict(batch)`` under ``torch.no_grad`` for every batch,
feeds ``evaluator.process(cpu_batch, results)``, times the model call per image
(CUDA-synchronised; batch time / batch size) next to each image's ``is_defective``, and
in a multi-process run gathers the evaluator's records (and the results) on rank 0
before ``evaluator.compute()``.

Use it with a loader over an :class:`~defectkit.engine.sampler.InferenceSampler`: its
contiguous, unpadded shards put each sample on exactly one rank, so the gathered
records count every sample once and come back in dataset order.

Unreadable samples (``skip_invalid: true``, read through ``build_eval_loader``) arrive as
``batch["skipped"]``: they are never predicted nor evaluated, and are listed in
``InferenceOutput.skipped`` (gathered, in dataset order) and in one warning, so every
metric's support is the readable images. Rank 0 shows a progress bar with ETA
(``defectkit.progress.track``: tqdm on a terminal, plain lines otherwise).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ..data.collate import SKIPPED, is_empty_batch, to_device
from ..data.formats.common import DataFormatError
from ..progress import track
from .distributed import all_gather_object, broadcast_object, get_world_size, is_main_process, unwrap_model


@dataclass
class InferenceOutput:
    """What one pass produced. On ranks other than 0, ``results``/``metas``/``times`` are
    this rank's own share; ``metrics`` and ``timing`` are the same on every rank."""

    metrics: dict | None = None                 # evaluator.compute(), None without evaluator
    results: list = field(default_factory=list)  # per-image results (dataset order on rank 0)
    metas: list = field(default_factory=list)    # per-image ``meta`` dicts (when the batch has them)
    times: list = field(default_factory=list)    # per-image (seconds, is_defective or None)
    timing: dict = field(default_factory=dict)   # att_ms, att_normal_ms, att_defective_ms, num_images
    skipped: list = field(default_factory=list)  # unreadable samples: {"index", "path", "error"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch: dict, results: list) -> int:
    img = batch.get("image") if isinstance(batch, dict) else None
    if isinstance(img, torch.Tensor):
        return int(img.shape[0])
    return len(results)


def summarize_times(times: Iterable[tuple[float, Any]]) -> dict[str, float]:
    """ATT (average time per image, ms): over all images, GT-normal and GT-defective ones."""
    times = list(times)

    def mean_ms(vals: list[float]) -> float:
        return 1000.0 * sum(vals) / len(vals) if vals else math.nan

    return {"att_ms": mean_ms([t for t, _ in times]),
            "att_normal_ms": mean_ms([t for t, d in times if d is not None and int(d) == 0]),
            "att_defective_ms": mean_ms([t for t, d in times if d is not None and int(d) == 1]),
            "num_images": len(times)}


def reset_evaluator(evaluator: Any) -> None:
    if hasattr(evaluator, "reset") and callable(evaluator.reset):
        evaluator.reset()
    else:
        evaluator.records = []


@torch.no_grad()
def run_inference(model: torch.nn.Module, loader: Iterable, evaluator: Any = None,
                  device: torch.device | str | None = None, time_model: bool = True,
                  keep_results: bool = True, amp: bool = False, desc: str = "eval") -> InferenceOutput:
    """Predict every batch of ``loader``; evaluate and gather across ranks.

    ``model``: DDP-wrapped or not (``predict`` goes to the inner module); put in eval mode
    here (its previous mode is restored at the end). ``device`` defaults to the model's.
    ``keep_results=False`` drops per-image results (saves memory for large outputs).
    ``desc`` labels the progress bar (rank 0 only). Samples listed in a batch's
    ``skipped`` entry are collected in ``out.skipped`` (every rank gets the full list).
    """
    model = unwrap_model(model)
    if device is None:
        p = next(iter(model.parameters()), None)
        p = p if p is not None else next(iter(model.buffers()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if evaluator is not None:
        reset_evaluator(evaluator)
    out = InferenceOutput()
    autocast = (torch.autocast(device_type="cuda") if amp and device.type == "cuda" else nullcontext())
    try:
        batches = track(loader, desc=desc, unit="batch") if is_main_process() else loader
        for batch in batches:
            if isinstance(batch, dict) and SKIPPED in batch:
                out.skipped.extend(batch[SKIPPED])
                if is_empty_batch(batch):
                    continue
                batch = {k: v for k, v in batch.items() if k != SKIPPED}
            dev_batch = to_device(batch, device, non_blocking=device.type == "cuda")
            if time_model:
                _sync(device)
            t0 = time.perf_counter()
            with autocast:
                results = model.predict(dev_batch)
            if time_model:
                _sync(device)
            dt = time.perf_counter() - t0
            n = _batch_size(batch, results)
            if len(results) != n:
                raise RuntimeError(f"{type(model).__name__}.predict returned {len(results)} results "
                                   f"for a batch of {n} images")
            if evaluator is not None:
                evaluator.process(batch, results)
            defect = batch.get("is_defective")
            defect = defect.tolist() if isinstance(defect, torch.Tensor) else (defect or [None] * n)
            out.times.extend((dt / n, d) for d in defect)
            if keep_results:
                out.results.extend(results)
                if "meta" in batch:
                    out.metas.extend(batch["meta"])
    finally:
        model.train(was_training)

    if get_world_size() > 1:
        parts = all_gather_object({"records": list(evaluator.records) if evaluator is not None else [],
                                   "results": out.results, "metas": out.metas, "times": out.times,
                                   "skipped": out.skipped})
        out.skipped = [s for p in parts for s in p["skipped"]]
        if is_main_process():
            if evaluator is not None:
                evaluator.records = [r for p in parts for r in p["records"]]
            out.results = [r for p in parts for r in p["results"]]
            out.metas = [m for p in parts for m in p["metas"]]
            out.times = [t for p in parts for t in p["times"]]
    out.skipped.sort(key=lambda s: s.get("index", 0))
    if out.skipped and is_main_process():
        logging.getLogger("defectkit").warning(skipped_line(out.skipped))
    if out.skipped and not out.times and is_main_process():
        raise DataFormatError(f"nothing to evaluate: every sample was unreadable; {skipped_line(out.skipped)}")
    if evaluator is not None:
        out.metrics = evaluator.compute() if is_main_process() else None
        out.metrics = broadcast_object(out.metrics)
    out.timing = broadcast_object(summarize_times(out.times) if is_main_process() else None)
    return out


def skipped_line(skipped: list[dict], limit: int = 5) -> str:
    """One line naming the unreadable samples left out of an evaluation."""
    names = "; ".join(f"{s['path']} ({s.get('error')})" if s.get("path") else str(s.get("error"))
                      for s in skipped[:limit])
    more = f"; ... and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (f"skipped {len(skipped)} unreadable sample(s) (skip_invalid=True), not evaluated: "
            f"{names}{more}")
