"""Shared plumbing of evaluators (see docs/architecture.md, "An evaluator").

The life cycle, driven by the trainer or ``tools/test.py``:

    ev.reset()
    for batch in loader:
        ev.process(batch, model.predict(batch))     # every rank, picklable records
    ev.records = gathered records of every rank      # rank 0
    metrics = ev.compute(); print(ev.summary(metrics)); ev.save_artifacts(metrics, out_dir)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np


class BaseEvaluator:
    main_metric: str = ""
    greater_is_better: bool = True            # direction of main_metric (and of metrics not in the table)
    # {metric: greater_is_better} for the other reported metrics (the ATT timings: lower is better)
    metric_directions: dict[str, bool] = {"att_ms": False, "att_normal_ms": False, "att_defective_ms": False}
    # tools/compare.py's table: (column header, metrics.json key, digits; None = a parameter
    # count shown as 4.39M); evaluators with equal columns share one table. Empty: the
    # main metric and the model-call time
    table_columns: tuple[tuple[str, str, int | None], ...] = ()

    def __init__(self) -> None:
        self.records: list[dict] = []

    def reset(self) -> None:
        self.records = []

    def process(self, batch: dict, results: list) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self, metrics: dict[str, Any]) -> str:
        return "\n".join([format_scalars(metrics)] + metric_notes(metrics))

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """Write plots into ``out_dir``; returns the written paths."""
        return []

    def add_timing(self, metrics: dict[str, Any], times: Sequence[tuple[float, Any]],
                   results: Sequence[Any] | None = None) -> str | None:
        """Add the family's metrics derived from model-call times to ``metrics`` (in place)
        and return a one-line summary of them to print, or None (the default: nothing).

        ``metrics`` already holds the ATT entries of ``summarize_times`` (``att_ms``,
        ``att_normal_ms``, ``att_defective_ms`` in ms, ``num_images``); ``times`` is the
        per-image ``(seconds, is_defective or None)`` list of ``run_inference`` or of
        ``tools/benchmark.py``'s timed calls; ``results`` the timed calls' per-image results
        when the caller has them (``tools/benchmark.py``), else None. Called by
        ``tools/test.py`` and ``tools/benchmark.py``, which never know the family."""
        return None

    def export_fields(self, result: Any) -> dict[str, Any]:
        """Extra per-image fields of ``predictions.json`` that name the result's classes as
        the source does (e.g. ``label_name``); none by default."""
        return {}

    def write_predictions(self, results: list, metas: list, out_dir: str) -> str:
        """``predictions.json``: per evaluated image its source ``id`` and ``path``, the
        result's ``to_json()`` and :meth:`export_fields`. Returns the path."""
        os.makedirs(out_dir, exist_ok=True)
        rows = [{"id": m.get("id"), "path": m.get("path"), **r.to_json(), **self.export_fields(r)}
                for r, m in zip(results, metas)]
        path = os.path.join(out_dir, "predictions.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, ensure_ascii=False)
        return path


# ---------------------------------------------------------------------- helpers
# the columns of the image-level families' table (detectors and the classifiers beside them,
# DefectNet's tables): mAP, image-level macro F1, ATT over all / GT-normal / GT-defective images
IMAGE_LEVEL_COLUMNS = (("mAP", "mAP", 3), ("F1", "f1_macro", 3), ("ATT(ms)", "att_ms", 2),
                       ("ATT_N", "att_normal_ms", 2), ("ATT_D", "att_defective_ms", 2))


def table_columns(evaluator_cls: Any) -> tuple[tuple[str, str, int | None], ...]:
    """The comparison-table columns an evaluator class declares (``table_columns``), or its
    main metric and ``att_ms`` when it declares none."""
    cols = tuple(getattr(evaluator_cls, "table_columns", ()) or ())
    if cols:
        return cols
    main = getattr(evaluator_cls, "main_metric", "") or "score"
    return ((main, main, 3), ("ms/img", "att_ms", 2))


def metric_greater_is_better(evaluator: Any, metric: str) -> bool:
    """Whether a higher ``metric`` is better, as the evaluator declares it: its
    ``metric_directions`` entry, else its ``greater_is_better`` (the direction of its
    ``main_metric``, and the default of the metrics it reports)."""
    directions = evaluator.metric_directions if isinstance(evaluator, BaseEvaluator) else {}
    return bool(directions.get(metric, evaluator.greater_is_better))


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat ``{name: float}`` part of a metrics dict (what gets logged / compared)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def missing_class_note(labels, names: Sequence[str] = ("normal", "defective"),
                       what: str = "images") -> str | None:
    """Why an AUROC over ground-truth ``labels`` (class indices into ``names``) is undefined,
    e.g. ``"no normal images among the 12 evaluated images"``; None when every class is present."""
    present = {int(v) for v in np.unique(np.asarray(labels).ravel())} if np.size(labels) else set()
    missing = [str(n) for k, n in enumerate(names) if k not in present]
    if not missing:
        return None
    return f"no {' / '.join(missing)} {what} among the {int(np.size(labels))} evaluated {what}"


def metric_notes(metrics: dict[str, Any]) -> list[str]:
    """``"<metric> is nan: <why>"`` for every ``<metric>_note`` entry of ``metrics``."""
    return [f"{k[:-5]} is nan: {v}" for k, v in metrics.items()
            if k.endswith("_note") and isinstance(v, str)]


def batch_meta(batch: dict, i: int) -> dict:
    """``batch['meta'][i]`` or an empty dict."""
    metas = batch.get("meta")
    if metas is None or i >= len(metas) or not isinstance(metas[i], dict):
        return {}
    return metas[i]


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_table(header: list[str], rows: list[list[Any]], digits: int = 4) -> str:
    """A plain monospace table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in header]] + [[_fmt(c, digits) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def format_scalars(metrics: dict[str, Any], digits: int = 4) -> str:
    flat = scalar_metrics(metrics)
    return format_table(["metric", "value"], [[k, v] for k, v in flat.items()], digits)
