"""Severity metrics (issue 13): detection + per-defect grade + image verdict.

``SeverityEvaluator`` composes the existing :class:`DetectionEvaluator` (COCO mAP / AP50 and
the image-level normal/defective F1 on the ``SeverityResult`` boxes, labels and scores) with:

- **grades on matched detections**: each detection is matched to a ground-truth box of the
  SAME type with IoU >= ``iou_thr`` (0.5), greedily by descending score
  (:func:`match_detections`); pairs whose detection carries grade probabilities (its type has
  a severity head) and whose ground-truth grade is known (!= -1) are scored with
  grade accuracy (argmax grade), :func:`grade_mae` (mean |grade_pred - grade_true|, in
  grades), :func:`qwk` (quadratic-weighted Cohen's kappa, scikit-learn),
  :func:`expected_calibration_error` (ECE, 15 equal-width bins over the top probability;
  Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3) and
  :func:`severity_score_mae` (|Σ_k w_k p_k - w[grade_true]|: the severity score against the
  ground-truth grade mapped through the same weights, research note §"severity score");
- **the same on ground-truth boxes** (``SeverityResult.gt_grade_probs``: the heads on the GT
  crops, the classifier alone): keys with the suffix ``_gt`` (``qwk_gt``, ...);
- **temperature scaling** (``temperature_scaling: true``): T fitted on this split's
  probabilities by minimising the NLL (:func:`fit_temperature`, Guo et al. 2017 §4.2), ECE
  before and after (``ece`` / ``ece_ts``, ``temperature``; ``_gt`` for the GT boxes). T is
  fitted and measured on the same split: an optimistic, diagnostic number;
- **image verdicts** (:func:`verdict_rates`): accuracy of ``result.verdict`` against
  ``result.gt_verdict`` (the same rules applied to the ground truth), overkill rate (GT-OK
  images rejected, normal images included) and escape rate (GT-NG images passed);
- **timing** (:meth:`SeverityEvaluator.add_timing`, from ``result.timing_ms``):
  ``detector_ms``, ``severity_ms`` and ``severity_overhead = severity_ms / detector_ms``.

The pure metric functions are in ``severity_metrics.py``.

A metric that cannot be computed (nothing matched, a single grade present, no GT-NG image)
is NaN with a ``<metric>_note`` saying why (``base.metric_notes``), never an exception.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from ..registry import EVALUATORS
from ..structures import DetectionResult
from .base import BaseEvaluator, batch_meta, format_table, metric_notes
from .detection import DetectionEvaluator, _as_list

from .severity_metrics import _KEYS, default_weights, grade_metrics, match_detections, verdict_rates


# ---------------------------------------------------------------------------- evaluator
def _probs_row(p: Any) -> list[float] | None:
    if p is None:
        return None
    return [float(v) for v in _as_list(p)]


@EVALUATORS.register()
class SeverityEvaluator(BaseEvaluator):
    """Detection mAP + grade metrics on matched detections and GT boxes + verdict + timing.

    Args:
        classes: defect type names (runtime default: the dataset's ``classes``).
        grades: grade names, lightest first (default: the dataset's ``grade_names``, else
            the results' ``grade_names``, else ``"0".."G-1"`` from the probability length).
            The dataset's ``grade_names`` (``data.<split>.grades``), this list and the
            results' ``grade_names`` (``model.grades``) must be equal: a mismatch raises one
            ValueError at the first batch naming both lists and the config keys (grade
            indices would otherwise be compared across different scales).
        score_weights: an OVERRIDE of the severity weights w_k that map a GT grade to a score
            (``severity_mae``): None (the default) takes each type's weights from the results
            (``SeverityResult.score_weights``: the model's ``score_weights``, default
            ``linspace(0, 1, G)``, compat ``0.2 k``), so the metric uses exactly the model's
            formula; one list for every type, or ``{type name: list | None}`` (None: the
            result's) replaces them. ``linspace(0, 1, G)`` only when neither is known.
        iou_thr: IoU for matching detections to GT boxes (same type, greedy by score).
        match_score_thr: detections with a lower score take no part in the grade matching
            (mAP always uses every detection).
        temperature_scaling: fit T on this split (NLL, LBFGS on log T), report ECE after.
        score_thr, classwise: passed to the composed ``DetectionEvaluator`` (image-level F1
            threshold; per-class AP table).
        main_metric: the metric that picks the best checkpoint (``mAP``; e.g. ``qwk_gt``).
        dataset: the evaluated dataset (runtime default): GT boxes, labels and ``grades``
            from ``dataset.records`` in original pixels.
    """

    main_metric = "mAP"
    greater_is_better = True
    metric_directions = {**DetectionEvaluator.metric_directions,
                         **{k: False for k in ("grade_mae", "grade_mae_gt", "ece", "ece_gt", "ece_ts", "ece_gt_ts",
                                               "severity_mae", "severity_mae_gt", "overkill_rate", "escape_rate",
                                               "detector_ms", "severity_ms", "severity_overhead")}}
    table_columns = (("mAP", "mAP", 3), ("AP50", "AP50", 3), ("QWK", "qwk", 3), ("QWK_gt", "qwk_gt", 3),
                     ("verdict acc", "verdict_accuracy", 3), ("overkill", "overkill_rate", 3),
                     ("escape", "escape_rate", 3), ("ms/img", "att_ms", 2))

    def __init__(self, classes: list[str] | None = None, grades: list[str] | None = None,
                 score_weights: list[float] | dict | None = None, iou_thr: float = 0.5,
                 match_score_thr: float = 0.0, temperature_scaling: bool = False,
                 score_thr: float = 0.05, classwise: bool = True, main_metric: str = "mAP",
                 dataset: Any = None):
        super().__init__()
        if not 0.0 < float(iou_thr) <= 1.0:
            raise ValueError(f"SeverityEvaluator: iou_thr must be in (0, 1], got {iou_thr!r}")
        if not isinstance(score_weights, (type(None), list, tuple, dict)):
            raise ValueError(f"SeverityEvaluator: score_weights must be null, a list or "
                             f"{{type: list}}, got {score_weights!r}")
        self.det = DetectionEvaluator(classes=classes, score_thr=score_thr, dataset=dataset,
                                      classwise=classwise)
        self.classes = self.det.classes
        self.dataset = dataset
        self.grades = None if grades is None else [str(g) for g in grades]
        self.score_weights = score_weights
        self.iou_thr = float(iou_thr)
        self.match_score_thr = float(match_score_thr)
        self.temperature_scaling = bool(temperature_scaling)
        self.main_metric = str(main_metric)

    def reset(self) -> None:
        super().reset()
        self.det.reset()

    def check_grade_names(self, result_names: Sequence[str] | None) -> None:
        """Raise one ValueError when the results' grade names (``model.grades``) differ from
        the dataset's ``grade_names`` (``data.<split>.grades``, or the natural sort of the
        values found) or from this evaluator's ``grades`` option."""
        if result_names is None:
            return
        res = [str(g) for g in result_names]
        ds = getattr(self.dataset, "grade_names", None)
        if ds:
            ds = [str(g) for g in ds]
            if ds != res:
                raise ValueError(
                    f"SeverityEvaluator: the dataset's grade names {ds} (data.<split>.grades, or the "
                    f"natural sort of the grades found when that key is unset) differ from the model's "
                    f"{res} (model.grades); GT grade indices and predicted grade indices would refer to "
                    f"different grades. Set model.grades and data.<split>.grades (train, val and test) "
                    f"to the same list, lightest first")
        if self.grades is not None and self.grades != res:
            raise ValueError(
                f"SeverityEvaluator: evaluation.grades {self.grades} differ from the model's {res} "
                f"(model.grades); drop evaluation.grades or set it to model.grades")

    # ------------------------------------------------------------------------ records
    def process(self, batch: dict, results: list) -> None:
        """One picklable record per image: the composed detector record (``det``), the
        detections' grade probabilities, GT-box probabilities with the batch's
        ``labels``/``grades``, verdicts and ``timing_ms``."""
        dets = [DetectionResult(r.boxes, r.scores, r.labels) for r in results]
        n0 = len(self.det.records)
        self.det.process(batch, dets)
        det_recs = self.det.records[n0:]
        labels, grades = batch.get("labels"), batch.get("grades")
        for i, r in enumerate(results):
            names = getattr(r, "grade_names", None)
            self.check_grade_names(names)
            weights = getattr(r, "score_weights", None)
            meta = batch_meta(batch, i)
            gtp = getattr(r, "gt_grade_probs", None)
            probs = getattr(r, "grade_probs", None) or [None] * len(det_recs[i]["scores"])
            self.records.append({
                "id": meta.get("id", det_recs[i]["id"]),
                "path": meta.get("path"),
                "det": det_recs[i],
                "grade_probs": [_probs_row(p) for p in probs],
                "gt_grade_probs": None if gtp is None else [[float(v) for v in row] for row in _as_list(gtp)],
                "gt_labels": None if labels is None or i >= len(labels) else [int(v) for v in _as_list(labels[i])],
                "gt_grades": None if grades is None or i >= len(grades) else [int(v) for v in _as_list(grades[i])],
                "verdict": getattr(r, "verdict", None),
                "gt_verdict": getattr(r, "gt_verdict", None),
                "timing_ms": {k: float(v) for k, v in (getattr(r, "timing_ms", None) or {}).items()},
                "grade_names": None if names is None else [str(g) for g in names],
                "score_weights": None if weights is None else
                {str(t): [float(v) for v in _as_list(w)] for t, w in dict(weights).items()},
            })

    # ------------------------------------------------------------------------ helpers
    def _type_names(self) -> list[str]:
        return self.det._class_names()

    def _grade_names(self) -> list[str]:
        if self.grades is not None:
            return list(self.grades)
        names = getattr(self.dataset, "grade_names", None)
        if names:
            return [str(g) for g in names]
        for r in self.records:
            if r.get("grade_names"):
                return list(r["grade_names"])
        widths = {len(p) for r in self.records for p in r["grade_probs"] if p is not None}
        widths |= {len(row) for r in self.records for row in (r["gt_grade_probs"] or [])}
        if len(widths) > 1:
            raise ValueError(f"SeverityEvaluator: grade probabilities of different lengths {sorted(widths)}")
        return [str(k) for k in range(widths.pop())] if widths else []

    def _result_weights(self, type_name: str) -> list[float] | None:
        """The type's weights as the results carry them (the model's); they must agree."""
        found = None
        for r in self.records:
            w = (r.get("score_weights") or {}).get(type_name)
            if w is None:
                continue
            if found is None:
                found = w
            elif not np.allclose(found, w):
                raise ValueError(f"SeverityEvaluator: the results carry different score_weights for "
                                 f"{type_name!r}: {found} and {w} (one model per evaluation)")
        return found

    def weights_for(self, type_name: str, num_grades: int) -> np.ndarray:
        """The severity weights of a type, length-checked against G: the ``score_weights``
        override when set for the type, else the results' (the model's), else
        ``linspace(0, 1, G)``."""
        w = self.score_weights
        if isinstance(w, dict):
            w = w.get(type_name)
        if w is None:
            w = self._result_weights(type_name)
        w = default_weights(num_grades) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size != num_grades:
            raise ValueError(f"SeverityEvaluator: score_weights for {type_name!r} has {w.size} values "
                             f"for {num_grades} grades")
        return w

    @staticmethod
    def _record_grades(rec: Any, own: dict) -> np.ndarray | None:
        g = getattr(rec, "grades", None)
        if g is None and isinstance(getattr(rec, "meta", None), dict):
            g = rec.meta.get("grades")
        if g is None and own.get("gt_grades") is not None and len(own["gt_grades"]) == len(rec.labels):
            g = own["gt_grades"]                      # the batch's, when the pipeline kept every box
        return None if g is None else np.asarray(g, dtype=np.int64).reshape(-1)

    def _collect(self, names: list[str], n_grades: int) -> tuple[dict, list[str]]:
        """``{"det": (types, grades, probs), "gt": (...)}`` rows and notes."""
        gt_recs = {rec.id: rec for rec in self.dataset.records}
        rows = {"det": ([], [], []), "gt": ([], [], [])}
        notes: list[str] = []
        no_grades = 0
        for r in self.records:
            rec = gt_recs[r["id"]]
            d = r["det"]
            g = self._record_grades(rec, r)
            if g is None:
                no_grades += 1
            else:
                keep = [k for k, s in enumerate(d["scores"]) if s >= self.match_score_thr]
                pairs = match_detections([d["boxes"][k] for k in keep], [d["labels"][k] for k in keep],
                                         [d["scores"][k] for k in keep], np.asarray(rec.boxes).reshape(-1, 4),
                                         np.asarray(rec.labels).reshape(-1), self.iou_thr)
                for di, gi in pairs:
                    p = r["grade_probs"][keep[di]] if keep[di] < len(r["grade_probs"]) else None
                    if p is None or g[gi] < 0:
                        continue
                    rows["det"][0].append(int(d["labels"][keep[di]]))
                    rows["det"][1].append(int(g[gi]))
                    rows["det"][2].append(p)
            gp = r["gt_grade_probs"]
            if gp is None:
                continue
            gl, gg = r["gt_labels"], r["gt_grades"]
            if gg is None and len(gp) == len(rec.labels):
                gl, gg = np.asarray(rec.labels).tolist(), (None if g is None else g.tolist())
            if gg is None or gl is None or len(gg) != len(gp) or len(gl) != len(gp):
                notes.append(f"image {r['id']}: {len(gp)} gt_grade_probs rows but "
                             f"{None if gg is None else len(gg)} GT grades; its GT boxes are not scored")
                continue
            for lab, gr, p in zip(gl, gg, gp):
                if gr < 0 or not np.all(np.isfinite(p)):
                    continue
                rows["gt"][0].append(int(lab))
                rows["gt"][1].append(int(gr))
                rows["gt"][2].append(p)
        if no_grades:
            notes.append(f"{no_grades} of {len(self.records)} images have no GT grades (build the dataset "
                         "with with_grades: true); their detections are not graded")
        for key, (_, _, probs) in rows.items():
            bad = {len(p) for p in probs if len(p) != n_grades}
            if bad:
                raise ValueError(f"SeverityEvaluator: grade probabilities of length {sorted(bad)} "
                                 f"({key}) for {n_grades} grades {names}")
        return rows, notes

    # ------------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        if not self.records:
            raise RuntimeError("SeverityEvaluator.compute: no records (empty evaluation set, "
                               "or process() was never called)")
        self.det.records = [r["det"] for r in self.records]
        m: dict[str, Any] = dict(self.det.compute())
        types = self._type_names()
        grade_names = self._grade_names()
        n = len(grade_names)
        m["grades"] = grade_names
        rows, notes = self._collect(grade_names, n)
        per_type: dict[str, dict] = {}
        for key, suffix in (("det", ""), ("gt", "_gt")):
            tl, y, probs = rows[key]
            p = np.asarray(probs, dtype=np.float64).reshape(len(probs), n)
            per = {t: self.weights_for(types[t] if 0 <= t < len(types) else str(t), n) for t in set(tl)}
            w = np.stack([per[t] for t in tl]) if tl else np.zeros((0, n))
            m.update(grade_metrics(p, y, n, w, suffix, self.temperature_scaling))
            for t in sorted(set(tl)):
                sel = [k for k, v in enumerate(tl) if v == t]
                name = types[t] if 0 <= t < len(types) else str(t)
                sub = grade_metrics(p[sel], np.asarray(y)[sel], n, w[sel])
                per_type.setdefault(name, {}).update(
                    {f"{k}{suffix}": sub.get(k) for k in ("num_graded",) + _KEYS})
        m["per_type_severity"] = per_type
        m.update(verdict_rates([r["verdict"] for r in self.records], [r["gt_verdict"] for r in self.records]))
        m["iou_thr"] = self.iou_thr
        if notes:
            m["severity_notes"] = notes
        return m

    # ------------------------------------------------------------------------ timing
    def add_timing(self, metrics: dict[str, Any], times: Sequence[tuple[float, Any]],
                   results: Sequence[Any] | None = None) -> str | None:
        """``detector_ms`` and ``severity_ms`` (means of ``result.timing_ms["detector"]`` /
        ``["severity"]`` over the images, ms; from ``results`` when given, else from the
        evaluated records) and ``severity_overhead = severity_ms / detector_ms``. Returns the
        printed line, or None when no result carries timings."""
        src = ([dict(getattr(r, "timing_ms", None) or {}) for r in results] if results is not None
               else [r["timing_ms"] for r in self.records])
        det = [float(t["detector"]) for t in src if "detector" in t]
        sev = [float(t["severity"]) for t in src if "severity" in t]
        if not det and not sev:
            return None
        d = sum(det) / len(det) if det else math.nan
        s = sum(sev) / len(sev) if sev else math.nan
        metrics["detector_ms"], metrics["severity_ms"] = d, s
        metrics["severity_overhead"] = s / d if d and not math.isnan(d) else math.nan
        return (f"detector {d:.2f} ms/img | severity heads {s:.2f} ms/img | "
                f"severity overhead {100 * metrics['severity_overhead']:.1f}% of the detector")

    # ------------------------------------------------------------------------ output
    def export_fields(self, result: Any) -> dict[str, Any]:
        """``label_names`` (each defect's type) and ``grade_names`` (each defect's argmax
        grade name, None for a type without a head)."""
        out = dict(self.det.export_fields(result))
        names = (self.grades or [str(g) for g in (getattr(self.dataset, "grade_names", None) or [])]
                 or [str(g) for g in (getattr(result, "grade_names", None) or [])])
        grades = []
        for p in getattr(result, "grade_probs", None) or []:
            if p is None:
                grades.append(None)
            else:
                k = int(np.argmax(_as_list(p)))
                grades.append(names[k] if k < len(names) else str(k))
        out["grade_names"] = grades
        return out

    def write_predictions(self, results: list, metas: list, out_dir: str) -> str:
        """``predictions.json`` (every result's ``to_json()`` + :meth:`export_fields`) and the
        COCO ``predictions.bbox.json`` of the composed detection evaluator. Returns the first."""
        self.det.write_predictions(results, metas, out_dir)
        return super().write_predictions(results, metas, out_dir)

    def summary(self, metrics: dict[str, Any]) -> str:
        out = [self.det.summary(metrics)]
        rows = []
        for suffix, what in (("", f"detections matched (IoU >= {metrics.get('iou_thr', self.iou_thr)})"),
                             ("_gt", "ground-truth boxes (classifier alone)")):
            if f"num_graded{suffix}" in metrics:
                rows.append([what, metrics[f"num_graded{suffix}"]] +
                            [metrics.get(f"{k}{suffix}", math.nan) for k in _KEYS])
        header = ["severity on", "n", "acc", "MAE", "QWK", "ECE", "score MAE"]
        if rows:
            out.append(format_table(header, rows))
        per = metrics.get("per_type_severity") or {}
        if per:
            prow = [[t] + [v.get(k, math.nan) for k in ("num_graded", "grade_accuracy", "qwk",
                                                        "num_graded_gt", "grade_accuracy_gt", "qwk_gt")]
                    for t, v in per.items()]
            out.append(format_table(["type", "n", "acc", "QWK", "n_gt", "acc_gt", "QWK_gt"],
                                    [[c if c is not None else math.nan for c in r] for r in prow]))
        names = metrics.get("grades") or []
        for suffix, what in (("", "matched detections"), ("_gt", "ground-truth boxes")):
            cm = metrics.get(f"grade_confusion_matrix{suffix}")
            if cm:
                out.append(f"grade confusion matrix, {what} (rows: ground truth, columns: prediction)")
                out.append(format_table(["gt \\ pred"] + list(names), [[c] + list(r) for c, r in zip(names, cm)]))
        if "temperature" in metrics or "temperature_gt" in metrics:
            out.append("temperature scaling (fitted on this split): " + "  ".join(
                f"{lbl}: T {metrics.get('temperature' + s, math.nan):.3f}, ECE "
                f"{metrics.get('ece' + s, math.nan):.4f} -> {metrics.get('ece' + s + '_ts', math.nan):.4f}"
                for s, lbl in (("", "matched"), ("_gt", "GT boxes"))))
        out.append(f"verdict accuracy {metrics.get('verdict_accuracy', math.nan):.4f}  "
                   f"overkill {metrics.get('overkill_rate', math.nan):.4f} "
                   f"({metrics.get('num_overkill', 0)}/{metrics.get('num_gt_ok', 0)} GT-OK)  "
                   f"escape {metrics.get('escape_rate', math.nan):.4f} "
                   f"({metrics.get('num_escape', 0)}/{metrics.get('num_gt_ng', 0)} GT-NG)")
        out += [f"note: {n}" for n in metric_notes(metrics)]
        out += [f"note: {n}" for n in metrics.get("severity_notes") or []]
        return "\n".join(out)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """The detection evaluator's plots (``pr_curve.png``, image-level
        ``confusion_matrix.png``) and ``grade_confusion_matrix.png`` /
        ``grade_confusion_matrix_gt.png`` (matched detections / GT boxes)."""
        from ..visualization.plots import plot_confusion_matrix

        paths = list(self.det.save_artifacts(metrics, out_dir) or [])
        names = metrics.get("grades") or []
        for suffix, what in (("", "grades of matched detections"), ("_gt", "grades of ground-truth boxes")):
            cm = metrics.get(f"grade_confusion_matrix{suffix}")
            if cm:
                out = os.path.join(out_dir, f"grade_confusion_matrix{suffix}.png")
                paths.append(plot_confusion_matrix(cm, names, out, title=what))
        return paths
