"""Pure severity metrics (issue 13), used by ``severity.SeverityEvaluator``: grade accuracy,
:func:`grade_mae`, :func:`qwk` (quadratic-weighted Cohen's kappa, scikit-learn),
:func:`expected_calibration_error` (Guo et al. 2017, eq. 3), :func:`fit_temperature` (Guo et al.
2017 §4.2), :func:`severity_score_mae`, :func:`verdict_rates` (accuracy, overkill, escape) and
:func:`match_detections` (greedy by score, same type, IoU >= threshold). Definitions: the module
docstring of ``severity.py``. Inputs are array-likes (numpy, torch, lists); NaN where undefined.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .detection import _as_list

_KEYS = ("grade_accuracy", "grade_mae", "qwk", "ece", "severity_mae")


# ---------------------------------------------------------------------------- pure metrics
def _int_array(y: Any) -> np.ndarray:
    return np.asarray(_as_list(y) if isinstance(y, torch.Tensor) else y, dtype=np.int64).reshape(-1)


def _prob_array(probs: Any, what: str = "probs") -> np.ndarray:
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.reshape(0, p.shape[-1] if p.ndim == 2 else 0)
    if p.ndim != 2:
        raise ValueError(f"{what}: expected an (M, G) array of grade probabilities, got shape {p.shape}")
    return p


def qwk(y_true: Any, y_pred: Any, num_grades: int) -> float:
    """Quadratic-weighted Cohen's kappa of integer grades in ``0..num_grades-1``:
    ``sklearn.metrics.cohen_kappa_score(weights="quadratic", labels=range(num_grades))``,
    i.e. ``1 - Σ w_ij O_ij / Σ w_ij E_ij`` with ``w_ij = (i - j)^2`` (labels fixed to every
    grade, so the weights are in grade steps even when a grade is absent). NaN when there
    are no pairs or when ``Σ w E = 0`` (true and predicted grades are one and the same value)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    a, b = _int_array(y_true), _int_array(y_pred)
    if a.shape != b.shape:
        raise ValueError(f"qwk: y_true has {a.size} grades, y_pred {b.size}")
    if a.size == 0:
        return math.nan
    labels = list(range(int(num_grades)))
    if a.min() < 0 or b.min() < 0 or max(a.max(), b.max()) >= num_grades:
        raise ValueError(f"qwk: grades must be in 0..{num_grades - 1}, got {sorted(set(a) | set(b))}")
    cm = confusion_matrix(a, b, labels=labels).astype(np.float64)
    expected = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    w = (np.arange(num_grades)[:, None] - np.arange(num_grades)[None, :]) ** 2
    if float((w * expected).sum()) == 0.0:
        return math.nan
    return float(cohen_kappa_score(a, b, labels=labels, weights="quadratic"))


def grade_mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error in grade steps, ``mean |y_pred - y_true|`` (NaN when empty)."""
    a, b = _int_array(y_true), _int_array(y_pred)
    if a.shape != b.shape:
        raise ValueError(f"grade_mae: y_true has {a.size} grades, y_pred {b.size}")
    return float(np.abs(a - b).mean()) if a.size else math.nan


def _paired(probs: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, G) probabilities and (M,) grades as arrays; ValueError naming ``name`` when M differs."""
    p, t = _prob_array(probs), _int_array(y)
    if p.shape[0] != t.size:
        raise ValueError(f"{name}: {p.shape[0]} probability rows for {t.size} grades")
    return p, t


