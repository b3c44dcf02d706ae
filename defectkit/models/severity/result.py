"""``SeverityResult``: one image's graded defects and verdict, its files, table rows and drawer.

A ``DetectionResult`` (boxes / scores / labels of EVERY kept detection, in ORIGINAL image
pixels, so the detection evaluator and the pseudo-labeller see the full score range) plus
the severity part. A detection is *reported* when its score >= the model's
``report_score_thr``; reported detections of a type with a head are *graded* (grade
probabilities and severity = sum_k w_k p_k), reported detections of a type without a head
get severity = detector score, unreported ones severity NaN and no probabilities. The
verdict, the JSON's ``defects``, the VOC file, the tables and the drawing show the reported
detections only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ...structures import DetectionResult
from ...visualization.draw import BAD_COLOR, OK_COLOR, draw_banner, line_scale, palette, to_pil, register_drawer


def _r(x: float, nd: int = 5) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


@dataclass
class SeverityResult(DetectionResult):
    """Fields beyond ``DetectionResult`` (N = detections, G = grades, M = GT boxes):

    severity: (N,) float32 in [0, 1] (weights in [0, 1]); NaN for unreported detections.
    grade_probs: N entries, (G,) float32 softmax of the type's head, or None (no head, or
        not reported).
    crop_boxes: (N, 4) float32 XYXY original px: the region graded (padded box, or the
        full-height column strip); the detection box where nothing was graded.
    reported: (N,) bool, score >= ``report_score_thr`` (and type not ignored).
    verdict: "OK" | "NG"; verdict_rule: the firing rule with its values, None when OK.
    fired: N entries, the name of the rule a reported defect fired, else None.
    gt_grade_probs: (M, G) float32 for the batch's GT boxes (NaN rows: type without head),
        or None when the batch had no grades.
    gt_verdict: the rules applied to the GT boxes (score 1, severity = w[grade]), or None.
    timing_ms: {"detector", "severity"} ms for this image (the batch's time / batch size).
    image_size: (H, W) original px. type_names / grade_names: the names of labels / grades.
    image_path: the input file (from the batch's meta), for the VOC file's filename.
    score_weights: {type name: [w_0..w_{G-1}]} the weights each head type's severity was
        computed with (``model.severity_heads.<type>.score_weights``, default
        ``linspace(0, 1, G)``, compat ``0.2 k``), so an evaluator maps GT grades through
        exactly the model's weights; None when unknown.
    wide_csv: add the original's wide ``log`` table (``model.wide_csv``).
    """
    severity: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    grade_probs: list = field(default_factory=list)
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    reported: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    verdict: str = "OK"
    verdict_rule: str | None = None
    fired: list = field(default_factory=list)
    gt_grade_probs: torch.Tensor | None = None
    gt_verdict: str | None = None
    timing_ms: dict = field(default_factory=dict)
    image_size: tuple | None = None
    type_names: list | None = None
    grade_names: list | None = None
    image_path: str | None = None
    score_weights: dict | None = None
    wide_csv: bool = False

    gt_key: ClassVar[tuple] = ("boxes", "labels")

    # ------------------------------------------------------------------ helpers
    def reported_indices(self) -> list[int]:
        return [i for i in range(len(self)) if bool(self.reported[i])]

    def _type(self, label: int, names: Sequence[str] | None = None) -> str:
        names = names if names is not None else self.type_names
        return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)

    def grade_of(self, i: int) -> str | None:
        """The most probable grade name of detection ``i`` (None: not graded)."""
        p = self.grade_probs[i] if i < len(self.grade_probs) else None
        if p is None:
            return None
        k = int(torch.as_tensor(p).argmax())
        return str(self.grade_names[k]) if self.grade_names else str(k)

    # -------------------------------------------------------------------- Result API
    def to_json(self) -> dict:
        defects = []
        for i in self.reported_indices():
            p = self.grade_probs[i]
            defects.append({
                "type": int(self.labels[i]), "score": _r(self.scores[i]), "severity": _r(self.severity[i]),
                "grade": self.grade_of(i),
                "grade_probs": None if p is None else [round(float(v), 5) for v in p],
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "crop_box": [round(float(v), 2) for v in self.crop_boxes[i]],
                "rule": self.fired[i] if i < len(self.fired) else None})
        return {"defects": defects, "verdict": self.verdict, "verdict_rule": self.verdict_rule,
                "gt_verdict": self.gt_verdict, "num_detections": len(self),
                "timing_ms": {k: round(float(v), 3) for k, v in self.timing_ms.items()}}

    def write_files(self, out_dir, stem: str) -> list[str]:
        """``<stem>.xml``: Pascal VOC (LabelImg order, ``data.formats.voc.write_voc``) of the
        reported defects in original px, with ``<severity>`` = the most probable grade name
        (graded defects) and ``<severity_score>`` / ``<score>``. Box numbers are rounded to
        whole pixels, as LabelImg writes them (its readers, and the original's
        ``xml_to_csv.py``, parse them with ``int``); the CSV/JSON keep 2 decimals."""
        from ...data.formats.voc import write_voc

        objects = []
        for i in self.reported_indices():
            box = [float(round(float(v))) for v in self.boxes[i]]
            if not (box[2] > box[0] and box[3] > box[1]):
                continue
            obj: dict[str, Any] = {"name": self._type(int(self.labels[i])), "box": box,
                                   "score": min(max(float(self.scores[i]), 0.0), 1.0)}
            grade = self.grade_of(i)
            if grade is not None:
                obj["severity"] = grade
            sev = float(self.severity[i])
            if not math.isnan(sev):
                obj["extra"] = {"severity_score": round(sev, 4)}
            objects.append(obj)
        h, w = self.image_size if self.image_size else (1, 1)
        filename = Path(self.image_path).name if self.image_path else f"{stem}.png"
        path = write_voc(Path(out_dir) / f"{stem}.xml", filename, (int(h), int(w), 3), objects,
                         folder=Path(self.image_path).parent.name if self.image_path else "",
                         img_path=self.image_path, database="defectkit", decimals=None)
        return [str(path)]

    def table_rows(self, path: str, class_names: Sequence[str] | None = None,
                   grades: Sequence[str] | None = None) -> dict[str, list[dict]]:
        """``defects``: one row per reported defect (file, type, score, grade_p_<g>...,
        grade, severity, box and crop box in original px, rule); ``verdicts``: one row per
        image (file, verdict, rule, num_defects, max_severity, gt_verdict); with
        ``wide_csv``, ``log``: the original's wide row (``FileName, BoxNum`` then ``Class_i,
        Score_i, ymin_i, xmin_i, ymax_i, xmax_i`` per defect, i from 1; Score = the severity
        score, the detector score for a type without a head; boxes in ORIGINAL pixels, where
        the original wrote the resized 1280x720 frame's)."""
        grades = list(grades if grades is not None else (self.grade_names or []))
        rows = []
        sev_max = math.nan
        for i in self.reported_indices():
            p = self.grade_probs[i]
            row: dict[str, Any] = {"file": path, "type": self._type(int(self.labels[i]), class_names),
                                   "score": _r(self.scores[i])}
            for k, g in enumerate(grades):
                row[f"grade_p_{g}"] = None if p is None else round(float(p[k]), 5)
            row["grade"] = self.grade_of(i)
            row["severity"] = _r(self.severity[i])
            row.update(zip(("xmin", "ymin", "xmax", "ymax"), (round(float(v), 2) for v in self.boxes[i])))
            row.update(zip(("crop_xmin", "crop_ymin", "crop_xmax", "crop_ymax"),
                           (round(float(v), 2) for v in self.crop_boxes[i])))
            row["rule"] = self.fired[i] if i < len(self.fired) else None
            rows.append(row)
            s = float(self.severity[i])
            if not math.isnan(s):
                sev_max = s if math.isnan(sev_max) else max(sev_max, s)
        verdict = {"file": path, "verdict": self.verdict, "rule": self.verdict_rule, "num_defects": len(rows),
                   "max_severity": _r(sev_max), "gt_verdict": self.gt_verdict}
        tables = {"defects": rows, "verdicts": [verdict]}
        if self.wide_csv:
            wide: dict[str, Any] = {"FileName": path, "BoxNum": len(rows)}
            for k, r in enumerate(rows, start=1):
                wide.update({f"Class_{k}": r["type"], f"Score_{k}": r["severity"], f"ymin_{k}": r["ymin"],
                             f"xmin_{k}": r["xmin"], f"ymax_{k}": r["ymax"], f"xmax_{k}": r["xmax"]})
            tables["log"] = [wide]
        return tables


# ----------------------------------------------------------------------- drawing
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


# bright, saturated colours that stay readable on dark sensor frames (no dark blue / red)
DARK_FRAME_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 214, 0), (0, 230, 255), (255, 90, 210), (130, 255, 80), (255, 150, 40), (180, 160, 255),
    (255, 255, 255))


