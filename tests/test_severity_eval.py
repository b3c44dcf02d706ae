"""Severity metrics (issue 13): pure functions on hand-computed values, SeverityEvaluator end
to end on hand-made images (perfect predictions, a known confusion, empty cases)."""
import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from defectkit.data.formats.common import Record
from defectkit.engine.builders import build_evaluator
from defectkit.evaluation.base import table_columns
from defectkit.evaluation.severity import SeverityEvaluator
from defectkit.evaluation.severity_metrics import (expected_calibration_error, fit_temperature, grade_mae,
                                                   match_detections, qwk, severity_score_mae, verdict_rates)
from defectkit.registry import EVALUATORS

from defectkit.models.severity.result import SeverityResult


def make_result(**kw):
    """A SeverityResult whose detections are all reported (score >= report_score_thr)."""
    kw.setdefault("reported", torch.ones(len(kw["scores"]), dtype=torch.bool))
    return SeverityResult(**kw)


# ---------------------------------------------------------------------------- pure functions
def test_qwk_and_mae_hand_values():
    # y_true [0,1,2,2], y_pred [0,2,2,1], N = 3. O (rows true): O01.. = [[1,0,0],[0,0,1],[0,1,1]]
    # row sums r = [1,1,2], column sums c = [1,1,2], n = 4; w_ij = (i - j)^2
    # sum w O = O12 + O21 = 2
    # sum w E = sum r_i c_j (i-j)^2 / 4 = (1 + 8 + 1 + 2 + 8 + 2) / 4 = 5.5
    # kappa = 1 - 2 / 5.5 = 7/11
    assert qwk([0, 1, 2, 2], [0, 2, 2, 1], 3) == pytest.approx(7 / 11)
    assert grade_mae([0, 1, 2, 2], [0, 2, 2, 1]) == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert qwk([0, 1, 2], [0, 1, 2], 3) == pytest.approx(1.0)
    # labels fixed to range(N): an unused grade 3 in between changes nothing here,
    # but the penalty is in grade steps: 0 vs 4 costs 16
    assert qwk([0, 4], [4, 0], 5) == pytest.approx(-1.0)
    assert math.isnan(qwk([], [], 3))
    assert math.isnan(qwk([1, 1], [1, 1], 3))          # one value everywhere: 0/0
    assert math.isnan(grade_mae([], []))
    with pytest.raises(ValueError, match="grades must be in 0..2"):
        qwk([0, 3], [0, 1], 3)


def test_ece_hand_value():
    # 15 bins of width 1/15, bin m = ((m-1)/15, m/15]
    probs = [[0.9, 0.1, 0.0],     # conf .9 -> bin 13, correct (y 0)
             [0.9, 0.05, 0.05],   # conf .9 -> bin 13, wrong (y 1)
             [0.15, 0.7, 0.15],   # conf .7 -> bin 10, correct (y 1)
             [0.5, 0.3, 0.2]]     # conf .5 -> bin 7, wrong (y 2)
    y = [0, 1, 1, 2]
    # bin 13: 2/4 * |0.5 - 0.9| = 0.2; bin 10: 1/4 * |1 - 0.7| = 0.075; bin 7: 1/4 * |0 - 0.5| = 0.125
    assert expected_calibration_error(probs, y) == pytest.approx(0.2 + 0.075 + 0.125)
    # one bin: |mean acc - mean conf| = |0.5 - 0.675| (conf .9, .9, .7, .5 -> .75; acc .5)
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(abs(0.5 - 0.75))
    assert expected_calibration_error(torch.eye(3), [0, 1, 2]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(np.zeros((0, 3)), []))


def test_severity_score_mae_readme_example():
    # README: w = [.2,.4,.6,.8,1], p = [0,.02,.08,.85,.05] -> score 0.786; GT grade index 3 -> w 0.8
    w = [0.2, 0.4, 0.6, 0.8, 1.0]
    p = [[0.0, 0.02, 0.08, 0.85, 0.05]]
    assert severity_score_mae(p, [3], w) == pytest.approx(abs(0.786 - 0.8))
    # two rows, default-like weights [0, .5, 1]: |.05 - 0| and |.5 - 1|
    assert severity_score_mae([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]], [0, 2], [0.0, 0.5, 1.0]) == pytest.approx(
        (0.05 + 0.5) / 2)
    # per-row weights
    assert severity_score_mae([[1.0, 0.0], [1.0, 0.0]], [1, 1], [[0.0, 1.0], [0.5, 0.7]]) == pytest.approx(
        (1.0 + 0.2) / 2)
    with pytest.raises(ValueError, match="weights"):
        severity_score_mae(p, [3], [0.0, 1.0])


