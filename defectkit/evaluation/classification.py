"""Image-level classification metrics (normal/defective, ImageFolder classes, grades).

``f1_macro`` is sklearn's macro-averaged F1 with sklearn's default label set (the classes
present in ground truth or predictions), i.e. the "macro avg" f1-score row of
``classification_report(y_true, y_pred)`` that DefectNet reports as its F1.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..registry import EVALUATORS
from ..structures import class_names_for
from .base import IMAGE_LEVEL_COLUMNS, BaseEvaluator, batch_meta, format_table, metric_notes, missing_class_note

_AVERAGES = ("macro", "weighted", "micro", "binary")


@EVALUATORS.register()
class ClassificationEvaluator(BaseEvaluator):
    """Args:
        classes: class names (runtime default: the dataset's ``classes``). Ignored for
            ``target: is_defective``, whose names are always ``['normal', 'defective']``.
        target: batch key with the ground-truth image label (``is_defective`` or ``label``).
        average: which F1 is the main metric: ``macro`` (default, DefectNet's F1),
            ``weighted``, ``micro`` or ``binary`` (F1 of class 1, e.g. "defective").
    """

    table_columns = IMAGE_LEVEL_COLUMNS        # compared beside the detectors (mAP: n/a)
    greater_is_better = True

    def __init__(self, classes: list[str] | None = None, target: str = "is_defective",
                 average: str = "macro"):
        super().__init__()
        if average not in _AVERAGES:
            raise ValueError(f"ClassificationEvaluator: average must be one of {_AVERAGES}, got {average!r}")
        self.classes = list(classes) if classes is not None else None
        self.target = target
        self.average = average
        self.main_metric = f"f1_{average}"

    # ------------------------------------------------------------------------ records
    def process(self, batch: dict, results: list) -> None:
        if self.target not in batch:
            raise KeyError(f"ClassificationEvaluator(target='{self.target}'): the batch has no "
                           f"'{self.target}' key; set evaluation.target")
        gts = batch[self.target]
        for i, r in enumerate(results):
            meta = batch_meta(batch, i)
            self.records.append({
                "id": meta.get("id", len(self.records)),
                "path": meta.get("path"),
                "gt": int(gts[i]),
                "pred": int(r.label),
                "scores": [float(s) for s in r.scores],
            })

    def class_names(self, num_classes: int) -> list[str]:
        return class_names_for(self.target, num_classes, self.classes)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.records:
            raise RuntimeError("ClassificationEvaluator.compute: no records (empty evaluation set, "
                               "or process() was never called)")
        widths = {len(r["scores"]) for r in self.records}
        if len(widths) != 1:
            raise ValueError(f"ClassificationEvaluator: records have different numbers of scores {widths}")
        y_true = np.array([r["gt"] for r in self.records], dtype=np.int64)
        y_pred = np.array([r["pred"] for r in self.records], dtype=np.int64)
        scores = np.array([r["scores"] for r in self.records], dtype=np.float64)
        return y_true, y_pred, scores

    # ------------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix,
                                     f1_score, precision_recall_fscore_support, precision_score,
                                     recall_score, roc_auc_score)

        y_true, y_pred, scores = self._arrays()
        n = scores.shape[1]
        if max(y_true.max(), y_pred.max()) >= n:
            raise ValueError(f"ClassificationEvaluator: a label >= {n} (the number of scores per image)")
        names = self.class_names(n)
        labels = list(range(n))
        m: dict[str, Any] = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            # sklearn's default label set, as classification_report's "macro avg" row
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "precision_macro": float(precision_score(y_true, y_pred, average="macro", zero_division=0)),
            "recall_macro": float(recall_score(y_true, y_pred, average="macro", zero_division=0)),
        }
        if self.average != "macro":
            kw = {"pos_label": 1} if self.average == "binary" else {}
            m[f"f1_{self.average}"] = float(f1_score(y_true, y_pred, average=self.average,
                                                     zero_division=0, **kw))
        present = set(y_true.tolist())
        if n == 2 and present == {0, 1}:
            m["roc_auc"] = float(roc_auc_score(y_true, scores[:, 1]))
            m["average_precision"] = float(average_precision_score(y_true, scores[:, 1]))
        elif n > 2 and present == set(labels):
            probs = scores / scores.sum(1, keepdims=True)
            m["roc_auc_ovr"] = float(roc_auc_score(y_true, probs, multi_class="ovr",
                                                   average="macro", labels=labels))
        elif missing_class_note(y_true, names, "images"):   # AUROC needs every class: say why not
            m["roc_auc_note" if n == 2 else "roc_auc_ovr_note"] = missing_class_note(y_true, names, "images")
        m["num_images"] = int(len(y_true))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        m["classes"] = names
        m["per_class"] = {name: {"precision": float(p[k]), "recall": float(r[k]),
                                 "f1": float(f[k]), "support": int(s[k])}
                          for k, name in enumerate(names)}
        m["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
        return m

    # ------------------------------------------------------------------------ output
    def export_fields(self, result: Any) -> dict[str, Any]:
        """``label_name``: the predicted class's name (ImageFolder folder, grade, normal/defective)."""
        return {"label_name": self.class_names(len(result.scores))[int(result.label)]}

    def summary(self, metrics: dict[str, Any]) -> str:
        names = metrics.get("classes") or []
        per = metrics.get("per_class") or {}
        rows = [[c, per[c]["precision"], per[c]["recall"], per[c]["f1"], per[c]["support"]]
                for c in names if c in per]
        total = sum(per[c]["support"] for c in names if c in per)
        rows.append(["macro avg", metrics.get("precision_macro", float("nan")),
                     metrics.get("recall_macro", float("nan")),
                     metrics.get("f1_macro", float("nan")), total])
        out = [format_table(["class", "precision", "recall", "f1", "support"], rows)]
        extra = [f"{k} {metrics[k]:.4f}" for k in ("accuracy", f"f1_{self.average}", "roc_auc",
                                                   "average_precision", "roc_auc_ovr")
                 if k in metrics and not (k == "f1_macro" and self.average == "macro")]
        out.append("  ".join(extra))
        out += [n.replace(" is nan: ", " not computed: ") for n in metric_notes(metrics)]
        cm = metrics.get("confusion_matrix")
        if cm:
            out.append("confusion matrix (rows: ground truth, columns: prediction)")
            out.append(format_table(["gt \\ pred"] + list(names), [[c] + list(row) for c, row in zip(names, cm)]))
        return "\n".join(out)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """``confusion_matrix.png``; for 2-way with both classes present also
        ``roc_curve.png`` and ``pr_curve.png`` (scores of class 1)."""
        from ..visualization.plots import plot_confusion_matrix, plot_pr_curve, plot_roc_curve

        os.makedirs(out_dir, exist_ok=True)
        names = metrics.get("classes") or []
        paths = [plot_confusion_matrix(metrics["confusion_matrix"], names,
                                       os.path.join(out_dir, "confusion_matrix.png"))]
        if "roc_auc" in metrics and self.records:
            y_true, _, scores = self._arrays()
            pos = names[1] if len(names) > 1 else "1"
            paths.append(plot_roc_curve(y_true, scores[:, 1], os.path.join(out_dir, "roc_curve.png"),
                                        title=f"ROC ({pos} vs {names[0] if names else '0'})"))
            paths.append(plot_pr_curve(y_true, scores[:, 1], os.path.join(out_dir, "pr_curve.png"),
                                       title=f"precision-recall ({pos})"))
        return paths
