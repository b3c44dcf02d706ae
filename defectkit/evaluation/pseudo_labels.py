"""Pseudo-labelling for self-training detectors: per-class threshold calibration, the
image acceptance rule, and the audit of pseudo-labels against a hidden ground truth.

Source: the original's ``tool/auto_label.py`` (research note ``severity.md`` §1
"Auto-labelling algorithm", pitfalls §5.3). Pure functions on tensors/arrays, no model:
``tools/self_train.py`` runs the detector and calls them.

- :func:`calibrate_thresholds`: the note's heuristic threshold per class (mean score of
  the ~10 predictions around the IoU >= 0.7 "horizon"), guarded so that a class with too
  few matches falls back to a fixed value with a note instead of the original's NaN.
- :func:`select_pseudo_labels`: accept an image iff it has >= 1 confident box and no box
  of intermediate confidence (note §1 step 3).
- :func:`pseudo_label_metrics`: precision / recall of pseudo-labels per class and per COCO
  box-size bucket (small < 32², medium < 96², large), greedy matching at IoU >= 0.5, and
  the ground-truth boxes of accepted images left without a pseudo-label (trained as
  background in the next round).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

#: COCO box-size buckets by area in px² (``pycocotools`` areaRng): small < 32², medium < 96².
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))


def _class_name(c: Any, classes: Sequence[str]) -> str:
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
        if not 0 <= int(c) < len(classes):
            raise ValueError(f"calibrate_thresholds: class index {int(c)} is outside 0..{len(classes) - 1} "
                             f"(classes {list(classes)})")
        return classes[int(c)]
    if str(c) not in classes:
        raise ValueError(f"calibrate_thresholds: class {c!r} is not one of {list(classes)}")
    return str(c)


def calibrate_thresholds(rows: Iterable[tuple[Any, float, float]], classes: Sequence[str], iou: float = 0.7,
                         window: int = 5, min_score: float = 0.5, min_matches: int = 5,
                         fallback: float = 0.5) -> tuple[dict[str, float], list[str]]:
    """Per-class confidence thresholds from predictions on a labelled set.

    ``rows``: one ``(class, max_iou, score)`` per predicted box of the labelled eval set
    (every box the detector returns, low scores included): ``class`` the predicted class
    (index into ``classes`` or its name), ``max_iou`` its largest IoU with a ground-truth box
    of the SAME class in the same image (0 when there is none), ``score`` its confidence.

    The note's heuristic (``auto_label.py`` ``get_threshold``), per class: sort the rows by
    ``max_iou`` descending (ties: score descending, so the result does not depend on the
    input order), let ``horizon`` = the number of rows with ``max_iou >= iou``, take the
    rows ``[horizon - window, horizon + window)`` (clipped to the table: no wrap-around),
    keep the scores ``> min_score``; the threshold is their mean.

    Guard (the original gives NaN, §5.3): a class with fewer than ``min_matches`` rows at
    ``max_iou >= iou``, or whose window holds no score ``> min_score``, gets ``fallback``
    and a note naming the class and the count. Never NaN.

    Returns ``(thr, notes)``: ``thr`` = {class name: threshold} for every class in
    ``classes`` (in that order), ``notes`` = one human-readable line per fallback.
    """
    if window < 1:
        raise ValueError(f"calibrate_thresholds: window must be >= 1, got {window}")
    if not math.isfinite(fallback):
        raise ValueError(f"calibrate_thresholds: fallback must be a finite number, got {fallback}")
    per: dict[str, list[tuple[float, float]]] = {c: [] for c in classes}
    for c, m, s in rows:
        m, s = float(m), float(s)
        if not (math.isfinite(m) and math.isfinite(s)):
            raise ValueError(f"calibrate_thresholds: non-finite row (class {c!r}, max_iou {m}, score {s})")
        per[_class_name(c, classes)].append((m, s))
    thr: dict[str, float] = {}
    notes: list[str] = []
    for c in classes:
        table = sorted(per[c], key=lambda r: (-r[0], -r[1]))
        horizon = sum(1 for m, _ in table if m >= iou)
        if horizon < min_matches:
            thr[c] = float(fallback)
            notes.append(f"class {c!r}: {horizon} prediction(s) with IoU >= {iou:g} (fewer than {min_matches}); "
                         f"threshold falls back to {fallback:g}")
            continue
        picked = [s for _, s in table[max(0, horizon - window):horizon + window] if s > min_score]
        if not picked:
            thr[c] = float(fallback)
            notes.append(f"class {c!r}: {horizon} prediction(s) with IoU >= {iou:g} but no score > {min_score:g} "
                         f"around the horizon; threshold falls back to {fallback:g}")
            continue
        thr[c] = float(sum(picked) / len(picked))
    return thr, notes


def _thr_of(thr: Mapping[int, float] | Sequence[float] | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(thr, Mapping):
        missing = sorted({int(l) for l in labels.tolist()} - {int(k) for k in thr})
        if missing:
            raise ValueError(f"select_pseudo_labels: no threshold for class index {missing[0]} (thr has "
                             f"{sorted(int(k) for k in thr)})")
        table = {int(k): float(v) for k, v in thr.items()}
        return torch.tensor([table[int(l)] for l in labels.tolist()], dtype=torch.float32)
    t = torch.as_tensor(thr, dtype=torch.float32).reshape(-1)
    if labels.numel() and int(labels.max()) >= t.numel():
        raise ValueError(f"select_pseudo_labels: no threshold for class index {int(labels.max())} "
                         f"({t.numel()} thresholds given)")
    return t[labels] if labels.numel() else torch.zeros(0)


def select_pseudo_labels(boxes: Any, labels: Any, scores: Any,
                         thr: Mapping[int, float] | Sequence[float] | torch.Tensor,
                         low: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The note's acceptance rule (§1 step 3) for one image's detections.

    ``boxes`` (N, 4) XYXY, ``labels`` (N,) int class indices, ``scores`` (N,) in [0, 1];
    ``thr``: per-class thresholds, a sequence indexed by class or ``{class index: thr}``.

    The image is ACCEPTED iff at least one box has ``score >= thr[label]`` and no box has
    ``low < score < thr[label]`` (an intermediate box makes the image ambiguous: rejected).
    Boxes with ``score <= low`` are ignored (background). An image without a confident box
    is never accepted (no negative / background pseudo-labels, as in the original).

    Returns ``(boxes, labels, scores)`` of the accepted image's boxes with
    ``score >= thr[label]`` (float32, int64, float32; same order as given), or None. By the
    rule an accepted image holds no box in ``(low, thr)``, so these are all of its boxes
    above ``low``; the original also wrote a box of score exactly ``low`` (its ``>= 0.2``
    writer), which is dropped here (the boundary value only).
    """
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    l = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    s = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    if not (b.shape[0] == l.numel() == s.numel()):
        raise ValueError(f"select_pseudo_labels: {b.shape[0]} boxes, {l.numel()} labels and {s.numel()} scores "
                         "(must be the same number)")
    t = _thr_of(thr, l)
    confident = s >= t
    ambiguous = (s > low) & ~confident
    if not bool(confident.any()) or bool(ambiguous.any()):
        return None
    return b[confident], l[confident], s[confident]