def test_fit_temperature_recovers_known_t():
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(6000, 5, generator=g)
    y = torch.multinomial(torch.softmax(z / 2.0, 1), 1, generator=g).squeeze(1)   # true T = 2
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.1)
    # log-probabilities give the same T (softmax is shift-invariant per row)
    assert fit_temperature(torch.log_softmax(z, 1), y) == pytest.approx(t, rel=1e-3)
    # calibrated already -> T ~ 1
    y1 = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    assert fit_temperature(z, y1) == pytest.approx(1.0, rel=0.1)
    assert math.isnan(fit_temperature(np.zeros((0, 3)), []))


def test_verdict_rates_hand_table():
    pred = ["OK", "NG", "NG", "OK", "OK", "NG"]
    gt = ["OK", "OK", "NG", "NG", "NG", None]          # last: unknown ground truth, left out
    r = verdict_rates(pred, gt)
    # known pairs: (OK,OK) ok, (NG,OK) overkill, (NG,NG) ok, (OK,NG) escape, (OK,NG) escape
    assert r["verdict_accuracy"] == pytest.approx(2 / 5)
    assert r["overkill_rate"] == pytest.approx(1 / 2)      # 1 of 2 GT-OK rejected
    assert r["escape_rate"] == pytest.approx(2 / 3)        # 2 of 3 GT-NG passed
    assert (r["num_verdict_images"], r["num_gt_ok"], r["num_gt_ng"]) == (5, 2, 3)
    only_ok = verdict_rates(["OK", "NG"], ["OK", "OK"])
    assert math.isnan(only_ok["escape_rate"]) and "no GT-NG image" in only_ok["escape_rate_note"]
    with pytest.raises(ValueError, match="'OK' or 'NG'"):
        verdict_rates(["maybe"], ["OK"])


def test_match_detections_greedy_by_score_same_type():
    gt_boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]]
    gt_labels = [0, 0, 1]
    det_boxes = [[0, 0, 10, 10],      # d0 label 0, score .6: the exact box, but lower score
                 [1, 0, 11, 10],      # d1 label 0, score .9: IoU with g0 = 90 / 110 = 0.818
                 [0, 0, 10, 10],      # d2 label 1, score .5: g2 (same box as g0, other type)
                 [20, 0, 30, 10],     # d3 label 1, score .95: on g1, but g1 is type 0
                 [40, 40, 50, 50]]    # d4 label 0, score .99: nothing there
    det_labels = [0, 0, 1, 1, 0]
    det_scores = [0.6, 0.9, 0.5, 0.95, 0.99]
    pairs = match_detections(det_boxes, det_labels, det_scores, gt_boxes, gt_labels, 0.5)
    assert pairs == [(1, 0), (2, 2)]   # d1 takes g0 first; d0 finds g0 taken and g1 at IoU 0
    # a stricter IoU leaves d1 unmatched, then d0 takes g0
    assert match_detections(det_boxes, det_labels, det_scores, gt_boxes, gt_labels, 0.85) == [(0, 0), (2, 2)]
    assert match_detections([], [], [], gt_boxes, gt_labels) == []


# ---------------------------------------------------------------------------- evaluator
CLASSES = ["blemish", "dash_col", "spot"]      # spot: no severity head
GRADES = ["1", "2", "3", "4", "5"]


def fake_dataset(with_grades=True):
    """a: blemish grade idx 3 + dash_col grade idx 1 (NG); b: blemish grade idx 4 + an
    ungraded spot (NG); c: normal (OK)."""
    recs = [Record(img_path="a.png", id=1, boxes=np.array([[10, 10, 50, 60], [70, 20, 90, 40]], np.float32),
                   labels=np.array([0, 1]), is_defective=1, width=100, height=80),
            Record(img_path="b.png", id=2, boxes=np.array([[5, 5, 40, 30], [50, 50, 70, 70]], np.float32),
                   labels=np.array([0, 2]), is_defective=1, width=100, height=80),
            Record(img_path="c.png", id=3, is_defective=0, width=100, height=80)]
    for rec, g in zip(recs, ([3, 1], [4, -1], [])):
        rec.grades = np.array(g, np.int64) if with_grades else None
    return SimpleNamespace(records=recs, classes=list(CLASSES), grade_names=list(GRADES) if with_grades else None)


