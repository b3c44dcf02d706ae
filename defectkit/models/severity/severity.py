"""``SeverityDetector``: a detector plus one severity classifier per defect type, a severity
score per defect and an OK/NG verdict per image (issue 13; research note §§2-3).

    model:
      type: SeverityDetector
      grades: ["1", "2", "3", "4", "5"]            # lightest first
      detector: {type: SeverityFasterRCNN, backbone: shallownet, ...}
      severity_heads:
        dash_col:
          crop: {kind: column_strip, width: 18, out_size: [1080, 18], gray: true}
          classifier: {type: DashNet}
          score_weights: null                     # linspace(0, 1, G)
        blemish:
          crop: {kind: box, padding: 0.1, out_size: [64, 64]}
          classifier: {type: ImageClassifier, backbone: small_cnn}
      ignore_types: []
      report_score_thr: 0.5
      compat_weights_0_2k: false
      verdict: {rules: [{name: severe_dash, types: [dash_col], severity_at_least: 0.6}]}

Training (``forward``): the detector's losses plus, per head type, ``loss_sev_<type>``: the
cross-entropy of the head on crops (``crops.CropSpec``, ``roi_align``) of the batch's GT boxes
of that type whose grade is known (``grades`` != -1; ``train_copies`` crops per box with the
crop's ``jitter`` / ``flip`` augmentations), and ``acc_sev_<type>`` (% correct; a
step without such a box repeats the previous step's value, so the logged average is not
diluted). Without crops the loss is zero but attached to the head's parameters. Crops come
from ``batch['orig_image']`` (original pixels, boxes scaled back by ``meta['scale_factor']``)
when the batch has it, else from ``batch['image']`` with the boxes in its frame; detections
are cropped the same way at test, so training and test crops match.

Test (``predict``): the detector's results (boxes in original px), detections of
``ignore_types`` dropped; detections with score >= ``report_score_thr`` are reported, those
of a head type graded in one batched pass per type; severity = sum_k w_k p_k
(``scoring.severity_score``), or the detector score for a type without a head; the verdict
rules (``scoring.VerdictRules``) on the reported defects. When the batch carries GT
``boxes`` + ``grades``: ``gt_grade_probs`` (the heads on the GT boxes) and ``gt_verdict``.
``timing_ms`` per image: detector and severity (GT grading excluded).
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS
from ..base import BaseModel, Progress
from .crops import CropSpec, jitter_boxes, match_channels, random_flips
from .result import SeverityResult
from .scoring import VerdictRules, resolve_weights, severity_score

_HEAD_KEYS = ("crop", "classifier", "score_weights")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_head_classifier(cfg: Any, grades: Sequence[str], where: str) -> nn.Module:
    """A head's classifier: a built module as is, or a registered model's dict built with
    ``num_classes = G`` (and ``classes`` = the grade names, ``target: label`` where the
    constructor takes them) unless the dict sets them. It must expose ``logits(images)``."""
    if isinstance(cfg, nn.Module):
        module = cfg
    else:
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise ValueError(f"{where}: expected a classifier dict with a 'type' (e.g. {{type: DashNet}}), got {cfg!r}")
        cls = MODELS.get(cfg["type"])
        params = inspect.signature(cls).parameters
        extra: dict[str, Any] = {}
        if "num_classes" in params and "num_classes" not in cfg:
            extra["num_classes"] = len(grades)
        if "classes" in params and "classes" not in cfg:
            extra["classes"] = list(grades)
        if "target" in params and "target" not in cfg:
            extra["target"] = "label"
        try:
            module = MODELS.build(cfg, **extra)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
    if not callable(getattr(module, "logits", None)):
        raise ValueError(f"{where}: {type(module).__name__} has no logits(images) method "
                         f"(the severity heads need one, as ImageClassifier and DashNet have)")
    n = getattr(module, "num_classes", None)
    if n is not None and int(n) != len(grades):
        raise ValueError(f"{where}: the classifier has {n} outputs but model.grades has {len(grades)} grades")
    return module


def head_in_channels(module: nn.Module) -> int:
    """The classifier's input channels: ``in_channels`` when it declares one, else 3."""
    return int(getattr(module, "in_channels", 3))