def expected_calibration_error(probs: Any, y: Any, n_bins: int = 15) -> float:
    """ECE of (M, G) probabilities against true grades ``y`` (M,) (Guo et al. 2017, eq. 3):
    confidence = top probability, bin m = ((m-1)/n_bins, m/n_bins] (a confidence of 0 falls
    in the first bin), ``ECE = Σ_m |B_m|/M · |acc(B_m) - conf(B_m)|`` with acc = fraction of
    argmax == y and conf = mean confidence in the bin. NaN when empty."""
    p, t = _paired(probs, y, "expected_calibration_error")
    if t.size == 0:
        return math.nan
    conf = p.max(1)
    correct = (p.argmax(1) == t).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for m in range(n_bins):
        sel = bins == m
        if sel.any():
            ece += sel.sum() / t.size * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def fit_temperature(logits: Any, y: Any, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` against ``y``
    (Guo et al. 2017 §4.2, temperature scaling), optimised over log T with
    ``torch.optim.LBFGS`` (strong Wolfe line search) from T = 1. ``logits`` (M, G): logits
    or log-probabilities (``log p``: the same softmax up to a constant per row). T is
    clamped to [1e-2, 1e2] (an all-correct set drives T to 0). NaN when empty."""
    z = torch.as_tensor(_prob_array(logits, "logits"), dtype=torch.float64)
    t = torch.as_tensor(_int_array(y), dtype=torch.int64)
    if z.shape[0] != t.numel():
        raise ValueError(f"fit_temperature: {z.shape[0]} logit rows for {t.numel()} grades")
    if t.numel() == 0:
        return math.nan
    z = torch.nan_to_num(z, neginf=-1e4)   # log(0) of a probability 0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    bound = math.log(100.0)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(-bound, bound).exp(), t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().clamp(-bound, bound).exp())


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` of (M, G) probabilities (the temperature-scaled probabilities)."""
    p = _prob_array(probs)
    if p.size == 0:
        return p
    z = np.log(np.clip(p, 1e-12, None)) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def default_weights(num_grades: int) -> np.ndarray:
    """``linspace(0, 1, N)``: the model's default ``score_weights``."""
    return np.linspace(0.0, 1.0, int(num_grades))


def severity_score_mae(probs: Any, y: Any, weights: Any) -> float:
    """Mean |Σ_k w_k p_k - w[y]| of (M, G) probabilities against true grades ``y`` (M,):
    the severity score (the model's formula) against the ground-truth grade mapped through
    the same weights. ``weights``: (G,) for every row or (M, G) per row. NaN when empty."""
    p, t = _paired(probs, y, "severity_score_mae")
    if t.size == 0:
        return math.nan
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1 and w.size == p.shape[1]:
        w = np.broadcast_to(w, p.shape)
    if w.shape != p.shape:
        raise ValueError(f"severity_score_mae: weights of shape {w.shape} for probabilities {p.shape}")
    score = (w * p).sum(1)
    return float(np.abs(score - w[np.arange(t.size), t]).mean())


def verdict_rates(pred_verdicts: Sequence[str | None], gt_verdicts: Sequence[str | None]) -> dict[str, Any]:
    """Image-level verdict metrics over the images whose ``gt_verdict`` is known ("OK"/"NG"):

    ``verdict_accuracy`` = fraction with pred == gt; ``overkill_rate`` = images predicted NG
    among GT-OK images (normal images are GT-OK); ``escape_rate`` = images predicted OK among
    GT-NG images; plus the counts (``num_verdict_images``, ``num_gt_ok``, ``num_gt_ng``,
    ``num_overkill``, ``num_escape``). An undefined rate is NaN with a ``<key>_note``."""
    pairs = [(str(p).upper(), str(g).upper()) for p, g in zip(pred_verdicts, gt_verdicts) if g is not None]
    for p, g in pairs:
        if p not in ("OK", "NG") or g not in ("OK", "NG"):
            raise ValueError(f"verdict_rates: verdicts must be 'OK' or 'NG', got prediction {p!r}, ground truth {g!r}")
    n = len(pairs)
    ok = [p for p, g in pairs if g == "OK"]
    ng = [p for p, g in pairs if g == "NG"]
    over = sum(p == "NG" for p in ok)
    esc = sum(p == "OK" for p in ng)
    out: dict[str, Any] = {
        "verdict_accuracy": sum(p == g for p, g in pairs) / n if n else math.nan,
        "overkill_rate": over / len(ok) if ok else math.nan,
        "escape_rate": esc / len(ng) if ng else math.nan,
        "num_verdict_images": n, "num_gt_ok": len(ok), "num_gt_ng": len(ng),
        "num_overkill": int(over), "num_escape": int(esc)}
    if not n:
        out["verdict_accuracy_note"] = "no image has a ground-truth verdict (result.gt_verdict is None)"
    if not ok:
        out["overkill_rate_note"] = f"no GT-OK image among the {n} images with a ground-truth verdict"
    if not ng:
        out["escape_rate_note"] = f"no GT-NG image among the {n} images with a ground-truth verdict"
    return out


def match_detections(det_boxes: Any, det_labels: Any, det_scores: Any, gt_boxes: Any, gt_labels: Any,
                     iou_thr: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: detections in descending score order (ties: input order)
    each take the still unmatched ground-truth box of the SAME label with the highest IoU
    (``torchvision.ops.box_iou``, XYXY), if that IoU >= ``iou_thr``. Returns
    ``[(det_index, gt_index), ...]`` in matching order."""
    from torchvision.ops import box_iou

    db = torch.as_tensor(np.asarray(_as_list(det_boxes), dtype=np.float32)).reshape(-1, 4)
    gb = torch.as_tensor(np.asarray(_as_list(gt_boxes), dtype=np.float32)).reshape(-1, 4)
    dl, gl = _int_array(det_labels), _int_array(gt_labels)
    ds = np.asarray(_as_list(det_scores), dtype=np.float64).reshape(-1)
    if not (db.shape[0] == dl.size == ds.size) or gb.shape[0] != gl.size:
        raise ValueError(f"match_detections: {db.shape[0]} boxes / {dl.size} labels / {ds.size} scores "
                         f"detected, {gb.shape[0]} boxes / {gl.size} labels in the ground truth")
    if db.shape[0] == 0 or gb.shape[0] == 0:
        return []
    iou = box_iou(db, gb).numpy()
    iou[dl[:, None] != gl[None, :]] = -1.0
    taken = np.zeros(gb.shape[0], dtype=bool)
    pairs = []
    for d in np.argsort(-ds, kind="stable"):
        cand = np.where(taken, -1.0, iou[d])
        g = int(cand.argmax())
        if cand[g] >= iou_thr:
            taken[g] = True
            pairs.append((int(d), g))
    return pairs


def grade_metrics(probs: Any, y: Any, num_grades: int, weights: Any, suffix: str = "",
                  temperature_scaling: bool = False) -> dict[str, Any]:
    """Grade accuracy, :func:`grade_mae`, :func:`qwk`, :func:`expected_calibration_error`
    and :func:`severity_score_mae` of (M, G) probabilities against grades ``y``, keys with
    ``suffix``, plus ``num_graded<suffix>`` and ``grade_confusion_matrix<suffix>`` (rows GT,
    columns argmax). ``temperature_scaling``: also ``temperature<suffix>`` and
    ``ece<suffix>_ts``. NaN + ``<key>_note`` where undefined."""
    from sklearn.metrics import confusion_matrix

    p = _prob_array(probs)
    t = _int_array(y)
    n = int(t.size)
    s = suffix
    m: dict[str, Any] = {f"num_graded{s}": n}
    if n == 0:
        for k in _KEYS:
            m[f"{k}{s}"] = math.nan
        m[f"grade_accuracy{s}_note"] = ("no graded ground-truth box" if s == "_gt" else
                                        "no detection of a type with a severity head matched a graded ground-truth box")
        if temperature_scaling:
            m[f"temperature{s}"] = m[f"ece{s}_ts"] = math.nan
        return m
    pred = p.argmax(1)
    m[f"grade_accuracy{s}"] = float((pred == t).mean())
    m[f"grade_mae{s}"] = grade_mae(t, pred)
    present = sorted(set(t.tolist()))
    if len(present) < 2:
        m[f"qwk{s}"] = math.nan
        m[f"qwk{s}_note"] = (f"the {n} graded boxes all have ground-truth grade index {present[0]}: "
                             "kappa is 0 or undefined whatever the predictions")
    else:
        m[f"qwk{s}"] = qwk(t, pred, num_grades)
    m[f"ece{s}"] = expected_calibration_error(p, t)
    m[f"severity_mae{s}"] = severity_score_mae(p, t, weights)
    m[f"grade_confusion_matrix{s}"] = confusion_matrix(t, pred, labels=list(range(num_grades))).tolist()
    if temperature_scaling:
        temp = fit_temperature(np.log(np.clip(p, 1e-12, None)), t)
        m[f"temperature{s}"] = temp
        m[f"ece{s}_ts"] = expected_calibration_error(apply_temperature(p, temp), t)
    return m