def onehot(k, n=5):
    v = torch.zeros(n)
    v[k] = 1.0
    return v


def result_for(rec, pred_grades, verdict, gt_verdict, score=0.9, timing=(10.0, 1.0)):
    """Detections = the GT boxes with ``pred_grades`` (one-hot; None for a type without head)."""
    w = torch.linspace(0, 1, 5)
    probs = [None if g is None else onehot(g) for g in pred_grades]
    n = len(rec.labels)
    sev = torch.tensor([score if p is None else float((w * p).sum()) for p in probs], dtype=torch.float32)
    gt_rows = torch.stack([onehot(g) if g is not None else torch.full((5,), math.nan) for g in pred_grades]) \
        if n else torch.zeros(0, 5)
    boxes = torch.as_tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4)
    return make_result(boxes=boxes, labels=torch.as_tensor(rec.labels, dtype=torch.int64).reshape(-1),
                       scores=torch.full((n,), score), severity=sev, grade_probs=probs,
                       crop_boxes=boxes.clone(), verdict=verdict, verdict_rule=None, fired=[None] * n,
                       gt_grade_probs=gt_rows, gt_verdict=gt_verdict,
                       timing_ms={"detector": timing[0], "severity": timing[1]}, image_size=(80, 100))


def batch_of(ds):
    return {"meta": [{"id": r.id, "path": r.img_path} for r in ds.records],
            "is_defective": torch.tensor([r.is_defective for r in ds.records]),
            "labels": [torch.as_tensor(r.labels, dtype=torch.int64) for r in ds.records],
            **({"grades": [torch.as_tensor(r.grades) for r in ds.records]} if ds.records[0].grades is not None else {})}


def evaluate(ds, results, **kw):
    ev = build_evaluator({"type": "SeverityEvaluator", **kw}, CLASSES, dataset=ds)
    ev.reset()
    ev.process(batch_of(ds), results)
    ev.records = pickle.loads(pickle.dumps(ev.records))       # gathered across ranks
    return ev, ev.compute()