def merge_column_fragments(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, label: int,
                           max_dx: float, extend_thr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column-line fragments -> one detection per column (greedy, by descending score).

    boxes (N, 4) XYXY px, scores (N,), labels (N,). Among the detections of ``label``, one
    whose box centre x is within ``max_dx`` px (half the column strip width) of an already
    kept detection's centre is dropped; when its score >= ``extend_thr`` the kept box's
    ``y1``/``y2`` grow to cover it (x stays the kept box's). Other labels pass unchanged.
    Returns the kept (boxes, scores, labels), order by descending score within ``label``
    and unchanged otherwise (the merged ones placed where the first of them was)."""
    idx = torch.where(labels == label)[0]
    if idx.numel() < 2:
        return boxes, scores, labels
    order = idx[torch.argsort(scores[idx], descending=True, stable=True)]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    boxes = boxes.clone()
    kept: list[int] = []
    drop = torch.zeros(len(boxes), dtype=torch.bool)
    for j in order.tolist():
        near = [k for k in kept if abs(float(cx[j] - cx[k])) <= max_dx]
        if not near:
            kept.append(j)
            continue
        drop[j] = True
        if float(scores[j]) >= extend_thr:
            k = near[0]                 # the highest-scored column it belongs to
            boxes[k, 1] = torch.minimum(boxes[k, 1], boxes[j, 1])
            boxes[k, 3] = torch.maximum(boxes[k, 3], boxes[j, 3])
    keep = ~drop
    return boxes[keep], scores[keep], labels[keep]


@MODELS.register()
class SeverityDetector(BaseModel):
    """Args (module docstring for the config shape):
        detector: the built detector (config: a model dict or a config path; the builder
            ``engine.builders.build_model`` builds it with the dataset's classes).
        grades: the grade names, lightest first (G = len); the severity datasets'
            ``grade_names`` must match.
        severity_heads: {type: {crop, classifier, score_weights}}; types not listed are
            scored by the detector confidence.
        classes / num_classes: the defect types (filled in by the trainer).
        ignore_types: types whose detections are dropped (explicitly; the original dropped
            classes 3 and 4 silently).
        report_score_thr: detections with a score >= this are graded, reported and judged.
        compat_weights_0_2k: default weights 0.2 k (the original's code) instead of linspace(0, 1, G).
        verdict: ``{rules: [...]}`` (``scoring.VerdictRules``); null: any reported defect -> NG.
        merge_column_fragments: for a head type with ``crop: {kind: column_strip}``, detections
            whose box centre x lies within half the strip width of a higher-scored detection
            of the same type are fragments of the same column line (the original reports a
            column line as its full-height strip): they are dropped, and the kept box's
            vertical extent grows to cover the dropped fragments that score
            >= ``report_score_thr``. Without it a line detected as 2-4 overlapping segments
            (box NMS keeps segments whose IoU < ``nms_iou``) counts as 2-4 defects (the
            ``count_at_least`` rules) and as false positives. Default false (the plain
            detector output); see :func:`merge_column_fragments`.
        wide_csv: ``tools/infer.py`` also writes ``log.csv`` in the original's wide layout
            (one row per image: file, box count, then class / score / ymin / xmin / ymax /
            xmax per defect; research note §3 "Outputs"), boxes in original pixels.
    """

    model_parts = {"detector": True}

    def __init__(self, detector: nn.Module, grades: Sequence[str], severity_heads: dict | None = None,
                 classes: list[str] | None = None, num_classes: int | None = None,
                 ignore_types: Sequence[str] = (), report_score_thr: float = 0.5,
                 compat_weights_0_2k: bool = False, verdict: dict | list | None = None,
                 merge_column_fragments: bool = False, wide_csv: bool = False):
        super().__init__()
        if not isinstance(grades, (list, tuple)) or len(grades) < 2:
            raise ValueError(f"model.grades: a list of at least 2 grade names (lightest first), got {grades!r}")
        self.grades = [str(g) for g in grades]
        if not isinstance(detector, nn.Module):
            raise TypeError("model.detector: SeverityDetector takes a built model; build the config "
                            "with defectkit.engine.build_model, which builds its parts")
        if not callable(getattr(detector, "predict", None)):
            raise ValueError(f"model.detector: expected a detector model, got {type(detector).__name__}")
        det_classes = getattr(detector, "classes", None)
        if classes is None:
            classes = list(det_classes) if det_classes is not None else (
                [str(i) for i in range(num_classes)] if num_classes else None)
        if classes is None:
            raise ValueError("SeverityDetector: set model.classes (the defect types) or use a detector that has them")
        if det_classes is not None and list(det_classes) != list(classes):
            raise ValueError(f"model.detector: its classes {list(det_classes)} differ from the model's {list(classes)}")
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.detector = detector

        bad = [t for t in ignore_types if t not in self.classes]
        if bad:
            raise ValueError(f"model.ignore_types: {bad} not among the defect types {self.classes}")
        self.ignore_types = [str(t) for t in ignore_types]
        if not isinstance(report_score_thr, (int, float)) or not 0 <= report_score_thr <= 1:
            raise ValueError(f"model.report_score_thr: a number in [0, 1], got {report_score_thr!r}")
        self.report_score_thr = float(report_score_thr)

        heads = severity_heads or {}
        if not isinstance(heads, dict):
            raise ValueError(f"model.severity_heads: expected {{type: {{crop, classifier, score_weights}}}}, got {heads!r}")
        self.heads = nn.ModuleDict()
        self.crops: dict[str, CropSpec] = {}
        self.score_weights: dict[str, torch.Tensor] = {}
        for t, hcfg in heads.items():
            where = f"model.severity_heads.{t}"
            if t not in self.classes:
                raise ValueError(f"{where}: '{t}' is not a defect type (types: {self.classes})")
            if t in self.ignore_types:
                raise ValueError(f"{where}: '{t}' is also in model.ignore_types")
            if not isinstance(hcfg, dict):
                raise ValueError(f"{where}: expected a dict with keys {list(_HEAD_KEYS)}, got {hcfg!r}")
            unknown = sorted(set(hcfg) - set(_HEAD_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown} (a head takes {list(_HEAD_KEYS)})")
            if hcfg.get("classifier") is None:
                raise ValueError(f"{where}.classifier: required (e.g. {{type: DashNet}})")
            self.crops[t] = CropSpec.parse(hcfg.get("crop"), f"{where}.crop")
            self.heads[t] = build_head_classifier(hcfg["classifier"], self.grades, f"{where}.classifier")
            self.score_weights[t] = resolve_weights(hcfg.get("score_weights"), self.grades, t,
                                                    compat=bool(compat_weights_0_2k))
        self.compat_weights_0_2k = bool(compat_weights_0_2k)
        self.merge_column_fragments = bool(merge_column_fragments)
        self.wide_csv = bool(wide_csv)
        self.verdict_rules = VerdictRules.parse(verdict, self.classes)
        self._last_acc: dict[str, float] = {t: 0.0 for t in self.heads}

    # ------------------------------------------------------------------ engine hooks
    def train_step_begin(self, progress: Progress) -> None:
        if isinstance(self.detector, BaseModel):
            self.detector.train_step_begin(progress)

    def train_step_end(self, progress: Progress) -> None:
        if isinstance(self.detector, BaseModel):
            self.detector.train_step_end(progress)

    # ------------------------------------------------------------------ crops
    @staticmethod
    def _scales(batch: dict, n: int) -> list[tuple[float, float]]:
        metas = batch.get("meta") or [None] * n
        return [tuple(float(v) for v in ((m or {}).get("scale_factor", (1.0, 1.0)))) for m in metas]

    def _crop_source(self, batch: dict) -> tuple[Any, bool]:
        """(images to crop from, whether they are in original pixels)."""
        orig = batch.get("orig_image")
        return (orig, True) if orig is not None else (batch["image"], False)

    def _source_sizes(self, batch: dict, source: Any, original: bool) -> list[tuple[int, int]]:
        if original:     # a stacked (padded) orig_image: the true sizes are in meta['orig_size']
            metas = batch.get("meta") or [None] * len(source)
            return [tuple(int(v) for v in ((m or {}).get("orig_size") or img.shape[-2:]))
                    for m, img in zip(metas, source)]
        n = batch["image"].shape[0]
        return [tuple(int(v) for v in s) for s in batch.get("image_sizes", [batch["image"].shape[-2:]] * n)]

    def _cut(self, t: str, source: Any, boxes: torch.Tensor, img_idx: torch.Tensor,
             sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops of type ``t`` for ``boxes`` (K, 4) in the source frame of images ``img_idx``."""
        spec = self.crops[t]
        hw = torch.tensor([sizes[int(i)] for i in img_idx], dtype=torch.float32, device=boxes.device).reshape(-1, 2)
        if isinstance(source, torch.Tensor):
            crops, regions = spec.crop(source, boxes, img_idx, hw)
        else:      # a list of differently sized images: one roi_align per image
            crops = boxes.new_zeros((0, 1 if spec.gray else 3, *spec.out_size))
            regions = boxes.new_zeros((0, 4))
            parts, order = [], []
            for i in torch.unique(img_idx).tolist():
                sel = torch.where(img_idx == i)[0]
                c, r = spec.crop(source[i][None].to(boxes.device).float(), boxes[sel],
                                 torch.zeros(len(sel), dtype=torch.long, device=boxes.device), hw[sel])
                parts.append((c, r))
                order.append(sel)
            if parts:
                idx = torch.cat(order)
                inv = torch.empty_like(idx)
                inv[idx] = torch.arange(len(idx), device=idx.device)
                crops = torch.cat([p[0] for p in parts])[inv]
                regions = torch.cat([p[1] for p in parts])[inv]
        return match_channels(crops, head_in_channels(self.heads[t])), regions

    def _gt(self, batch: dict, device: torch.device):
        n = batch["image"].shape[0]
        boxes = [torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) for b in batch["boxes"]]
        labels = [torch.as_tensor(l, dtype=torch.long, device=device).reshape(-1) for l in batch["labels"]]
        grades = batch.get("grades")
        if grades is not None:
            grades = [torch.as_tensor(g, dtype=torch.long, device=device).reshape(-1) for g in grades]
            for i, (b, g) in enumerate(zip(boxes, grades)):
                if g.shape[0] != b.shape[0]:
                    raise ValueError(f"SeverityDetector: image {i} has {b.shape[0]} boxes but {g.shape[0]} grades")
                if g.numel() and int(g.max()) >= len(self.grades):
                    raise ValueError(
                        f"SeverityDetector: the batch has grade index {int(g.max())} but model.grades has "
                        f"{len(self.grades)} grades {self.grades} (indices 0..{len(self.grades) - 1}): the "
                        f"dataset's grade_names differ from model.grades; set data.<split>.grades (train, "
                        f"val and test) to the same list as model.grades, lightest first")
        assert len(boxes) == n
        return boxes, labels, grades

    def _gt_crops(self, t: str, batch: dict, boxes, labels, grades, train: bool):
        """Crops of the GT boxes of type ``t`` (all of them, or only graded when ``grades``
        is given): (crops, targets or None, (image index, box index) pairs). ``train``: the
        crop's ``train_copies`` / ``jitter`` / ``flip`` augmentations apply."""
        device = batch["image"].device
        k = self.classes.index(t)
        source, original = self._crop_source(batch)
        sizes = self._source_sizes(batch, source, original)
        scales = self._scales(batch, len(boxes))
        sel_boxes, sel_img, sel_y, where = [], [], [], []
        for i, (b, l) in enumerate(zip(boxes, labels)):
            mask = l == k
            if grades is not None:
                mask &= grades[i] >= 0
            idx = torch.where(mask)[0]
            if idx.numel() == 0:
                continue
            bb = b[idx]
            if original:
                sx, sy = scales[i]
                bb = bb / bb.new_tensor([sx, sy, sx, sy])
            sel_boxes.append(bb)
            sel_img.append(torch.full((idx.numel(),), i, dtype=torch.long, device=device))
            if grades is not None:
                sel_y.append(grades[i][idx])
            where.extend((i, int(j)) for j in idx)
        if not sel_boxes:
            return None, None, []
        bb, img_idx = torch.cat(sel_boxes), torch.cat(sel_img)
        y = torch.cat(sel_y) if sel_y else None
        spec = self.crops[t]
        if train:               # training: copies, jitter, flips
            if spec.train_copies > 1:
                bb, img_idx = bb.repeat(spec.train_copies, 1), img_idx.repeat(spec.train_copies)
                y = y.repeat(spec.train_copies) if y is not None else None
            if spec.jitter > 0:
                bb = jitter_boxes(bb, spec.jitter)
        crops, _ = self._cut(t, source, bb, img_idx, sizes)
        if train and spec.flip:
            crops = random_flips(crops)
        return crops, y, where

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        losses = dict(self.detector(batch))
        if not len(self.heads):
            return losses
        device = batch["image"].device
        if batch.get("grades") is None:
            raise KeyError("SeverityDetector: the training batch has no 'grades' (build the dataset with "
                           "with_grades: true, e.g. VOCDataset(with_grades=True)); the severity heads "
                           f"{list(self.heads)} need the grade of each box")
        boxes, labels, grades = self._gt(batch, device)
        for t, head in self.heads.items():
            crops, y, _ = self._gt_crops(t, batch, boxes, labels, grades, train=True)
            if crops is None:
                zero = sum((p.sum() * 0.0 for p in head.parameters() if p.requires_grad),
                           batch["image"].new_zeros(()))
                losses[f"loss_sev_{t}"] = zero
                losses[f"acc_sev_{t}"] = torch.tensor(self._last_acc[t], device=device)
                continue
            if crops.shape[0] == 1:     # BatchNorm in train mode needs > 1 value per channel
                crops, y = crops.expand(2, -1, -1, -1), y.expand(2)
            logits = head.logits(crops)
            losses[f"loss_sev_{t}"] = F.cross_entropy(logits.float(), y)
            acc = float((logits.detach().argmax(1) == y).float().mean()) * 100
            self._last_acc[t] = acc
            losses[f"acc_sev_{t}"] = torch.tensor(acc, device=device)
        return losses

    # ------------------------------------------------------------------ inference
    def _grade(self, t: str, crops: torch.Tensor) -> torch.Tensor:
        return self.heads[t].logits(crops).float().softmax(1)

    @torch.no_grad()
    def predict(self, batch: dict) -> list[SeverityResult]:
        images: torch.Tensor = batch["image"]
        device = images.device
        n = images.shape[0]
        _sync(device)
        t0 = time.perf_counter()
        dets = self.detector.predict(batch)
        _sync(device)
        t1 = time.perf_counter()

        metas = batch.get("meta") or [None] * n
        scales = self._scales(batch, n)
        ignored = {self.classes.index(t) for t in self.ignore_types}
        per_img = []
        for i, d in enumerate(dets):
            keep = torch.tensor([int(l) not in ignored for l in d.labels], dtype=torch.bool) \
                if len(d.labels) else torch.zeros(0, dtype=torch.bool)
            boxes, scores, labels = d.boxes[keep].float(), d.scores[keep].float(), d.labels[keep].long()
            if self.merge_column_fragments:
                for t, spec in self.crops.items():
                    if spec.kind == "column_strip":
                        boxes, scores, labels = merge_column_fragments(
                            boxes, scores, labels, self.classes.index(t), spec.width / 2.0,
                            self.report_score_thr)
            reported = scores >= self.report_score_thr
            severity = torch.full((len(scores),), math.nan)
            no_head = torch.tensor([self.classes[int(l)] not in self.heads for l in labels], dtype=torch.bool) \
                if len(labels) else torch.zeros(0, dtype=torch.bool)
            severity[reported & no_head] = scores[reported & no_head]
            per_img.append({"boxes": boxes, "scores": scores, "labels": labels, "reported": reported,
                            "severity": severity, "probs": [None] * len(scores), "crop_boxes": boxes.clone(),
                            "gate_score": d.gate_score, "gated": d.gated})

        # one batched pass per head type over every reported detection of that type
        source, original = self._crop_source(batch)
        sizes = self._source_sizes(batch, source, original)
        for t in self.heads:
            k = self.classes.index(t)
            sel_boxes, sel_img, where = [], [], []
            for i, r in enumerate(per_img):
                idx = torch.where(r["reported"] & (r["labels"] == k))[0]
                if idx.numel() == 0:
                    continue
                b = r["boxes"][idx].to(device)
                if not original:       # original px -> the model input's frame
                    sx, sy = scales[i]
                    b = b * b.new_tensor([sx, sy, sx, sy])
                sel_boxes.append(b)
                sel_img.append(torch.full((idx.numel(),), i, dtype=torch.long, device=device))
                where.extend((i, int(j)) for j in idx)
            if not sel_boxes:
                continue
            crops, regions = self._cut(t, source, torch.cat(sel_boxes), torch.cat(sel_img), sizes)
            probs = self._grade(t, crops).cpu()
            sev = severity_score(probs, self.score_weights[t])
            regions = regions.float().cpu()
            for row, (i, j) in enumerate(where):
                r = per_img[i]
                r["probs"][j] = probs[row]
                r["severity"][j] = sev[row]
                reg = regions[row]
                if not original:
                    sx, sy = scales[i]
                    reg = reg / reg.new_tensor([sx, sy, sx, sy])
                r["crop_boxes"][j] = reg
        _sync(device)
        t2 = time.perf_counter()

        gt_probs, gt_verdicts = self._predict_gt(batch, scales)
        results = []
        for i, r in enumerate(per_img):
            rep = [j for j in range(len(r["scores"])) if bool(r["reported"][j])]
            areas = [float((r["boxes"][j, 2] - r["boxes"][j, 0]) * (r["boxes"][j, 3] - r["boxes"][j, 1])) for j in rep]
            v = self.verdict_rules.apply([self.classes[int(r["labels"][j])] for j in rep],
                                         [float(r["scores"][j]) for j in rep],
                                         [float(r["severity"][j]) for j in rep], areas)
            fired = [None] * len(r["scores"])
            for j, f in zip(rep, v.fired):
                fired[j] = f
            meta = metas[i] or {}
            orig_size = meta.get("orig_size")
            if orig_size is None:
                h, w = (sizes[i] if not original else tuple(source[i].shape[-2:]))
                if not original:
                    sx, sy = scales[i]
                    h, w = round(h / sy), round(w / sx)
                orig_size = (h, w)
            results.append(SeverityResult(
                boxes=r["boxes"], scores=r["scores"], labels=r["labels"], gate_score=r["gate_score"],
                gated=r["gated"], severity=r["severity"], grade_probs=r["probs"], crop_boxes=r["crop_boxes"],
                reported=r["reported"], verdict=v.verdict, verdict_rule=v.rule, fired=fired,
                gt_grade_probs=gt_probs[i], gt_verdict=gt_verdicts[i],
                timing_ms={"detector": (t1 - t0) * 1000 / n, "severity": (t2 - t1) * 1000 / n},
                image_size=tuple(int(v) for v in orig_size), type_names=list(self.classes),
                grade_names=list(self.grades), image_path=meta.get("path"),
                score_weights={t: [float(v) for v in w] for t, w in self.score_weights.items()},
                wide_csv=self.wide_csv))
        return results

    def _predict_gt(self, batch: dict, scales) -> tuple[list, list]:
        """Per image: gt_grade_probs (M, G) (NaN rows: type without head) and gt_verdict,
        or Nones when the batch has no GT boxes + grades."""
        n = batch["image"].shape[0]
        if batch.get("boxes") is None or batch.get("labels") is None or batch.get("grades") is None:
            return [None] * n, [None] * n
        device = batch["image"].device
        boxes, labels, grades = self._gt(batch, device)
        G = len(self.grades)
        probs = [torch.full((b.shape[0], G), math.nan) for b in boxes]
        for t in self.heads:
            crops, _, where = self._gt_crops(t, batch, boxes, labels, None, train=False)
            if crops is None:
                continue
            p = self._grade(t, crops).cpu()
            for row, (i, j) in enumerate(where):
                probs[i][j] = p[row]
        verdicts = []
        ignored = {self.classes.index(t) for t in self.ignore_types}
        for i in range(n):
            sx, sy = scales[i]
            types, sev, areas = [], [], []
            for j in range(boxes[i].shape[0]):
                lab = int(labels[i][j])
                if lab in ignored:
                    continue
                t = self.classes[lab]
                g = int(grades[i][j])
                if t in self.heads:
                    sev.append(float(self.score_weights[t][g]) if g >= 0 else math.nan)
                else:
                    sev.append(1.0)
                b = boxes[i][j].cpu()
                areas.append(float((b[2] - b[0]) / sx * (b[3] - b[1]) / sy))
                types.append(t)
            verdicts.append(self.verdict_rules.apply(types, [1.0] * len(types), sev, areas).verdict)
        return probs, verdicts
