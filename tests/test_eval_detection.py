"""DetectionEvaluator (COCO mAP, image-level F1, gate stats) and att_model on fake results."""
import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from defectkit.data.formats.common import Record
from defectkit.engine.builders import build_evaluator
from defectkit.evaluation.detection import DetectionEvaluator, att_model, normal_proportion
from defectkit.structures import DetectionResult

CLASSES = ["hole", "stain"]


def fake_dataset():
    """4 images: two defective (boxes in original pixels), two normal (no boxes)."""
    recs = [
        Record(img_path="a.png", id=10, boxes=np.array([[10, 10, 50, 60], [70, 20, 90, 40]], np.float32),
               labels=np.array([0, 1]), is_defective=1, width=100, height=80),
        Record(img_path="b.png", id=11, boxes=np.array([[5, 5, 40, 30]], np.float32),
               labels=np.array([1]), is_defective=1, width=100, height=80),
        Record(img_path="c.png", id=12, is_defective=0, width=100, height=80),
        Record(img_path="d.png", id=13, is_defective=0, width=100, height=80),
    ]
    return SimpleNamespace(records=recs, classes=list(CLASSES))


def det(boxes=(), scores=(), labels=(), gate_score=None, gated=False):
    return DetectionResult(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(scores, dtype=torch.float32),
                           torch.tensor(labels, dtype=torch.int64), gate_score, gated)


def perfect(rec, score=0.9):
    return det(rec.boxes.tolist(), [score] * len(rec.labels), rec.labels.tolist())


def evaluate(ds, results, **kw):
    ev = DetectionEvaluator(dataset=ds, **kw)
    ev.reset()
    batch = {"meta": [{"id": r.id} for r in ds.records],
             "is_defective": torch.tensor([r.is_defective for r in ds.records]),
             "image": torch.zeros(len(results), 3, 8, 8)}    # transformed: never used for GT
    ev.process(batch, results)
    pickle.dumps(ev.records)                                  # gathered across ranks
    return ev, ev.compute()


def test_perfect_prediction_gives_map_1():
    ds = fake_dataset()
    ev, m = evaluate(ds, [perfect(r) for r in ds.records])
    assert m["mAP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["per_class_ap"]["hole"]["AP"] == pytest.approx(1.0)
    assert m["per_class_ap"]["stain"]["num_gt"] == 2
    assert m["f1_macro"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]
    assert m["num_normal"] == 2 and m["normal_proportion"] == pytest.approx(0.5)
    assert ev.main_metric == "mAP" and ev.greater_is_better
    assert "Average Precision" in m["coco_summary"] and len(m["coco_summary"].splitlines()) == 12
    assert "Average Precision" in ev.coco_log
    s = ev.summary(m)
    assert "hole" in s and "macro avg" in s and "defective" in s
    json.dumps(m)                                             # metrics.json-able


def test_empty_prediction_gives_map_0():
    ds = fake_dataset()
    _, m = evaluate(ds, [det() for _ in ds.records])
    assert m["mAP"] == 0.0 and m["AP50"] == 0.0
    # everything predicted normal: normal F1 = 2*0.5*1/1.5, defective F1 = 0
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0) / 2)


def test_false_positive_on_normal_image_lowers_map():
    ds = fake_dataset()
    res = [perfect(r) for r in ds.records]
    res[2] = det([[10, 10, 50, 60]], [0.95], [0])             # normal image, higher score than the TP
    _, m = evaluate(ds, res)
    assert m["mAP"] < 1.0
    assert m["per_class_ap"]["stain"]["AP"] == pytest.approx(1.0)
    assert m["image_per_class"]["normal"]["recall"] == pytest.approx(0.5)