def test_perfect_predictions(tmp_path):
    ds = fake_dataset()
    a, b, c = ds.records
    res = [result_for(a, [3, 1], "NG", "NG"), result_for(b, [4, None], "NG", "NG"), result_for(c, [], "OK", "OK")]
    ev, m = evaluate(ds, res, temperature_scaling=True)
    assert "SeverityEvaluator" in EVALUATORS and isinstance(ev, SeverityEvaluator)
    assert m["mAP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    for s in ("", "_gt"):
        assert m[f"num_graded{s}"] == 3                       # the spot has no head, grade -1
        assert m[f"qwk{s}"] == pytest.approx(1.0)
        assert m[f"grade_accuracy{s}"] == 1.0 and m[f"grade_mae{s}"] == 0.0
        assert m[f"ece{s}"] == pytest.approx(0.0) and m[f"severity_mae{s}"] == pytest.approx(0.0)
        assert m[f"temperature{s}"] > 0 and m[f"ece{s}_ts"] <= m[f"ece{s}"] + 1e-6
    assert m["grade_confusion_matrix"][3][3] == 1 and m["grade_confusion_matrix"][1][1] == 1
    assert m["verdict_accuracy"] == 1.0 and m["overkill_rate"] == 0.0 and m["escape_rate"] == 0.0
    assert m["per_type_severity"]["blemish"]["num_graded"] == 2
    assert m["per_type_severity"]["dash_col"]["num_graded_gt"] == 1
    json.dumps(m)
    line = ev.add_timing(m, [(0.011, 1)] * 3)
    assert m["detector_ms"] == pytest.approx(10.0) and m["severity_overhead"] == pytest.approx(0.1)
    assert "10.0%" in line
    s = ev.summary(m)
    assert "matched" in s and "ground-truth boxes" in s and "verdict accuracy 1.0000" in s
    paths = ev.save_artifacts(m, str(tmp_path))
    assert (tmp_path / "grade_confusion_matrix.png").is_file()
    assert (tmp_path / "grade_confusion_matrix_gt.png").is_file()
    assert all((tmp_path / p).exists() for p in paths)
    pred = ev.write_predictions(res, batch_of(ds)["meta"], str(tmp_path))
    if pred:                             # the real result has to_json()
        assert (tmp_path / "predictions.bbox.json").is_file()
        rows = json.loads((tmp_path / "predictions.json").read_text())
        assert rows[0]["grade_names"] == ["4", "2"] and rows[1]["grade_names"] == ["5", None]
        assert rows[0]["label_names"] == ["blemish", "dash_col"]
    heads = [c[1] for c in table_columns(SeverityEvaluator)]
    assert {"mAP", "AP50", "qwk", "verdict_accuracy", "att_ms"} <= set(heads)
    assert ev.main_metric == "mAP" and not ev.metric_directions["escape_rate"]


def test_known_confusion_gives_hand_values():
    ds = fake_dataset()
    a, b, c = ds.records
    # GT grade indices (3, 1, 4) predicted (3, 2, 2); verdict: b passed (escape), c rejected (overkill)
    res = [result_for(a, [3, 2], "NG", "NG"), result_for(b, [2, None], "OK", "NG"), result_for(c, [], "NG", "OK")]
    _, m = evaluate(ds, res)
    # O: (3,3), (1,2), (4,2); r1 = r3 = r4 = 1, c2 = 2, c3 = 1, n = 3
    # sum w O = 0 + 1 + 4 = 5; sum w E = (2 + 4 + 2 + 0 + 8 + 1) / 3 = 17/3 -> kappa = 1 - 15/17
    for s in ("", "_gt"):
        assert m[f"qwk{s}"] == pytest.approx(2 / 17)
        assert m[f"grade_accuracy{s}"] == pytest.approx(1 / 3)
        assert m[f"grade_mae{s}"] == pytest.approx((0 + 1 + 2) / 3)
        assert m[f"ece{s}"] == pytest.approx(2 / 3)            # confidence 1, accuracy 1/3, one bin
        # weights linspace(0, 1, 5) = [0, .25, .5, .75, 1]: |.75-.75|, |.5-.25|, |.5-1|
        assert m[f"severity_mae{s}"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["verdict_accuracy"] == pytest.approx(1 / 3)
    assert m["overkill_rate"] == pytest.approx(1.0) and m["escape_rate"] == pytest.approx(1 / 2)
    # custom weights (the original's 0.2 k) change only severity_mae
    _, m2 = evaluate(ds, res, score_weights=[0.2, 0.4, 0.6, 0.8, 1.0])
    assert m2["severity_mae"] == pytest.approx((0 + 0.2 + 0.4) / 3)
    assert m2["qwk"] == pytest.approx(m["qwk"])


def test_unmatched_and_misplaced_detections():
    ds = fake_dataset()
    a, b, c = ds.records
    moved = result_for(a, [3, 1], "NG", "NG")
    moved.boxes = moved.boxes + 200.0               # nothing matches: grade metrics on detections nan
    res = [moved, result_for(b, [4, None], "NG", "NG"), result_for(c, [], "OK", "OK")]
    _, m = evaluate(ds, res)
    assert m["num_graded"] == 1                     # only b's blemish matched
    assert math.isnan(m["qwk"]) and "ground-truth grade" in m["qwk_note"]
    assert m["num_graded_gt"] == 3 and m["qwk_gt"] == pytest.approx(1.0)
    assert m["mAP"] < 1.0


def test_empty_cases_give_nan_and_notes():
    ds = fake_dataset()
    res = [make_result(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), scores=torch.zeros(0),
                       severity=torch.zeros(0), grade_probs=[], crop_boxes=torch.zeros(0, 4), verdict="OK",
                       verdict_rule=None, fired=[], gt_grade_probs=None, gt_verdict=None, timing_ms={},
                       image_size=(80, 100)) for _ in ds.records]
    ev, m = evaluate(ds, res, temperature_scaling=True)
    assert m["mAP"] == 0.0
    assert m["num_graded"] == 0 and math.isnan(m["qwk"]) and math.isnan(m["ece"]) and math.isnan(m["temperature"])
    assert "grade_accuracy_note" in m and math.isnan(m["qwk_gt"])
    assert math.isnan(m["verdict_accuracy"]) and "verdict_accuracy_note" in m
    assert ev.add_timing(m, []) is None
    assert "grade_accuracy is nan" in ev.summary(m)
    json.dumps(m)

    # a dataset without grades: noted, nothing graded
    ds2 = fake_dataset(with_grades=False)
    a, b, c = ds2.records
    res2 = [result_for(a, [3, 1], "NG", "NG"), result_for(b, [4, None], "NG", "NG"), result_for(c, [], "OK", "OK")]
    _, m2 = evaluate(ds2, res2, grades=GRADES)
    assert m2["num_graded"] == 0 and m2["num_graded_gt"] == 0
    assert any("no GT grades" in n for n in m2["severity_notes"])
    assert m2["mAP"] == pytest.approx(1.0)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="iou_thr"):
        SeverityEvaluator(iou_thr=0.0)
    ds = fake_dataset()
    a, b, c = ds.records
    res = [result_for(a, [3, 1], "NG", "NG"), result_for(b, [4, None], "NG", "NG"), result_for(c, [], "OK", "OK")]
    with pytest.raises(ValueError, match="score_weights for 'blemish' has 3 values for 5 grades"):
        evaluate(ds, res, score_weights={"blemish": [0, 0.5, 1]})


