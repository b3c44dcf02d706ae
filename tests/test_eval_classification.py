import json
import pickle

import pytest
import torch

from defectkit.config import validate_config
from defectkit.registry import EVALUATORS
from defectkit.structures import ClassificationResult

#          normal (gt 0)         defective (gt 1)
GT = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
P1 = [0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.6, 0.55, 0.4, 0.25]   # score of "defective"
PRED = [int(p > 0.5) for p in P1]                             # 0 0 0 1 | 1 1 1 1 0 0


def feed(ev, gt=GT, p1=P1, key="is_defective", split=4):
    """Two batches, as a loader would give them."""
    for lo, hi in ((0, split), (split, len(gt))):
        batch = {key: torch.tensor(gt[lo:hi]),
                 "meta": [{"id": f"im{i}", "path": f"/d/im{i}.jpg"} for i in range(lo, hi)]}
        results = [ClassificationResult(label=int(p > 0.5), scores=torch.tensor([1 - p, p]))
                   for p in p1[lo:hi]]
        ev.process(batch, results)


def build(**kw):
    return EVALUATORS.build({"type": "ClassificationEvaluator", **kw},
                            classes=["hole", "stain", "knot"])   # runtime default: dataset classes


def test_metrics_match_hand_computation():
    ev = build()
    feed(ev)
    m = ev.compute()
    # confusion: gt normal -> 3 normal, 1 defective; gt defective -> 2 normal, 4 defective
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    p0, r0 = 3 / 5, 3 / 4
    p1, r1 = 4 / 5, 4 / 6
    f0, f1 = 2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)
    assert m["f1_macro"] == pytest.approx((f0 + f1) / 2)
    assert m["precision_macro"] == pytest.approx((p0 + p1) / 2)
    assert m["recall_macro"] == pytest.approx((r0 + r1) / 2)
    assert m["classes"] == ["normal", "defective"]      # dataset classes ignored for is_defective
    pc = m["per_class"]
    assert pc["normal"]["precision"] == pytest.approx(p0) and pc["normal"]["support"] == 4
    assert pc["defective"]["recall"] == pytest.approx(r1) and pc["defective"]["f1"] == pytest.approx(f1)
    # ROC-AUC = fraction of (defective, normal) pairs ranked correctly
    pos = [p for p, g in zip(P1, GT) if g == 1]
    neg = [p for p, g in zip(P1, GT) if g == 0]
    auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert m["roc_auc"] == pytest.approx(auc)
    assert m["num_images"] == 10
    assert ev.main_metric == "f1_macro" and ev.greater_is_better
    json.dumps(m)   # metrics.json-ready


def test_equals_sklearn_classification_report_macro_avg():
    from sklearn.metrics import classification_report

    ev = build()
    feed(ev)
    rep = classification_report(GT, PRED, output_dict=True)
    assert ev.compute()["f1_macro"] == pytest.approx(rep["macro avg"]["f1-score"])


def test_records_are_picklable_and_reset():
    ev = build()
    feed(ev)
    assert len(ev.records) == 10
    r = pickle.loads(pickle.dumps(ev.records))[4]
    assert r == {"id": "im4", "path": "/d/im4.jpg", "gt": 1, "pred": 1,
                 "scores": pytest.approx([0.1, 0.9])}
    ev.reset()
    assert ev.records == []
    with pytest.raises(RuntimeError, match="no records"):
        ev.compute()


def test_single_class_present_has_no_auc():
    ev = build()
    feed(ev, gt=[1] * 10)
    m = ev.compute()
    assert "roc_auc" not in m
    assert m["accuracy"] == pytest.approx(5 / 10)
    from sklearn.metrics import classification_report

    rep = classification_report([1] * 10, PRED, output_dict=True, zero_division=0)
    assert m["f1_macro"] == pytest.approx(rep["macro avg"]["f1-score"])


def test_summary_contains_class_names():
    ev = build()
    feed(ev)
    text = ev.summary(ev.compute())
    for word in ("normal", "defective", "macro avg", "accuracy", "roc_auc", "confusion matrix"):
        assert word in text


def test_label_target_uses_dataset_classes_and_other_averages():
    ev = build(target="label", average="weighted")
    gt = [0, 1, 2, 2, 1, 0]
    for lo, hi in ((0, 3), (3, 6)):
        scores = [torch.nn.functional.one_hot(torch.tensor(g), 3).float() * 0.8 + 0.2 / 3
                  for g in [0, 1, 2, 1, 1, 0][lo:hi]]
        ev.process({"label": torch.tensor(gt[lo:hi])},
                   [ClassificationResult(int(s.argmax()), s) for s in scores])
    m = ev.compute()
    assert m["classes"] == ["hole", "stain", "knot"]
    assert ev.main_metric == "f1_weighted" and "f1_weighted" in m
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert "roc_auc_ovr" in m
    assert "knot" in ev.summary(m)


def test_save_artifacts_writes_pngs(tmp_path):
    ev = build()
    feed(ev)
    paths = ev.save_artifacts(ev.compute(), str(tmp_path / "test"))
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_config_validation_and_bad_average():
    validate_config({"evaluation": {"type": "ClassificationEvaluator", "target": "is_defective",
                                    "average": "macro"}})
    with pytest.raises(ValueError, match="average"):
        build(average="samples")