def type_color(label: int, num_types: int) -> tuple[int, int, int]:
    """Per-type colour: :data:`DARK_FRAME_COLORS`, then the project palette for more types."""
    if 0 <= label < len(DARK_FRAME_COLORS):
        return DARK_FRAME_COLORS[label]
    return palette(max(num_types, label + 1))[label]


def _free_row(placed: Sequence[tuple[float, float, float, float]], x0: float, y0: float, w: float, h: float,
              height: int) -> float:
    """The y nearest ``y0`` (trying downwards first, then upwards, in steps of ``h + 1``)
    where the rectangle (x0, y, x0 + w, y + h) overlaps none of ``placed`` and stays inside
    ``height``; ``y0`` itself when no such row exists."""
    def free(y: float) -> bool:
        return all(x0 + w <= a or x0 >= c or y + h <= b or y >= d for a, b, c, d in placed)
    if free(y0):
        return y0
    step = h + 1
    for k in range(1, int(height // step) + 1):
        for y in (y0 + k * step, y0 - k * step):
            if 0 <= y and y + h <= height and free(y):
                return y
    return y0


def draw_severity(image: Any, result: SeverityResult, class_names: Sequence[str] | None = None,
                  gt: Any = None) -> Image.Image:
    """The reported defects in a per-type colour with ``type · score · severity`` labels
    (the graded crop region, when it differs from the box, as a thin outline), GT boxes
    (``gt``: {"boxes", "labels"} in original px) in green first, and a banner with the
    verdict (red NG with its rule, green OK)."""
    img = to_pil(image).copy()
    k = line_scale(img)
    draw = ImageDraw.Draw(img)
    font = _font(12 * k)
    names = list(class_names) if class_names is not None else result.type_names
    n_types = len(names) if names else int(result.labels.max()) + 1 if len(result) else 1
    placed: list[tuple[float, float, float, float]] = []      # label rectangles drawn so far
    if isinstance(gt, dict) and gt.get("boxes") is not None:
        for b in torch.as_tensor(gt["boxes"]).reshape(-1, 4).tolist():
            draw.rectangle(b, outline=OK_COLOR, width=k)
    for i in result.reported_indices():
        label = int(result.labels[i])
        c = type_color(label, n_types)
        box = [float(v) for v in result.boxes[i]]
        crop = [float(v) for v in result.crop_boxes[i]]
        if any(abs(a - b) > 0.5 for a, b in zip(box, crop)):
            draw.rectangle(crop, outline=c, width=1)
        draw.rectangle(box, outline=c, width=2 * k)
        sev = float(result.severity[i])
        text = f"{result._type(label, names)} · {float(result.scores[i]):.2f} · " + \
            ("-" if math.isnan(sev) else f"{sev:.2f}")
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        x0 = min(max(box[0], 0), max(img.width - tw - 4, 0))
        ty = box[1] - th - 4 if box[1] - th - 4 >= 0 else box[3] + 1
        ty = min(ty, max(img.height - th - 4, 0))
        # neighbouring column lines put their labels on one row: move a label down (then up)
        # until it overlaps no label drawn before, so none hides another
        ty = _free_row(placed, x0, ty, tw + 4, th + 4, img.height)
        placed.append((x0, ty, x0 + tw + 4, ty + th + 4))
        draw.rectangle([x0, ty, x0 + tw + 4, ty + th + 4], fill=(0, 0, 0), outline=c)
        draw.text((x0 + 2, ty + 1), text, fill=c, font=font)
    n = len(result.reported_indices())
    text = f"{result.verdict}" + (f" ({result.verdict_rule})" if result.verdict_rule else "") + \
        f" | {n} defect{'s' if n != 1 else ''}"
    if result.gt_verdict is not None:
        text += f" | GT {result.gt_verdict}"
    return draw_banner(img, text, color=BAD_COLOR if result.verdict == "NG" else OK_COLOR, font_size=14 * k)


register_drawer(SeverityResult, draw_severity)