# ---------------------------------------------------------------- grade names and model weights
def _real_results(ds, **extra):
    a, b, c = ds.records
    res = [result_for(a, [3, 1], "NG", "NG"), result_for(b, [4, None], "NG", "NG"), result_for(c, [], "OK", "OK")]
    for r in res:
        for k, v in extra.items():
            setattr(r, k, v)
    return res


def test_grade_names_differing_from_the_dataset_raise_one_clear_error():
    ds = fake_dataset()                                    # grade_names "1".."5"
    ok = _real_results(ds, grade_names=list(GRADES))
    _, m = evaluate(ds, ok)
    assert m["grades"] == GRADES
    bad = _real_results(ds, grade_names=["A", "B", "C", "D", "E"])
    with pytest.raises(ValueError) as e:
        evaluate(ds, bad)
    msg = str(e.value)
    assert "['1', '2', '3', '4', '5']" in msg and "['A', 'B', 'C', 'D', 'E']" in msg
    assert "model.grades" in msg and "data.<split>.grades" in msg
    with pytest.raises(ValueError, match=r"evaluation\.grades .* model\.grades"):
        evaluate(fake_dataset(with_grades=False), bad, grades=GRADES)


def test_severity_mae_takes_the_models_weights_from_the_results():
    ds = fake_dataset()
    # GT grade indices blemish 3 (a), dash_col 1 (a), blemish 4 (b); predictions 3, 2, 2 as above
    a, b, c = ds.records
    compat = {"blemish": [0.0, 0.2, 0.4, 0.6, 0.8], "dash_col": [0.0, 0.2, 0.4, 0.6, 0.8]}  # 0.2 k
    res = [result_for(a, [3, 2], "NG", "NG"), result_for(b, [2, None], "OK", "NG"), result_for(c, [], "NG", "OK")]
    for r in res:
        r.score_weights = compat
    _, m = evaluate(ds, res)
    # |.6-.6|, |.4-.2|, |.4-.8| with the model's 0.2 k (not linspace's (0 + .25 + .5) / 3)
    assert m["severity_mae"] == pytest.approx((0 + 0.2 + 0.4) / 3)
    assert m["severity_mae_gt"] == pytest.approx((0 + 0.2 + 0.4) / 3)
    # the evaluator's score_weights stays an explicit override, per type or for all
    _, m2 = evaluate(ds, res, score_weights={"blemish": [0, 0.25, 0.5, 0.75, 1.0]})
    assert m2["severity_mae"] == pytest.approx((0 + 0.2 + 0.5) / 3)     # dash_col keeps the model's
    # results of one model must agree
    res[1].score_weights = {"blemish": [0.0, 0.25, 0.5, 0.75, 1.0]}
    with pytest.raises(ValueError, match="different score_weights for 'blemish'"):
        evaluate(ds, res)

