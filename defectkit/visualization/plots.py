"""Metric plots written to PNG: confusion matrix, ROC / PR curves, training curves.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global
backend switch), so it is safe in workers, on servers and inside tests. Every
``plot_*`` function writes ``out_path`` (parent folders created) and returns it.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> str:
    out_path = os.fspath(out_path)
    parent = os.path.dirname(out_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, format="png")
    return out_path


# ------------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str] | None,
                          out_path: str | os.PathLike, title: str = "confusion matrix") -> str:
    """Rows = ground truth, columns = prediction; colour = row-normalised rate,
    each cell shows the count and the row percentage."""
    m = np.asarray(cm, dtype=np.float64)
    n = m.shape[0]
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    rows = m.sum(1, keepdims=True)
    rate = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(2.0 + 0.7 * n, 16.0)
    fig = _figure((side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), labels=names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(m[i, j])}\n{100 * rate[i, j]:.0f}%", ha="center", va="center",
                        fontsize=8 if n > 8 else 10, color="white" if rate[i, j] > 0.5 else "black")
    return _save(fig, out_path)


# ----------------------------------------------------------------------- ROC / PR
def plot_roc_curve(y_true: Sequence[int], scores: Sequence[float], out_path: str | os.PathLike,
                   title: str = "ROC", label: str | None = None) -> str:
    """Binary ROC of ``scores`` (higher = positive class 1), with the AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y_true), np.asarray(scores))
    auc = roc_auc_score(np.asarray(y_true), np.asarray(scores))
    fig = _figure((5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, lw=2, label=f"{label + ' ' if label else ''}AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


def plot_pr_curve(y_true: Sequence[int], scores: Sequence[float], out_path: str | os.PathLike,
                  title: str = "precision-recall", label: str | None = None) -> str:
    """Binary precision-recall curve with the average precision in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(np.asarray(y_true), np.asarray(scores))
    ap = average_precision_score(np.asarray(y_true), np.asarray(scores))
    fig = _figure((5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.step(recall, precision, where="post", lw=2, label=f"{label + ' ' if label else ''}AP = {ap:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], out_path: str | os.PathLike,
                xlabel: str = "x", ylabel: str = "y", title: str = "") -> str:
    """Several named (x, y) curves on one axis (e.g. precision-recall per class, PRO curves)."""
    fig = _figure((6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in curves.items():
        ax.plot(x, y, lw=1.5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


# ------------------------------------------------------------------ training curves
_NOT_PLOTTED = {"step", "iter", "epoch", "mode", "time", "data_time", "eta", "memory"}


def _is_reading(key: str) -> bool:
    """Resource readings and counts, not learning curves: ``memory_mb`` (and other memory),
    timings in ms (``att_ms``), counts (``num_images``)."""
    return key.startswith(("memory", "num_")) or key.endswith(("_mb", "_ms"))


def read_scalars(path: str | os.PathLike) -> list[dict]:
    """Read ``scalars.jsonl`` (one JSON object per line); unreadable lines are skipped
    (e.g. the last line of a run that is still writing)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalars_figure(scalars: str | os.PathLike | Iterable[dict], keys: Sequence[str] | None = None,
                   x: str = "step", ncols: int = 3):
    """The matplotlib ``Figure`` that :func:`plot_scalars` saves (one axis per key; each
    line is labelled with its mode). Integer x values (steps, iterations, epochs) get
    integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    records = read_scalars(scalars) if isinstance(scalars, (str, os.PathLike)) else list(scalars)
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for i, rec in enumerate(records):
        xv = rec.get(x, rec.get("iter", rec.get("step", i)))
        if not _is_number(xv):
            continue
        mode = str(rec.get("mode", "train"))
        for k, v in rec.items():
            if not _is_number(v) or k == x:
                continue
            if keys is None and (k in _NOT_PLOTTED or _is_reading(k)):
                continue
            if keys is not None and k not in keys:
                continue
            xs, ys = series[k][mode]
            xs.append(xv)
            ys.append(v)
    names = list(keys) if keys is not None else sorted(series, key=lambda k: (not k.startswith("loss"), k))
    names = [k for k in names if k in series]
    n = max(1, len(names))
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = _figure((4.2 * ncols, 3.0 * nrows))
    if not names:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no scalars to plot", ha="center", va="center")
        ax.set_axis_off()
    for j, k in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        for mode, (xs, ys) in sorted(series[k].items()):
            style = "-" if len(xs) > 1 else "o"
            ax.plot(xs, ys, style, lw=1.2, ms=4, label=mode)
        xs_all = [v for xs, _ in series[k].values() for v in xs]
        if all(float(v).is_integer() for v in xs_all):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if max(xs_all) - min(xs_all) < 2:      # one or two steps: give the locator whole steps
                ax.set_xlim(min(xs_all) - 1, max(xs_all) + 1)
        modes = list(series[k])
        only = f" ({modes[0]})" if len(modes) == 1 and modes[0] != "train" else ""
        ax.set_title(k + only, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series[k]) > 1:
            ax.legend(fontsize=7)
    return fig


def plot_scalars(scalars: str | os.PathLike | Iterable[dict], out_path: str | os.PathLike,
                 keys: Sequence[str] | None = None, x: str = "step", ncols: int = 3) -> str:
    """One subplot per metric key, one line per ``mode`` (train / val ...), against ``x``.

    ``scalars`` is a path to ``scalars.jsonl`` or the list of its records
    (``{"step": 120, "mode": "train", "loss": 0.41, "lr": 0.0025, ...}``). Without ``keys``
    every numeric key is plotted, losses first, except step/epoch/time-like keys, memory
    readings (``memory_mb``), timings in ms and counts (``num_images``): they are not
    learning curves; name one in ``keys`` to plot it.
    Integer steps get integer ticks.
    """
    return _save(scalars_figure(scalars, keys, x, ncols), out_path)