def test_f1_bookkeeping_and_score_thr():
    ds = fake_dataset()
    # img0: detection 0.9 -> defective (TP); img1: only 0.04 -> normal (FN);
    # img2: 0.3 -> defective (FP); img3: nothing -> normal (TN)
    res = [det([[10, 10, 50, 60]], [0.9], [0]), det([[5, 5, 40, 30]], [0.04], [1]),
           det([[1, 1, 9, 9]], [0.3], [1]), det()]
    _, m = evaluate(ds, res)
    # defective: P = 1/2, R = 1/2, F1 = 0.5; normal: P = 1/2, R = 1/2, F1 = 0.5
    assert m["f1_macro"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(0.5)
    # raising score_thr past 0.3 turns img2 normal: normal P = 2/3, R = 1, F1 = 0.8;
    # defective P = 1, R = 1/2, F1 = 2/3
    _, m2 = evaluate(ds, res, score_thr=0.5)
    assert m2["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m2["image_per_class"]["defective"]["precision"] == pytest.approx(1.0)
    assert m2["mAP"] == pytest.approx(m["mAP"])                # mAP uses every detection


def test_ground_truth_from_dataset_not_batch_and_gate_stats():
    ds = fake_dataset()
    res = [perfect(ds.records[0], 0.8), perfect(ds.records[1], 0.8),
           det(gate_score=0.1, gated=True), det(gate_score=0.2, gated=True)]
    res[0].gate_score = res[1].gate_score = 0.9
    ev = DetectionEvaluator(dataset=ds)
    # a batch without is_defective: image-level GT comes from the records
    ev.process({"meta": [{"id": r.id, "scale_factor": (0.5, 0.5)} for r in ds.records]}, res)
    m = ev.compute()
    assert m["mAP"] == pytest.approx(1.0) and m["f1_macro"] == pytest.approx(1.0)
    assert m["gate_pass_rate"] == pytest.approx(0.5) and m["num_gated"] == 2


def test_subset_of_images_and_classes_without_gt(tmp_path):
    ds = fake_dataset()
    ev = DetectionEvaluator(dataset=ds, classes=CLASSES + ["unused"])
    ev.process({"meta": [{"id": 11}, {"id": 12}]}, [perfect(ds.records[1]), det()])
    m = ev.compute()
    assert m["num_images"] == 2 and m["mAP"] == pytest.approx(1.0)   # 'hole'/'unused' have no GT
    assert math.isnan(m["per_class_ap"]["unused"]["AP"])
    paths = ev.save_artifacts(m, str(tmp_path))
    assert {p.split("/")[-1] for p in paths} == {"pr_curve.png", "confusion_matrix.png"}


def test_write_predictions(tmp_path):
    ev = DetectionEvaluator()
    path = ev.write_predictions([det([[10, 20, 30, 60]], [0.5], [1]), det()],
                                [{"id": 7}, {"id": 8}], str(tmp_path))
    data = json.loads(open(path).read())
    assert path.endswith("predictions.bbox.json")
    assert data == [{"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.5}]


def test_build_evaluator_passes_dataset_when_accepted():
    ds = fake_dataset()
    ev = build_evaluator({"type": "DetectionEvaluator", "score_thr": 0.1}, CLASSES, dataset=ds)
    assert ev.dataset is ds and ev.classes == CLASSES and ev.score_thr == 0.1
    cls = build_evaluator({"type": "ClassificationEvaluator"}, CLASSES, dataset=ds)
    assert not hasattr(cls, "dataset")


def test_missing_dataset_is_a_clear_error():
    ev = DetectionEvaluator(classes=CLASSES)
    ev.process({"meta": [{"id": 1}]}, [det()])
    with pytest.raises(RuntimeError, match="dataset"):
        ev.compute()


def test_att_model():
    out = att_model({"att_normal_ms": 26.5, "att_defective_ms": 65.6}, 0.45)
    beta = 26.5 / 65.6
    assert out["beta"] == pytest.approx(beta)
    assert out["ideal_time"] == pytest.approx(1 - (1 - beta) * 0.45)
    assert out["att_ideal_ms"] == pytest.approx(0.45 * 26.5 + 0.55 * 65.6)
    assert out["att_ideal_ms"] == pytest.approx(out["ideal_time"] * 65.6)
    assert att_model({"att_normal_ms": 10.0, "att_defective_ms": 10.0}, 0.3)["ideal_time"] == pytest.approx(1.0)
    assert math.isnan(att_model({"att_normal_ms": None, "att_defective_ms": 5.0}, 0.5)["beta"])
    assert normal_proportion([(0.1, 0), (0.2, 1), (0.3, 1), (0.1, None)]) == pytest.approx(1 / 3)
