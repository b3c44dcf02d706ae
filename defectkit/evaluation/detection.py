"""Detection metrics as DefectNet reports them (docs/defectnet.md, "Metrics").

- **mAP**: pycocotools ``COCOeval(iouType='bbox')`` over ALL evaluated images, normal ones
  included (a box on a normal image is a false positive). ``mAP`` = stats[0] =
  AP@[.50:.95], area all, maxDets 100, averaged over the categories that have ground truth.
  The dataset's ``classes`` are the defect categories only (``CocoDataset(normal_category=0)``
  drops DefectNet's "背景" category), so the mean excludes the normal category exactly like
  the original's ``ignore_ids=[0]``. Internally COCO category id = label + 1; the
  exported ``predictions.bbox.json`` maps labels back to the source's own category ids
  (``dataset.category_ids``, as mmdetection's ``results2json``) and image ids.
- **F1**: image level, normal (0) vs defective (1). An image is predicted defective iff
  it has a detection with ``score > score_thr``; ground truth from ``is_defective`` (any
  defect box). ``f1_macro`` = sklearn's macro F1 with its default label set = the
  "macro avg" row of ``classification_report`` that DefectNet reports.
- **ATT** is measured by :func:`defectkit.engine.run_inference` (``timing``);
  :func:`att_model` adds the paper's β = ATT_N / ATT_D and ideal time t = 1 − (1 − β)·α.

Ground truth comes from ``dataset.records`` (original image pixels), never from the
transformed batch; the engine passes the evaluated dataset (``build_evaluator(...,
dataset=...)``).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from ..registry import EVALUATORS
from ..structures import BINARY_CLASS_NAMES
from .base import IMAGE_LEVEL_COLUMNS, BaseEvaluator, batch_meta, format_table

# names of COCOeval.stats, in order
COCO_STAT_NAMES = ["mAP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def run_cocoeval(gt: dict, dets: list[dict], iou_type: str = "bbox"):
    """pycocotools' COCOeval of ``dets`` (COCO result dicts with ``id``) against the COCO dict
    ``gt``, evaluated, accumulated and summarised over all of ``gt``'s images and categories
    (``iou_type``: 'bbox' or 'segm'); returns ``(COCOeval, its printed summary)``. The result
    COCO object is built by hand: ``loadRes`` rejects an empty result list."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": dets}
        coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        E.params.imgIds = sorted(im["id"] for im in gt["images"])
        E.params.catIds = [c["id"] for c in gt["categories"]]
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E, buf.getvalue()


def _nan_if_missing(v: float) -> float:
    """COCOeval writes -1 where nothing could be measured (no ground truth): nan here."""
    v = float(v)
    return math.nan if v < 0 else v


def att_model(timing: dict, alpha: float | None) -> dict[str, float]:
    """The paper's efficiency model from measured ATT (``timing`` as ``run_inference`` /
    ``summarize_times`` give it, ms) and the normal proportion ``alpha``:

    ``beta = att_normal_ms / att_defective_ms``; normalised time ``ideal_time =
    1 - (1 - beta) * alpha`` (1 = every image costs a defective one); improvement
    ``ideal_gain = (1 - beta) * alpha``; ``att_ideal_ms = alpha * ATT_N + (1 - alpha) * ATT_D``
    (= ideal_time * ATT_D). Values are nan when an input is missing.
    """
    att_n = timing.get("att_normal_ms")
    att_d = timing.get("att_defective_ms")
    nan = math.nan
    att_n = nan if att_n is None else float(att_n)
    att_d = nan if att_d is None else float(att_d)
    a = nan if alpha is None else float(alpha)
    beta = att_n / att_d if att_d and not math.isnan(att_d) else nan
    t = 1.0 - (1.0 - beta) * a
    return {"alpha": a, "beta": beta, "ideal_time": t, "ideal_gain": (1.0 - beta) * a,
            "att_ideal_ms": a * att_n + (1.0 - a) * att_d}