def size_bucket(area: float) -> str:
    """COCO bucket of a box area in px²: ``small`` < 32², ``medium`` < 96², else ``large``."""
    for name, lo, hi in SIZE_BUCKETS:
        if lo <= area < hi:
            return name
    return "large"


def _pr(tp: int, n_pred: int, n_gt: int) -> dict:
    return {"precision": tp / n_pred if n_pred else None, "recall": tp / n_gt if n_gt else None,
            "tp": tp, "num_pred": n_pred, "num_gt": n_gt}


def _as_boxes(entry: Any, key: str) -> torch.Tensor:
    return torch.as_tensor(entry[key] if entry is not None else np.zeros((0, 4)), dtype=torch.float32).reshape(-1, 4)


def match_boxes(pred_boxes: torch.Tensor, pred_labels: torch.Tensor, pred_scores: torch.Tensor | None,
                gt_boxes: torch.Tensor, gt_labels: torch.Tensor, iou: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one matching of one image (COCO style): predictions by score
    descending (given order without scores), each takes the unmatched GT box of the SAME
    class with the highest IoU >= ``iou``. Returns ``(pred_matched (N,) bool,
    gt_matched (M,) bool)``."""
    n, m = pred_boxes.shape[0], gt_boxes.shape[0]
    pm, gm = torch.zeros(n, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)
    if n == 0 or m == 0:
        return pm, gm
    ious = box_iou(pred_boxes, gt_boxes)
    ious[pred_labels[:, None] != gt_labels[None, :]] = -1.0
    order = torch.argsort(pred_scores, descending=True, stable=True) if pred_scores is not None else torch.arange(n)
    for i in order.tolist():
        row = ious[i].clone()
        row[gm] = -1.0
        j = int(torch.argmax(row))
        if float(row[j]) >= iou:
            pm[i], gm[j] = True, True
    return pm, gm


def pseudo_label_metrics(pred: Sequence[Mapping | None], gt: Sequence[Mapping], iou: float = 0.5,
                         classes: Sequence[str] | None = None) -> dict:
    """Precision and recall of pseudo-labels against the hidden ground truth.

    ``pred[i]``: the pseudo-labels of image i, ``{"boxes": (N, 4) XYXY px, "labels": (N,),
    "scores": (N,) optional}``, or None when the image was not accepted (no boxes).
    ``gt[i]``: ``{"boxes": (M, 4), "labels": (M,)}`` of the same image, original pixels.

    Matching per image: greedy by score, same class, IoU >= ``iou`` (:func:`match_boxes`).
    precision = matched pseudo boxes / pseudo boxes; recall = matched GT boxes / GT boxes
    of ALL images given (a rejected image's GT counts as missed: recall measures how much
    of the hidden labels the pseudo-labels recover). Per class (by name when ``classes``
    is given, else by index) and per COCO size bucket (:data:`SIZE_BUCKETS`; a pseudo box
    counts in the bucket of its own area for precision, a GT box in its own for recall).
    A ratio with a zero denominator is None (never NaN).

    ``in_accepted`` counts, per class, the GT boxes of ACCEPTED images and those of them no
    pseudo-label matches (``missed``): objects that the next round trains as background,
    because an accepted image's unlabelled area is background to the detector. The
    acceptance rule cannot see them (the model scored them ``<= low``, or its confident box
    has another class or misses them), so only the audit can measure this cost.

    Returns ``{"precision", "recall", "tp", "num_pred", "num_gt", "images", "images_accepted",
    "per_class": {name: {...}}, "per_size": {"small"|"medium"|"large": {...}},
    "in_accepted": {"gt", "missed", "per_class": {name: {"gt", "missed"}}}}``, where
    ``{...}`` holds precision, recall, tp, num_pred, num_gt.
    """
    if len(pred) != len(gt):
        raise ValueError(f"pseudo_label_metrics: {len(pred)} prediction entries for {len(gt)} ground-truth "
                         "entries (one per image each)")
    name = (lambda k: classes[k]) if classes is not None else (lambda k: k)  # noqa: E731
    cls_c: dict[Any, list[int]] = {name(k): [0, 0, 0, 0] for k in range(len(classes))} if classes else {}
    size_c: dict[str, list[int]] = {b: [0, 0, 0, 0] for b, _, _ in SIZE_BUCKETS}   # tp_pred, n_pred, tp_gt, n_gt
    accepted = 0
    acc_c: dict[Any, list[int]] = {name(k): [0, 0] for k in range(len(classes))} if classes else {}  # gt, missed
    for p, g in zip(pred, gt):
        pb = _as_boxes(p, "boxes")
        pl = torch.as_tensor(p["labels"] if p is not None else [], dtype=torch.int64).reshape(-1)
        ps = torch.as_tensor(p["scores"], dtype=torch.float32).reshape(-1) \
            if p is not None and p.get("scores") is not None else None
        gb, gl = _as_boxes(g, "boxes"), torch.as_tensor(g["labels"], dtype=torch.int64).reshape(-1)
        accepted += int(p is not None)
        pm, gm = match_boxes(pb, pl, ps, gb, gl, iou)
        if p is not None:
            for lab, ok in zip(gl.tolist(), gm.tolist()):
                c = acc_c.setdefault(name(lab), [0, 0])
                c[0] += 1
                c[1] += int(not ok)
        for boxes, labels, matched, col in ((pb, pl, pm, 0), (gb, gl, gm, 2)):
            areas = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).tolist()
            for a, lab, ok in zip(areas, labels.tolist(), matched.tolist()):
                for counts in (cls_c.setdefault(name(lab), [0, 0, 0, 0]), size_c[size_bucket(a)]):
                    counts[col] += int(ok)
                    counts[col + 1] += 1
    tot = [sum(c[i] for c in size_c.values()) for i in range(4)]
    out = _pr(tot[0], tot[1], tot[3])
    assert tot[0] == tot[2]         # one-to-one matching: matched pseudo boxes == matched GT boxes
    out.update(images=len(gt), images_accepted=accepted,
               per_class={k: _pr(c[0], c[1], c[3]) for k, c in cls_c.items()},
               per_size={k: _pr(c[0], c[1], c[3]) for k, c in size_c.items()},
               in_accepted={"gt": sum(c[0] for c in acc_c.values()), "missed": sum(c[1] for c in acc_c.values()),
                            "per_class": {k: {"gt": c[0], "missed": c[1]} for k, c in acc_c.items()}})
    return out
