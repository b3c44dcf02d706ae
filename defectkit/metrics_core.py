"""Score-threshold metrics shared by layers that may not import each other.

``f1_max`` is used by the anomaly evaluator (``evaluation/anomaly.py``, image/pixel F1-max)
and by PaDiM (``models/anomaly/padim.py``, its adaptive threshold); it lives here, below
both, because a model never imports ``evaluation/`` (docs/architecture.md). Exact, float64,
numpy; no binning.
"""
from __future__ import annotations

import math

import numpy as np


def check_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(scores float64, labels bool), both 1-D; ValueError when their lengths differ."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    return s, y


def pr_counts(s: np.ndarray, y: np.ndarray):
    """Thresholds (distinct scores, descending) with TP and FP counts of ``score >= t``."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]   # last index of each equal-score group
    return s[last], tp[last], fp[last]


def f1_max(scores, labels) -> tuple[float, float]:
    """(max F1, its threshold) over ``score >= t``; (NaN, NaN) without positives."""
    s, y = check_scores(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0 or s.size == 0:
        return math.nan, math.nan
    thr, tp, fp = pr_counts(s, y)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])