def normal_proportion(times: Sequence[tuple[float, Any]]) -> float:
    """α: the fraction of GT-normal images among ``(seconds, is_defective)`` pairs with a label."""
    known = [int(d) for _, d in times if d is not None and int(d) in (0, 1)]
    return sum(1 for d in known if d == 0) / len(known) if known else math.nan


def image_level_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """Normal/defective metrics: ``f1_macro`` (DefectNet's F1), accuracy, per-class
    precision/recall/F1/support and the 2x2 confusion matrix (rows GT, columns prediction)."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support, precision_score, recall_score)

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        return {"f1_macro": math.nan, "accuracy": math.nan}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    return {
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "precision_macro": float(precision_score(y_true, y_pred, average="macro", zero_division=0)),
        "recall_macro": float(recall_score(y_true, y_pred, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "image_classes": list(BINARY_CLASS_NAMES),
        "image_per_class": {name: {"precision": float(p[k]), "recall": float(r[k]),
                                   "f1": float(f[k]), "support": int(s[k])}
                            for k, name in enumerate(BINARY_CLASS_NAMES)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
    }


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


@EVALUATORS.register()
class DetectionEvaluator(BaseEvaluator):
    """COCO box mAP + image-level normal/defective F1 (+ gate pass rate).

    Args:
        classes: defect class names (runtime default: the dataset's ``classes``, which
            exclude the normal category); internal COCO category id = index + 1, exported
            ids are the source's own (:meth:`export_categories`).
        score_thr: an image is predicted defective iff a detection has ``score > score_thr``
            (DefectNet: the detector's test ``score_thr``, 0.05). mAP uses every detection.
        iou_type: only ``'bbox'``.
        dataset: the evaluated dataset (runtime default, passed by the engine): ground
            truth in original pixels from ``dataset.records`` (``id``, ``boxes``,
            ``labels``, ``is_defective``, ``width``/``height``).
        classwise: per-class AP table in ``summary()`` / ``metrics['per_class_ap']``.
    """

    main_metric = "mAP"
    greater_is_better = True
    metric_directions = {**BaseEvaluator.metric_directions, "ideal_time": False, "att_ideal_ms": False}
    table_columns = IMAGE_LEVEL_COLUMNS

    def __init__(self, classes: list[str] | None = None, score_thr: float = 0.05,
                 iou_type: str = "bbox", dataset: Any = None, classwise: bool = True):
        super().__init__()
        if iou_type != "bbox":
            raise ValueError(f"DetectionEvaluator: iou_type must be 'bbox', got {iou_type!r}")
        self.classes = list(classes) if classes is not None else None
        self.score_thr = float(score_thr)
        self.iou_type = iou_type
        self.dataset = dataset
        self.classwise = bool(classwise)
        self.coco_log = ""            # pycocotools' captured output of the last compute()
        self.pr_curves: dict[str, tuple[list[float], list[float]]] = {}

    def export_fields(self, result: Any) -> dict[str, Any]:
        """``label_names``: each box's class name (``tools/infer.py``'s results.json)."""
        if not self.classes:
            return {}
        return {"label_names": [self.classes[int(l)] if 0 <= int(l) < len(self.classes) else str(int(l))
                                for l in _as_list(result.labels)]}

    # ------------------------------------------------------------------------ records
    def process(self, batch: dict, results: list) -> None:
        gts = batch.get("is_defective")
        gts = gts.tolist() if hasattr(gts, "tolist") else gts
        for i, r in enumerate(results):
            meta = batch_meta(batch, i)
            gt = gts[i] if gts is not None and i < len(gts) else None
            self.records.append({
                "id": meta.get("id", len(self.records)),
                "is_defective": None if gt is None else int(gt),
                "boxes": [[float(v) for v in b] for b in _as_list(r.boxes)],
                "scores": [float(s) for s in _as_list(r.scores)],
                "labels": [int(l) for l in _as_list(r.labels)],
                "gate_score": None if getattr(r, "gate_score", None) is None else float(r.gate_score),
                "gated": bool(getattr(r, "gated", False)),
            })

    # ------------------------------------------------------------------------ ground truth
    def _class_names(self) -> list[str]:
        if self.classes is not None:
            return list(self.classes)
        classes = getattr(self.dataset, "classes", None)
        if classes is None:
            raise RuntimeError("DetectionEvaluator: no classes (pass classes= or a dataset with classes)")
        return list(classes)

    def _gt_records(self) -> dict:
        if self.dataset is None or not hasattr(self.dataset, "records"):
            raise RuntimeError("DetectionEvaluator needs the evaluated dataset (ground truth in original "
                               "image pixels): build it with build_evaluator(cfg, classes, dataset=...)")
        return {rec.id: rec for rec in self.dataset.records}

    def coco_gt(self, ids: Sequence[Any] | None = None) -> tuple[dict, dict]:
        """The COCO ground-truth dict of the records with ``ids`` (default: all) and the map
        record id -> COCO image id (1..N, so that any id type works)."""
        gt = self._gt_records()
        names = self._class_names()
        ids = list(gt) if ids is None else list(ids)
        id_map = {rid: k + 1 for k, rid in enumerate(ids)}
        images, anns = [], []
        for rid in ids:
            rec = gt[rid]
            w, h = rec.width, rec.height
            if w is None or h is None:
                from ..data.formats.common import image_size

                w, h = image_size(rec.img_path)
            images.append({"id": id_map[rid], "width": int(w), "height": int(h)})
            for box, label in zip(np.asarray(rec.boxes).reshape(-1, 4).tolist(),
                                  np.asarray(rec.labels).reshape(-1).tolist()):
                x1, y1, x2, y2 = (float(v) for v in box)
                bw, bh = x2 - x1, y2 - y1
                anns.append({"id": len(anns) + 1, "image_id": id_map[rid], "category_id": int(label) + 1,
                             "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
        cats = [{"id": k + 1, "name": str(n)} for k, n in enumerate(names)]
        return {"images": images, "annotations": anns, "categories": cats}, id_map

    # ------------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        if not self.records:
            raise RuntimeError("DetectionEvaluator.compute: no records (empty evaluation set, "
                               "or process() was never called)")
        gt_recs = self._gt_records()
        ids = [r["id"] for r in self.records]
        missing = [i for i in ids if i not in gt_recs]
        if missing:
            raise KeyError(f"DetectionEvaluator: image ids {missing[:5]} are not in the dataset's records")
        names = self._class_names()
        gt_dict, id_map = self.coco_gt(ids)
        dets = []
        for r in self.records:
            for (x1, y1, x2, y2), s, l in zip(r["boxes"], r["scores"], r["labels"]):
                dets.append({"id": len(dets) + 1, "image_id": id_map[r["id"]], "category_id": int(l) + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "score": float(s), "iscrowd": 0})

        E, self.coco_log = run_cocoeval(gt_dict, dets, self.iou_type)
        m: dict[str, Any] = {k: _nan_if_missing(v) for k, v in zip(COCO_STAT_NAMES, E.stats)}

        # per-class AP (area all, maxDets 100) and PR curves at IoU 0.5
        precision = E.eval["precision"]            # (T, R, K, A, M)
        rec_thrs = list(map(float, E.params.recThrs))
        num_gt = {k + 1: 0 for k in range(len(names))}
        for a in gt_dict["annotations"]:
            num_gt[a["category_id"]] += 1
        per_class, self.pr_curves = {}, {}
        for k, name in enumerate(names):
            p = precision[:, :, k, 0, -1]
            p50 = precision[0, :, k, 0, -1]
            per_class[name] = {"AP": float(p[p > -1].mean()) if (p > -1).any() else math.nan,
                               "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else math.nan,
                               "num_gt": num_gt[k + 1]}
            if num_gt[k + 1] > 0:
                self.pr_curves[name] = (rec_thrs, [max(0.0, float(v)) for v in p50])
        if self.classwise:
            m["per_class_ap"] = per_class
        m["coco_summary"] = "\n".join(line for line in self.coco_log.splitlines()
                                      if line.lstrip().startswith("Average"))

        # image level: normal / defective
        y_true, y_pred = [], []
        for r in self.records:
            gt = gt_recs[r["id"]].is_defective
            gt = r["is_defective"] if gt is None else gt
            if gt is None:
                continue
            y_true.append(int(gt))
            y_pred.append(int(any(s > self.score_thr for s in r["scores"])))
        m.update(image_level_metrics(y_true, y_pred))
        n = len(self.records)
        m["num_images"] = n
        m["num_normal"] = int(sum(1 for d in y_true if d == 0))
        m["num_defective"] = int(sum(1 for d in y_true if d == 1))
        m["normal_proportion"] = m["num_normal"] / len(y_true) if y_true else math.nan
        m["score_thr"] = self.score_thr
        if any(r["gate_score"] is not None for r in self.records):
            m["gate_pass_rate"] = sum(1 for r in self.records if not r["gated"]) / n
            m["num_gated"] = int(sum(1 for r in self.records if r["gated"]))
        return m

    # ------------------------------------------------------------------------ timing
    def add_timing(self, metrics: dict[str, Any], times: Sequence[tuple[float, Any]],
                   results: Sequence[Any] | None = None) -> str:
        """DefectNet's efficiency model at the measured normal proportion: adds ``alpha``
        (:func:`normal_proportion` of ``times``), ``beta = ATT_N / ATT_D``, ``ideal_time =
        1 - (1 - beta) * alpha`` and ``att_ideal_ms`` (:func:`att_model`, from
        ``metrics['att_normal_ms']`` / ``['att_defective_ms']``, ms); with ``results`` (the
        timed calls' ``DetectionResult`` s) also ``gate_pass_rate``: the fraction of gated
        results with ``gated == False`` (None when no result carries a ``gate_score``).
        Returns the printed line."""
        m = att_model(metrics, normal_proportion(times))
        metrics.update({k: m[k] for k in ("alpha", "beta", "ideal_time", "att_ideal_ms")})
        gate = ""
        if results is not None:
            gated = [bool(r.gated) for r in results if r.gate_score is not None]
            metrics["gate_pass_rate"] = sum(not g for g in gated) / len(gated) if gated else None
            gate = "" if not gated else f"gate pass rate {metrics['gate_pass_rate']:.3f} | "
        return (f"{gate}alpha (normal proportion) {m['alpha']:.3f} | beta = ATT_N / ATT_D {m['beta']:.3f} | "
                f"ideal t = 1 - (1 - beta) * alpha {m['ideal_time']:.3f} (ATT_ideal {m['att_ideal_ms']:.2f} ms)")

    # ------------------------------------------------------------------------ output
    def summary(self, metrics: dict[str, Any]) -> str:
        out = []
        if metrics.get("coco_summary"):
            out.append(metrics["coco_summary"])
        per = metrics.get("per_class_ap") or {}
        if per:
            rows = [[c, v["AP"], v["AP50"], v["num_gt"]] for c, v in per.items()]
            rows.append(["mean (classes with GT)", metrics.get("mAP", math.nan),
                         metrics.get("AP50", math.nan), sum(v["num_gt"] for v in per.values())])
            out.append(format_table(["class", "AP", "AP50", "gt boxes"], rows, digits=3))
        ipc = metrics.get("image_per_class") or {}
        if ipc:
            rows = [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in ipc.items()]
            rows.append(["macro avg", metrics.get("precision_macro", math.nan),
                         metrics.get("recall_macro", math.nan), metrics.get("f1_macro", math.nan),
                         sum(v["support"] for v in ipc.values())])
            out.append(f"image level (defective iff a detection has score > {metrics.get('score_thr', self.score_thr)})")
            out.append(format_table(["image", "precision", "recall", "f1", "support"], rows))
        cm = metrics.get("confusion_matrix")
        if cm:
            names = metrics.get("image_classes") or list(BINARY_CLASS_NAMES)
            out.append("confusion matrix (rows: ground truth, columns: prediction)")
            out.append(format_table(["gt \\ pred"] + list(names), [[c] + list(r) for c, r in zip(names, cm)]))
        line = [f"mAP {metrics.get('mAP', math.nan):.4f}", f"AP50 {metrics.get('AP50', math.nan):.4f}",
                f"F1 {metrics.get('f1_macro', math.nan):.4f}", f"accuracy {metrics.get('accuracy', math.nan):.4f}"]
        if "gate_pass_rate" in metrics:
            line.append(f"gate pass rate {metrics['gate_pass_rate']:.4f}")
        out.append("  ".join(line))
        return "\n".join(out)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: str) -> list[str]:
        """``pr_curve.png`` (per class, IoU 0.5, from COCOeval) and ``confusion_matrix.png``
        (image level)."""
        from ..visualization.plots import plot_confusion_matrix, plot_curves

        os.makedirs(out_dir, exist_ok=True)
        paths = []
        if self.pr_curves:
            paths.append(plot_curves(self.pr_curves, os.path.join(out_dir, "pr_curve.png"),
                                     xlabel="recall", ylabel="precision",
                                     title="precision-recall per class (IoU 0.5)"))
        if metrics.get("confusion_matrix"):
            paths.append(plot_confusion_matrix(metrics["confusion_matrix"],
                                               metrics.get("image_classes") or list(BINARY_CLASS_NAMES),
                                               os.path.join(out_dir, "confusion_matrix.png")))
        return paths

    def export_categories(self) -> list[dict]:
        """``[{"id", "name"}]`` per model label: the source's own category id
        (``dataset.category_ids``, e.g. a COCO file's 3, 7, 10), matched by class name when
        the evaluated dataset orders its classes differently; ``label + 1`` for a source
        without numeric ids (VOC, LabelMe, mask folders), with the class name."""
        names = list(self.classes) if self.classes is not None else list(getattr(self.dataset, "classes", None) or [])
        ds_names = list(getattr(self.dataset, "classes", None) or [])
        ds_ids = getattr(self.dataset, "category_ids", None) or list(range(1, len(ds_names) + 1))
        by_name = dict(zip(ds_names, ds_ids))
        return [{"id": int(by_name.get(n, k + 1)), "name": str(n)} for k, n in enumerate(names)]

    def write_predictions(self, results: list, metas: list, out_dir: str) -> str:
        """COCO results JSON ``predictions.bbox.json``, evaluable against the source's own
        annotation file: ``image_id`` (the dataset's image id), ``category_id`` (the source's
        category id of the label, see :meth:`export_categories`; ``label + 1`` when nothing is
        known), ``category_name`` (when the class names are known), ``bbox`` [x, y, w, h] in
        original pixels, ``score``."""
        os.makedirs(out_dir, exist_ok=True)
        cats = self.export_categories()
        out = []
        for k, r in enumerate(results):
            meta = metas[k] if k < len(metas) and isinstance(metas[k], dict) else {}
            iid = meta.get("id", k)
            for (x1, y1, x2, y2), s, l in zip(_as_list(r.boxes), _as_list(r.scores), _as_list(r.labels)):
                cat = cats[int(l)] if 0 <= int(l) < len(cats) else {"id": int(l) + 1}
                out.append({"image_id": iid, "category_id": cat["id"],
                            **({"category_name": cat["name"]} if "name" in cat else {}),
                            "bbox": [round(float(x1), 2), round(float(y1), 2),
                                     round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
                            "score": round(float(s), 5)})
        path = os.path.join(out_dir, "predictions.bbox.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f)
        return path
